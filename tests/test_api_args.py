"""Bad arguments to the Python API raise MinigptError (also a ValueError or TypeError) naming the argument
and showing its value, on one line; good values of every accepted kind still work. Tiny synthetic model."""

import numpy as np
import pytest

import minigpt
from minigpt import kernels
from minigpt.cli import cli
from minigpt.convert import convert
from minigpt.engine import ContextFullError
from minigpt.errors import ArgumentError, MinigptError
from minigpt.sampling import SamplerSettings

from synthetic import tiny_llama

N_CTX = 32


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    d = tmp_path_factory.mktemp("args")
    tiny_llama(d / "t.gguf", ctx=64)
    convert(d / "t.gguf", d / "t.mgpt", "f32")
    return d / "t.mgpt"


@pytest.fixture(scope="module")
def model(path):
    return minigpt.Model(path, n_ctx=N_CTX, backend="numpy")


# (call on (path, model), the argument its message names)
BAD = {
    "path int": (lambda p, m: minigpt.Model(5), "path"),
    "load model list": (lambda p, m: minigpt.load([str(p)]), "model"),
    "threads str": (lambda p, m: minigpt.load(p, threads="2"), "threads"),
    "threads bool": (lambda p, m: minigpt.Model(p, threads=True), "threads"),
    "threads 0": (lambda p, m: minigpt.Model(p, threads=0), "threads"),
    "threads over max": (lambda p, m: minigpt.Model(p, threads=kernels.MAX_THREADS + 1), "threads"),
    "n_ctx str": (lambda p, m: minigpt.Model(p, n_ctx="64"), "n_ctx"),
    "n_ctx too big": (lambda p, m: minigpt.Model(p, n_ctx=65), "n_ctx"),
    "backend list": (lambda p, m: minigpt.Model(p, backend=["c"]), "backend"),
    "precision int": (lambda p, m: minigpt.Model(p, precision=5), "precision"),
    "precision name": (lambda p, m: minigpt.Model(p, precision="fastest"), "precision"),
    "verify str": (lambda p, m: minigpt.Model(p, verify="yes"), "verify"),
    "tokenize int": (lambda p, m: m.tokenize(5), "text"),
    "detokenize None": (lambda p, m: m.detokenize([None]), "ids[0]"),
    "detokenize id": (lambda p, m: m.detokenize([10**6]), "ids[0]"),
    "eval None": (lambda p, m: m.eval([None]), "ids[0]"),
    "eval str": (lambda p, m: m.eval("abc"), "ids"),
    "eval bool": (lambda p, m: m.eval([True]), "ids[0]"),
    "eval float array": (lambda p, m: m.eval(np.array([1.0])), "ids[0]"),
    "eval id": (lambda p, m: m.eval([1, 10**9]), "ids[1]"),
    "logits empty": (lambda p, m: m.logits([]), "ids"),
    "logits too long": (lambda p, m: m.logits(list(range(N_CTX + 1))), "ids"),
    "prompt int": (lambda p, m: m.generate(5), "prompt"),
    "max_tokens -1": (lambda p, m: m.generate("hi", max_tokens=-1), "max_tokens"),
    "max_tokens float": (lambda p, m: m.generate("hi", max_tokens=2.0), "max_tokens"),
    "temperature str": (lambda p, m: m.generate("hi", temperature="0.5"), "temperature"),
    "temperature nan": (lambda p, m: m.generate("hi", temperature=float("nan")), "temperature"),
    "top_k float": (lambda p, m: m.generate("hi", top_k=1.5), "top_k"),
    "top_k -1": (lambda p, m: m.generate("hi", top_k=-1), "top_k"),
    "top_p 0": (lambda p, m: m.generate("hi", top_p=0), "top_p"),
    "top_p 1.5": (lambda p, m: m.generate("hi", top_p=1.5), "top_p"),
    "min_p 2": (lambda p, m: m.generate("hi", min_p=2), "min_p"),
    "repeat_penalty 0": (lambda p, m: m.generate("hi", repeat_penalty=0), "repeat_penalty"),
    "repeat_last_n -1": (lambda p, m: m.generate("hi", repeat_last_n=-1), "repeat_last_n"),
    "seed -1": (lambda p, m: m.generate("hi", seed=-1), "seed"),
    "seed float": (lambda p, m: m.generate("hi", seed=1.0), "seed"),
    "stop int": (lambda p, m: m.generate("hi", stop=5), "stop"),
    "stop list of int": (lambda p, m: m.generate("hi", stop=["a", 5]), "stop"),
    "top_n -1": (lambda p, m: m.steps("hi", top_n=-1), "top_n"),
    "template int": (lambda p, m: m.set_chat_template(5), "source"),
    "chat max_tokens str": (lambda p, m: m.chat(max_tokens="5"), "max_tokens"),
    "chat max_tokens 0": (lambda p, m: m.chat(max_tokens=0), "max_tokens"),
    "chat n_ctx too big": (lambda p, m: m.chat(n_ctx=N_CTX + 1), "n_ctx"),
    "chat system int": (lambda p, m: m.chat(system=5), "system"),
    "chat seed -1": (lambda p, m: m.chat(seed=-1), "seed"),
    "chat kv_type": (lambda p, m: m.chat(kv_type="f8"), "kv_type"),
    "chat kv_type int": (lambda p, m: m.chat(kv_type=16), "kv_type"),
    "chat kv_type q8_0 on head_dim 16": (lambda p, m: m.chat(kv_type="q8_0"), "kv_type q8_0 does not fit"),
    "kv_type q8_0 on head_dim 16": (lambda p, m: minigpt.Model(p, kv_type="q8_0"), "kv_type q8_0 does not fit"),
    "kv_type name": (lambda p, m: minigpt.Model(p, kv_type="q4_0"), "kv_type"),
    "chat top_k float": (lambda p, m: m.chat(top_k=2.5), "top_k"),
    "chat unknown setting": (lambda p, m: m.chat(temprature=1), "temprature"),
    "chat send int": (lambda p, m: m.chat().send(5), "text"),
    "chat set top_p": (lambda p, m: m.chat().set(top_p=2), "top_p"),
    "chat set max_tokens": (lambda p, m: m.chat().set(max_tokens=-3), "max_tokens"),
}


@pytest.mark.parametrize("call, name", BAD.values(), ids=BAD.keys())
def test_bad_argument(path, model, call, name):
    with pytest.raises(MinigptError) as e:
        call(path, model)
    assert isinstance(e.value, (ValueError, TypeError))
    message = str(e.value)
    assert "\n" not in message and len(message) < 200
    assert name in message


def test_messages_show_the_value(path):
    with pytest.raises(ArgumentError, match=r"^threads must be an integer in 1\.\.256, got 300$"):
        minigpt.Model(path, threads=300)
    with pytest.raises(TypeError, match=r"^top_k must be an integer, got 1\.5$"):
        SamplerSettings(top_k=1.5)
    for call in (lambda: minigpt.Model(path, backend="x" * 1000), lambda: SamplerSettings().with_(**{"x" * 1000: 1})):
        with pytest.raises(ArgumentError, match=r"'x{50,}\.\.\.") as e:   # a long value is cut
            call()
        assert len(str(e.value)) < 200


def test_options_are_checked_before_the_model_is_looked_for(tmp_path):
    with pytest.raises(ArgumentError, match="threads"):   # not "not found": a download would come first
        minigpt.load(str(tmp_path / "missing.mgpt"), threads="2")


def test_good_values_still_work(model):
    ids = model.tokenize("the he")
    assert model.logits(np.array(ids, dtype=np.int32)).shape == (len(ids), model.config.vocab_size)
    assert model.detokenize(np.array(ids)) == model.detokenize(tuple(ids)) == "the he"
    model.reset()
    model.eval([np.int64(i) for i in ids])
    greedy = "".join(model.generate("the he", max_tokens=4, temperature=0))
    assert "".join(model.generate(ids, max_tokens=4, temperature=0.0, stop=None)) == greedy
    assert "".join(model.generate(np.array(ids), max_tokens=4, temperature=np.float32(0))) == greedy
    assert "".join(model.generate(ids, max_tokens=4, temperature=0, stop=[])) == greedy
    a = list(model.generate("the", max_tokens=4, seed=0, top_k=0, top_p=1, min_p=0))
    assert a == list(model.generate("the", max_tokens=4, seed=np.uint64(0), top_k=np.int64(0), top_p=1.0, min_p=0))
    s = SamplerSettings(temperature=np.float32(0.5), top_k=np.int32(3), seed=np.int64(7))
    assert type(s.temperature) is float and type(s.top_k) is int and type(s.seed) is int   # JSON-safe
    chat = model.chat(seed=0, top_k=0, max_tokens=None, n_ctx=16, system=None)
    chat.set(max_tokens=2, temperature=0)
    assert chat.settings.seed == 0 and chat.max_tokens == 2
    m = minigpt.Model(model.path, threads=1, backend="numpy", n_ctx=None, verify=True, precision="exact")
    assert m.threads == 1 and m.n_ctx == 64


def test_a_stop_str_is_one_stop_string(model):
    # "e" as a stop string ends the text before the first "e"; it is not read as its characters
    full = "".join(model.generate("the", max_tokens=12, temperature=0))
    cut = "".join(model.generate("the", max_tokens=12, temperature=0, stop="e"))
    assert cut == full.split("e")[0]


def test_eval_past_the_context(model):
    model.reset()
    with pytest.raises(ContextFullError, match="context full"):
        model.eval(list(range(N_CTX + 1)))


def test_one_thread_limit():
    # the kernels' limit is the one limit: the C build's, numpy's and the CLI's -t
    if kernels.core_missing() is None:
        assert kernels.get_backend("c").MAX_THREADS == kernels.MAX_THREADS
    for command in cli.commands.values():
        for p in command.params:
            if p.name == "threads":
                assert (p.type.min, p.type.max) == (1, kernels.MAX_THREADS), command.name


@pytest.mark.skipif("numba" not in kernels.available_backends(), reason="numba is not installed")
def test_numba_thread_limit(path):
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if limit < kernels.MAX_THREADS:   # numba takes fewer threads than the kernels: still an argument error
        with pytest.raises(ArgumentError, match=f"threads={limit + 1} "):
            minigpt.Model(path, backend="numba", threads=limit + 1)
