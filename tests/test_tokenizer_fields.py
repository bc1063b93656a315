"""Tokenizer fields: checked once where they come in, whatever wrote them (issue #12). A bad field is a
TokenizerError naming it, on one short line; good fields build the same tokenizer as before."""

import math

import pytest

import minigpt
from minigpt.convert import convert
from minigpt.errors import MinigptError, TokenizerError
from minigpt.tokenizer import check_fields, from_fields
from minigpt.tokenizer.fields import MAX_MERGES, MAX_TOKEN_CHARS, MAX_TOKENS

from subproc import run_minigpt
from synthetic import mgpt_with_header, tiny_bpe_fields, tiny_llama, tiny_spm_fields

N_BPE = len(tiny_bpe_fields()["tokens"])
N_SPM = len(tiny_spm_fields()["tokens"])


def entry(make, key, i, value):
    """make() with entry i of its list `key` replaced by value."""
    fields = make()
    fields[key] = list(fields[key])
    fields[key][i] = value
    return fields


# (fields, what the message must name): one bad value each, in the field it is in
BAD = [
    (lambda: ["model", "gpt2"], "tokenizer.ggml"),
    (lambda: tiny_bpe_fields(model=5), "tokenizer.ggml.model=5"),
    (lambda: tiny_bpe_fields(model=["gpt2"]), "tokenizer.ggml.model"),
    (lambda: tiny_bpe_fields(pre=5), "tokenizer.ggml.pre"),
    (lambda: tiny_bpe_fields(pre="x" * 100_000), "tokenizer.ggml.pre"),
    (lambda: tiny_bpe_fields(tokens=None), "tokenizer.ggml.tokens"),
    (lambda: tiny_bpe_fields(tokens=5), "tokenizer.ggml.tokens"),
    (lambda: tiny_bpe_fields(tokens="abc"), "tokenizer.ggml.tokens"),
    (lambda: tiny_bpe_fields(tokens={"a": 0}), "tokenizer.ggml.tokens"),
    (lambda: tiny_bpe_fields(tokens=[], token_type=None), "tokenizer.ggml.tokens"),
    (lambda: entry(tiny_bpe_fields, "tokens", 7, 5), "tokenizer.ggml.tokens[7]"),
    (lambda: entry(tiny_bpe_fields, "tokens", 7, None), "tokenizer.ggml.tokens[7]"),
    (lambda: entry(tiny_bpe_fields, "tokens", 7, ["a"]), "tokenizer.ggml.tokens[7]"),
    (lambda: entry(tiny_bpe_fields, "tokens", 7, "x" * (MAX_TOKEN_CHARS + 1)), "tokenizer.ggml.tokens[7]"),
    (lambda: tiny_bpe_fields(tokens=["a"] * (MAX_TOKENS + 1), token_type=None), "tokenizer.ggml.tokens"),
    (lambda: tiny_bpe_fields(merges=None), "tokenizer.ggml.merges"),
    (lambda: tiny_bpe_fields(merges=5), "tokenizer.ggml.merges"),
    (lambda: tiny_bpe_fields(merges={"a b": 0}), "tokenizer.ggml.merges"),
    (lambda: entry(tiny_bpe_fields, "merges", 2, 7), "tokenizer.ggml.merges[2]"),
    (lambda: entry(tiny_bpe_fields, "merges", 2, ["i", "n"]), "tokenizer.ggml.merges[2]"),
    (lambda: tiny_bpe_fields(merges=["a b"] * (MAX_MERGES + 1)), "tokenizer.ggml.merges"),
    (lambda: tiny_bpe_fields(token_type="1"), "tokenizer.ggml.token_type"),
    (lambda: tiny_bpe_fields(token_type=[1] * (N_BPE - 1)), "tokenizer.ggml.token_type"),
    (lambda: entry(tiny_bpe_fields, "token_type", 9, 1.0), "tokenizer.ggml.token_type[9]"),
    (lambda: entry(tiny_bpe_fields, "token_type", 9, True), "tokenizer.ggml.token_type[9]"),
    (lambda: entry(tiny_bpe_fields, "token_type", 9, "1"), "tokenizer.ggml.token_type[9]"),
    (lambda: tiny_spm_fields(scores={"0": 0.0}), "tokenizer.ggml.scores"),
    (lambda: tiny_spm_fields(scores=[0.0] * (N_SPM - 1)), "tokenizer.ggml.scores"),
    (lambda: entry(tiny_spm_fields, "scores", 3, math.nan), "tokenizer.ggml.scores[3]"),
    (lambda: entry(tiny_spm_fields, "scores", 3, -math.inf), "tokenizer.ggml.scores[3]"),
    (lambda: entry(tiny_spm_fields, "scores", 3, "1.5"), "tokenizer.ggml.scores[3]"),
    (lambda: entry(tiny_spm_fields, "scores", 3, True), "tokenizer.ggml.scores[3]"),
    (lambda: entry(tiny_spm_fields, "scores", 3, None), "tokenizer.ggml.scores[3]"),
    (lambda: entry(tiny_spm_fields, "scores", 3, 10 ** 400), "tokenizer.ggml.scores[3]"),
    (lambda: tiny_bpe_fields(bos_token_id="1"), "tokenizer.ggml.bos_token_id"),
    (lambda: tiny_bpe_fields(eos_token_id=2.0), "tokenizer.ggml.eos_token_id"),
    (lambda: tiny_bpe_fields(eos_token_id=True), "tokenizer.ggml.eos_token_id"),
    (lambda: tiny_spm_fields(unknown_token_id=-1), "tokenizer.ggml.unknown_token_id"),
    (lambda: tiny_spm_fields(padding_token_id=[0]), "tokenizer.ggml.padding_token_id"),
    (lambda: tiny_bpe_fields(eot_token_id={}), "tokenizer.ggml.eot_token_id"),
    (lambda: tiny_bpe_fields(add_bos_token="yes"), "tokenizer.ggml.add_bos_token"),
    (lambda: tiny_spm_fields(add_eos_token=0), "tokenizer.ggml.add_eos_token"),
    (lambda: tiny_spm_fields(add_space_prefix="true"), "tokenizer.ggml.add_space_prefix"),
]


@pytest.mark.parametrize("make, named", BAD, ids=[named for _, named in BAD])
def test_a_bad_field_is_one_clear_error(make, named):
    with pytest.raises(TokenizerError) as e:
        from_fields(make())
    message = str(e.value)
    assert isinstance(e.value, MinigptError) and named in message, message
    assert "\n" not in message and len(message) < 400, message


def test_a_100kb_token_is_cut_short_in_the_message():
    with pytest.raises(TokenizerError) as e:
        from_fields(entry(tiny_bpe_fields, "tokens", 5, "x" * 100_000))
    message = str(e.value)
    assert "tokenizer.ggml.tokens[5]" in message and f"at most {MAX_TOKEN_CHARS} characters" in message
    assert "100000" in message and len(message) < 400
    # a long duplicate is cut too (duplicates are found when the vocabulary is built)
    long = "y" * MAX_TOKEN_CHARS
    with pytest.raises(TokenizerError, match="duplicate") as e:
        from_fields(tiny_bpe_fields(tokens=tiny_bpe_fields()["tokens"] + [long, long], token_type=None))
    assert len(str(e.value)) < 400


def test_more_tokens_than_embedding_rows_is_an_error():
    assert from_fields(tiny_bpe_fields(), n_rows=N_BPE).n_vocab == N_BPE
    assert from_fields(tiny_bpe_fields(), n_rows=N_BPE + 7).n_vocab == N_BPE   # padded rows are fine
    with pytest.raises(TokenizerError, match=f"{N_BPE} tokens.*{N_BPE - 1} rows"):
        from_fields(tiny_bpe_fields(), n_rows=N_BPE - 1)


def test_good_fields_pass_unchanged():
    for fields in (tiny_bpe_fields(), tiny_spm_fields(add_space_prefix=True)):
        checked = check_fields(fields)
        assert checked == fields
        assert all(checked[k] is fields[k] for k in ("tokens", "token_type"))   # no copies
    # tuples are lists too; numbers may be ints; extra per-token entries are dropped, as llama.cpp reads
    spm = tiny_spm_fields()
    checked = check_fields({**spm, "tokens": tuple(spm["tokens"]), "scores": [0] * N_SPM + [1.5],
                            "token_type": spm["token_type"] + [7]})
    assert checked["tokens"] == spm["tokens"] and checked["scores"] == [0] * N_SPM
    assert checked["token_type"] == spm["token_type"]
    # keys nothing reads are left out, whatever they hold
    assert "precompiled_charsmap" not in check_fields(tiny_spm_fields(precompiled_charsmap=["x", 5]))


def test_ids_past_the_vocabulary_mean_unset_as_in_llama_cpp():
    # llama.cpp warns and keeps its default id: files with a padding id past the vocabulary still load
    checked = check_fields(tiny_spm_fields(padding_token_id=N_SPM, bos_token_id=10 ** 30))
    assert "padding_token_id" not in checked and "bos_token_id" not in checked
    assert from_fields(tiny_spm_fields(bos_token_id=N_SPM)).bos_id == 1               # SentencePiece default
    assert from_fields(tiny_bpe_fields(bos_token_id=N_BPE + 5)).bos_id == 11          # BPE default
    assert from_fields(tiny_bpe_fields(eos_token_id=None)).eos_id == 11               # null: absent


def test_real_fields_pass_unchanged(smollm2_gguf):
    from minigpt.convert.convert import tokenizer_fields
    from minigpt.convert.gguf import GGUFFile
    fields = tokenizer_fields(GGUFFile(smollm2_gguf))
    assert check_fields(fields, n_rows=len(fields["tokens"])) == fields   # SmolLM2 has no unread field


# --- the boundaries: loading a .mgpt file, the command line, converting a GGUF

@pytest.fixture(scope="module")
def tiny_mgpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokfields")
    tiny_llama(d / "tiny.gguf")
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


def test_a_bad_header_tokenizer_fails_loading_with_one_line(tiny_mgpt, tmp_path):
    def token_3_is_a_number(meta):
        meta["tokenizer"]["tokens"][3] = 7

    bad = mgpt_with_header(tiny_mgpt, tmp_path / "bad.mgpt", token_3_is_a_number)
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.tokens\[3\]"):
        minigpt.load(bad)
    for args in (("generate", "-m", bad, "-p", "hi", "-n", "1"), ("info", bad)):
        r = run_minigpt(*args, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error:") and "tokenizer.ggml.tokens[3]" in lines[0], r.stderr


def test_a_header_with_more_tokens_than_rows_fails_loading(tiny_mgpt, tmp_path):
    # the config says fewer embedding rows than the vocabulary has tokens: an id could index past them
    n = N_BPE
    small = mgpt_with_header(tiny_mgpt, tmp_path / "small.mgpt", lambda m: m["config"].update(vocab_size=n - 9))
    with pytest.raises(TokenizerError, match=f"{n} tokens.*{n - 9} rows"):
        minigpt.load(small)
    minigpt.load(tiny_mgpt)                     # the file it was made from loads


def test_convert_refuses_a_vocabulary_larger_than_the_embedding(tmp_path):
    tiny_llama(tmp_path / "big.gguf", extra_tokens=3)
    with pytest.raises(TokenizerError, match=f"{N_BPE + 3} tokens.*{N_BPE} rows"):
        convert(tmp_path / "big.gguf", tmp_path / "big.mgpt")
    assert not (tmp_path / "big.mgpt").exists()
