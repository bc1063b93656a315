"""Chat sessions on tiny synthetic models: templates, KV reuse, undo/regen, overflow, save/load, cancel, threads."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import minigpt
from minigpt import template
from minigpt.chat import ChatSession
from minigpt.convert import convert
from minigpt.engine import ContextFullError, KVCache
from minigpt.errors import FormatError, MinigptError
from minigpt.template import CHATML, GEMMA, LLAMA3, PLAIN, ChatTemplate, TemplateError

from subproc import run_minigpt
from synthetic import mgchat_with_header, tiny_llama

SETTINGS = dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    out = {}
    for name, kw in {"a": {}, "b": {"seed": 1}, "plain": {"chat_template": None},
                     "hostile": {"chat_template": HOSTILE[0]}}.items():
        tiny_llama(d / f"{name}.gguf", wtype="Q8_0", ctx=256, **kw)
        convert(d / f"{name}.gguf", d / f"{name}.mgpt")
        out[name] = d / f"{name}.mgpt"
    return out


@pytest.fixture(scope="module")
def model(paths):
    return minigpt.load(str(paths["a"]))


def reply(chat, text, **kw):
    return "".join(chat.send(text, **kw))


# --- templates

HOSTILE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('true') }}",
    "{{ messages.__class__ }}",
    "{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}",
    "{{ messages.append(1) }}",
    "{{ raise_exception.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_refused(source):
    with pytest.raises(TemplateError, match="refused"):
        ChatTemplate(source).check()


@pytest.mark.parametrize("source, match", [
    ("{% for m in messages %}", "syntax error on line 1"),
    ("{{ raise_exception('roles must alternate') }}", "says: roles must alternate"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}", "runaway"),
    ("{{ messages[5].content.upper() }}", "failed"),
])
def test_broken_templates_fail_clearly(source, match):
    with pytest.raises(TemplateError, match=match):
        ChatTemplate(source).check()


RUNAWAY = [   # legal Jinja2 that the sandbox alone lets run for hours or take gigabytes
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "longer than 1 s"),
    ('{{ "a"|center(3000000000) }}', "more than 128 MB"),
    ('{% set ns = namespace(x="a") %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}',
     "more than 128 MB"),
    ("{{ [0] * 10**10 }}", "more than 128 MB"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
]


@pytest.mark.parametrize("source, match", RUNAWAY)
def test_runaway_templates_are_stopped(source, match, monkeypatch):
    if "longer" in match:
        monkeypatch.setattr(template, "TIME_LIMIT", 1.0)
    with pytest.raises(TemplateError, match=match):
        ChatTemplate(source).check()
    msgs = [{"role": "user", "content": "你好 \udcff"}]   # the renderer is back, and any text travels intact
    assert ChatTemplate(CHATML).render(msgs) == "<|im_start|>user\n你好 \udcff<|im_end|>\n<|im_start|>assistant\n"


def test_oversized_template_is_refused_unread():
    with pytest.raises(TemplateError, match="characters long: refused"):
        ChatTemplate("x" * (template.MAX_SOURCE_CHARS + 1))


def test_builtin_templates():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好"}]
    has = lambda *toks: (lambda t: t in toks)
    assert ChatTemplate.for_model(None, None, has("<|im_start|>")).source == CHATML
    assert ChatTemplate.for_model(None, None, has("<|start_header_id|>")).source == LLAMA3
    assert ChatTemplate.for_model(None, "gemma", has()).source == GEMMA     # gemma3's CHAT_TEMPLATE
    plain = ChatTemplate.for_model("", None, has())
    assert plain.name == "plain" and plain.stop
    g = ChatTemplate(GEMMA, bos_token="<bos>").render(msgs)
    assert g == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                 "<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n")
    assert ChatTemplate(CHATML).render(msgs[1:2]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_model_template_and_override(model):
    assert model.template.name == "file"
    with pytest.raises(TemplateError, match="refused"):
        model.set_chat_template(HOSTILE[0])
    assert model.template.name == "file"   # a refused template changes nothing


def test_override_never_runs_the_files_template(paths):
    m = minigpt.load(str(paths["hostile"]))
    m.set_chat_template(CHATML)                    # the file's own is not built, let alone rendered
    assert m.template.name == "custom" and reply(m.chat(max_tokens=2, seed=0), "hi") is not None
    with pytest.raises(TemplateError, match="refused"):
        minigpt.load(str(paths["hostile"])).template


def test_model_without_template_uses_builtin(paths):
    m = minigpt.load(str(paths["plain"]))
    assert m.template.name == "chatml"   # the tiny vocabulary has <|im_start|>
    assert reply(m.chat(max_tokens=3, seed=0), "hi") is not None


# --- turns and the cache

def test_turns_reuse_the_cache(model):
    chat = model.chat(system="sys", max_tokens=6, seed=3, **SETTINGS)
    reply(chat, "the first message")
    before = list(chat.cache.tokens)
    reply(chat, "in a second turn")
    s = chat.last
    # turn 2 prefilled only its own text: the cache kept turn 1's prompt and reply tokens
    assert chat.cache.tokens[:len(before)] == before
    assert s.prompt_tokens == chat.n_past - len(before) - s.reply_tokens
    assert s.prompt_tokens < len(model.tokenize("<|im_end|>\n<|im_start|>user\nin a second turn<|im_end|>\n"
                                                "<|im_start|>assistant\n", special=True)) + 1
    # and the cache's numbers are those of one prefill of the same tokens
    ids = chat.cache.tokens
    k, v = np.stack(chat.cache.k)[:, :, :len(ids)], np.stack(chat.cache.v)[:, :, :len(ids)]
    fresh = KVCache(model.config, len(ids))
    model.engine.prefill(ids, cache=fresh)
    np.testing.assert_allclose(k, np.stack(fresh.k), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v, np.stack(fresh.v), rtol=1e-4, atol=1e-4)
    assert [m["role"] for m in chat.history] == ["system", "user", "assistant", "user", "assistant"]


def test_undo_and_regenerate(model):
    chat = model.chat(max_tokens=5, seed=4, temperature=0)
    first = reply(chat, "one")
    pos, text = chat.n_past, chat._text
    second = reply(chat, "two")
    assert chat.undo() == "two"
    assert (chat.n_past, chat._text) == (pos, text) and len(chat.history) == 2
    assert reply(chat, "two") == second                  # greedy: the same reply again
    assert "".join(chat.regenerate()) == second
    assert chat.history[-2]["content"] == "two" and len(chat.history) == 4
    chat.undo(), chat.undo()
    assert chat.undo() is None and chat.n_past == 0
    assert reply(chat, "one") == first
    with pytest.raises(MinigptError, match="nothing to regenerate"):
        model.chat().regenerate()


def test_system_change_and_reset(model):
    chat = model.chat(system="first", max_tokens=4, seed=5, **SETTINGS)
    reply(chat, "hello")
    chat.set_system("second")
    reply(chat, "again")
    assert chat.history[0] == {"role": "system", "content": "second"}
    assert chat.cache.tokens == chat._encode(chat._text)[:len(chat.cache.tokens)] or chat._text is None
    chat.reset()
    assert chat.history == [{"role": "system", "content": "second"}] and chat.n_past == 0


def test_a_long_history_is_cut_in_a_few_renders(model, monkeypatch):
    """A loaded chat may hold thousands of turns: the fewest to drop is found by bisection, not by
    rendering and tokenizing the conversation once per dropped turn (found by tests/test_fuzz.py)."""
    chat = model.chat(system="keep me", n_ctx=256, max_tokens=12, seed=6, **SETTINGS)
    chat.messages = [{"role": "system", "content": "keep me"}] + [
        {"role": role, "content": f"{role} {i}"} for i in range(3000) for role in ("user", "assistant")]
    renders = []
    render = ChatTemplate.render
    monkeypatch.setattr(ChatTemplate, "render", lambda self, *a, **kw: renders.append(1) or render(self, *a, **kw))
    reply(chat, "the newest")
    assert len(renders) < 20 and 2900 < chat.last.dropped_turns < 3000
    kept = chat.history[:-1]   # what the prompt held: up to the newest message
    assert kept[0]["content"] == "keep me" and kept[-1]["content"] == "the newest" and kept[1]["role"] == "user"
    # the fewest turns were dropped: with the one before, the prompt would leave no room for a reply
    i = int(kept[1]["content"].split()[1]) - 1
    more = kept[:1] + [{"role": "user", "content": f"user {i}"}, {"role": "assistant", "content": f"assistant {i}"}]
    ids = chat._encode(chat.template.render(more + kept[1:], add_generation_prompt=True))
    assert len(ids) + 12 > 256


def test_overflow_drops_oldest_turns(model):
    chat = model.chat(system="keep me", n_ctx=96, max_tokens=12, seed=6, **SETTINGS)
    dropped = 0
    for i in range(12):
        reply(chat, f"message number {i}")
        dropped += chat.last.dropped_turns
        assert chat.n_past <= 96
        assert chat.history[0] == {"role": "system", "content": "keep me"}
        assert chat.history[-2] == {"role": "user", "content": f"message number {i}"}
    assert dropped > 0
    with pytest.raises(ContextFullError, match="too long"):
        reply(chat, "x" * 400)
    assert chat.history[-2]["content"] == "message number 11"   # the failed turn changed nothing


def test_stop_strings_then_undo(paths):
    m = minigpt.load(str(paths["plain"]))
    m.set_chat_template(PLAIN, stop=("::",))       # the tiny model writes ':' a lot
    chat = m.chat(max_tokens=30, seed=3, temperature=0.9)
    for i in range(3):
        reply(chat, f"hi {i}")
        assert chat.last.stop == "stop" and "::" not in chat.history[-1]["content"]
    assert chat.undo() == "hi 2" and chat.undo() == "hi 1"
    reply(chat, "again")   # the cache no longer spells a known text: the turn re-reads and goes on
    assert [x["content"] for x in chat.history if x["role"] == "user"] == ["hi 0", "again"]


def test_settings(model):
    chat = model.chat(max_tokens=3, seed=1)
    chat.set(temperature=0.0, top_k=5, max_tokens=2)
    assert chat.settings.temperature == 0 and chat.settings.top_k == 5 and chat.max_tokens == 2
    reply(chat, "hi")
    assert chat.last.reply_tokens <= 2
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}):
        with pytest.raises(MinigptError):
            chat.set(**bad)
    with pytest.raises(TypeError):
        chat.set(temprature=1)


def test_steps_carry_probabilities(model):
    chat = model.chat(max_tokens=4, seed=2, **SETTINGS)
    steps = [s for s in chat.steps("hi", top_n=3) if s.token is not None]
    assert steps
    for s in steps:
        assert len(s.top) == 3 and 0 < s.p <= 1
        ps = [p for _, p in s.top]
        assert ps == sorted(ps, reverse=True) and s.p <= ps[0] + 1e-12


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_python_backends_chat_like_the_compiled_one(paths, backend):
    replies = []
    for b in ("c", backend):
        m = minigpt.load(str(paths["a"]), backend=b, precision="exact")
        chat = m.chat(temperature=0, max_tokens=6)
        first = reply(chat, "hello there")
        before = chat.n_past
        replies.append([first, reply(chat, "again")])
        assert chat.last.prompt_tokens == chat.n_past - before - chat.last.reply_tokens   # the cache was reused
    assert replies[0] == replies[1]


# --- save and load

def test_save_load_continues_exactly(model, tmp_path):
    chat = model.chat(system="sys", max_tokens=8, seed=11, **SETTINGS)
    reply(chat, "first")
    reply(chat, "second")
    chat.save(tmp_path / "c.mgchat")
    assert [p.name for p in tmp_path.iterdir()] == ["c.mgchat"]          # no temp file left behind
    expected = reply(chat, "third")
    loaded = ChatSession.load(tmp_path / "c.mgchat", model)
    assert loaded.n_past == chat.n_past - chat.last.prompt_tokens - chat.last.reply_tokens
    assert reply(loaded, "third") == expected
    assert loaded.last.prompt_tokens == chat.last.prompt_tokens         # nothing re-prefilled
    assert loaded.history == chat.history


def test_a_chat_saved_before_its_first_message_loads(model, tmp_path):
    chat = model.chat(system="sys", max_tokens=4, seed=3, **SETTINGS)
    chat.save(tmp_path / "empty.mgchat")
    loaded = ChatSession.load(tmp_path / "empty.mgchat", model)
    assert loaded.n_past == 0 and loaded.history == chat.history
    assert reply(loaded, "hello") == reply(chat, "hello")


def test_load_refuses_other_models_and_damage(model, paths, tmp_path):
    chat = model.chat(max_tokens=4, seed=1)
    reply(chat, "hello")
    path = tmp_path / "c.mgchat"
    chat.save(path)
    other = minigpt.load(str(paths["b"]))
    with pytest.raises(MinigptError, match="saved with another model"):
        ChatSession.load(path, other)
    long_name = mgchat_with_header(path, tmp_path / "long.mgchat", lambda h: h["model"].update(name="n" * 100_000))
    with pytest.raises(MinigptError, match=r"saved with another model \('n+\.\.\., .*b\.mgpt \(fingerprint") as e:
        ChatSession.load(long_name, other)     # the name from the file is cut, not what follows it
    assert len(str(e.value)) < 400
    data = bytearray(path.read_bytes())
    damaged = tmp_path / "damaged.mgchat"
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(FormatError, match="damaged"):
        ChatSession.load(damaged, model)
    damaged.write_bytes(data[:-100])
    with pytest.raises(FormatError, match="truncated"):
        ChatSession.load(damaged, model)
    damaged.write_bytes(b"not a chat at all")
    with pytest.raises(FormatError, match="not a saved minigpt chat"):
        ChatSession.load(damaged, model)
    damaged.write_bytes(data.replace(b'"n_past": ', b'"n_past": 9'))
    with pytest.raises(FormatError):
        ChatSession.load(damaged, model)


def test_corrupt_headers_are_clear_errors(model, tmp_path):
    # found by tests/test_fuzz.py: each raised another exception (AttributeError, RecursionError,
    # OverflowError, a KeyError in `chat --resume`), or an error message holding a 100 KB value
    from minigpt import chatfile
    chat = model.chat(max_tokens=2, seed=1)
    reply(chat, "hello")
    chat.save(tmp_path / "good.mgchat")
    long = "x" * 100_000
    model_with = lambda h, **kw: {**h, "model": {**h["model"], **kw}}
    for i, change in enumerate([
        lambda h: -0.0,
        lambda h: b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        lambda h: model_with(h, precision=None),
        lambda h: model_with(h, precision="fastest"),
        lambda h: model_with(h, name=["tiny"]),
        lambda h: {**h, "ring": {long: 1}},
        lambda h: {**h, "settings": {long: 1}},
        lambda h: {**h, "rng": {**h["rng"], "state": {**h["rng"]["state"], "inc": -2 ** 127}}},
        lambda h: model_with(h, fingerprint=long, name=long, path=long),   # another model's
    ]):
        path = mgchat_with_header(tmp_path / "good.mgchat", tmp_path / f"bad{i}.mgchat", change)
        with pytest.raises(MinigptError) as e:
            chatfile.read_header(path)
            ChatSession.load(path, model)
        assert len(str(e.value)) < 1000, i


def test_resume_checks_the_saved_model_path_before_using_it(paths, model, tmp_path):
    # the path in a saved chat comes from a file: a FIFO, a GGUF, another model or nothing there is
    # refused at once (never opened, converted or downloaded), and -m overrides it
    import os
    chat = model.chat(max_tokens=2, seed=1)
    reply(chat, "hello")
    good = tmp_path / "good.mgchat"
    chat.save(good)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "t.gguf").write_bytes(b"GGUF" + bytes(60))
    for name, target in [("fifo", tmp_path / "fifo"), ("gguf", tmp_path / "t.gguf"), ("other", paths["b"]),
                         ("gone", tmp_path / "gone.mgpt"), ("known-name", "smollm2-135m-instruct")]:
        bad = mgchat_with_header(good, tmp_path / f"{name}.mgchat", lambda h: h["model"].update(path=str(target)))
        r = run_minigpt("chat", "--resume", bad, input="", timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "-m MODEL" in lines[0], (name, r.stderr)
    r = run_minigpt("chat", "--resume", tmp_path / "fifo.mgchat", "-m", paths["a"], input="/quit\n", timeout=120)
    assert r.returncode == 0, r.stderr


def test_resume_takes_a_long_saved_context_only_if_asked(tmp_path):
    # a saved chat claiming 4 M positions on a model that has them: resuming it builds RoPE tables and a
    # cache for the default context, not for the claim (861 MB and 7 s), and says to pass --ctx
    tiny_llama(tmp_path / "long.gguf", ctx=1 << 22)
    convert(tmp_path / "long.gguf", tmp_path / "long.mgpt")
    minigpt.load(str(tmp_path / "long.mgpt"), backend="numpy").chat().save(tmp_path / "c.mgchat")
    claim = mgchat_with_header(tmp_path / "c.mgchat", tmp_path / "claim.mgchat",
                               lambda h: h.update(n_ctx=1 << 22, ring=1 << 22))
    r = run_minigpt("chat", "--resume", claim, input="hi\n", timeout=120)
    assert r.returncode == 1 and r.stderr.endswith("(pass --ctx 4194304 or more)\n"), r.stderr
def test_text_with_a_lone_surrogate_saves_and_loads(model, tmp_path):
    # found by the fuzz campaign: a role read from a file as "user\ud800" (a JSON escape) made save()
    # raise UnicodeEncodeError; a system prompt passed to the API did too
    chat = model.chat(system="be \ud800 brief", max_tokens=2, seed=1)
    chat.save(tmp_path / "c.mgchat")
    assert ChatSession.load(tmp_path / "c.mgchat", model).history == chat.history


def test_a_sliding_window_chat_without_its_ring_is_refused(tmp_path):
    # found by the fuzz campaign: the error message itself raised KeyError('ring')
    tiny_llama(tmp_path / "g.gguf", arch="gemma3", window=8, ctx=4096)
    convert(tmp_path / "g.gguf", tmp_path / "g.mgpt")
    m = minigpt.load(str(tmp_path / "g.mgpt"))
    chat = m.chat(max_tokens=2, seed=1)
    reply(chat, "hello")
    chat.save(tmp_path / "c.mgchat")
    path = mgchat_with_header(tmp_path / "c.mgchat", tmp_path / "bad.mgchat",
                        lambda h: {k: v for k, v in h.items() if k != "ring"})
    with pytest.raises(FormatError, match="sliding-window cache has 4096 slots"):
        ChatSession.load(path, m)


def test_save_where_it_cannot_be_written_is_one_clear_error(model, tmp_path):
    chat = model.chat(max_tokens=4, seed=1)
    reply(chat, "hello")
    missing = tmp_path / "no" / "such" / "c.mgchat"
    with pytest.raises(MinigptError) as e:
        chat.save(missing)
    assert str(e.value) == f"cannot save to {missing}: folder {missing.parent} does not exist"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MinigptError, match=r"file/c.mgchat: .*file is not a folder$"):
        chat.save(tmp_path / "file" / "c.mgchat")
    (tmp_path / "dir.mgchat").mkdir()
    with pytest.raises(MinigptError, match=r"dir.mgchat: it is a folder$"):
        chat.save(tmp_path / "dir.mgchat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mgchat", "file"]   # no temp file left behind
    chat.save(tmp_path / "c.mgchat")                                   # and the session goes on
    assert ChatSession.load(tmp_path / "c.mgchat", model).history == chat.history


# --- cancel and threads

def test_cancel_stops_a_reply_from_another_thread(model):
    chat = model.chat(max_tokens=None, seed=1, **SETTINGS)
    got = []
    for piece in chat.send("go on forever"):
        got.append(piece)
        if len(got) == 3:
            threading.Thread(target=chat.cancel).start()
    assert chat.last.stop in ("cancelled", "eos")
    assert chat.history[-1]["content"] == "".join(got)          # what was written is kept
    reply(chat, "and again")                                    # the session goes on


def test_cancel_stops_a_prefill(model):
    chat = model.chat(max_tokens=4, seed=1)
    reply(chat, "hello")
    before = (list(chat.cache.tokens), chat.history)
    calls = []

    def progress(done, total):
        calls.append((done, total))
        chat.cancel()

    assert reply(chat, "word " * 40, on_prefill_progress=progress) == ""
    assert chat.last.stop == "cancelled" and not chat.last.kept and len(calls) == 1 and calls[0][0] < calls[0][1]
    assert (chat.cache.tokens, chat.history) == before                 # the turn never happened


def test_an_abandoned_reply_is_in_the_cache(model):
    chat = model.chat(max_tokens=None, seed=1, **SETTINGS)
    it = chat.steps("hello")
    shown = [next(it) for _ in range(3)]     # each token is shown before it is evaluated...
    it.close()
    assert chat.cache.tokens[-3:] == [s.token for s in shown]   # ...and the last one is evaluated on close
    assert chat.history[-1]["content"] == "".join(s.text for s in shown) and chat.last.reply_tokens == 3
    reply(chat, "go on")


def test_a_cancel_before_the_first_step_counts(model):
    chat = model.chat(max_tokens=5, seed=1)
    it = chat.send("hello")        # e.g. made on a UI thread, consumed on a worker
    chat.cancel()
    assert list(it) == [] and chat.last.stop == "cancelled" and chat.history == [] and chat.n_past == 0
    assert reply(chat, "hello") and chat.last.kept


def test_an_error_in_a_prefill_changes_nothing(model, monkeypatch):
    chat = model.chat(max_tokens=4, seed=1)
    reply(chat, "hello")
    before = (list(chat.cache.tokens), chat.history, chat._text)
    forward, calls = model.engine.decoder.forward, []

    def failing(*args, **kw):   # the second chunk of the prefill fails (e.g. Ctrl-C in the embedding app)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(*args, **kw)

    monkeypatch.setattr(model.engine, "decoder", SimpleNamespace(forward=failing, bind=model.engine.decoder.bind))
    with pytest.raises(KeyboardInterrupt):
        reply(chat, "word " * 40)
    monkeypatch.undo()
    assert (chat.cache.tokens, chat.history, chat._text) == before
    reply(chat, "and on")


def test_one_send_at_a_time(model):
    chat = model.chat(max_tokens=5, seed=1)
    it = chat.send("hi")
    next(it, None)
    with pytest.raises(MinigptError, match="already answering"):
        next(chat.send("again"))
    with pytest.raises(MinigptError, match="answering"):
        chat.save("/nonexistent/x")
    it.close()
    reply(chat, "again")


def test_two_sessions_on_two_threads(model):
    prompts = ["alpha beta", "gamma delta"]
    alone = []
    for i, p in enumerate(prompts):
        c = model.chat(max_tokens=20, seed=i, **SETTINGS)
        alone.append([reply(c, p), reply(c, p + " again")])
    together = [None, None]

    def run(i):
        c = model.chat(max_tokens=20, seed=i, **SETTINGS)
        together[i] = [reply(c, prompts[i]), reply(c, prompts[i] + " again")]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
