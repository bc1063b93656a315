"""Byte-level BPE tokenizer: unit tests on a tiny vocab, then SmolLM2 against llama.cpp's own output
(tests/fixtures/smollm2_tokens.json, written by tools/make_tokenizer_fixtures.py)."""

import json
from pathlib import Path

import pytest

from fidelity import pieces_sha256
from minigpt.errors import TokenizerError
from minigpt.tokenizer import from_fields
from minigpt.tokenizer.pretokenize import BYTE_TO_CHAR, byte_encode, pre_tokenizer, split

FIXTURES = Path(__file__).parent / "fixtures"
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4

# --- a tiny vocab: 4 special tokens, the 256 byte characters, a few merges

SPECIAL = [("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
           ("<user>", USER_DEFINED)]
MERGES = ["b c", "a b", "a a", "h e", "l l", "he ll", "hell o",
          "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "q u", BYTE_TO_CHAR[0xE4] + " " + BYTE_TO_CHAR[0xBD]]


def tiny_fields(**overrides):
    tokens = [t for t, _ in SPECIAL] + list(BYTE_TO_CHAR)
    merged = [m.replace(" ", "") for m in MERGES if m != "q u"]    # "qu" is a merge without a token
    tokens += [t for t in merged if t not in tokens]
    fields = {"model": "gpt2", "pre": "smollm", "tokens": tokens,
              "token_type": [k for _, k in SPECIAL] + [NORMAL] * (len(tokens) - len(SPECIAL)),
              "merges": MERGES, "bos_token_id": 1, "eos_token_id": 2}
    fields.update(overrides)
    return fields


@pytest.fixture(scope="module")
def tiny():
    return from_fields(tiny_fields())


def texts(tok, ids):
    return [tok.token_bytes(i).decode("utf-8", "replace") for i in ids]


def test_merges_apply_by_rank_leftmost_first(tiny):
    assert texts(tiny, tiny.encode("abc")) == ["a", "bc"]        # "b c" outranks "a b"
    assert texts(tiny, tiny.encode("aaa")) == ["aa", "a"]        # equal ranks: leftmost first
    assert texts(tiny, tiny.encode("hello world")) == ["hello", " world"]
    swapped = from_fields(tiny_fields(merges=["a b", "b c"]))
    assert texts(swapped, swapped.encode("abc")) == ["ab", "c"]


def test_merge_without_token_falls_back_to_bytes(tiny):
    assert texts(tiny, tiny.encode("qu")) == ["q", "u"]


def test_any_bytes_round_trip_through_the_byte_map(tiny):
    text = "\x00\x1f\x7f é ß 你好 😀 \u200d\U0010ffff\r\n\t"
    ids = tiny.encode(text)
    assert tiny.decode(ids) == text
    assert b"".join(tiny.token_bytes(i) for i in ids) == text.encode()
    assert all(i >= len(SPECIAL) for i in ids)


def test_special_parsing_on_and_off(tiny):
    text = "<|im_start|>user<|im_end|><user>"
    assert tiny.encode(text, special=True)[:1] == [1]
    assert tiny.encode(text, special=True)[-2:] == [2, 3]
    plain = tiny.encode(text)
    assert 1 not in plain and 2 not in plain and plain[-1] == 3   # user-defined tokens always split
    assert tiny.decode(plain) == text
    assert tiny.decode(tiny.encode(text, special=True)) == "user<user>"   # control renders as ''
    assert tiny.token_bytes(0) == b"" and tiny.token_bytes(3) == b"<user>"
    assert tiny.encode("hi", add_bos=True)[0] == tiny.bos_id == 1


def test_stream_decoder_never_splits_a_character(tiny):
    ids = [b + len(SPECIAL) for b in "你😀!".encode()]     # one token per byte
    stream, out = tiny.stream(), []
    for i in ids:
        out.append(stream.push(i))
    assert out == ["", "", "你", "", "", "", "😀", "!"]
    assert stream.flush() == ""
    merged = tiny.encode("你")                       # E4BD merged, then A0
    assert [tiny.token_bytes(i) for i in merged] == [b"\xe4\xbd", b"\xa0"]
    stream = tiny.stream()
    assert [stream.push(i) for i in merged] == ["", "你"]
    assert stream.push(ids[3]) == "" and stream.flush() == "\ufffd"   # an unfinished emoji at the end


def test_end_of_generation_and_defaults(tiny):
    assert tiny.eog_ids == {0, 2}       # <|endoftext|> and <|im_end|> by text, eos by id
    assert tiny.add_bos is False and tiny.n_vocab == len(tiny_fields()["tokens"])
    assert from_fields(tiny_fields(pre="llama-bpe")).add_bos is True
    assert from_fields(tiny_fields(pre="llama-bpe", add_bos_token=False)).add_bos is False


def test_clean_spaces_only_where_llama_cpp_applies_them():
    ids = from_fields(tiny_fields(pre="gpt-2")).encode("a , b ' c 's")
    assert from_fields(tiny_fields(pre="gpt-2")).decode(ids) == "a, b'c's"
    assert from_fields(tiny_fields(pre="smollm")).decode(ids) == "a , b ' c 's"


@pytest.mark.parametrize("pre, text, pieces", [
    ("smollm", "in 2024 it's", ["in", " ", "2", "0", "2", "4", " it", "'s"]),
    ("gpt-2", "in 2024 it's  ok\n", ["in", " 2024", " it", "'s", " ", " ok", "\n"]),
    ("gpt-2", "IT'S", ["IT", "'", "S"]),
    ("llama-bpe", "IT'S 1234567 a\n\n  b", ["IT", "'S", " ", "123", "456", "7", " a", "\n\n", " ", " b"]),
    ("qwen2", "x 123!\n", ["x", " ", "1", "2", "3", "!\n"]),
    ("default", "a+b==12345", ["a", "+", "b", "==", "123", "45"]),
])
def test_pre_tokenizer_splits(pre, text, pieces):
    assert split(text, pre_tokenizer(pre).compiled()) == pieces


def test_byte_encode_spells_bytes_as_vocab_characters():
    assert byte_encode(" hi\n") == "Ġhi\u010a"


@pytest.mark.parametrize("key, value", [("model", "t5"), ("model", None), ("pre", "no-such-pre")])
def test_unsupported_model_or_pre_is_a_clear_error(key, value):
    fields = tiny_fields(**{key: value})
    if value is None:
        del fields[key]
    with pytest.raises(TokenizerError, match=repr(value)):
        from_fields(fields)


def test_missing_pre_falls_back_to_default_loudly():
    fields = tiny_fields()
    del fields["pre"]
    with pytest.warns(UserWarning, match="default"):
        tok = from_fields(fields)
    assert tok.decode(tok.encode("a , b")) == "a, b"      # 'default' cleans spaces


def test_bad_vocab_is_a_clear_error():
    tokens = tiny_fields()["tokens"]
    with pytest.raises(TokenizerError, match="duplicate"):
        from_fields(tiny_fields(tokens=tokens + ["a"], token_type=None))
    with pytest.raises(TokenizerError, match="bos"):
        from_fields(tiny_fields(add_bos_token=True, bos_token_id=None, tokens=tokens[:11]))


# --- SmolLM2 against llama.cpp

@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from minigpt.convert.convert import tokenizer_fields
    from minigpt.convert.gguf import GGUFFile
    fields = tokenizer_fields(GGUFFile(smollm2_gguf))
    return from_fields(fields), fields


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURES / "smollm2_tokens.json").read_text(encoding="utf-8"))


def test_smollm2_matches_llama_cpp(smollm2, reference):
    tok, fields = smollm2
    byte_tokens = {b for b in range(256) if BYTE_TO_CHAR[b] in set(fields["tokens"])}
    assert len(reference["cases"]) >= 120
    for case in reference["cases"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, special=True) == case["ids_special"], text
        assert tok.decode(case["ids"]) == case["detok"], text
        assert tok.decode(case["ids_special"]) == case["detok_special"], text
        if set(text.encode()) <= byte_tokens:
            assert tok.decode(case["ids"]) == text
        else:   # llama.cpp drops bytes the vocab has no token for (SmolLM2 lacks e.g. 0x1d)
            assert tok.decode(case["ids"]) != text


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "default"])
def test_other_pre_tokenizers_match_llama_cpp(smollm2, reference, pre):
    """SmolLM2's vocab under another tokenizer.ggml.pre; the fixture stores what differs from smollm."""
    _, fields = smollm2
    tok = from_fields(dict(fields, pre=pre))
    changed = reference["pre_variants"][pre]
    for i, case in enumerate(reference["cases"]):
        expected = changed.get(str(i), case)
        assert tok.encode(case["text"]) == expected["ids"], case["text"]
        assert tok.encode(case["text"], special=True) == expected["ids_special"], case["text"]
        assert tok.decode(expected["ids"]) == expected["detok"], case["text"]
        assert tok.decode(expected["ids_special"]) == expected["detok_special"], case["text"]


def test_smollm2_vocab_facts_match_llama_cpp(smollm2, reference):
    tok, _ = smollm2
    assert tok.n_vocab == reference["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (reference["bos_id"], reference["eos_id"],
                                                     reference["add_bos"])
    assert sorted(tok.eog_ids) == reference["eog_ids"]
    assert pieces_sha256(tok) == reference["pieces_sha256"]


def test_smollm2_encodes_10kb_and_streams_it_back(smollm2, reference):
    tok, _ = smollm2
    text = ("".join(c["text"] for c in reference["cases"]) * 2)[:10_000]
    ids = tok.encode(text, special=True)
    stream = tok.stream()
    streamed = "".join(stream.push(i) for i in ids) + stream.flush()
    assert streamed == tok.decode(ids)
