"""Make a Hugging Face model folder out of a llama-architecture GGUF (e.g. SmolLM2), for testing
`minigpt convert DIR` on a real model without downloading its Hugging Face checkpoint.

    python tools/make_hf_folder.py SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR [--shards N] [--dtype f16]

Runs with minigpt's own dependencies (it reads the GGUF with minigpt's reader). It writes:
- safetensors with Hugging Face tensor names, each weight dequantized to float32 and stored as
  `--dtype` (1-D norm weights stay float32, as the GGUF holds them, so nothing is rounded that the
  GGUF-to-.mgpt conversion keeps exact); q/k rows put back into Hugging Face's RoPE order (the inverse
  of the permutation convert_hf_to_gguf.py applies); one file, or `--shards N` files plus
  model.safetensors.index.json;
- config.json (LlamaForCausalLM) from the GGUF's hyperparameters;
- tokenizer.json rebuilt from the GGUF vocabulary as SmolLM2's own is written: a byte-level BPE model
  (vocab, merges), a Digits + ByteLevel pre-tokenizer, control and user-defined tokens as added
  tokens; and tokenizer_config.json with the special tokens and the chat template.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt.convert.convert import decode_tensor, tokenizer_fields  # noqa: E402
from minigpt.convert.gguf import GGUFFile  # noqa: E402
from minigpt.convert.hf import qk_rows  # noqa: E402
from minigpt.convert.names import map_gguf_name  # noqa: E402
from minigpt.model.llama import HF_NAMES as HF_LLAMA  # noqa: E402

_DTYPES = {"f32": ("F32", np.float32), "f16": ("F16", np.float16), "bf16": ("BF16", None)}
_TO_HF = {v: k for k, v in HF_LLAMA.items()}     # minigpt name pattern -> HF name pattern


def hf_name(gguf_name):
    name = map_gguf_name(gguf_name)
    parts = name.split(".")
    if parts[0] == "layers":
        return _TO_HF["layers.{i}." + parts[2]].format(i=int(parts[1]))
    return _TO_HF[name]


def to_bf16(x):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as torch does."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def hf_tensor(g, t, dtype):
    """(HF name, safetensors dtype, array) of one GGUF tensor."""
    x = decode_tensor(t)
    kind = map_gguf_name(t.name).rsplit(".", 1)[-1]
    if kind in ("wq", "wk"):
        heads = g.field("llama.attention.head_count") if kind == "wq" else g.field("llama.attention.head_count_kv")
        x = x[np.argsort(qk_rows(x.shape[0], heads))]     # GGUF order -> HF order
    if x.ndim == 1 or dtype == "f32":
        return hf_name(t.name), "F32", x
    name, np_type = _DTYPES[dtype]
    return hf_name(t.name), name, (to_bf16(x) if np_type is None else x.astype(np_type))


def write_safetensors(path, tensors):
    """tensors: [(name, dtype name, array)], written in order after a JSON header padded to 8 bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, x in tensors:
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, _, x in tensors:
            f.write(np.ascontiguousarray(x).tobytes())


def write_weights(g, out, dtype, shards):
    tensors = [hf_tensor(g, t, dtype) for t in g.tensors.values()]
    if shards == 1:
        write_safetensors(out / "model.safetensors", tensors)
        return
    total = sum(x.nbytes for *_, x in tensors)
    groups, size = [[]], 0
    for item in tensors:            # cut where the running size passes each 1/shards of the total
        if size >= total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append(item)
        size += item[2].nbytes
    weight_map = {}
    for k, group in enumerate(groups, 1):
        name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(out / name, group)
        weight_map.update({n: name for n, _, _ in group})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_config(g, out, dtype):
    f = lambda k, d=None: g.field(f"llama.{k}", default=d)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": f("embedding_length"), "num_hidden_layers": f("block_count"),
        "num_attention_heads": f("attention.head_count"), "num_key_value_heads": f("attention.head_count_kv"),
        "intermediate_size": f("feed_forward_length"), "vocab_size": len(g.field("tokenizer.ggml.tokens")),
        "max_position_embeddings": f("context_length"), "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base", 10000.0), "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.field("tokenizer.ggml.bos_token_id"), "eos_token_id": g.field("tokenizer.ggml.eos_token_id"),
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))


def write_tokenizer(g, out):
    fields = tokenizer_fields(g)
    if fields.get("model") != "gpt2" or fields.get("pre") != "smollm":
        raise SystemExit(f"{g.path}: this tool writes SmolLM's tokenizer.json (gpt2 model, smollm pre-tokenizer)")
    tokens, types = fields["tokens"], fields["token_type"]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == 3} for i, t in enumerate(tokens) if types[i] in (3, 4)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                byte_level]},
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in fields["merges"]]},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    special = lambda key: tokens[fields[key]] if key in fields else None
    config = {
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "model_max_length": g.field("llama.context_length"),
        "bos_token": special("bos_token_id"), "eos_token": special("eos_token_id"),
        "unk_token": special("unknown_token_id"), "pad_token": special("padding_token_id"),
        "tokenizer_class": "GPT2Tokenizer", "chat_template": g.field("tokenizer.chat_template"),
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))


def make_folder(gguf, out, shards=1, dtype="f16"):
    """Write the Hugging Face folder of the GGUF file `gguf` into `out` (created if needed)."""
    g = GGUFFile(gguf)
    if g.field("general.architecture") != "llama":
        raise SystemExit(f"{gguf}: only llama-architecture GGUFs are supported")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(g, out, dtype, shards)
    write_config(g, out, dtype)
    write_tokenizer(g, out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf")
    p.add_argument("out")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="f16")
    a = p.parse_args()
    print(make_folder(a.gguf, a.out, a.shards, a.dtype))


if __name__ == "__main__":
    main()
