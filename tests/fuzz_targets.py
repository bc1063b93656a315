"""The fuzz targets: for each reader of untrusted files, its seed inputs, how a case mutates them and
what a case runs on the result (fuzz_runner.py runs them, with fuzz_mutators.py).

    mgpt    a .mgpt file: its JSON header mutated by structure (checksum recomputed, the data moved
            to make room), or its bytes; then minigpt.load, `minigpt info --json`, a few generated
            tokens, a chat turn, verify()
    gguf    a GGUF file: metadata values, value types, array counts, header counts, tensor infos, or
            bytes; then convert, and load what it wrote
    hf      a Hugging Face folder (the tests/fixtures/hf checkpoints): config.json, tokenizer files,
            the safetensors header or index, the template, a file deleted; then convert and load
    mgchat  a saved chat: its JSON header, its K/V (with a matching SHA-256), or its bytes; then what
            `minigpt chat --resume` does: read the header, check the saved model path, load the model
            the header asks for, load the session, undo or regenerate, a turn, save

Seeds are built once per run (make_seeds, in the parent) from tests/synthetic.py's tiny models;
a child process runs warm() once, then mutate() and run() per case.
"""

import contextlib
import copy
import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import minigpt
from minigpt import chatfile, cli
from minigpt.chat import ChatSession
from minigpt.convert import convert
from minigpt.convert.gguf import GGUFFile
from minigpt.errors import MinigptError
from minigpt.format import MgptFile

from fuzz_mutators import INTS, STRINGS, Raw, encode, interesting, mutate_bytes, mutate_json, short, tweak
from synthetic import GGML_IDS, tiny_llama, tiny_spm_fields

HF_FIXTURES = Path(__file__).parent / "fixtures" / "hf"
HF_SKIP = {"reference.npz", "tokens.json"}     # test data, not read by convert

# the tiny models: name -> tiny_llama keywords (GGUF) and the type the .mgpt seed is converted to
MODELS = {
    "llama": (dict(wtype="Q8_0", ctx=256), None),
    "gemma3": (dict(arch="gemma3", wtype="F16", tied=False, window=8, ctx=4096, chat_template=None,
                    tokenizer=tiny_spm_fields()), "q4_0"),
    "qwen": (dict(wtype="Q5_0", tied=False, qkv_bias=True, rope_freqs=True, ctx=512, seed=2), "q4_1"),
}


def make_models(d):
    for name, (kw, quant) in MODELS.items():
        if not (d / f"{name}.mgpt").exists():
            tiny_llama(d / f"{name}.gguf", **kw)
            convert(d / f"{name}.gguf", d / f"{name}.mgpt", quant)


def generate_a_little(m, rng):
    """What a user does first with a model: tokens, a short generation, a chat turn."""
    m.detokenize(m.tokenize("Hello, wörld! 123 <|im_start|>\n", special=True))
    "".join(m.generate("Once upon a time", max_tokens=4, seed=0, temperature=rng.choice([0.0, 0.8])))
    "".join(m.chat(max_tokens=3, seed=0).send("Hi there"))


def load_converted(out, rng):
    """Load and use what convert wrote: convert promises never to write a file that cannot load."""
    try:
        m = minigpt.load(str(out), threads=1)
    except MinigptError as e:
        raise AssertionError(f"convert wrote a file that does not load: {e}") from None
    generate_a_little(m, rng)


class Target:
    name = ""

    def make_seeds(self, d):
        make_models(d)

    def warm(self, seed_dir, work):
        """What every case of a child uses (seeds read once, models): the ctx passed to mutate and run."""
        raise NotImplementedError

    def mutate(self, rng, ctx, case_dir, index):
        """Write case `index`'s input into case_dir (index -1: a seed unchanged); a list of what was changed."""
        raise NotImplementedError

    def run(self, rng, ctx, case_dir, made):
        """Use the input; the names of the outputs it wrote (which may stay) go into `made`."""
        raise NotImplementedError


# --- .mgpt

def _align(n, a=64):
    return -(-n // a) * a


def split_mgpt(data):
    """(header dict, data section bytes) of a well-formed .mgpt file."""
    hlen = int.from_bytes(data[8:16], "little")
    meta = json.loads(data[24:24 + hlen])
    return meta, data[meta["data_offset"]:]


def join_mgpt(header, body, data_offset):
    """A .mgpt file: prefix with the header's length and CRC, header (bytes), zeros up to data_offset, body."""
    head = struct.pack("<4sIQII", b"MGPT", 1, len(header), zlib.crc32(header), 0) + header
    return head + b"\0" * max(0, data_offset - len(head)) + body


def _shifted(meta, shift):
    """The header of the same file with its data section `shift` bytes further on."""
    meta = copy.deepcopy(meta)
    meta["data_offset"] += shift
    meta["file_size"] += shift
    for t in meta["tensors"]:
        t["offset"] += shift
    return meta


MGPT_FOCUS = [("config",)] * 4 + [("tokenizer",)] * 3 + [("tensors",)] * 3 + [("chat_template",), ()]

TEMPLATE_PIECES = [   # what a broken or hostile chat template may hold (template.py: sandbox, output cap)
    "{{ messages.__class__.__mro__ }}", "{{ ''.__class__.__subclasses__() }}", "{{ raise_exception('no') }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{{ range(10 ** 9) | list }}", "{% if %}",
    "{{ 'x' * 10 ** 9 }}", "{{ (messages * 10 ** 8) | length }}", "{{ messages | tojson(indent=10 ** 6) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ strftime_now('%Y' * 100000) }}", "{% set x = messages.append(1) %}", "{{ undefined_name.attr }}",
    "{{ bos_token * 1000000 }}", "{% for m in messages %}{{ m.content * 100000 }}{% endfor %}",
]


def mutate_template(rng, text):
    """A chat template with one of TEMPLATE_PIECES in it, or in its place."""
    piece = rng.choice(TEMPLATE_PIECES)
    if not isinstance(text, str) or rng.random() < 0.3:
        return piece, [f"template = {piece}"]
    i = rng.randrange(len(text) + 1)
    return text[:i] + piece + text[i:], [f"template += {piece} at {i}"]


class Mgpt(Target):
    name = "mgpt"

    def warm(self, seed_dir, work):
        return SimpleNamespace(seeds={n: (seed_dir / f"{n}.mgpt").read_bytes() for n in MODELS})

    def mutate(self, rng, ctx, case_dir, index):
        pristine = index < 0
        name = rng.choice(sorted(ctx.seeds))
        data, notes = ctx.seeds[name], [f"seed {name}"]
        if not pristine and rng.random() < 0.7:
            data, more = self._mutate_header(rng, data)
            notes += more
        if not pristine and (len(notes) == 1 or rng.random() < 0.15):
            hlen = int.from_bytes(data[8:16], "little")
            data, more = mutate_bytes(rng, data, {"prefix": (0, 24), "header": (24, 24 + hlen),
                                                  "data": (24 + hlen, len(data))})
            notes += more
            if rng.random() < 0.5:   # past the checksum, into the JSON parser
                hlen = int.from_bytes(data[8:16], "little")
                if 24 + hlen <= len(data):
                    data = data[:16] + struct.pack("<I", zlib.crc32(data[24:24 + hlen])) + data[20:]
                    notes.append("header CRC recomputed")
        (case_dir / "model.mgpt").write_bytes(data)
        return notes

    def _mutate_header(self, rng, data):
        """The file with its header mutated, its CRC right, and the data moved on if the header grew."""
        meta, body = split_mgpt(data)
        focus = rng.choice(MGPT_FOCUS)
        state, shift = rng.getstate(), 0
        for _ in range(4):   # offsets grow digits when shifted: redo the same mutation until it fits
            rng.setstate(state)
            doc = _shifted(meta, shift)
            if focus == ("chat_template",) and rng.random() < 0.4:
                doc["chat_template"], notes = mutate_template(rng, doc["chat_template"])
            else:
                doc, notes = mutate_json(rng, doc, focus)
            header = encode(doc)
            room = meta["data_offset"] + shift - 24 - len(header)
            if room >= 0:
                break
            shift = _align(shift - room + len(header) // 8 + 256)
        return join_mgpt(header, body, meta["data_offset"] + shift), notes

    def run(self, rng, ctx, case_dir, made):
        path = case_dir / "model.mgpt"
        with contextlib.redirect_stdout(io.StringIO()):
            cli.cli.main(["info", "--json", str(path)], standalone_mode=False)
        m = minigpt.load(str(path), threads=1)
        m.template
        generate_a_little(m, rng)
        if rng.random() < 0.5:
            MgptFile(path).verify()


# --- GGUF

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
VTYPES = list(range(13)) + [13, 255, 2**32 - 1]


def infer_vtype(v):
    if isinstance(v, bool):
        return 7
    if isinstance(v, int):
        return 4 if 0 <= v < 2**32 else 5 if -2**31 <= v < 2**31 else 10 if v >= 0 else 11
    if isinstance(v, float):
        return 6
    if isinstance(v, str):
        return STRING
    return ARRAY


def infer_etype(items):
    if all(isinstance(x, str) for x in items) and items:
        return STRING
    if all(isinstance(x, float) for x in items) and items:
        return 6
    return 5


def pack_value(vtype, v, etype=None, count=None):
    """The GGUF bytes of v as type vtype, whatever v is (a lie about its type is the point)."""
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        if fmt in ("<f", "<d"):
            try:
                return struct.pack(fmt, float(v) if isinstance(v, (int, float)) else 0.0)
            except (OverflowError, struct.error):   # past the format's range
                return struct.pack(fmt, float("inf"))
        if fmt == "<?":
            return struct.pack(fmt, bool(v))
        x = int(v) if isinstance(v, (int, bool)) or (isinstance(v, float) and v == v and abs(v) < 1e30) else len(str(v))
        bits = 8 * struct.calcsize(fmt)
        x %= 2**bits
        if fmt[1].islower() and x >= 2**(bits - 1):
            x -= 2**bits
        return struct.pack(fmt, x)
    if vtype == STRING:
        s = v if isinstance(v, str) else str(v)
        b = s.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(b)) + b
    if vtype == ARRAY:
        items = v if isinstance(v, list) else [v]
        etype = infer_etype(items) if etype is None else etype
        n = len(items) if count is None else count
        return struct.pack("<IQ", etype % 2**32, n % 2**64) + b"".join(pack_value(etype, x) for x in items)
    return struct.pack("<I", 0)   # an unknown type: the reader must stop at its id


def gguf_bytes(g):
    """The GGUF file of a structure made by parse_gguf (and mutated)."""
    n_tensors, n_kv = (len(g.infos) if g.n_tensors is None else g.n_tensors), (len(g.kvs) if g.n_kv is None else g.n_kv)
    out = bytearray(b"GGUF" + struct.pack("<IQQ", g.version % 2**32, n_tensors % 2**64, n_kv % 2**64))
    for kv in g.kvs:
        out += pack_value(STRING, kv["key"]) + struct.pack("<I", kv["vtype"] % 2**32)
        out += pack_value(kv["vtype"], kv["value"], kv.get("etype"), kv.get("count"))
    for t in g.infos:
        out += pack_value(STRING, t["name"]) + struct.pack("<I", len(t["dims"]))
        out += b"".join(struct.pack("<Q", d % 2**64) for d in t["dims"])
        out += struct.pack("<IQ", t["type"] % 2**32, t["offset"] % 2**64)
    out += b"\0" * (-len(out) % g.align)
    return bytes(out) + g.data


def parse_gguf(path):
    """A seed GGUF as a structure to mutate: version, counts (None: the true ones), [kv], [tensor info],
    data section."""
    f = GGUFFile(path)
    kvs = []
    for k, v in f.metadata.items():
        kv = {"key": k, "vtype": infer_vtype(v), "value": v}
        if isinstance(v, list):
            kv["etype"] = infer_etype(v)
        kvs.append(kv)
    start = min(t.offset for t in f.tensors.values())
    infos = [{"name": t.name, "dims": list(reversed(t.shape)), "type": GGML_IDS[t.type_name], "offset": t.offset - start}
             for t in f.tensors.values()]
    data = Path(path).read_bytes()[start:]
    return SimpleNamespace(version=f.version, n_kv=None, n_tensors=None, kvs=kvs, infos=infos, data=data,
                           align=32, arch=f.metadata["general.architecture"])


def _gguf_keys(arch):
    """Keys a GGUF may add: what the converter reads, some of them optional."""
    return [f"{arch}.{k}" for k in ("rope.scaling.type", "rope.scaling.factor", "attention.sliding_window",
                                    "attention.key_length", "vocab_size", "rope.dimension_count",
                                    "attention.head_count_kv", "rope.freq_base_swa")] + \
        ["general.alignment", "tokenizer.chat_template", "tokenizer.ggml.pre", "tokenizer.ggml.scores",
         "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_space_prefix", "general.architecture"]


def mutate_gguf(rng, g):
    """g mutated in place by 1-3 structural changes; the list of them."""
    notes = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.random()
        kv = rng.choice(g.kvs) if g.kvs else None
        if op < 0.3 and kv:
            kv["value"] = tweak(rng, kv["value"]) if rng.random() < 0.6 else _gguf_interesting(rng)
            if rng.random() < 0.3:
                kv["vtype"] = infer_vtype(kv["value"])
                kv.pop("etype", None)
            notes.append(f"{kv['key']} = {short(kv['value'])} (type {kv['vtype']})")
        elif op < 0.4 and kv:
            kv["vtype"] = rng.choice(VTYPES)
            notes.append(f"{kv['key']}: value type {kv['vtype']}")
        elif op < 0.45 and kv and kv["vtype"] == ARRAY:
            kv["etype"] = rng.choice(VTYPES) if rng.random() < 0.5 else kv.get("etype")
            n = len(kv["value"]) if isinstance(kv["value"], (list, tuple, str, bytes)) else 0   # (retyped)
            kv["count"] = rng.choice([0, 1, n + 1, max(n - 1, 0), 2**31, 2**62, 2**64 - 1])
            notes.append(f"{kv['key']}: array of type {kv['etype']}, count {kv['count']}")
        elif op < 0.5 and kv:
            g.kvs.remove(kv)
            notes.append(f"{kv['key']} deleted")
        elif op < 0.6:
            key = rng.choice(_gguf_keys(g.arch) + ([kv["key"]] if kv else []))   # a new key, or a second one
            value = _gguf_interesting(rng)
            g.kvs.insert(rng.randrange(len(g.kvs) + 1), {"key": key, "vtype": infer_vtype(value), "value": value})
            notes.append(f"{key} added: {short(value)}")
        elif op < 0.65:
            which = rng.choice(["n_kv", "n_tensors", "version"])
            true = {"n_kv": len(g.kvs), "n_tensors": len(g.infos), "version": g.version}[which]
            value = rng.choice([0, 1, 2, 3, 4, true + 1, true - 1, 2**20, 2**32 - 1, 2**63])
            setattr(g, which, value)
            notes.append(f"{which} = {value}")
        elif op < 0.9:
            notes.append(_mutate_info(rng, g))
        else:
            g.align = rng.choice([1, 8, 64])
            notes.append(f"padded to {g.align}")
    return notes


def _gguf_interesting(rng):
    v = interesting(rng)
    return v if isinstance(v, (bool, int, float, str, list)) and not isinstance(v, Raw) else rng.choice(INTS)


def _mutate_info(rng, g):
    if not g.infos:
        return "no tensor to change"
    t = rng.choice(g.infos)
    op = rng.randrange(8)
    if op == 0:
        i = rng.randrange(len(t["dims"]))
        t["dims"][i] = rng.choice(INTS + [t["dims"][i] * 2, t["dims"][i] + 32, t["dims"][i] // 2])
    elif op == 1:
        t["dims"] = rng.choice([[], t["dims"] + [1], t["dims"][::-1], t["dims"][:1], [1] * 5, t["dims"] + [2**40]])
    elif op == 2:
        t["type"] = rng.choice(list(GGML_IDS.values()) + [4, 5, 16, 29, 31, 99, 2**32 - 1])
    elif op == 3:
        t["offset"] = rng.choice(INTS + [t["offset"] + 1, t["offset"] + 32, t["offset"] - 32])
    elif op == 4:
        t["name"] = rng.choice([s for s in STRINGS if isinstance(s, str)] + [x["name"] for x in g.infos] +
                               ["blk.99.attn_q.weight", "blk.0.attn_q.bias", "rope_freqs.weight", "output.weight"])
    elif op == 5:
        g.infos.remove(t)
    elif op == 6:
        g.infos.append(dict(t, dims=list(t["dims"])))
    else:
        g.infos.reverse()
    return f"tensor {short(t['name'])}: dims {short(t['dims'])}, type {t['type']}, offset {t['offset']}"


class Gguf(Target):
    name = "gguf"

    def warm(self, seed_dir, work):
        return SimpleNamespace(seeds={n: parse_gguf(seed_dir / f"{n}.gguf") for n in MODELS})

    def mutate(self, rng, ctx, case_dir, index):
        pristine = index < 0
        name = rng.choice(sorted(ctx.seeds))
        g, notes = copy.deepcopy(ctx.seeds[name]), [f"seed {name}"]
        if not pristine and rng.random() < 0.8:
            notes += mutate_gguf(rng, g)
        data = gguf_bytes(g)
        if not pristine and (len(notes) == 1 or rng.random() < 0.15):
            start = len(data) - len(g.data)
            data, more = mutate_bytes(rng, data, {"header": (0, start), "data": (start, len(data))})
            notes += more
        (case_dir / "model.gguf").write_bytes(data)
        return notes

    def run(self, rng, ctx, case_dir, made):
        out = case_dir / "out.mgpt"
        convert(case_dir / "model.gguf", out, rng.choice([None, None, "q8_0", "q4_0", "q4_1", "f16", "f32"]))
        made.append(out.name)
        load_converted(out, rng)


# --- Hugging Face folders

def split_safetensors(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body):
    raw = header if isinstance(header, bytes) else encode(header)
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


HF_JSON_FOCUS = {   # file -> paths a mutation aims under (one picked at random; () is the whole file)
    "config.json": [(), (), ("rope_parameters",), ("rope_scaling",), ("layer_types",)],
    "tokenizer.json": [(), ("model",), ("model", "vocab"), ("model", "merges"), ("added_tokens",), ("pre_tokenizer",),
                       ("normalizer",), ("decoder",)],
    "tokenizer_config.json": [()], "generation_config.json": [()], "model.safetensors.index.json": [("weight_map",)],
}


class Hf(Target):
    name = "hf"

    def make_seeds(self, d):
        for src in sorted(HF_FIXTURES.iterdir()):
            shutil.copytree(src, d / src.name, ignore=lambda _, names: [n for n in names if n in HF_SKIP],
                            dirs_exist_ok=True)

    def warm(self, seed_dir, work):
        return SimpleNamespace(seeds={p.name: p for p in sorted(seed_dir.iterdir()) if p.is_dir()})

    def mutate(self, rng, ctx, case_dir, index):
        pristine = index < 0
        name = rng.choice(sorted(ctx.seeds))
        src = case_dir / "src"
        shutil.copytree(ctx.seeds[name], src)
        notes = [f"seed {name}"]
        for _ in range(0 if pristine else rng.choice([1, 1, 1, 2])):
            files = sorted(p.name for p in src.iterdir())
            weights = {f: (8 if f == "config.json" else 4 if f.endswith((".safetensors", ".json")) else 1)
                       for f in files}
            f = rng.choices(files, [weights[x] for x in files])[0]
            notes += [f"{f}: {n}" for n in self._mutate_file(rng, src / f)]
        return notes

    def _mutate_file(self, rng, path):
        data = path.read_bytes()
        if rng.random() < 0.05:
            path.unlink()
            return ["deleted"]
        try:   # by structure, while the file still has one (an earlier change may have broken it)
            if path.suffix == ".safetensors" and rng.random() < 0.75:
                header, body = split_safetensors(data)
                keys = sorted(header) if isinstance(header, dict) else []   # (a dict, unless mutated before)
                focus = (rng.choice(keys),) if keys and rng.random() < 0.8 else ()
                header, notes = mutate_json(rng, header, focus)
                path.write_bytes(join_safetensors(header, body))
                return notes
            if path.name in HF_JSON_FOCUS and rng.random() < 0.85:
                doc, notes = mutate_json(rng, json.loads(data), rng.choice(HF_JSON_FOCUS[path.name]))
                path.write_bytes(encode(doc))
                return notes
            if path.suffix == ".jinja" and rng.random() < 0.5:
                text, notes = (mutate_template if rng.random() < 0.5 else mutate_json)(rng, data.decode("utf-8"))
                path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else encode(text))
                return notes
        except (ValueError, RecursionError):   # not JSON or UTF-8 any more, or nested too deep to parse
            pass
        data, notes = mutate_bytes(rng, data)
        path.write_bytes(data)
        return notes

    def run(self, rng, ctx, case_dir, made):
        out = case_dir / "out.mgpt"
        convert(case_dir / "src", out, rng.choice([None, None, "q8_0", "q4_0", "f16"]))
        made.append(out.name)
        load_converted(out, rng)


# --- saved chats

def split_chat(data):
    hlen = int.from_bytes(data[12:16], "little")
    offset = 16 + hlen
    return json.loads(data[16:offset]), data[offset + (-offset % 64):]


def join_chat(header, body):
    raw = header if isinstance(header, bytes) else encode(header)
    head = struct.pack("<8sII", chatfile.MAGIC, chatfile.VERSION, len(raw)) + raw
    return head + b"\0" * (-len(head) % 64) + body


CHAT_FOCUS = ["model", "n_ctx", "ring", "kv_type", "n_past", "tokens", "messages", "text", "marks", "settings", "max_tokens",
              "rng", "kv_sha256"]
CHATS = {"llama": ["Hello!", "Tell me more."], "gemma3": ["word " * 350]}   # gemma3: past its window


class Mgchat(Target):
    name = "mgchat"

    def make_seeds(self, d):
        make_models(d)
        for name, turns in CHATS.items():
            m = minigpt.load(str(d / f"{name}.mgpt"), threads=1)
            chat = m.chat(system="Be brief.", max_tokens=4, seed=1)
            for text in turns:
                "".join(chat.send(text))
            chat.save(d / f"{name}.mgchat")
            header, body = split_chat((d / f"{name}.mgchat").read_bytes())
            header["model"]["path"] = f"{name}.mgpt"   # relative to the seed folder, the children's working folder
            (d / f"{name}.mgchat").write_bytes(join_chat(header, body))

    def warm(self, seed_dir, work):
        return SimpleNamespace(seeds={n: (seed_dir / f"{n}.mgchat").read_bytes() for n in CHATS},
                               fingerprints={n: MgptFile(seed_dir / f"{n}.mgpt").fingerprint for n in MODELS},
                               models={n: seed_dir / f"{n}.mgpt" for n in CHATS})

    def mutate(self, rng, ctx, case_dir, index):
        pristine = index < 0
        name = rng.choice(sorted(ctx.seeds))
        data, notes = ctx.seeds[name], [f"seed {name}"]
        op = rng.random()
        if pristine:
            pass
        elif op < 0.65:
            header, body = split_chat(data)
            key = rng.choice(CHAT_FOCUS)
            if key == "model" and rng.random() < 0.4:
                field = rng.choice(["path", "fingerprint"])
                header["model"][field] = rng.choice([f"{n}.{x}" for n in MODELS for x in ("mgpt", "gguf")]
                                                    if field == "path" else sorted(ctx.fingerprints.values()))
                notes.append(f"model.{field} = {header['model'][field]}")
            else:
                header, more = mutate_json(rng, header, (key,) if rng.random() < 0.85 else ())
                notes += more
            data = join_chat(header, body)
        elif op < 0.8:   # K/V values a file could hold, with a SHA-256 that matches them
            header, body = split_chat(data)
            # rows as the header's kv_type stores them; q8_0's float32 scales are among its bytes: any byte value
            dtype = {"f32": np.float32, "f16": np.float16}.get(header.get("kv_type"), np.uint8)
            kv = np.frombuffer(body, dtype=dtype).copy()
            if kv.size:
                idx = [rng.randrange(kv.size) for _ in range(rng.choice([1, 10, kv.size]))]
                with np.errstate(over="ignore"):   # 3.4e38 in an f16 cache: inf
                    kv[idx] = (rng.choice([np.nan, np.inf, -np.inf, 3.4e38, 1e-45, 0.0]) if dtype != np.uint8
                               else rng.randrange(256))
                notes.append(f"{len(idx)} cached values = {kv[idx[0]]}")
            body = kv.tobytes()
            header["kv_sha256"] = hashlib.sha256(body).hexdigest()
            data = join_chat(header, body)
        else:
            hlen = int.from_bytes(data[12:16], "little")
            data, more = mutate_bytes(rng, data, {"prefix": (0, 16), "header": (16, 16 + hlen),
                                                  "body": (16 + hlen, len(data))})
            notes += more
        (case_dir / "chat.mgchat").write_bytes(data)
        return notes

    def run(self, rng, ctx, case_dir, made):
        """What `minigpt chat --resume FILE -m MODEL` does, and a turn."""
        path = case_dir / "chat.mgchat"
        saved, _ = chatfile.read_header(path)
        try:
            chatfile.model_path(path, saved)
        except MinigptError:
            pass   # the user then names the model with -m
        model = ctx.models["gemma3" if saved["model"]["fingerprint"] == ctx.fingerprints["gemma3"] else "llama"]
        m = minigpt.load(str(model), threads=1, n_ctx=max(0, saved["n_ctx"]), precision=saved["model"]["precision"],
                         kv_type=saved["kv_type"])
        m.template
        chat = ChatSession.load(path, m)
        chat.history
        chat.set(max_tokens=3)
        op = rng.random()
        if op < 0.3:
            chat.undo()
        elif op < 0.5 and any(msg["role"] == "user" for msg in chat.history):
            "".join(chat.regenerate())
        "".join(chat.send("And then?"))
        chat.save(case_dir / "out.mgchat")
        made.append("out.mgchat")


TARGETS = {t.name: t for t in (Mgpt(), Gguf(), Hf(), Mgchat())}
