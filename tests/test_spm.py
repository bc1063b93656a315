"""SentencePiece tokenizer: unit tests on a tiny vocab, then Gemma 3 against llama.cpp's own output
(tests/fixtures/gemma3_tokens.json, written by tools/make_spm_fixtures.py)."""

import json
from pathlib import Path

import pytest

from fidelity import pieces_sha256
from minigpt.errors import TokenizerError
from minigpt.tokenizer import SpmTokenizer, from_fields
from synthetic import tiny_spm_fields

FIXTURES = Path(__file__).parent / "fixtures"
BYTE0 = 5           # id of <0x00> in the tiny vocab


@pytest.fixture(scope="module")
def tiny():
    return from_fields(tiny_spm_fields())


@pytest.fixture(scope="module")
def prefixed():
    return from_fields(tiny_spm_fields(add_space_prefix=True))


def pieces(tok, ids):
    return [tok.token_text(i) for i in ids]


def test_dispatch_on_model(tiny):
    assert isinstance(tiny, SpmTokenizer)
    assert (tiny.bos_id, tiny.eos_id, tiny.add_bos, tiny.add_eos) == (1, 2, True, False)


def test_merges_go_by_score_then_leftmost(tiny):
    assert pieces(tiny, tiny.encode("abc")) == ["a", "bc"]          # bc (-2) beats ab (-3)
    swapped = tiny_spm_fields()
    swapped["scores"][swapped["tokens"].index("ab")] = -1.5
    swapped = from_fields(swapped)
    assert pieces(swapped, swapped.encode("abc")) == ["ab", "c"]
    assert pieces(tiny, tiny.encode("aaa")) == ["aa", "a"]          # equal scores: leftmost first
    assert pieces(tiny, tiny.encode("hello")) == ["hello"]          # through he, ll, hell
    assert pieces(tiny, tiny.encode("a hello")) == ["a", "\u2581hello"]
    assert pieces(tiny, tiny.encode("a  b")) == ["a", "\u2581\u2581", "b"]


def test_unscored_vocab_merges_leftmost_first():
    fields = tiny_spm_fields()
    del fields["scores"]
    tok = from_fields(fields)
    assert pieces(tok, tok.encode("abc")) == ["ab", "c"]


def test_byte_fallback_and_round_trip(tiny):
    assert tiny.encode("x") == [BYTE0 + ord("x")]
    assert tiny.encode("é") == [BYTE0 + 0xC3, BYTE0 + 0xA9]
    assert pieces(tiny, tiny.encode("你")) == ["\u4f60"]
    text = "\x00 é ß 你好 😀 \u200d\U0010ffff\r\n\t"
    assert tiny.decode(tiny.encode(text)) == text
    assert b"".join(tiny.token_bytes(i) for i in tiny.encode(text)) == text.encode()


def test_missing_byte_token_is_a_clear_error():
    fields = tiny_spm_fields()
    fields["tokens"] = [t if t != "<0x78>" else "<nox>" for t in fields["tokens"]]
    with pytest.raises(TokenizerError, match="0x78"):
        from_fields(fields).encode("x")


def test_space_prefix_on_first_fragment_and_after_specials(tiny, prefixed):
    assert pieces(prefixed, prefixed.encode("a")) == ["\u2581a"]
    assert pieces(tiny, tiny.encode("a")) == ["a"]
    ids = prefixed.encode("a<ctl>a<usr>a", special=True)
    assert pieces(prefixed, ids) == ["\u2581a", "<ctl>", "\u2581a", "<usr>", "\u2581a"]
    assert prefixed.decode(ids) == "a a<usr> a"                       # one leading space dropped
    assert prefixed.decode(prefixed.encode("a", add_bos=True)) == " a"  # BOS first: nothing dropped
    assert prefixed.decode(prefixed.encode("  a")) == "  a"


def test_special_parsing_on_and_off(tiny):
    text = "<s>a<ctl>b<usr>"
    assert pieces(tiny, tiny.encode(text, special=True)) == ["<s>", "a", "<ctl>", "b", "<usr>"]
    plain = tiny.encode(text)
    assert 1 not in plain and 3 not in plain and plain[-1] == 4       # user-defined tokens always split
    assert tiny.decode(plain) == text
    assert tiny.decode(tiny.encode(text, special=True)) == "ab<usr>"   # control renders as ''
    assert tiny.encode("a", add_bos=True, add_eos=True) == [1, tiny.token_id("a"), 2]
    assert tiny.eog_ids == {2}


def test_stream_decoder_yields_whole_characters(tiny, prefixed):
    ids = tiny.encode("你😀!")
    assert pieces(tiny, ids)[0] == "\u4f60" and len(ids) == 6           # 你, 4 bytes, !
    stream = tiny.stream()
    assert [stream.push(i) for i in ids] == ["你", "", "", "", "😀", "!"]
    assert stream.push(ids[1]) == "" and stream.flush() == "\ufffd"
    ids = prefixed.encode("a a")
    stream = prefixed.stream(at_start=True)
    assert "".join(stream.push(i) for i in ids) == prefixed.decode(ids) == "a a"
    stream = prefixed.stream()
    assert "".join(stream.push(i) for i in ids) == " a a"             # a continuation keeps its space


# --- Gemma 3 against llama.cpp

@pytest.fixture(scope="module")
def gemma3(gemma3_gguf):
    from minigpt.convert.convert import tokenizer_fields
    from minigpt.convert.gguf import GGUFFile
    fields = tokenizer_fields(GGUFFile(gemma3_gguf))
    return from_fields(fields), fields


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURES / "gemma3_tokens.json").read_text(encoding="utf-8"))


def test_gemma3_matches_llama_cpp(gemma3, reference):
    tok, _ = gemma3
    assert len(reference["cases"]) >= 100
    for case in reference["cases"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, special=True) == case["ids_special"], text
        assert tok.encode(text, add_bos=True) == case["ids_bos"], text
        assert tok.encode(text, add_bos=True, special=True) == case["ids_bos_special"], text
        assert tok.decode(case["ids"]) == case["detok"], text
        assert tok.decode(case["ids_special"]) == case["detok_special"], text
        assert tok.decode(case["ids_bos_special"]) == case["detok_bos_special"], text
        if "\u2581" not in text:    # a literal '▁' comes back as a space, in llama.cpp too
            assert tok.decode(case["ids"]) == text


def test_gemma3_with_space_prefix_matches_llama_cpp(gemma3, reference):
    """Gemma's vocab with add_space_prefix = true, as Llama 2 vocabularies have it."""
    _, fields = gemma3
    tok = from_fields(dict(fields, add_space_prefix=True))
    for case, expected in zip(reference["cases"], reference["space_prefix"]):
        text = case["text"]
        assert tok.encode(text) == expected["ids"], text
        assert tok.encode(text, special=True) == expected["ids_special"], text
        assert tok.encode(text, add_bos=True, special=True) == expected["ids_bos_special"], text
        assert tok.decode(expected["ids"]) == expected["detok"], text
        assert tok.decode(expected["ids_special"]) == expected["detok_special"], text
        assert tok.decode(expected["ids_bos_special"]) == expected["detok_bos_special"], text


def test_gemma3_vocab_facts_match_llama_cpp(gemma3, reference):
    tok, _ = gemma3
    assert tok.n_vocab == reference["n_vocab"]
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (
        reference["bos_id"], reference["eos_id"], reference["add_bos"], reference["add_eos"])
    assert sorted(tok.eog_ids) == reference["eog_ids"]
    assert pieces_sha256(tok) == reference["pieces_sha256"]


def test_gemma3_streams_whole_characters(gemma3):
    tok, _ = gemma3
    text = "我爱自然语言处理 🧑‍🚀 ꙮ 𓀀 👩‍👩‍👧‍👦 done"
    ids = tok.encode(text)
    stream = tok.stream()
    out = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(out) == text
    assert "\ufffd" not in "".join(out)
    assert any(tok.token_text(i).startswith("<0x") for i in ids)      # some characters went byte by byte
    assert "" in out[:-1]        # bytes of a character spanning byte tokens were held back until whole


def test_gemma3_encodes_all_the_fixture_at_once_and_streams_it_back(gemma3, reference):
    tok, _ = gemma3
    text = "".join(c["text"] for c in reference["cases"])
    ids = tok.encode(text, special=True)
    stream = tok.stream()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_fields_survive_the_mgpt_json_header():
    """.mgpt files keep the tokenizer fields as JSON: scores and flags must come back the same."""
    tok = from_fields(json.loads(json.dumps(tiny_spm_fields(add_space_prefix=True))))
    assert tok.add_space_prefix and tok.encode("abc hello") == from_fields(
        tiny_spm_fields(add_space_prefix=True)).encode("abc hello")


def test_gemma3_gives_the_fidelity_references_ids(gemma3):
    """The ids of the Gemma fidelity fixture (tools/make_reference.py --model-name gemma3), BOS included."""
    import numpy as np

    tok, _ = gemma3
    z = np.load(FIXTURES / "gemma3_270m_q4_k_m_reference.npz")
    chunks = [c for name in ("fidelity_corpus.json", "fidelity_corpus_gemma3.json")
              for c in json.loads((FIXTURES / name).read_text(encoding="utf-8"))["chunks"]]
    assert [c["name"] for c in chunks] == z["chunk_names"].tolist()
    for c in chunks:
        assert tok.encode(c["text"], add_bos=True, special=True) == z[f"{c['name']}/ids"].tolist(), c["name"]
