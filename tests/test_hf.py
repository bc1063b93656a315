"""`minigpt convert DIR` on Hugging Face folders: tiny checkpoints against transformers' own logits and their
tokenizers' ids (tests/fixtures/hf, made by tools/make_hf_fixtures.py), SmolLM2 as a folder against its GGUF
(tools/make_hf_folder.py), one-line errors for bad folders, and memory bounded by about one tensor."""

import json
import shutil
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.convert import convert
from minigpt.convert.hf import qk_rows
from minigpt.convert.safetensors import SafetensorsFile
from minigpt.errors import ConvertError, FormatError, MinigptError
from minigpt.format import MgptFile
from minigpt.tokenizer import from_fields

from subproc import run_minigpt

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "hf"
sys.path.insert(0, str(ROOT / "tools"))
from make_hf_folder import make_folder, write_safetensors  # noqa: E402

ARCHS = ["llama", "llama3rope", "mistral", "qwen2", "gemma3"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> .mgpt path of each fixture folder converted to f32 (once per module)."""
    d, out = tmp_path_factory.mktemp("hf"), {}

    def get(name):
        if name not in out:
            out[name] = d / f"{name}.mgpt"
            convert(FIXTURES / name, out[name], "f32")
        return out[name]
    return get


# --- tiny checkpoints against transformers

@pytest.mark.parametrize("name", ARCHS)
def test_logits_match_transformers(converted, name):
    ref = np.load(FIXTURES / name / "reference.npz")
    m = minigpt.load(converted(name), backend="numpy", kv_type="f32")   # the exact float math transformers does
    for ids, want in zip(ref["ids"], ref["logits"]):
        got = m.logits(ids.tolist())
        assert got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-4, f"{name}: max |logit difference| is {err:.2e} of the logit scale"


@pytest.mark.parametrize("name", ARCHS)
def test_tokenizer_matches_the_folders_own(converted, name):
    f = MgptFile(converted(name))
    tok = from_fields(f.tokenizer)
    ids = json.loads((FIXTURES / name / "tokens.json").read_text(encoding="utf-8"))
    for text, want in ids["plain"]:
        assert tok.encode(text) == want, text
    for text, want in ids["special"]:
        assert tok.encode(text, special=True) == want, text
    assert f.chat_template and "messages" in f.chat_template


def test_config_and_special_tokens(converted):
    c = MgptFile(converted("gemma3")).config
    assert (c.arch, c.head_dim, c.local_layers, c.sliding_window) == ("gemma3", 32, (0, 2), 6)
    assert (c.rope_theta, c.rope_theta_local, c.query_scale) == (1e6, 1e4, 24 ** -0.5)
    assert c.tied_embeddings and "output" not in MgptFile(converted("gemma3")).tensors
    c = MgptFile(converted("mistral")).config
    assert c.local_layers == (0, 1) and c.sliding_window == 6 and not c.tied_embeddings
    assert MgptFile(converted("qwen2")).config.qkv_bias
    f = MgptFile(converted("llama3rope"))
    assert "rope_freqs" in f.tensors and f.config.tied_embeddings

    llama = from_fields(MgptFile(converted("llama")).tokenizer)
    assert llama.token_text(llama.bos_id) == "<|begin_of_text|>" and llama.add_bos   # from the post-processor
    assert llama.token_text(llama.eos_id) == "<|end_of_text|>"
    qwen = from_fields(MgptFile(converted("qwen2")).tokenizer)
    assert qwen.token_text(qwen.bos_id) == "<|endoftext|>" and not qwen.add_bos      # bos from config.json
    gemma = from_fields(MgptFile(converted("gemma3")).tokenizer)
    assert (gemma.bos_id, gemma.eos_id, gemma.add_bos, gemma.add_space_prefix) == (2, 1, True, False)
    assert MgptFile(converted("gemma3")).tokenizer["model"] == "llama"
    # tokenizer_config.json's list of named templates: the one named "default"
    assert MgptFile(converted("llama")).chat_template.startswith("{% for m in messages %}<|im_start|>")


def test_config_variants():
    """Older config.json keys and the per-architecture sliding-window rules."""
    from minigpt.convert.hf import config_from_hf

    hp = json.loads((FIXTURES / "gemma3" / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        del hp[key]
    legacy = hp | {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 2, "rope_scaling": None}
    c, _ = config_from_hf(legacy, "g")
    assert (c.local_layers, c.rope_theta, c.rope_theta_local, c.rope_scaling) == ((0, 2), 1e6, 1e4, {})
    c, _ = config_from_hf(legacy | {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "g")
    assert c.rope_scaling == {"type": "linear", "factor": 8.0}
    with pytest.raises(ConvertError, match="yarn"):
        config_from_hf(legacy | {"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "g")
    with pytest.raises(ConvertError, match="attn_logit_softcapping"):
        config_from_hf(legacy | {"attn_logit_softcapping": 50.0}, "g")
    with pytest.raises(ConvertError, match="multimodal"):
        config_from_hf({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": hp}, "g")

    mistral = json.loads((FIXTURES / "mistral" / "config.json").read_text())
    assert config_from_hf(mistral | {"sliding_window": None}, "m")[0].local_layers == ()
    qwen = json.loads((FIXTURES / "qwen2" / "config.json").read_text())
    qwen.pop("layer_types", None)
    assert config_from_hf(qwen | {"sliding_window": 8}, "q")[0].local_layers == ()
    c, _ = config_from_hf(qwen | {"sliding_window": 8, "use_sliding_window": True, "max_window_layers": 1}, "q")
    assert (c.local_layers, c.sliding_window) == ((1,), 8)


def test_qk_rows_is_llamacpp_permute():
    w = np.arange(4 * 8 * 3).reshape(4 * 8, 3)      # 4 heads of 8 rows
    want = w.reshape(4, 2, 4, 3).swapaxes(1, 2).reshape(w.shape)
    assert (w[qk_rows(32, 4)] == want).all()


def test_default_type_and_cli(tmp_path):
    """Without --quant a bf16 checkpoint becomes f16 (an f16 one is copied bit for bit); the CLI takes a folder."""
    out = tmp_path / "m.mgpt"
    r = run_minigpt("convert", FIXTURES / "llama", "-o", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "bf16 -> f16" in r.stderr
    f = MgptFile(out)
    assert {t.qtype for t in f.tensors.values() if len(t.shape) == 2} == {"f16"}
    s = convert(FIXTURES / "mistral", tmp_path / "mistral.mgpt")
    assert s["quant"] == "f16" and s["requantized"] == []
    src = SafetensorsFile(FIXTURES / "mistral" / "model.safetensors").tensors
    f = MgptFile(tmp_path / "mistral.mgpt")
    assert f.tensor("layers.0.wv").tobytes() == src["model.layers.0.self_attn.v_proj.weight"].array().tobytes()
    s = convert(FIXTURES / "llama", tmp_path / "q8.mgpt", "q4_0")
    assert MgptFile(tmp_path / "q8.mgpt").tensors["output"].qtype == "q8_0"     # 4-bit target: head at 8 bits


# --- SmolLM2 as a Hugging Face folder, against its GGUF

@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf, tmp_path_factory):
    """(HF folder, its f16 .mgpt, the GGUF's f16 .mgpt)."""
    d = tmp_path_factory.mktemp("smollm2-hf")
    folder = make_folder(smollm2_gguf, d / "SmolLM2-135M-Instruct")
    convert(folder, d / "hf.mgpt", "f16")
    convert(smollm2_gguf, d / "gguf.mgpt", "f16")
    return folder, d / "hf.mgpt", d / "gguf.mgpt"


def test_smollm2_folder_logits_match_gguf(smollm2_pair):
    _, hf, gguf = smollm2_pair
    a, b = MgptFile(hf), MgptFile(gguf)
    assert a.config.to_dict() | {"name": ""} == b.config.to_dict() | {"name": ""}
    ma, mb = minigpt.load(hf, backend="numpy"), minigpt.load(gguf, backend="numpy")
    ids = mb.tokenize("The capital of France is Paris. 日本語 and code: def f(x): return 2*x", add_bos=False)
    assert np.abs(ma.logits(ids) - mb.logits(ids)).max() < 1e-3


def test_smollm2_folder_tokenizes_like_gguf(smollm2_pair):
    _, hf, gguf = smollm2_pair
    a, b = from_fields(MgptFile(hf).tokenizer), from_fields(MgptFile(gguf).tokenizer)
    assert (a.bos_id, a.eos_id, a.add_bos, a.eog_ids) == (b.bos_id, b.eos_id, b.add_bos, b.eog_ids)
    corpus = json.loads((Path(__file__).parent / "fixtures" / "tokenizer_corpus.json").read_text(encoding="utf-8"))
    texts = corpus["texts"]
    assert len(texts) >= 20
    for text in texts:
        assert a.encode(text) == b.encode(text), text
        assert a.encode(text, special=True) == b.encode(text, special=True), text
    assert MgptFile(hf).chat_template == MgptFile(gguf).chat_template


def test_smollm2_sharded_folder(smollm2_pair, smollm2_gguf, tmp_path):
    folder, hf, _ = smollm2_pair
    sharded = make_folder(smollm2_gguf, tmp_path / "sharded", shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    convert(sharded, tmp_path / "sharded.mgpt", "f16")
    a, b = MgptFile(hf), MgptFile(tmp_path / "sharded.mgpt")
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        assert a.tensor(name).tobytes() == b.tensor(name).tobytes(), name


# --- errors: one line, exit 1, nothing left behind

def _assert_fails(folder, out, *expect):
    r = run_minigpt("convert", folder, "-o", out, timeout=300)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert all(e in lines[0] for e in expect), lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def _copy(name, tmp_path, to="m"):
    dest = tmp_path / to
    shutil.copytree(FIXTURES / name, dest)
    return dest


def _header_bytes(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize("case", ["length", "json", "out_of_range", "overlap", "size", "dtype"])
def test_malformed_safetensors_header(tmp_path, case):
    folder = _copy("qwen2", tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    first, second = header[names[0]], header[names[1]]
    if case == "length":
        raw = struct.pack("<Q", len(data) * 4) + data[8:]
    elif case == "json":
        raw = struct.pack("<Q", n) + b"x" + data[9:8 + n] + body
    else:
        if case == "out_of_range":
            first["data_offsets"] = [len(body) - 4, len(body) + 4 + 4 * (int(np.prod(first["shape"])) - 2)]
        elif case == "overlap":
            second["data_offsets"] = [first["data_offsets"][0] + 4,
                                      first["data_offsets"][0] + 4 + second["data_offsets"][1] - second["data_offsets"][0]]
        elif case == "size":
            first["shape"] = [first["shape"][0] + 1] + first["shape"][1:]
        elif case == "dtype":
            first["dtype"] = "F8_E9M9"
        raw = _header_bytes(header) + body
    path.write_bytes(raw)
    _assert_fails(folder, tmp_path / "out.mgpt", "model.safetensors", "safetensors")


def test_missing_shard(tmp_path):
    folder = _copy("llama", tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    _assert_fails(folder, tmp_path / "out.mgpt", "missing shard", "model-00002-of-00002.safetensors")


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "Gemma3ForConditionalGeneration"])
def test_unsupported_architecture(tmp_path, arch):
    folder = _copy("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [arch]
    (folder / "config.json").write_text(json.dumps(config))
    _assert_fails(folder, tmp_path / "out.mgpt", arch)


def test_unsupported_pre_tokenizer_and_settings(tmp_path):
    folder = _copy("qwen2", tmp_path)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    _assert_fails(folder, tmp_path / "a.mgpt", "tokenizer.json", "pre-tokenizer")
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    _assert_fails(folder, tmp_path / "b.mgpt", "pre-tokenizer Whitespace")

    folder = _copy("gemma3", tmp_path, "g")
    config = json.loads((folder / "config.json").read_text())
    config["final_logit_softcapping"] = 30.0
    (folder / "config.json").write_text(json.dumps(config))
    _assert_fails(folder, tmp_path / "c.mgpt", "final_logit_softcapping")


# tokenizer.json / tokenizer_config.json shapes anyone can write (issue #12): one error naming what is wrong
BAD_TOKENIZER = [
    ("tokenizer.json", lambda tj: tj.update(model=5), "model is not an object"),
    ("tokenizer.json", lambda tj: tj["model"].update(merges=5), "merges is not a list"),
    ("tokenizer.json", lambda tj: tj["model"]["merges"].append(3), "a merge must be"),
    ("tokenizer.json", lambda tj: tj["model"]["merges"].append(["a", 1]), "a merge must be"),
    ("tokenizer.json", lambda tj: tj["model"]["vocab"].update(x="7"), "model.vocab"),
    ("tokenizer.json", lambda tj: tj.update(added_tokens=[{"id": 1}]), "added_tokens"),
    ("tokenizer.json", lambda tj: tj.update(added_tokens={"id": 1}), "added_tokens"),
    ("tokenizer.json", lambda tj: tj.update(pre_tokenizer=[1]), "is not an object"),
    ("tokenizer.json", lambda tj: tj["pre_tokenizer"].update(pretokenizers=7), "pretokenizers is not a list"),
    ("tokenizer.json", lambda tj: tj["pre_tokenizer"]["pretokenizers"][0].update(pattern="x"), "pattern"),
    ("tokenizer.json", lambda tj: tj.update(normalizer="NFC"), "is not an object"),
    ("tokenizer.json", lambda tj: tj.update(post_processor=[]), "post_processor"),
]


@pytest.mark.parametrize("name, change, named", BAD_TOKENIZER, ids=[n for _, _, n in BAD_TOKENIZER])
def test_malformed_tokenizer_files_are_one_line(tmp_path, name, change, named):
    folder = _copy("qwen2", tmp_path)
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    change(data)
    (folder / name).write_text(json.dumps(data))
    _assert_fails(folder, tmp_path / "out.mgpt", named)


def test_campaign_finds_are_one_line(tmp_path):
    # found by a fuzz campaign (tools/fuzz.py --target hf --seed 2026): each escaped as a raw exception
    folder = _copy("gemma3", tmp_path, "g")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "query_pre_attn_scalar": 0}))
    _assert_fails(folder, tmp_path / "a.mgpt", "query_pre_attn_scalar = 0 is not a positive number")
    (folder / "config.json").write_text(json.dumps(config))
    spm = (folder / "tokenizer.model").read_bytes()
    (folder / "tokenizer.model").write_bytes(spm[:760] + spm[824:])   # a piece's fields out of step
    _assert_fails(folder, tmp_path / "b.mgpt", "tokenizer.model: not a SentencePiece model")


# config.json values of the wrong type or far out of range (issue #12): one error line naming the key
BAD_CONFIG = [("rms_norm_eps", "abc", "norm_eps"), ("rope_parameters", {"rope_theta": "1e4"}, "rope_theta"),
              ("rope_parameters", {"rope_theta": [1]}, "rope_theta"),
              ("rope_parameters", {"rope_type": "linear", "factor": "2"}, "factor"),
              ("rope_parameters", {"rope_type": "linear", "factor": -2}, "rope_scaling"),
              ("rope_parameters", {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1},
               "low_freq_factor"),
              ("num_hidden_layers", 1 << 22, "n_layers"), ("vocab_size", 1 << 22, "vocab_size"),
              ("num_key_value_heads", 3, "heads"), ("vocab_size", 640, "tok_embd has shape [320, 64]"),
              ("intermediate_size", 128, "the config implies"), ("tie_word_embeddings", "yes", None)]


@pytest.mark.parametrize("key, value, named", BAD_CONFIG, ids=[f"{k}={str(v)[:10]}" for k, v, _ in BAD_CONFIG])
def test_bad_config_values_are_one_line(tmp_path, key, value, named):
    folder = _copy("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    if named is None:   # a value Python reads as true: converted as such
        convert(folder, tmp_path / "ok.mgpt")
        return
    _assert_fails(folder, tmp_path / "out.mgpt", named)


def _edit_json(path, change):
    """Rewrite a JSON file as change(its value) says: a new value, or the file's new bytes."""
    new = change(json.loads(path.read_bytes()))
    path.write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())


def _edit_safetensors(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    header = change(json.loads(data[8:8 + n]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


DEEP = b'{"a":' * 50_000 + b"1" + b"}" * 50_000     # nested past Python's recursion limit
LONG = "x" * 100_000
without = lambda d, *keys: {k: v for k, v in d.items() if k not in keys}
first = lambda h: next(k for k in h if k != "__metadata__")

# (fixture, file, change): what tests/test_fuzz.py found raising another exception than a MinigptError
# (TypeError, ValueError, RecursionError, OSError, ZeroDivisionError), or a message holding a 100 KB value
FUZZ_FOUND = [
    ("llama", "config.json", lambda c: {**c, "layer_types": [[]] * 2}),
    ("llama", "config.json", lambda c: json.dumps(c).encode()[:-1] + b', "x": ' + b"9" * 5000 + b"}"),
    ("llama", "config.json", lambda c: DEEP),
    ("llama", "config.json", lambda c: {**c, "hidden_act": LONG}),
    ("llama", "config.json", lambda c: {**c, "num_attention_heads": LONG}),
    ("llama", "config.json", lambda c: {**c, "architectures": [["LlamaForCausalLM"]]}),
    ("llama", "config.json", lambda c: {**without(c, "rope_parameters"), "rope_scaling": "linear"}),
    ("llama", "config.json", lambda c: {**c, "rope_parameters": {"full_attention": [1]}}),
    ("llama", "config.json", lambda c: {**without(c, "head_dim"), "num_attention_heads": 0}),
    ("mistral", "config.json", lambda c: {**c, "num_hidden_layers": 1 << 62}),   # list(range(n)) of its layers
    ("gemma3", "config.json", lambda c: {**without(c, "layer_types"), "sliding_window_pattern": 0}),
    ("qwen2", "model.safetensors", lambda h: {**h, first(h): {**h[first(h)], "dtype": ["F32"]}}),
    ("qwen2", "model.safetensors", lambda h: {**h, first(h): {**h[first(h)], "data_offsets": [LONG, 1]}}),
    ("qwen2", "model.safetensors", lambda h: {**h, LONG: 1}),
    ("qwen2", "model.safetensors", lambda h: json.dumps(h).encode()[:-1] + b', "x": ' + b"9" * 5000 + b"}"),
    ("qwen2", "model.safetensors", lambda h: DEEP),
    ("llama", "model.safetensors.index.json", lambda i: DEEP),
    ("llama", "model.safetensors.index.json",
     lambda i: {"weight_map": {k: "a" * 300 + ".safetensors" for k in i["weight_map"]}}),   # name too long
    ("llama", "tokenizer_config.json", lambda c: {**c, "chat_template": "{{ 1 }}\ud800"}),   # no UTF-8 for it
]


@pytest.mark.parametrize("name, file, change", FUZZ_FOUND, ids=[f"{n}-{f}-{i}" for i, (n, f, _) in enumerate(FUZZ_FOUND)])
def test_fuzz_found_folders_are_clear_errors(tmp_path, name, file, change):
    folder = _copy(name, tmp_path)
    (_edit_safetensors if file.endswith(".safetensors") else _edit_json)(folder / file, change)
    with pytest.raises(MinigptError) as e:
        convert(folder, tmp_path / "out.mgpt")
    assert len(str(e.value)) < 1000
    assert not list(tmp_path.glob("*.mgpt")) and not list(tmp_path.glob(".*tmp*"))


def test_not_a_folder_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="config.json"):
        convert(tmp_path / "empty", tmp_path / "x.mgpt")
    folder = _copy("llama", tmp_path)
    for p in folder.glob("*.safetensors*"):
        p.unlink()
    with pytest.raises(ConvertError, match="no model.safetensors"):
        convert(folder, tmp_path / "x.mgpt")
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(FormatError, match="not a safetensors file"):
        SafetensorsFile(tmp_path / "short.safetensors")
    assert not list(tmp_path.glob("*.mgpt"))


# --- memory: about one tensor, not the model

def test_peak_memory_is_about_one_tensor(tmp_path):
    """A synthetic bf16 Llama with 16 MiB-class tensors: converting it to f16 and to q8_0 allocates less
    than two float32 copies of its largest tensor, however many tensors the model has (the quantizer
    works in row chunks, with a few MiB of temporaries whatever the tensor)."""
    rng = np.random.default_rng(0)
    dim, hidden, vocab, n_layers = 512, 1536, 8192, 8
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                   p + "self_attn.q_proj.weight": (dim, dim), p + "self_attn.k_proj.weight": (dim // 4, dim),
                   p + "self_attn.v_proj.weight": (dim // 4, dim), p + "self_attn.o_proj.weight": (dim, dim),
                   p + "mlp.gate_proj.weight": (hidden, dim), p + "mlp.up_proj.weight": (hidden, dim),
                   p + "mlp.down_proj.weight": (dim, hidden)}
    bits = lambda shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32).__rshift__(16).astype(np.uint16)
    write_safetensors(tmp_path / "model.safetensors", [(n, "BF16", bits(s)) for n, s in shapes.items()])
    folder = _copy("llama", tmp_path, "big")
    for p in folder.glob("*.safetensors*"):
        p.unlink()
    shutil.move(tmp_path / "model.safetensors", folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config |= {"hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": n_layers, "vocab_size": vocab,
               "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64}
    (folder / "config.json").write_text(json.dumps(config))

    largest = 4 * vocab * dim                  # the largest tensor as float32: 16 MiB
    model = 4 * sum(int(np.prod(s)) for s in shapes.values())
    for quant in ("f16", "q8_0"):
        tracemalloc.start()
        convert(folder, tmp_path / f"{quant}.mgpt", quant)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2 * largest, f"{quant}: peak {peak / 2**20:.1f} MiB, largest tensor {largest / 2**20:.1f} MiB"
        assert peak < model / 4
