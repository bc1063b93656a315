"""Names people can read ("Qwen2.5 Coder 0.5B Instruct"), built from what a checkpoint says about itself,
and what a name tells about a model: whether it was tuned to chat.

llama.cpp's converter writes general.name by title-casing a folder name ("Smollm2 135M 8k Lc100K Mix1
Ep2"), and general.basename / size_label / finetune beside it. The basename and size say what the model
is; of the finetune, only plain words say anything (Instruct, Chat, IT): tags of a training run ("8k",
"lc100k", "ep2") and of a quantization ("AWQ") are left out.
"""

import re

# how a model was quantized, not what it is
QUANT_TAGS = {"awq", "gptq", "gguf", "ggml", "int4", "int8", "fp8", "bnb", "exl2", "mlx"}
SPELLING = {"it": "IT", "sft": "SFT", "dpo": "DPO", "rlhf": "RLHF", "orpo": "ORPO"}
# a word in a model's name that says it was tuned to follow instructions or chat
INSTRUCT_MARKERS = {"instruct", "chat", "it", "sft", "dpo", "rlhf", "orpo", "assistant"}
MAX_CHARS = 80   # a name on a banner line; a file may hold a 100 KB one

_SPLIT = re.compile(r"[-_\s]+")


def _words(text):
    return [w for w in _SPLIT.split(text) if w] if isinstance(text, str) else []


def _spell(word):
    """'gemma' -> 'Gemma', 'it' -> 'IT'; a word with capitals of its own ('SmolLM2', '0.5B') stays."""
    return SPELLING.get(word.lower()) or (word[0].upper() + word[1:] if word.islower() else word)


def _plain(word):
    """A finetune word worth showing: letters only, not a quantization tag."""
    return word.isalpha() and word.lower() not in QUANT_TAGS


def clean(name):
    """`name` fit for one line of a terminal: control characters dropped, at most MAX_CHARS."""
    s = " ".join("".join(c if c.isprintable() else " " for c in name).split()) if isinstance(name, str) else ""
    return s if len(s) <= MAX_CHARS else s[:MAX_CHARS - 1] + "…"


def from_gguf(general):
    """A readable name from a GGUF's general.* keys ({'general.basename': ..., ...}): basename, size
    label and the plain words of the finetune; else general.name; else ''."""
    base = _words(general.get("general.basename"))
    if base:
        size = general.get("general.size_label")
        tune = [w for w in _words(general.get("general.finetune")) if _plain(w)]
        return clean(" ".join([*map(_spell, base), *([size] if isinstance(size, str) else []), *map(_spell, tune)]))
    return clean(general.get("general.name"))


def from_folder(name):
    """A readable name from a Hugging Face folder's name: 'SmolLM2-135M-Instruct' -> 'SmolLM2 135M Instruct'."""
    return clean(" ".join(_spell(w) for w in _words(name) if w.lower() not in QUANT_TAGS))


def says_instruct(*names):
    """Whether any of `names` has a word saying the model was tuned to chat (Instruct, Chat, IT, ...)."""
    return any(w.lower() in INSTRUCT_MARKERS for n in names for w in _words(n))
