"""Checkpoint (GGUF file or Hugging Face folder) -> .mgpt: map names, pick each tensor's quant type,
stream tensors to the file.

Both sources are read into the same shape: a config, tokenizer fields, a chat template, and a list
of source tensors (GGUFSource here, hf.HFTensor for folders), each with its minigpt name, shape,
the minigpt type its stored bits already are (`carry`, or None), the type it counts as when picking
the default (`counts_as`), `raw()` (the stored bits) and `values()` (float32). `write` applies the
type policy below to either.

Type policy (docs/format.md, "Conversion"):
- 1-D tensors (norm weights, RoPE frequency factors) are stored as f32.
- With no `quant` given, every 2-D weight keeps its source's type: a type minigpt stores (GGUF_TYPES,
  native: Q5_0, Q4_K, Q6_K, ...) is copied bit for bit; one it does not store is decoded (.kquants)
  and requantized to the type its row names: Q5_K to q6_k, Q2_K and Q3_K to q4_k (the smallest
  native K-quant with at least as many bits, not q8_0 at twice the size), BF16 to f16.
- With `quant` given, every 2-D weight gets that type, except the output head (`output`, or
  `tok_embd` when embeddings are tied), which is kept at q8_0 when the target is 4-bit (q4_0, q4_1,
  q4_k) and its source is neither q4_0 / q4_1 nor the target type, as llama.cpp keeps its output
  head at higher precision.
- A tensor whose source block format equals its target is copied bit for bit. Otherwise it is
  dequantized to f32 and requantized with round-to-nearest (minigpt.quant; q4_k and q6_k with
  ggml's reference quantizers).
- A 2-D tensor whose rows are not a multiple of 32 cannot hold blocks: it falls back to f16. One
  whose rows are not a multiple of 256 cannot hold K-quant super-blocks: it falls back to q8_0.
"""

import time
from pathlib import Path

import numpy as np

from .. import naming, quant
from ..config import Config, checked
from ..errors import CLIP_ARG, ConvertError, MinigptError, clip
from ..format import Writer
from ..model import ARCH_FILES, GGUF_ARCHS, weights
from . import kquants
from .gguf import GGUFFile
from .hf import qk_rows
from .names import GGUF_IGNORED, map_gguf_name

QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q6_k", "f16", "f32")   # what `--quant` accepts
# --quant targets whose output head stays at q8_0 unless its source is q4_0 / q4_1 or the target itself
# (q5: 5 bits, kept)
_FOUR_BIT = ("q4_0", "q4_1", "q4_k")

NATIVE, DECODED = True, False
# GGUF type -> (minigpt type, NATIVE: its bits are stored unchanged / DECODED: decoded and requantized
# to that type when no --quant is given). One row per GGUF type minigpt reads. A K-quant minigpt does
# not store goes to the smallest native K-quant with at least as many bits (its 256-element rows fit):
# the second rounding is typically finer than the first, and the file stays near the GGUF's size (docs/convert.md).
GGUF_TYPES = {
    "F32": ("f32", NATIVE),
    "F16": ("f16", NATIVE),
    "Q8_0": ("q8_0", NATIVE),
    "Q4_0": ("q4_0", NATIVE),
    "Q4_1": ("q4_1", NATIVE),
    "Q5_0": ("q5_0", NATIVE),
    "Q5_1": ("q5_1", NATIVE),
    "Q4_K": ("q4_k", NATIVE),
    "Q6_K": ("q6_k", NATIVE),
    "BF16": ("f16", DECODED),
    "Q2_K": ("q4_k", DECODED),
    "Q3_K": ("q4_k", DECODED),
    "Q5_K": ("q6_k", DECODED),
}
_FROM_GGML = {name: qtype for name, (qtype, native) in GGUF_TYPES.items() if native}


def gguf_architecture(g: GGUFFile) -> str:
    """The file's general.architecture, checked to be one minigpt converts (model.GGUF_ARCHS)."""
    arch = g.field("general.architecture", required=True)
    if not isinstance(arch, str) or arch not in GGUF_ARCHS:
        raise ConvertError(f"{g.path}: architecture {clip(arch, CLIP_ARG)} is not supported yet "
                           f"(supported: {', '.join(GGUF_ARCHS)})")
    return arch


def config_from_gguf(g: GGUFFile) -> Config:
    """The Config of a GGUF: its keys are under its own architecture's prefix ('qwen2.block_count'),
    its model is the minigpt architecture that architecture converts into."""
    arch = gguf_architecture(g)
    key = lambda k, **kw: g.field(f"{arch}.{k}", **kw)
    tokens = g.field("tokenizer.ggml.tokens", required=True)
    if not isinstance(tokens, list):
        raise ConvertError(f"{g.path}: tokenizer.ggml.tokens is not an array, got {clip(tokens, CLIP_ARG)}")
    n_vocab = key("vocab_size") or len(tokens)
    scaling = {}
    kind = key("rope.scaling.type", default="none")
    factor = key("rope.scaling.factor", default=1.0)
    if kind == "linear" and factor != 1.0:
        scaling = {"type": "linear", "factor": factor}   # Config checks it is a number
    elif kind not in ("none", "linear"):
        raise ConvertError(f"{g.path}: RoPE scaling {clip(kind, CLIP_ARG)} is not supported yet")
    dim = checked("dim", key("embedding_length", required=True))   # before the hook builds on them
    n_heads = checked("n_heads", key("attention.head_count", required=True))
    n_layers = checked("n_layers", key("block_count", required=True))
    try:   # what the architecture's GGUFs imply beyond the common keys
        extra = ARCH_FILES[GGUF_ARCHS[arch]].gguf_config(key, n_layers, dim, n_heads)
    except ConvertError as e:
        raise ConvertError(f"{g.path}: {e}") from None
    return Config(
        arch=GGUF_ARCHS[arch],
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", default=n_heads),
        hidden_dim=key("feed_forward_length", required=True),
        vocab_size=n_vocab,
        context_length=key("context_length", required=True),
        head_dim=key("attention.key_length", default=0),
        norm_eps=key("attention.layer_norm_rms_epsilon", default=1e-5),
        rope_theta=key("rope.freq_base", default=10000.0),
        rope_dim=key("rope.dimension_count", default=0),
        rope_scaling=scaling,
        tied_embeddings="output.weight" not in g.tensors,
        name=naming.from_gguf(g.metadata),   # basename, size and finetune: "Qwen2.5 Coder 0.5B Instruct"
        qkv_bias="blk.0.attn_q.bias" in g.tensors,
        **extra,
    )


def tokenizer_fields(g: GGUFFile) -> dict:
    """The GGUF 'tokenizer.ggml.*' keys with the prefix stripped: what minigpt.tokenizer builds from."""
    prefix = "tokenizer.ggml."
    return {k[len(prefix):]: v for k, v in g.metadata.items() if k.startswith(prefix)}


def decode_tensor(t) -> np.ndarray:
    """A GGUF tensor as float32 in its logical shape."""
    if t.type_name in _FROM_GGML:
        qtype = _FROM_GGML[t.type_name]
        if qtype in ("f32", "f16"):
            return t.data.view(np.float32 if qtype == "f32" else np.float16).reshape(t.shape).astype(np.float32)
        return quant.dequantize(t.data, qtype).reshape(t.shape)
    if t.type_name == "BF16":
        bits = t.data.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(t.shape)
    if t.type_name in kquants.TYPES:
        return kquants.dequantize(t.data, t.type_name).reshape(t.shape)
    raise ConvertError(f"tensor {clip(t.name)}: GGUF type {t.type_name} cannot be decoded yet "
                       f"(supported: {', '.join(DECODABLE)})")


DECODABLE = tuple(sorted(GGUF_TYPES))   # GGUF types decode_tensor reads


class GGUFSource:
    """One GGUF tensor to convert, under its minigpt name; `rows`: the order to read its rows in (a q/k
    row permutation), or None. Permuted rows are still the stored bits: blocks never span rows."""

    def __init__(self, t, name, rows=None):
        self.t, self.name, self.shape, self.nbytes, self.rows = t, name, t.shape, t.nbytes, rows
        self.source_type = t.type_name.lower()
        self.carry = _FROM_GGML.get(t.type_name)
        # the type it is stored in when no --quant is given: its own, or the one its row requantizes to
        self.counts_as = GGUF_TYPES[t.type_name][0]

    def raw(self):
        if self.rows is None:
            return self.t.data
        if len(self.shape) == 1:     # a bias: f32 values
            return self.values()
        return np.take(self.t.data, self.rows, axis=0)

    def values(self):
        x = decode_tensor(self.t)
        return x if self.rows is None else np.take(x, self.rows, axis=0)


def gguf_sources(g: GGUFFile, config: Config):
    """[GGUFSource] in file order; checks every tensor is known and decodable before anything is written.
    A file whose architecture keeps q/k in halves order (qwen2) gets those rows permuted into pairs."""
    halves = ARCH_FILES[config.arch].GGUF_ARCHS[gguf_architecture(g)]
    out = []
    for t in g.tensors.values():
        if t.name in GGUF_IGNORED:
            continue
        if t.type_name not in DECODABLE:
            raise ConvertError(f"{g.path}: tensor {clip(t.name)} is {t.type_name}, which cannot be decoded yet "
                               f"(supported: {', '.join(DECODABLE)})")
        name = map_gguf_name(t.name)
        if name is None:
            raise ConvertError(f"{g.path}: unexpected tensor {clip(t.name)} for architecture {config.arch}")
        if len(t.shape) not in (1, 2):
            raise ConvertError(f"{g.path}: tensor {clip(t.name)} has shape {t.shape}; expected 1-D or 2-D")
        out.append(GGUFSource(t, name, _qk_rows(g, config, t, name) if halves else None))
    return out


def _qk_rows(g, config, t, name):
    """The pair-order row permutation of a q/k weight or bias (hf.qk_rows), else None."""
    kind = name.rsplit(".", 1)[-1]
    if kind not in ("wq", "bq", "wk", "bk"):
        return None
    heads = config.n_heads if kind in ("wq", "bq") else config.n_kv_heads
    if t.shape[0] != heads * config.head_dim or config.rope_dim != config.head_dim:
        raise ConvertError(f"{g.path}: tensor {clip(t.name)} has {t.shape[0]} rows, expected {heads} heads x "
                           f"{config.head_dim}, all rotated (rope dims {config.rope_dim})")
    return qk_rows(t.shape[0], heads)


# --- the type policy and the writer, shared by both sources

def dominant_type(sources) -> str:
    """The minigpt type most of the source's 2-D weights keep with no --quant (by element count)."""
    counts = {}
    for s in sources:
        if len(s.shape) == 2:
            counts[s.counts_as] = counts.get(s.counts_as, 0) + int(np.prod(s.shape))
    return max(counts, key=counts.get) if counts else "f16"


def plan(sources, config: Config, target, where):
    """[(source, minigpt qtype)] in source order, after checking the set of tensors is complete and
    every shape is the one the config implies (a file that would not load is never written).
    target: the --quant type, or None (each weight keeps its source's type: `counts_as`)."""
    head = "tok_embd" if config.tied_embeddings else "output"
    out = []
    for s in sources:
        if len(s.shape) == 1:
            qtype = "f32"
        elif target is None:
            qtype = s.counts_as
        else:
            qtype = target
            if s.name == head and target in _FOUR_BIT and s.carry not in ("q4_0", "q4_1", target):
                qtype = "q8_0"
        if s.shape[-1] % quant.QTYPES[qtype].block and quant.QTYPES[qtype].block == 256:
            qtype = "q8_0"   # a K-quant type on rows that do not hold super-blocks
        if s.shape[-1] % quant.QTYPES[qtype].block:
            qtype = "f16"
        out.append((s, qtype))
    _check_complete(where, config, [s.name for s in sources])
    expect = weights.shapes(config)
    for s in sources:
        want = expect[s.name.rsplit(".", 1)[-1]]
        if tuple(s.shape) != want:
            raise ConvertError(f"{where}: tensor {s.name} has shape {list(s.shape)}, but the config "
                               f"implies {list(want)}")
    return out


def required_tensors(config: Config) -> set:
    """Names every model of `config` needs (the forward pass may read more, e.g. rope_freqs when present)."""
    return set(weights.tensor_names(config))


def _check_complete(where, config, names):
    seen = set()
    for name in names:
        if name in seen:
            raise ConvertError(f"{where}: tensor {name!r} appears twice")
        seen.add(name)
    need = required_tensors(config)
    unexpected = sorted(seen - need - {"rope_freqs"})
    if unexpected:
        raise ConvertError(f"{where}: unexpected tensors for architecture {config.arch}: {unexpected[:4]}"
                           f"{' ...' if len(unexpected) > 4 else ''}")
    missing = sorted(need - seen)
    if missing:
        raise ConvertError(f"{where}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")


def _stored(source, qtype):
    """What to write for `source` as `qtype`: its own bits when the block formats match, else its
    values (float32) requantized with round-to-nearest."""
    if source.carry == qtype:
        return source.raw()            # same block format: carried over bit for bit
    x = source.values()
    if qtype == "f32":
        return x
    if qtype == "f16":
        peak = max(float(x.max(initial=0)), -float(x.min(initial=0)))
        if peak > 65504:
            raise ConvertError(f"tensor {source.name}: values up to {peak:g} overflow f16; "
                               "convert with --quant f32 or q8_0")
    try:
        return _quantize_rows(x.reshape(-1, x.shape[-1]), qtype)
    except ValueError as e:   # a NaN or an infinity: block scales cannot hold it
        raise ConvertError(f"tensor {source.name}: {e} (is the source damaged?)") from None


def _quantize_rows(x, qtype, chunk_bytes=1 << 20):
    """quant.quantize of x [rows, cols], about a MiB of rows at a time for the block types. Rows are
    quantized independently, so the result is the same; the quantizer's float64 temporaries and
    checks then stay a few MiB beside the tensor instead of growing with it (f16 is one cast)."""
    rows, cols = x.shape
    step = max(1, chunk_bytes // (4 * cols))
    if step >= rows or qtype in ("f16", "f32"):
        return quant.quantize(x, qtype)
    out = np.empty((rows, quant.row_bytes(qtype, cols)), dtype=np.uint8)
    for i in range(0, rows, step):
        out[i:i + step] = quant.quantize(x[i:i + step], qtype)
    return out


def write(out, config, fields, chat_template, sources, quant_type, progress=None, t0=None) -> dict:
    """Write `sources` into the .mgpt file `out` (atomically) and return the summary `convert` documents."""
    t0 = time.perf_counter() if t0 is None else t0
    out = Path(out)
    items = plan(sources, config, quant_type, out)
    specs = [(s.name, qtype, s.shape) for s, qtype in items]
    total = sum(s.nbytes for s, _ in items)
    requantized = []
    try:
        with Writer(out, config, fields, chat_template, specs) as w:
            for s, qtype in items:
                data = _stored(s, qtype)
                if len(s.shape) == 2 and s.carry != qtype:
                    requantized.append((s.name, s.source_type, qtype))
                w.write(s.name, data)
                del data
                if progress:
                    progress(s.nbytes, total)
    except MinigptError:
        raise
    except OSError as e:
        raise ConvertError(f"cannot write {out}: {e.strerror}") from None

    n_params = sum(int(np.prod(s.shape)) for s, _ in items)
    size = out.stat().st_size
    return {"n_params": n_params, "file_size": size, "bits_per_weight": 8 * size / n_params,
            "seconds": time.perf_counter() - t0, "quant": quant_type or dominant_type(sources),
            "requantized": [name for name, _, _ in requantized],
            "requantized_types": _count_pairs(requantized),
            "types": {q: sum(1 for _, qq in items if qq == q) for q in {q for _, q in items}}}


def convert(src, out, quant_type=None, progress=None) -> dict:
    """Convert `src` (a GGUF file, or a Hugging Face folder: see hf.py) into the .mgpt file `out`.
    `progress(n_bytes, total_bytes)` is called per tensor.

    Returns a summary: n_params, file_size, bits_per_weight, seconds, quant (the --quant type, or with
    none the type most 2-D weights are stored in),
    requantized (names of the 2-D tensors decoded and requantized into another block format),
    requantized_types ({"q5_k -> q6_k": count}), types ({minigpt qtype: count}).
    """
    from ..tokenizer import from_fields   # checked here so a bad vocabulary fails before writing

    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ConvertError(f"{src}: no such file or folder")
    if out.exists() and out.resolve() == src.resolve():
        raise ConvertError("the output path is the source file")
    if out.is_dir():
        raise ConvertError(f"{out}: is a folder; give the .mgpt file to write")
    if quant_type is not None and quant_type not in QUANT_TYPES:
        raise ConvertError(f"unknown quant type {quant_type!r} (choose from {', '.join(QUANT_TYPES)})")

    if src.is_dir():
        from . import hf
        config, sources, fields, template = hf.load(src)
    else:
        g = GGUFFile(src)
        config = config_from_gguf(g)
        fields, template = tokenizer_fields(g), g.field("tokenizer.chat_template")
        sources = gguf_sources(g, config)
    from_fields(fields, config.vocab_size)
    return write(out, config, fields, template, sources, quant_type, progress, t0)


def _count_pairs(requantized):
    # [(name, source type, target type)] -> {"q4_k -> q8_0": n}, most frequent first
    counts = {}
    for _, src, dst in requantized:
        counts[f"{src} -> {dst}"] = counts.get(f"{src} -> {dst}", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
