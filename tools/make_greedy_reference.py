"""Greedy continuations of Hugging Face transformers (f32, the GGUF dequantized) for a few prompts.

minigpt's f32 path must reproduce them token for token (tests/test_smollm2.py). The prompts' ids
come from llama.cpp's tokenizer, stored in tests/fixtures/smollm2_tokens.json's corpus tool run; to
stay independent of minigpt this script tokenizes with llama-cpp-python in a first stage:

    $MINIGPT_LLAMA_VENV/bin/python tools/make_greedy_reference.py ids   # prompts -> ids (llama.cpp)
    $MINIGPT_HF_VENV/bin/python    tools/make_greedy_reference.py hf    # ids -> greedy ids (transformers)

Output: tests/fixtures/smollm2_greedy_hf.json: [{"prompt", "ids", "greedy"}], at most 40 new tokens,
stopping at EOS (id 2, <|im_end|>).
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2_greedy_hf.json")
MODEL = os.path.expanduser("~/.cache/minigpt/gguf/SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
    "<|im_start|>user\n你好，请介绍一下北京。<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
]
MAX_NEW, EOS = 40, 2


def stage_ids():
    import llama_cpp

    m = llama_cpp.Llama(model_path=MODEL, vocab_only=True, verbose=False)
    rows = [{"prompt": p, "ids": m.tokenize(p.encode(), add_bos=False, special=True)} for p in PROMPTS]
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)


def stage_hf():
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL),
                                             dtype=torch.float32)
    with open(OUT, encoding="utf-8") as f:
        rows = json.load(f)
    for row in rows:
        x, gen = torch.tensor([row["ids"]]), []
        with torch.no_grad():
            for _ in range(MAX_NEW):
                t = int(m(x).logits[0, -1].argmax())
                if t == EOS:
                    break
                gen.append(t)
                x = torch.cat([x, torch.tensor([[t]])], 1)
        row["greedy"] = gen
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    {"ids": stage_ids, "hf": stage_hf}[sys.argv[1]]()
