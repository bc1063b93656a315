"""Tiny synthetic checkpoints for unit tests: a minimal GGUF writer, a random tiny Llama, tiny tokenizer
fields, and a .mgpt header rewriter.

The GGUF writer follows the public spec (see minigpt/convert/gguf.py); it is test-only code.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from minigpt import quant

GGML_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
            "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}

# types written as random valid blocks (minigpt decodes but cannot quantize them):
# name -> (block_size, block_bytes, byte offsets of the fp16 fields in a block)
RANDOM_BLOCK_TYPES = {
    "Q5_0": (32, 22, [0]), "Q5_1": (32, 24, [0, 2]),
    "Q2_K": (256, 84, [80, 82]), "Q3_K": (256, 110, [108]), "Q4_K": (256, 144, [0, 2]),
    "Q5_K": (256, 176, [0, 2]), "Q6_K": (256, 210, [208]),
}


def random_blocks(rng, type_name, n, scale=0.05):
    """uint8 [n, block_bytes]: random bytes with every fp16 field a finite value ~ N(0, scale)."""
    _, block_bytes, f16_offsets = RANDOM_BLOCK_TYPES[type_name]
    raw = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for off in f16_offsets:
        raw[:, off:off + 2] = (rng.standard_normal(n) * scale).astype("<f2").view(np.uint8).reshape(n, 2)
    return raw


def _s(text):
    b = text.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v):
    """(type id, payload) for a metadata value."""
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return (4, struct.pack("<I", v)) if v >= 0 else (5, struct.pack("<i", v))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _s(v)
    if isinstance(v, list):
        if all(isinstance(x, str) for x in v):
            return 9, struct.pack("<IQ", 8, len(v)) + b"".join(_s(x) for x in v)
        if all(isinstance(x, float) for x in v):
            return 9, struct.pack("<IQ", 6, len(v)) + np.asarray(v, "<f4").tobytes()
        return 9, struct.pack("<IQ", 5, len(v)) + np.asarray(v, "<i4").tobytes()
    raise TypeError(v)


def write_gguf(path, metadata, tensors, alignment=32):
    """tensors: {name: (ggml type name, raw stored bytes as a numpy array, logical row-major shape)}."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for k, v in metadata.items():
        t, payload = _value(v)
        out += _s(k) + struct.pack("<I", t) + payload
    offset, blobs = 0, []
    for name, (tname, data, shape) in tensors.items():
        dims = list(reversed(shape))
        out += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", GGML_IDS[tname], offset)
        raw = np.ascontiguousarray(data).tobytes()
        assert data.dtype in (np.float32, np.float16, np.uint16, np.uint8), data.dtype
        blobs.append((offset, raw))
        offset = -(-(offset + len(raw)) // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    start = len(out)
    for off, raw in blobs:
        out += b"\0" * (start + off - len(out)) + raw
    with open(path, "wb") as f:
        f.write(bytes(out))


def _bytes_to_unicode():
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_vocab():
    """A byte-level BPE vocabulary: 3 control tokens, 256 bytes, a few merges."""
    b2u = _bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [b2u[b] for b in range(256)]
    types = [3, 3, 3] + [1] * 256
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ Ġ"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
        types.append(1)
    return tokens, types, merges


TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Tools for tiny models (test_serve_tools, test_chat_tools): a Qwen2.5-like template, short (tools in a
# system block, calls and tool results as Qwen2.5 writes them), and two tools with bounded arguments
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% endif %}{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>\n"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}, "hours": {"type": "integer", "minimum": 0,
                                                                                     "maximum": 23}},
        "required": ["zone", "hours"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def tiny_llama(path, *, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=96, ctx=128, wtype="F32",
               tied=True, seed=0, rope_freqs=False, chat_template=TINY_TEMPLATE, arch="llama", head_dim=None,
               window=0, qkv_bias=False, tokenizer=None, extra_tokens=0, metadata=None):
    """Write a random tiny Llama (or, with arch="gemma3", Gemma 3) GGUF; returns its metadata dict.
    Weights are scaled to keep activations sane. arch="qwen2" writes the same model as arch="llama" with
    the same arguments, laid out as llama.cpp's qwen2 GGUFs are (q/k rows and biases in halves order). window: gemma3's sliding window (llama.cpp's pattern:
    every 6th layer global); qkv_bias: Qwen2-style biases on a llama. tokenizer: GGUF tokenizer fields
    (prefix stripped, e.g. tiny_spm_fields()) instead of the byte-level BPE vocabulary; extra_tokens:
    tokens past the embedding's rows (a vocabulary that outgrows its model); metadata: keys to set last,
    over what the tensors imply (a hostile file's claims)."""
    rng = np.random.default_rng(seed)
    if tokenizer is None:
        tokens, types, merges = tiny_vocab()
        tokenizer = {"model": "gpt2", "pre": "smollm", "tokens": tokens, "token_type": types, "merges": merges,
                     "bos_token_id": 1, "eos_token_id": 2, "add_bos_token": False}
    vocab = len(tokenizer["tokens"])
    if extra_tokens:
        extra = [f"<extra_{i}>" for i in range(extra_tokens)]
        tokenizer = {**tokenizer, "tokens": tokenizer["tokens"] + extra,
                     "token_type": tokenizer["token_type"] + [1] * extra_tokens}
    hd = head_dim or dim // n_heads
    a = arch
    meta = {
        "general.architecture": arch, "general.name": f"tiny-{arch}",
        f"{a}.block_count": n_layers, f"{a}.context_length": ctx, f"{a}.embedding_length": dim,
        f"{a}.feed_forward_length": hidden, f"{a}.attention.head_count": n_heads,
        f"{a}.attention.head_count_kv": n_kv_heads, f"{a}.rope.freq_base": 10000.0 if arch == "llama" else 1e6,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.vocab_size": vocab,
        f"{a}.rope.dimension_count": hd, f"{a}.attention.key_length": hd, f"{a}.attention.value_length": hd,
        **{f"tokenizer.ggml.{k}": v for k, v in tokenizer.items()},
    }
    if window:
        meta[f"{a}.attention.sliding_window"] = window
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    meta.update(metadata or {})

    def mat(rows, cols, scale=None):
        x = (rng.standard_normal((rows, cols)) * (scale or 1 / np.sqrt(cols))).astype(np.float32)
        if wtype == "F32":
            return ("F32", x, (rows, cols))
        if wtype == "F16":
            return ("F16", x.astype(np.float16), (rows, cols))
        if wtype == "BF16":
            return ("BF16", (x.view(np.uint32) >> 16).astype(np.uint16), (rows, cols))
        if wtype in RANDOM_BLOCK_TYPES:   # random codes; scales small enough to keep values modest
            block = RANDOM_BLOCK_TYPES[wtype][0]
            raw = random_blocks(rng, wtype, rows * cols // block, scale=0.02 / np.sqrt(cols))
            return (wtype, raw.reshape(rows, -1), (rows, cols))
        return (wtype, quant.quantize(x, wtype.lower()), (rows, cols))

    def norm(n):
        return ("F32", (1 + 0.1 * rng.standard_normal(n)).astype(np.float32), (n,))

    t = {"token_embd.weight": mat(vocab, dim, 1.0), "output_norm.weight": norm(dim)}
    if not tied:
        t["output.weight"] = mat(vocab, dim)
    if rope_freqs:
        t["rope_freqs.weight"] = ("F32", np.linspace(1, 4, hd // 2).astype(np.float32), (hd // 2,))
    for i in range(n_layers):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(dim)
        t[p + "attn_q.weight"] = mat(n_heads * hd, dim)
        t[p + "attn_k.weight"] = mat(n_kv_heads * hd, dim)
        t[p + "attn_v.weight"] = mat(n_kv_heads * hd, dim)
        t[p + "attn_output.weight"] = mat(dim, n_heads * hd)
        t[p + "ffn_norm.weight"] = norm(dim)
        t[p + "ffn_gate.weight"] = mat(hidden, dim)
        t[p + "ffn_up.weight"] = mat(hidden, dim)
        t[p + "ffn_down.weight"] = mat(dim, hidden)
        if qkv_bias:
            for name, rows in (("attn_q", n_heads * hd), ("attn_k", n_kv_heads * hd), ("attn_v", n_kv_heads * hd)):
                t[p + name + ".bias"] = ("F32", (0.3 * rng.standard_normal(rows)).astype(np.float32), (rows,))
        if arch == "qwen2":   # the same model, q/k in Hugging Face's order
            for name, heads in (("attn_q", n_heads), ("attn_k", n_kv_heads)):
                for kind in ("weight", "bias") if qkv_bias else ("weight",):
                    tname, data, shape = t[p + name + "." + kind]
                    t[p + name + "." + kind] = (tname, pairs_to_halves(data, heads), shape)
        if arch == "gemma3":
            t[p + "attn_q_norm.weight"], t[p + "attn_k_norm.weight"] = norm(hd), norm(hd)
            t[p + "post_attention_norm.weight"], t[p + "post_ffw_norm.weight"] = norm(dim), norm(dim)
    write_gguf(path, meta, t)
    return meta


def tiny_models(folder_for, models, ctx=1024):
    """{name: .mgpt path} of tiny_llama(**kw) converted, for models {name: (kw, anything)}; folder_for(name):
    an empty folder for each (tmp_path_factory.mktemp)."""
    from minigpt.convert import convert

    out = {}
    for name, (kw, _) in models.items():
        d = folder_for(name)
        tiny_llama(d / "t.gguf", ctx=ctx, **kw)
        convert(d / "t.gguf", d / "t.mgpt")
        out[name] = d / "t.mgpt"
    return out


def pairs_to_halves(x, n_heads):
    """Rows of a q/k weight or bias (stored bits or values: x [rows, ...]) from GGUF's adjacent-pair RoPE
    order to Hugging Face's halves: per head, the even rows, then the odd ones (transformers' reverse
    permute of GGUF weights)."""
    hd = x.shape[0] // n_heads
    return x.reshape(n_heads, hd // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def tiny_bpe_fields(**overrides):
    """tiny_vocab as the tokenizer fields of a byte-level BPE ("gpt2") vocabulary."""
    tokens, types, merges = tiny_vocab()
    fields = {"model": "gpt2", "pre": "smollm", "tokens": tokens, "token_type": types, "merges": merges,
              "bos_token_id": 1, "eos_token_id": 2, "add_bos_token": False}
    fields.update(overrides)
    return fields


def tiny_spm_fields(**overrides):
    """A SentencePiece ("llama") vocabulary: 5 special tokens, 256 byte tokens, a few scored pieces.

    Pieces and scores: the higher score merges first. "abc" has no piece, so "abc" stops at two.
    """
    special = [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<ctl>", 3), ("<usr>", 4)]
    pieces = [("\u2581", -1.0), ("a", -1.0), ("b", -1.0), ("c", -1.0), ("h", -1.0), ("e", -1.0),
              ("l", -1.0), ("o", -1.0), ("ab", -3.0), ("bc", -2.0), ("aa", -4.0), ("\u2581a", -5.0),
              ("he", -6.0), ("ll", -6.0), ("hell", -7.0), ("hello", -8.0), ("\u2581hello", -9.0),
              ("\u4f60", -10.0), ("\u2581\u2581", -11.0)]
    tokens = [t for t, _ in special] + [f"<0x{b:02X}>" for b in range(256)] + [t for t, _ in pieces]
    fields = {
        "model": "llama", "tokens": tokens,
        "scores": [0.0] * (len(special) + 256) + [s for _, s in pieces],
        "token_type": [k for _, k in special] + [6] * 256 + [1] * len(pieces),
        "bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0,
        "add_bos_token": True, "add_eos_token": False, "add_space_prefix": False,
    }
    fields.update(overrides)
    return fields


# --- hostile copies of good files: a file that passes its checksum and lies inside

def mgpt_with_header(src, dest, change):
    """Copy the .mgpt file `src` to `dest` with its JSON header changed by change(header dict), which edits
    the dict in place (or returns bytes: the raw header to store instead), and the header checksum
    recomputed. When the header outgrows its room the tensors move, their offsets with them."""
    data = Path(src).read_bytes()
    hlen = struct.unpack_from("<Q", data, 8)[0]
    meta = json.loads(data[24:24 + hlen])
    start = at = meta["data_offset"]
    raw = change(meta)
    if raw is None:
        dump = lambda: json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
        raw = dump()
        while 24 + len(raw) > at:   # moving the tensors may lengthen the offsets: until it fits
            move = -(-(24 + len(raw)) // 64) * 64 - at
            at += move
            meta["data_offset"] += move
            meta["file_size"] += move
            for t in meta["tensors"]:
                t["offset"] += move
            raw = dump()
    head = data[:8] + struct.pack("<QI", len(raw), zlib.crc32(raw)) + data[20:24] + raw
    Path(dest).write_bytes(head + bytes(max(0, at - len(head))) + data[start:])
    return dest


def mgchat_with_header(src, dest, change):
    """Copy the saved chat `src` to `dest` with its JSON header changed by change(header dict), which edits
    the dict in place or returns what to store instead (any JSON value, or the raw header's bytes)."""
    from minigpt import chatfile

    h, offset = chatfile.read_header(src)
    raw = change(h)
    raw = h if raw is None else raw
    raw = raw if isinstance(raw, bytes) else json.dumps(raw, ensure_ascii=False).encode()
    head = struct.pack("<8sII", chatfile.MAGIC, chatfile.VERSION, len(raw)) + raw
    Path(dest).write_bytes(head + bytes(-len(head) % 64) + Path(src).read_bytes()[offset:])
    return dest
