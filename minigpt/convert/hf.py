"""Hugging Face folder -> minigpt config and tensors: config.json, safetensors weights, tokenizer files.

What is particular to an architecture (its classes, tensor names, config keys and defaults) is in its
file, minigpt/model/<arch>.py; this module reads what they have in common.

What a folder must hold (docs/convert.md):
- config.json naming one of the architectures below;
- model.safetensors, or shards listed by model.safetensors.index.json (read by .safetensors);
- tokenizer.json (byte-level BPE) and/or tokenizer.model (SentencePiece), read by .hf_tokenizer.

Two things differ from GGUF and are undone here, tensor by tensor, so the converted model computes
what transformers computes:
- Llama, Mistral and Qwen2 keep the q/k projection rows of each head in "halves" order (RoPE rotates
  x[i] with x[i + hd/2]); minigpt's llama forward rotates adjacent pairs (x[2i], x[2i+1]), GGUF's
  order. The rows (and Qwen2's q/k biases) are permuted as llama.cpp's convert_hf_to_gguf.py does.
  Gemma 3 is not permuted: minigpt's gemma3 forward rotates halves, as transformers does.
- Gemma's RMSNorm multiplies by (1 + w); minigpt stores the multiplier, so 1 is added to every
  Gemma 3 norm weight.
"""

import json
import math
from pathlib import Path

import numpy as np

from ..config import INT_RANGES, Config
from .. import args, naming
from ..errors import CLIP_ARG, ArgumentError, ConvertError, FormatError, clip
from ..model import ARCH_FILES
from .names import HF_IGNORED, map_hf_name
from .safetensors import Checkpoint, SafeTensor

# config.json "architectures" -> minigpt architecture (each architecture file lists its classes)
ARCHITECTURES = {cls: arch for arch, f in ARCH_FILES.items() for cls in f.HF_CLASSES}
# safetensors dtype -> (minigpt qtype the bits already are, or None; the type it counts as for the default)
_WEIGHT_DTYPES = {"F32": ("f32", "f32"), "F16": ("f16", "f16"), "BF16": (None, "f16")}


def is_hf_folder(path) -> bool:
    return Path(path).is_dir()


def read_json(path, required=True):
    """A JSON file of the folder as a dict ({} when absent and not required)."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise ConvertError(f"{path.parent}: no {path.name} (not a Hugging Face model folder?)")
        return {}
    try:   # ValueError: not UTF-8, not JSON, or a number too long; RecursionError: nested too deep
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConvertError(f"{path}: unreadable JSON ({e.__class__.__name__}: {clip(str(e), CLIP_ARG)})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


# --- config.json -> Config

def architecture(hp: dict, folder) -> str:
    """The config's architecture class name, checked to be one minigpt converts."""
    names = hp.get("architectures") or []
    arch = names[0] if isinstance(names, list) and names else None
    if arch == "Gemma3ForConditionalGeneration" or "text_config" in hp:
        which = "Gemma3ForConditionalGeneration" if arch == "Gemma3ForConditionalGeneration" else "this model"
        raise ConvertError(f"{folder}: {which} is a multimodal Gemma 3 checkpoint; minigpt converts "
                           "the text-only Gemma3ForCausalLM (e.g. gemma-3-270m, gemma-3-1b)")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ConvertError(f"{folder}: architecture {clip(arch, CLIP_ARG)} is not supported "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def _get(hp, key, folder, default=None, kind=(int,)):
    value = hp.get(key, default)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        raise ConvertError(f"{folder}/config.json: {key} = {clip(value, CLIP_ARG)} is missing or not "
                           f"{kind[0].__name__}")
    return value


def _rope_params(hp, layer_type, folder):
    """{rope_type, rope_theta, factor, ...} for 'full_attention' or 'sliding_attention' layers.

    transformers 5 writes rope_parameters (one dict, or one per layer type); older versions wrote
    rope_theta, rope_scaling and, for Gemma 3, rope_local_base_freq.
    """
    rp = hp.get("rope_parameters")
    if isinstance(rp, dict):
        if layer_type in rp and isinstance(rp[layer_type], dict):
            rp = rp[layer_type]
        elif "full_attention" in rp:
            rp = rp["full_attention"]
        key, p = "rope_parameters", rp
    elif layer_type == "sliding_attention":       # Gemma 3's local layers: their own base, never scaled
        return {"rope_type": "default", "rope_theta": hp.get("rope_local_base_freq", 10000.0)}
    else:
        key, p = "rope_scaling", hp.get("rope_scaling") or {}
    if not isinstance(p, dict):
        raise ConvertError(f"{folder}/config.json: {key} = {clip(p, CLIP_ARG)} is not an object")
    return p if key == "rope_parameters" else {**p, "rope_theta": hp.get("rope_theta", 10000.0)}


LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope(hp, layer_type, folder, default_theta=10000.0):
    """(theta, minigpt rope_scaling dict, Llama 3 parameters or None) of one layer type."""
    p = _rope_params(hp, layer_type, folder)
    theta = _number(p, "rope_theta", default_theta, folder)
    kind = p.get("rope_type", p.get("type")) or "default"
    factor = _number(p, "factor", 1.0, folder)
    if kind == "default" or (kind == "linear" and factor == 1.0):
        return theta, {}, None
    if kind == "linear":
        return theta, {"type": "linear", "factor": factor}, None
    if kind == "llama3":
        p = {k: _number(p, k, default, folder) for k, default in LLAMA3_ROPE.items()}
        if not 0 < p["low_freq_factor"] < p["high_freq_factor"] or p["factor"] <= 0 or \
                p["original_max_position_embeddings"] <= 0:
            raise ConvertError(f"{folder}/config.json: Llama 3 RoPE scaling needs 0 < low_freq_factor < "
                               f"high_freq_factor, and factor and original_max_position_embeddings above 0")
        return theta, {}, p
    raise ConvertError(f"{folder}/config.json: RoPE scaling {clip(kind, CLIP_ARG)} is not supported "
                       f"(supported: linear, llama3)")


def _number(p, key, default, folder):
    """p[key] as a float: a finite number, or `default` when it is missing, null or 0."""
    try:
        return args.number(key, p.get(key) or default, -math.inf)
    except ArgumentError as e:
        raise ConvertError(f"{folder}/config.json: {e}") from None


def llama3_rope_factors(p: dict, theta: float, rope_dim: int, context_length: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling: minigpt's rope_freqs tensor, [rope_dim / 2].

    Wavelengths shorter than original_context / high_freq_factor keep their frequency, longer than
    original_context / low_freq_factor are divided by `factor`, and those between are blended.
    """
    factor, low, high, old = (p[k] for k in LLAMA3_ROPE)
    out = []
    for i in range(0, rope_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / rope_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _reader(hp, folder):
    """read(key, default=None, kind=(int,)): a checked config.json value (_get), for the architecture hooks."""
    return lambda key, default=None, kind=(int,): _get(hp, key, folder, default, kind)


def _local_layers(hp, n_layers, cls, folder):
    """Indices of the sliding-window layers, from layer_types or the architecture's older keys."""
    types = hp.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layers or \
                not all(t in ("sliding_attention", "full_attention") for t in types):
            raise ConvertError(f"{folder}/config.json: layer_types must list 'sliding_attention' or "
                               f"'full_attention' for each of the {n_layers} layers")
        return [i for i, t in enumerate(types) if t == "sliding_attention"]
    return ARCH_FILES[ARCHITECTURES[cls]].hf_local_layers(hp, cls, n_layers, _reader(hp, folder))


def config_from_hf(hp: dict, folder, name="") -> tuple[Config, np.ndarray | None]:
    """The minigpt Config of a config.json, and the Llama 3 rope_freqs tensor when it needs one.

    Anything minigpt would compute differently (softcapping, biases it has no place for, another
    activation, RoPE scaling it lacks) is an error naming the key.
    """
    cls = architecture(hp, folder)
    f, where = ARCH_FILES[ARCHITECTURES[cls]], f"{folder}/config.json"
    read = _reader(hp, folder)
    act_key, act_name = f.HF_ACTIVATION
    act = hp.get(act_key, hp.get("hidden_act"))
    if act not in (None, act_name):
        raise ConvertError(f"{where}: activation {clip(act, CLIP_ARG)} is not supported for {cls}")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hp.get(key) is not None:
            raise ConvertError(f"{where}: {key} = {clip(hp[key], CLIP_ARG)} is not supported "
                               "(minigpt does no softcapping)")
    for key in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if hp.get(key) and not (key == "attention_bias" and cls in f.HF_QKV_BIAS):
            raise ConvertError(f"{where}: {key} = true is not supported for {cls}")
    if hp.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConvertError(f"{where}: partial_rotary_factor is not supported")

    dim, n_heads = read("hidden_size"), read("num_attention_heads")
    n_layers = read("num_hidden_layers")
    try:   # ranged now: the lists of layers below are as long (Config checks the other sizes)
        args.integer("num_hidden_layers", n_layers, *INT_RANGES["n_layers"])
    except ArgumentError as e:
        raise ConvertError(f"{where}: {e}") from None
    local = _local_layers(hp, n_layers, cls, folder)
    defaults = f.HF_DEFAULTS
    rope = lambda layer_type, default=defaults["rope_theta"]: _rope(hp, layer_type, folder, default)
    theta, scaling, llama3 = rope("full_attention")
    config = Config(
        arch=ARCHITECTURES[cls],
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=hp.get("num_key_value_heads") or n_heads,
        hidden_dim=read("intermediate_size"),
        vocab_size=read("vocab_size"),
        context_length=read("max_position_embeddings"),
        head_dim=hp.get("head_dim") or (dim // n_heads if n_heads else 0),   # n_heads 0: Config says so
        norm_eps=hp.get("rms_norm_eps", defaults["norm_eps"]),
        rope_theta=theta,
        rope_scaling=scaling,
        tied_embeddings=bool(hp.get("tie_word_embeddings", defaults["tied_embeddings"])),
        name=name,
        sliding_window=read("sliding_window") if local else 0,
        local_layers=tuple(local),
        qkv_bias=cls in f.HF_QKV_BIAS,
        **f.hf_config(hp, rope, read, where),
    )
    freqs = llama3_rope_factors(llama3, theta, config.rope_dim, config.context_length) if llama3 else None
    return config, freqs


# --- tensors

def qk_rows(n_rows: int, n_heads: int) -> np.ndarray:
    """Row order taking a q or k projection from Hugging Face's RoPE layout to GGUF's.

    Per head, HF rows are [first halves of the pairs | second halves]; GGUF interleaves them: new row
    2j of a head is old row j, new row 2j+1 is old row j + hd/2. This is llama.cpp's permute,
    w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(w.shape), as a row index.
    """
    hd = n_rows // n_heads
    return np.arange(n_rows).reshape(n_heads, 2, hd // 2).swapaxes(1, 2).reshape(-1)


def values(t: SafeTensor, rows=None) -> np.ndarray:
    """A safetensors weight as float32 (rows picked in `rows` order, else all) with at most one float32
    copy of it in memory: an F32 tensor read in order is the (read-only) view of the mapping itself."""
    raw = t.array()
    if rows is not None:
        raw = np.take(raw, rows, axis=0)      # reads the mapping once, in the new order
    if t.dtype == "BF16":                     # bf16 is the top half of a float32
        bits = raw.astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)
    return raw.astype(np.float32, copy=False)


class HFTensor:
    """One tensor of the converted model read from a checkpoint tensor, with the transform it needs:
    `rows` (a q/k row order) or `add_one` (a Gemma norm weight). Both keep `carry`: permuted rows
    are still the stored bits, and a norm weight is written as f32 whatever its source type."""

    def __init__(self, name, t: SafeTensor, rows=None, add_one=False):
        self.name, self.t, self.rows, self.add_one = name, t, rows, add_one
        self.shape = t.shape
        self.carry, self.counts_as = _WEIGHT_DTYPES[t.dtype]
        self.source_type = t.dtype.lower()
        self.nbytes = t.nbytes

    def raw(self):
        """The stored bits (when `carry` is the target type), transformed."""
        if self.add_one:
            return self.values()
        raw = self.t.array()
        return raw if self.rows is None else np.take(raw, self.rows, axis=0)

    def values(self):
        x = values(self.t, self.rows)
        return x + np.float32(1.0) if self.add_one else x


class ExtraTensor:
    """A tensor computed by the converter (Llama 3's rope_freqs)."""

    def __init__(self, name, x: np.ndarray):
        self.name, self.x, self.shape = name, x, x.shape
        self.carry, self.counts_as, self.source_type, self.nbytes = "f32", "f32", "f32", x.nbytes

    def raw(self):
        return self.x

    def values(self):
        return self.x


def tensors(ckpt: Checkpoint, config: Config, rope_freqs=None) -> list:
    """HFTensor for every checkpoint tensor, in checkpoint order, with names mapped, shapes and dtypes
    checked, and the per-architecture transforms attached (q/k row permutation, Gemma norm + 1)."""
    out = []
    arch = ARCH_FILES[config.arch]
    for hf_name, t in ckpt.tensors.items():
        if HF_IGNORED.match(hf_name):
            continue
        name = map_hf_name(hf_name, config.arch)
        if name is None:
            raise ConvertError(f"{ckpt.folder}: unexpected tensor {hf_name!r} for this architecture")
        if name == "output" and config.tied_embeddings:
            continue                           # tied: the head is tok_embd (some checkpoints store both)
        if t.dtype not in _WEIGHT_DTYPES:
            raise ConvertError(f"{ckpt.folder}: tensor {hf_name!r} is {t.dtype}; weights must be BF16, F16 or F32")
        if len(t.shape) not in (1, 2):
            raise ConvertError(f"{ckpt.folder}: tensor {hf_name!r} has shape {list(t.shape)}; expected 1-D or 2-D")
        kind = name.rsplit(".", 1)[-1]
        rows = None
        if arch.PERMUTE_QK and kind in ("wq", "bq", "wk", "bk"):
            heads = config.n_heads if kind in ("wq", "bq") else config.n_kv_heads
            if t.shape[0] != heads * config.head_dim:
                raise ConvertError(f"{ckpt.folder}: tensor {hf_name!r} has {t.shape[0]} rows, expected "
                                   f"{heads} heads x {config.head_dim}")
            rows = qk_rows(t.shape[0], heads)
        add_one = arch.NORM_PLUS_ONE and len(t.shape) == 1 and kind.endswith("norm")
        out.append(HFTensor(name, t, rows, add_one))
    if rope_freqs is not None:
        out.append(ExtraTensor("rope_freqs", rope_freqs))
    return out


def load(folder):
    """(config, tensors, tokenizer fields, chat template) of a Hugging Face folder, all checked before
    anything is written."""
    from .hf_tokenizer import chat_template, tokenizer_fields

    folder = Path(folder)
    hp = read_json(folder / "config.json")
    config, rope_freqs = config_from_hf(hp, folder, name=naming.from_folder(folder.resolve().name))
    try:
        ckpt = Checkpoint(folder)
    except FormatError as e:
        raise ConvertError(str(e)) from None
    fields = tokenizer_fields(folder, config.vocab_size, hp)
    return config, tensors(ckpt, config, rope_freqs), fields, chat_template(folder)
