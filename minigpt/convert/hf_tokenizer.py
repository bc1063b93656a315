"""A Hugging Face folder's tokenizer -> the GGUF-style fields minigpt.tokenizer builds from.

minigpt tokenizes as llama.cpp does, from the `tokenizer.ggml.*` fields of a GGUF. A folder's
tokenizer is translated into those fields the way llama.cpp's convert_hf_to_gguf.py does:
- tokenizer.json with a byte-level BPE model -> model "gpt2": tokens, token types, merges and a `pre`
  name. llama.cpp recognizes the pre-tokenizer by hashing the tokens of a fixed text; here its
  config is recognized instead: ByteLevel alone (GPT-2), Digits + ByteLevel (SmolLM, StarCoder), or
  a Split with the Llama 3 or Qwen2 regex + ByteLevel. Anything else is an error naming it.
- tokenizer.model (SentencePiece, BPE) -> model "llama": pieces, scores and types, read straight
  from its protobuf (the few fields needed, see _spm_model), when no byte-level tokenizer.json applies.
Special ids and add_bos come from tokenizer_config.json, then config.json; added tokens are control
tokens when marked special, else user-defined (matched by text before pre-tokenizing).
"""

import struct
from pathlib import Path

from ..errors import CLIP_ARG, ConvertError, clip
from .hf import read_json

# token types (GGUF tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# the Split regexes of tokenizer.json files, as transformers writes them
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def tokenizer_fields(folder, vocab_size: int, hp: dict) -> dict:
    """The tokenizer fields of a folder (tokenizer.json preferred, else tokenizer.model)."""
    folder = Path(folder)
    tj = read_json(folder / "tokenizer.json", required=False)
    tc = read_json(folder / "tokenizer_config.json", required=False)
    model = _node(tj.get("model"), "tokenizer.json: model")
    bpe = model.get("type") == "BPE" and not model.get("byte_fallback")
    has_spm = (folder / "tokenizer.model").is_file()
    if bpe and (_byte_level(tj) or not has_spm):
        fields = _bpe_fields(tj, tc, vocab_size, folder)    # errors name an unsupported pre-tokenizer
    elif has_spm:
        fields = _spm_fields(folder / "tokenizer.model", tj, tc, vocab_size)
    elif tj:
        raise ConvertError(f"{folder}/tokenizer.json: a {clip(model.get('type'), CLIP_ARG)} model"
                           f"{' with byte fallback' if model.get('byte_fallback') else ''} is not supported "
                           "without tokenizer.model (minigpt reads byte-level BPE tokenizer.json files)")
    else:
        raise ConvertError(f"{folder}: no tokenizer.json or tokenizer.model")
    _special_ids(fields, tj, tc, hp, read_json(folder / "generation_config.json", required=False))
    return fields


def chat_template(folder):
    """chat_template.jinja, else tokenizer_config.json's chat_template (a string, or named templates:
    the one named 'default'), else None."""
    folder = Path(folder)
    path = folder / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None
    t = read_json(folder / "tokenizer_config.json", required=False).get("chat_template")
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict) and isinstance(d.get("name"), str)}
        t = named.get("default")
    return t if isinstance(t, str) else None


# --- tokenizer.json (byte-level BPE)

def _byte_level(tj) -> bool:
    """Whether a tokenizer.json pre-tokenizes with ByteLevel (alone or as a step of a Sequence)."""
    return any(s.get("type") == "ByteLevel" for s in _steps(tj.get("pre_tokenizer"), "pretokenizers"))


def _bpe_fields(tj, tc, vocab_size, folder) -> dict:
    model = tj["model"]   # a dict: tokenizer_fields checked it
    where = f"{folder}/tokenizer.json"
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise ConvertError(f"{where}: BPE option {key} = {clip(model[key], CLIP_ARG)} is not supported")
    _check_normalizer(tj.get("normalizer"), where)
    pre = pre_name(tj.get("pre_tokenizer"), bool(model.get("ignore_merges")),
                   bool(tc.get("clean_up_tokenization_spaces", False)), where)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(map(_is_id, vocab.values())):
        raise ConvertError(f"{where}: model.vocab is not a token -> id object")
    added = _added_tokens(tj, where)
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    n = max(vocab_size, 0)
    if by_id and max(by_id) >= n:
        raise ConvertError(f"{where}: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")         # the model's embedding rows past the tokenizer's vocabulary
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") or _looks_special(by_id[i]) else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = model.get("merges", [])
    if not isinstance(merges, list):
        raise ConvertError(f"{where}: model.merges is not a list, got {clip(merges, CLIP_ARG)}")
    merges = [m if isinstance(m, str) else " ".join(m) if _is_pair(m) else _bad_merge(m, where) for m in merges]
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": merges}


def _check_normalizer(node, where):
    """Only no normalizer, or NFC (which llama.cpp does not apply either: Qwen2 has it)."""
    if node is None:
        return
    kinds = [n.get("type") for n in _steps(node, "normalizers", where)]
    if any(k != "NFC" for k in kinds):
        raise ConvertError(f"{where}: normalizer {'+'.join(map(str, kinds))[:CLIP_ARG]} is not supported")


def pre_name(node, ignore_merges: bool, clean_spaces: bool, where) -> str:
    """The llama.cpp `pre` name of a tokenizer.json pre_tokenizer config (minigpt.tokenizer.pretokenize)."""
    steps = _steps(node, "pretokenizers", where)
    desc = ("+".join(str(s.get("type")) for s in steps) or "none")[:CLIP_ARG]
    *first, last = steps or [{}]
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        raise ConvertError(f"{where}: pre-tokenizer {desc} is not supported (minigpt reads byte-level BPE: "
                           "ByteLevel without add_prefix_space, after Digits or the Llama 3 / Qwen2 Split)")
    regex_in_byte_level = last.get("use_regex", True)
    if not first and regex_in_byte_level:
        return "gpt-2"
    if len(first) == 1 and regex_in_byte_level and first[0].get("type") == "Digits" \
            and first[0].get("individual_digits"):
        return "starcoder" if clean_spaces else "smollm"
    if len(first) == 1 and not regex_in_byte_level and first[0].get("type") == "Split" \
            and first[0].get("behavior") == "Isolated" and not first[0].get("invert"):
        pattern = _node(first[0].get("pattern"), f"{where}: the Split's pattern").get("Regex")
        if pattern == LLAMA3_SPLIT:
            return "llama-bpe" if ignore_merges else "smaug-bpe"
        if pattern == QWEN2_SPLIT:
            return "stablelm2" if clean_spaces else "qwen2"
        raise ConvertError(f"{where}: pre-tokenizer Split regex {pattern!r:.80} is not one minigpt knows "
                           "(Llama 3, Qwen2)")
    raise ConvertError(f"{where}: pre-tokenizer {desc} is not supported")


def _looks_special(text):
    """llama.cpp's does_token_look_special: added tokens spelled like control tokens are control tokens."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


# --- the shapes a tokenizer.json may have (anyone can write one)

def _node(value, where) -> dict:
    """A tokenizer.json node: an object, or absent ({})."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConvertError(f"{where} is not an object, got {clip(value, CLIP_ARG)}")
    return value


def _steps(node, key, where="tokenizer.json") -> list:
    """The steps of a pre-tokenizer, normalizer or post-processor node: those of a Sequence, else the
    node itself; none when absent."""
    node = _node(node, where)
    if node.get("type") != "Sequence":
        return [node] if node else []
    steps = node.get(key) or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ConvertError(f"{where}: {key} is not a list of objects, got {clip(steps, CLIP_ARG)}")
    return steps


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_pair(m) -> bool:
    return isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)


def _bad_merge(m, where):
    raise ConvertError(f"{where}: a merge must be \"a b\" or [\"a\", \"b\"], got {clip(m, CLIP_ARG)}")


def _added_tokens(tj, where) -> dict:
    """tokenizer.json's added_tokens by id: each an object with an id and its text."""
    tokens = tj.get("added_tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(a, dict) and _is_id(a.get("id"))
                                               and isinstance(a.get("content"), str) for a in tokens):
        raise ConvertError(f"{where}: added_tokens must be a list of {{\"id\": n, \"content\": text, ...}}, "
                           f"got {clip(tokens, CLIP_ARG)}")
    return {a["id"]: a for a in tokens}


# --- special ids

def _special_ids(fields, tj, tc, hp, gen):
    """bos/eos/unk/... ids and add_bos/add_eos, as gguf-py's SpecialVocab finds them: the token named in
    tokenizer_config.json, else config.json's (then generation_config.json's) `<kind>_token_id`."""
    ids = {t: i for i, t in enumerate(fields["tokens"])}
    for kind in _SPECIAL_KINDS:
        entry = tc.get(f"{kind}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        tid = ids.get(text) if isinstance(text, str) else None
        for source in (hp, gen):
            if tid is None:
                value = source.get(f"{kind}_token_id")
                value = value[0] if isinstance(value, list) and value else value
                tid = value if isinstance(value, int) and 0 <= value < len(fields["tokens"]) else None
        if tid is not None:
            fields[{"unk": "unknown", "pad": "padding"}.get(kind, kind) + "_token_id"] = tid
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tc.get(key), bool):
            fields[key] = tc[key]
    if "add_bos_token" not in fields:
        # a TemplateProcessing post-processor (alone or in a Sequence) whose sequences start with BOS
        post = tj.get("post_processor")
        steps = _steps(post, "processors", "tokenizer.json: post_processor")
        template = next((p for p in steps if p.get("type") == "TemplateProcessing"), None)
        bos = fields.get("bos_token_id")
        if template is not None and bos is not None:
            single = template.get("single")
            first = single[0] if isinstance(single, list) and single and isinstance(single[0], dict) else {}
            special = first.get("SpecialToken")
            fields["add_bos_token"] = isinstance(special, dict) and special.get("id") == fields["tokens"][bos]


# --- tokenizer.model (SentencePiece)

def _spm_fields(path, tj, tc, vocab_size) -> dict:
    pieces, add_dummy_prefix = _spm_model(path)
    if len(pieces) > vocab_size:
        raise ConvertError(f"{path}: {len(pieces)} pieces for the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [UNUSED] * vocab_size
    for i, (piece, score, kind) in enumerate(pieces):
        tokens[i], scores[i], types[i] = piece, score, kind
    # added tokens: llama.cpp reads tokenizer_config's added_tokens_decoder; tokenizer.json lists the same
    decoder = tc.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(isinstance(i, str) and i.isdigit() and isinstance(a, dict)
                                                for i, a in decoder.items()):
        raise ConvertError(f"{path.parent}/tokenizer_config.json: added_tokens_decoder is not an id -> token "
                           f"object, got {clip(decoder, CLIP_ARG)}")
    added = {int(i): a for i, a in decoder.items()}
    added.update(_added_tokens(tj, f"{path.parent}/tokenizer.json"))
    for i, a in sorted(added.items()):
        if not 0 <= i < vocab_size or not isinstance(a.get("content"), str):
            continue
        text = a["content"]
        if a.get("special") or _looks_special(text):
            types[i] = CONTROL
        else:
            text, types[i] = text.replace("\u2581", " "), USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    return {"model": "llama", "pre": "default", "tokens": tokens, "scores": scores, "token_type": types,
            "add_space_prefix": add_dummy_prefix}


def _spm_model(path):
    """([(piece, score, type)], add_dummy_prefix) of a SentencePiece model file.

    The file is a protobuf ModelProto: field 1 (repeated) SentencePiece {1 piece, 2 score (float),
    3 type (enum, default NORMAL)}, field 2 TrainerSpec {3 model_type (1 unigram, 2 BPE; default
    unigram)}, field 3 NormalizerSpec {1 name, 3 add_dummy_prefix (default true), 4
    remove_extra_whitespaces (default true)}. minigpt's SentencePiece tokenizer merges pieces by
    score (BPE) and does not normalize text, so only BPE models with the identity normalization and
    whitespace kept as is are accepted.
    """
    try:
        data = Path(path).read_bytes()
        top = _proto_fields(data)
        pieces = []
        for raw in top.get(1, []):
            p = _proto_fields(raw)
            piece = p[1][0].decode("utf-8")
            score = _f32(p[2][0]) if 2 in p else 0.0
            pieces.append((piece, score, p.get(3, [NORMAL])[0]))
        trainer = _proto_fields(top[2][0]) if 2 in top else {}
        norm = _proto_fields(top[3][0]) if 3 in top else {}
    except (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError) as e:   # a field of another wire type
        raise ConvertError(f"{path}: not a SentencePiece model ({e.__class__.__name__}: {e})") from None
    if not pieces:
        raise ConvertError(f"{path}: not a SentencePiece model (no pieces)")
    if trainer.get(3, [1])[0] != 2:
        raise ConvertError(f"{path}: only SentencePiece BPE models are supported (model_type {trainer.get(3, [1])[0]})")
    name = norm.get(1, [b"identity"])[0].decode("utf-8", "replace")
    if name not in ("identity", "") or norm.get(4, [1])[0]:
        raise ConvertError(f"{path}: SentencePiece normalization {name[:CLIP_ARG]!r} (or removing extra whitespace) "
                           "is not supported")
    if any(kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) for _, _, kind in pieces):
        raise ConvertError(f"{path}: unknown SentencePiece piece type")
    return pieces, bool(norm.get(3, [1])[0])


def _proto_fields(data: bytes) -> dict:
    """{field number: [values]} of one protobuf message: varints as int, length-delimited as bytes,
    32-bit values as 4 bytes (64-bit as 8). Raises ValueError on a malformed message."""
    out, pos, n = {}, 0, len(data)
    while pos < n:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > n:
            raise ValueError("truncated message")
        out.setdefault(field, []).append(value)
    return out


def _varint(data, pos):
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _f32(raw: bytes) -> float:
    if len(raw) != 4:
        raise ValueError("score is not a 32-bit float")
    return struct.unpack("<f", raw)[0]
