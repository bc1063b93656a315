"""Tiny random Hugging Face checkpoints, one per architecture `minigpt convert DIR` reads, with
transformers' own logits and the tokenizers' own ids as the reference (tests/test_hf.py).

    $MINIGPT_HF_VENV/bin/python tools/make_hf_fixtures.py [OUT_DIR]     # default: tests/fixtures/hf

Runs in a virtual environment with torch, transformers, tokenizers and sentencepiece; it does not
import minigpt. Writes OUT_DIR/<name>/ for each model below: the folder transformers saves
(config.json, safetensors, tokenizer files) plus reference.npz (`ids` [n_seq, n_tok] and transformers'
float32 `logits` [n_seq, n_tok, vocab], eager attention) and tokens.json ({"plain": [[text, ids]],
"special": [[text, ids]]}: ids from the folder's own tokenizer library, without BOS).

| name | architecture | weights | tokenizer | what it covers |
| llama | LlamaForCausalLM | bf16, 2 shards | tokenizer.json, Llama 3 Split | GQA, untied head, q/k permutation, sharding |
| llama3rope | LlamaForCausalLM | f16 | tokenizer.json, Llama 3 | rope_type llama3 (rope_freqs), tied head |
| mistral | MistralForCausalLM | f16 | tokenizer.model (dummy prefix) | sliding window 6 < 20 tokens |
| qwen2 | Qwen2ForCausalLM | f32 | tokenizer.json, Qwen2 Split + NFC | q/k/v biases, tied head |
| gemma3 | Gemma3ForCausalLM | bf16 | tokenizer.model (no dummy prefix) | local/global layers, head_dim != dim/heads, query_pre_attn_scalar, norms + 1 |

Random weights are drawn larger than transformers' init (std 0.08) and norm weights around their
neutral value, so every part of the forward pass moves the logits.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

VOCAB = 320
N_SEQ, N_TOK = 2, 20
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

CORPUS = """The quick brown fox jumps over the lazy dog. A small model reads the same text again and again,
and the tokenizer learns which pieces of words come back: the, and, ing, tion, er, re, in, on, at.
def forward(x, weights):
    return x @ weights.T  # numbers 1234567890 and 3.14159
Attention is all you need; the cat sat on the mat while the dog ran in the park. It's what they've said.
""" * 3
TEXTS = ["Hello world", "The cat sat on the mat.", "  two  spaces and\ttabs\n\nnew lines", "x = 12345 + 678",
         "It's the dog's bone, isn't it?", "你好，世界", "emoji 🙂 ok", "def f(a, b):\n    return a*b"]


def _seed(seed):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# --- tokenizers

def bpe_tokenizer(split, specials, normalizer=None, ignore_merges=False, bos=None):
    """A byte-level BPE tokenizer.json trained on CORPUS, the way Llama 3 / Qwen2 write theirs."""
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 16, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def spm_tokenizer(out, add_dummy_prefix, bos, eos, user_defined=()):
    """A SentencePiece BPE tokenizer.model with byte fallback trained on CORPUS (Gemma's ids: pad 0,
    eos 1, bos 2, unk 3)."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)           # the model file records model_prefix: a relative one keeps it reproducible
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS.splitlines()), model_prefix="m", vocab_size=VOCAB,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, pad_id=0, eos_id=1, bos_id=2,
            unk_id=3, bos_piece=bos, eos_piece=eos, user_defined_symbols=list(user_defined), hard_vocab_limit=False,
            minloglevel=2, num_threads=1)
        os.chdir(cwd)
        (out / "tokenizer.model").write_bytes(Path(f"{tmp}/m.model").read_bytes())
    return spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))


def bpe_ids(tok, specials_text):
    plain = [[t, tok.encode(t, add_special_tokens=False).ids] for t in TEXTS]
    special = [[t, tok.encode(t, add_special_tokens=False).ids] for t in specials_text]
    return {"plain": plain, "special": special}


# --- models

def randomize(model, rng, norm_center):
    """Weights ~ N(0, 0.08); 1-D norm weights ~ norm_center + N(0, 0.2); biases ~ N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(rng.normal(0, 0.08, p.shape).astype(np.float32)))
            elif name.endswith("bias"):
                p.copy_(torch.from_numpy(rng.normal(0, 0.1, p.shape).astype(np.float32)))
            else:
                p.copy_(torch.from_numpy((norm_center + rng.normal(0, 0.2, p.shape)).astype(np.float32)))


def save(model, out, dtype, rng, shard_size=None):
    """Save `model` in `dtype`; record float32 logits of the weights as saved (rounded to dtype)."""
    with torch.no_grad():                      # the reference computes with the rounded weights; only
        for p in model.parameters():           # parameters: model.to() would also round RoPE's inv_freq
            p.copy_(p.to(dtype).to(torch.float32))
    model.eval()
    ids = rng.integers(0, model.config.vocab_size, size=(N_SEQ, N_TOK))
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits.numpy().astype(np.float32)
    kw = {"max_shard_size": shard_size} if shard_size else {}
    model.to(dtype).save_pretrained(out, safe_serialization=True, **kw)
    np.savez_compressed(out / "reference.npz", ids=ids.astype(np.int32), logits=logits)


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1))


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_llama(out, rope_llama3=False):
    rng = _seed(1 if not rope_llama3 else 2)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = bpe_tokenizer(LLAMA3_SPLIT, specials, ignore_merges=True, bos="<|begin_of_text|>")
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 10000.0} if rope_llama3 else \
        {"rope_type": "default", "rope_theta": 50000.0}
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=rope_llama3,
                         bos_token_id=0, eos_token_id=1, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    randomize(model, rng, 1.0)
    save(model, out, torch.float16 if rope_llama3 else torch.bfloat16, rng,
         shard_size=None if rope_llama3 else "150KB")
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "{{ 1 }}"}]})
    write_json(out / "tokens.json", bpe_ids(tok, ["<|begin_of_text|>Hi<|eot_id|>", "a<|start_header_id|>b"]))


def make_mistral(out):
    rng = _seed(3)
    sp = spm_tokenizer(out, add_dummy_prefix=True, bos="<s>", eos="</s>")
    config = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                           rms_norm_eps=1e-5, sliding_window=6, tie_word_embeddings=False,
                           bos_token_id=2, eos_token_id=1, attn_implementation="eager")
    model = MistralForCausalLM(config)
    randomize(model, rng, 1.0)
    save(model, out, torch.float16, rng)
    write_json(out / "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
                                               "chat_template": CHATML})
    write_json(out / "tokens.json", {"plain": [[t, sp.encode(t)] for t in TEXTS], "special": []})


def make_qwen2(out):
    rng = _seed(4)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = bpe_tokenizer(QWEN2_SPLIT, specials, normalizer=normalizers.NFC())
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         tie_word_embeddings=True, use_sliding_window=False, bos_token_id=0, eos_token_id=2,
                         attn_implementation="eager")
    model = Qwen2ForCausalLM(config)
    randomize(model, rng, 1.0)
    save(model, out, torch.float32, rng)
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                               "clean_up_tokenization_spaces": False, "chat_template": CHATML})
    write_json(out / "tokens.json", bpe_ids(tok, ["<|im_start|>user\nHi<|im_end|>", "x<|endoftext|>"]))


def make_gemma3(out):
    rng = _seed(5)
    sp = spm_tokenizer(out, add_dummy_prefix=False, bos="<bos>", eos="<eos>",
                       user_defined=["<start_of_turn>", "<end_of_turn>"])
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                              rms_norm_eps=1e-6, sliding_window=6, query_pre_attn_scalar=24,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                              pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager")
    model = Gemma3ForCausalLM(config)
    randomize(model, rng, 0.0)                 # Gemma norms multiply by 1 + w
    save(model, out, torch.bfloat16, rng)
    write_json(out / "tokenizer_config.json", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                               "add_bos_token": True})
    (out / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    # <end_of_turn> ends generation, so llama.cpp (and minigpt) make it a control token: matched with special
    turns = ["<start_of_turn>user\nHi<end_of_turn>"]
    write_json(out / "tokens.json", {"plain": [[t, sp.encode(t)] for t in TEXTS],
                                     "special": [[t, sp.encode(t)] for t in turns]})


MAKERS = {"llama": make_llama, "llama3rope": lambda out: make_llama(out, rope_llama3=True),
          "mistral": make_mistral, "qwen2": make_qwen2, "gemma3": make_gemma3}


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/fixtures/hf")
    torch.set_num_threads(1)
    for name, make in MAKERS.items():
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            old.unlink()
        make(out)
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"{out}: {size / 1024:.0f} KiB, {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main()
