"""Constrained output (minigpt/constrain.py) on a tiny random model. Whatever such a model "wants" to
write, every reply must follow the JSON Schema, regex or Lark grammar it was given: through the API,
chat sessions and the CLI. Sampling is wide open (no top-k / top-p / min-p, temperature 1.5), so the
mask alone keeps the text valid. The schemas are bounded (lengths, item counts, ranges, multipleOf):
a random model would otherwise fill max_tokens with digits of a never-ending number."""

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import minigpt
from minigpt import constrain
from minigpt.convert import convert
from minigpt.errors import ArgumentError, MinigptError

from subproc import run_minigpt, run_python
from schemas import SCHEMAS, S
from synthetic import tiny_llama, tiny_spm_fields
from test_cli import assert_one_line_error

OPEN = dict(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
MAX = 300   # tokens: room for the longest reply these schemas allow




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("constrain")
    tiny_llama(d / "tiny.gguf", wtype="Q8_0", ctx=2048)
    convert(d / "tiny.gguf", d / "tiny.mgpt")
    return d / "tiny.mgpt"


@pytest.fixture(scope="module")
def model(tiny):
    return minigpt.load(str(tiny))


def valid(text, schema):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


# --- JSON Schema, through the API

def test_at_least_30_schemas_all_valid_themselves():
    assert len(SCHEMAS) >= 30
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_generate_follows_the_schema(model, name):
    schema = SCHEMAS[name]
    for seed in range(3):
        loop_steps = list(model.steps("Answer in JSON:", max_tokens=MAX, seed=seed, response_format=schema, **OPEN))
        valid("".join(s.text for s in loop_steps), schema)
        assert len(loop_steps) < MAX   # it ended because the JSON did, not at the limit


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_chat_replies_follow_the_schema(model, name):
    schema = SCHEMAS[name]
    chat = model.chat(seed=7, max_tokens=MAX, **OPEN)
    "".join(chat.send("Hello!"))   # an unconstrained turn first: the constraint is per turn
    wrapped = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    text = "".join(chat.send("Now as JSON, please.", response_format=wrapped))
    valid(text, schema)
    assert chat.last.stop == "eos"
    assert chat.history[-1] == {"role": "assistant", "content": text}
    valid("".join(chat.regenerate(response_format=schema)), schema)


def test_response_format_shapes():
    s = SCHEMAS["flat"]
    assert constrain.json_schema(s) is s
    assert constrain.json_schema({"type": "json_schema", "json_schema": {"schema": s}}) is s
    assert constrain.json_schema({"type": "json_object"}) == {"type": "object"}
    assert constrain.json_schema({"type": "text"}) is None


def test_text_format_and_no_constraint_give_the_same_reply(model):
    kw = dict(max_tokens=20, seed=3)
    assert list(model.generate("Hi", **kw)) == list(model.generate("Hi", response_format={"type": "text"}, **kw))


def test_a_sentencepiece_vocabulary_works_too(tmp_path):
    """Token bytes from an SPM vocabulary ('▁' for spaces, <0xAB> byte tokens) build the same masks."""
    tiny_llama(tmp_path / "spm.gguf", wtype="Q8_0", ctx=1024, tokenizer=tiny_spm_fields())
    convert(tmp_path / "spm.gguf", tmp_path / "spm.mgpt")
    m = minigpt.load(str(tmp_path / "spm.mgpt"))
    for name in ("chinese_nested", "array_of_objects", "pattern_plate"):
        for seed in range(3):
            valid("".join(m.generate("x", max_tokens=MAX, seed=seed, response_format=SCHEMAS[name], **OPEN)),
                  SCHEMAS[name])
    assert re.fullmatch(REGEXES[3], "".join(m.generate("x", max_tokens=MAX, seed=1, regex=REGEXES[3], **OPEN)))


# --- regex and Lark

REGEXES = [r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)", r"(yes|no|maybe)", r"-?[0-9]{1,4}(\.[0-9]{1,2})?",
           r"[A-Z][a-z]{0,5}( [A-Z][a-z]{0,5}){0,2}\.", r"(北京|上海)[0-9]{2}号"]


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_is_matched_whole(model, regex):
    for seed in range(3):
        text = "".join(model.generate("Write:", max_tokens=MAX, seed=seed, regex=regex, **OPEN))
        assert re.fullmatch(regex, text), text


GREETING = r'''
start: greeting " " name "!" (" " mood)?
greeting: "hello" | "hi" | "你好"
name: /[a-z]{1,8}/
mood: "(" ("happy" | "sad") ")"
'''
GREETING_RE = r"(hello|hi|你好) [a-z]{1,8}!( \((happy|sad)\))?"


def test_lark_grammar_is_followed(model):
    texts = set()
    for seed in range(5):
        text = "".join(model.generate("Greet:", max_tokens=MAX, seed=seed, grammar=GREETING, **OPEN))
        assert re.fullmatch(GREETING_RE, text), text
        texts.add(text)
    chat = model.chat(seed=1, max_tokens=MAX, **OPEN)
    assert re.fullmatch(GREETING_RE, "".join(chat.send("Hi", grammar=GREETING)))


# --- how the loop runs under a constraint

def test_forced_tokens_are_evaluated_together(model, monkeypatch):
    """A schema that fixes most of the text: the forced tokens go through the model in batches, far
    fewer forward calls than tokens."""
    schema = S({"kind": {"const": "minigpt-constrained-output"}, "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"const": "fixed"}, "minItems": 3, "maxItems": 3}})
    calls = []
    prefill = model.engine.prefill

    def counting(ids, *a, **kw):
        calls.append(len(ids))
        return prefill(ids, *a, **kw)

    monkeypatch.setattr(model.engine, "prefill", counting)   # decode_step goes through it too
    steps = list(model.steps("x", max_tokens=MAX, seed=0, response_format=schema, **OPEN))
    value = valid("".join(s.text for s in steps), schema)
    assert value["kind"] == "minigpt-constrained-output" and value["tags"] == ["fixed"] * 3
    evaluations = calls[1:]   # the first call is the prompt
    assert sum(evaluations) == len(steps)   # every token shown is in the cache, once
    assert len(evaluations) <= 4 < len(steps)   # forced runs in one call each: here 39, 1 (the boolean), 38
    assert model.n_past == len(model.tokenize("x")) + len(steps)


def test_triggered_is_free_text_until_the_marker(model):
    """constrain.Triggered: no mask and nothing forced until the text spells the marker (split over two
    tokens here); the constraint from there on, fed what followed the marker."""
    tok = model.tokenizer
    t = constrain.Triggered(tok, "<go>", model.constraint(regex=r" yes, done"))
    logits = np.zeros(model.config.vocab_size, dtype=np.float32)
    t.advance(tok.encode("free <g"))
    assert not t.on and not t.done and t.forced() == [] and t.mask(logits) is logits and t.valid_prefix([1, 2]) == 2
    t.advance(tok.encode("o> y"))
    forced = t.forced()
    assert t.on and tok.decode(forced) == "es, done" and np.isinf(t.mask(logits)).any()
    t.advance(forced)
    assert t.done


def test_greedy_is_deterministic_and_top_n_marks_forced_tokens(model):
    schema = SCHEMAS["chinese_nested"]
    runs = [list(model.steps("JSON:", max_tokens=MAX, temperature=0, top_n=3, response_format=schema))
            for _ in range(2)]
    assert [s.token for s in runs[0]] == [s.token for s in runs[1]]
    valid("".join(s.text for s in runs[0]), schema)
    sampled = [s for s in runs[0] if s.p is not None]
    forced = [s for s in runs[0] if s.token is not None and s.p is None]
    assert sampled and forced and all(len(s.top) == 3 for s in sampled) and all(s.top == [] for s in forced)
    a = "".join(model.generate("JSON:", max_tokens=MAX, seed=5, response_format=schema, **OPEN))
    assert a == "".join(model.generate("JSON:", max_tokens=MAX, seed=5, response_format=schema, **OPEN))


def test_unconstrained_generation_is_unchanged(model):
    """Greedy tokens from steps() are those of a plain argmax over prefill / decode_step."""
    ids = model.tokenize("The weather")
    model.reset()
    logits, want = model.engine.prefill(ids), []
    for _ in range(12):
        tok = int(np.argmax(logits))
        if tok in model.tokenizer.eog_ids:
            break
        want.append(tok)
        logits = model.engine.decode_step(tok)
    got = [s.token for s in model.steps("The weather", max_tokens=12, temperature=0) if s.token is not None]
    assert got == want


def test_max_tokens_cuts_a_constrained_reply(model):
    chat = model.chat(seed=1, max_tokens=5, **OPEN)
    text = "".join(chat.send("JSON", response_format=SCHEMAS["nested"]))
    assert chat.last.stop == "length" and chat.last.reply_tokens == 5 and '{"user":{'.startswith(text)
    assert chat.n_past == len(chat.cache.tokens)   # every token shown is in the cache


def test_the_llguidance_tokenizer_is_built_once_per_model(model):
    n = model.config.vocab_size
    assert constrain.ll_tokenizer(model.tokenizer, n) is constrain.ll_tokenizer(model.tokenizer, n)


# --- bad input: one line

BAD = [
    (dict(response_format={"type": "object", "properties": {"a": {"type": "strin"}}}), "response_format"),
    (dict(response_format={"type": "string", "pattern": "(("}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
    (dict(response_format='{"type": "object"}'), "response_format"),
    (dict(regex="a(b"), "regex"),
    (dict(regex=b"abc"), "regex"),
    (dict(grammar="start: missing_rule"), "grammar"),
    (dict(grammar='start: ("a"'), "grammar"),
    (dict(regex="a", grammar='start: "a"'), "one of"),
]


@pytest.mark.parametrize("kw,word", BAD)
def test_bad_constraints_are_one_line_errors(model, kw, word):
    with pytest.raises(ArgumentError) as e:
        model.generate("x", **kw)   # raises here, before the first piece is asked for
    assert word in str(e.value) and "\n" not in str(e.value)
    chat = model.chat(seed=1)
    with pytest.raises(ArgumentError):
        chat.send("x", **kw)
    assert "".join(chat.send("x", regex="ok")) == "ok"   # the session is not left busy
    assert isinstance(e.value, MinigptError)


# --- the command line

@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_cli_generate_follows_the_schema(tiny, tmp_path, name):
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(SCHEMAS[name], ensure_ascii=False), encoding="utf-8")
    r = run_minigpt("generate", "-m", tiny, "-p", "JSON:", "--json-schema", f, "-n", MAX, "--seed", 4,
                    "--temperature", 1.5, "--top-k", 0, "--top-p", 1, "--min-p", 0)
    assert r.returncode == 0, r.stderr
    valid(r.stdout.strip(), SCHEMAS[name])


def test_cli_regex_and_grammar(tiny, tmp_path):
    r = run_minigpt("generate", "-m", tiny, "-p", "x", "--regex", REGEXES[0], "-n", MAX, "--seed", 1, "--show-probs")
    assert r.returncode == 0, r.stderr
    assert "forced by the grammar" in r.stdout and re.fullmatch(REGEXES[0], r.stdout.splitlines()[-1])
    g = tmp_path / "greeting.lark"
    g.write_text(GREETING, encoding="utf-8")
    r = run_minigpt("chat", "-m", tiny, "--grammar", g, "--seed", 2, "--temperature", 1.5, input="hello\nagain\n")
    assert r.returncode == 0, r.stderr
    replies = [line[4:] for line in r.stdout.splitlines() if line.startswith(">>> ") and line[4:]]
    assert len(replies) == 2 and all(re.fullmatch(GREETING_RE, x) for x in replies), r.stdout


def test_cli_bad_constraints_are_one_line_errors(tiny, tmp_path):
    (tmp_path / "bad.json").write_text('{"type": "strin"}')
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "list.json").write_text('[1, 2]')
    (tmp_path / "bad.lark").write_text("start: missing_rule\n")
    for command in ("generate", "chat"):
        base = [command, "-m", tiny] + (["-p", "x"] if command == "generate" else [])
        for extra, word in ((["--json-schema", tmp_path / "bad.json"], "response_format"),
                            (["--json-schema", tmp_path / "broken.json"], "not JSON"),
                            (["--json-schema", tmp_path / "list.json"], "JSON object"),
                            (["--json-schema", tmp_path / "nope.json"], "no such file"),
                            (["--regex", "a(b"], "regex"),
                            (["--grammar", tmp_path / "bad.lark"], "grammar"),
                            (["--regex", "a", "--grammar", tmp_path / "bad.lark"], "one of")):
            assert word in assert_one_line_error(run_minigpt(*base, *extra, input=""))


# --- bench/constrain.py: the report's fields, never timings

def test_bench_constrain_json(tiny):
    bench = Path(__file__).resolve().parent.parent / "bench" / "constrain.py"
    r = run_python(bench, "-m", tiny, "-n", 12, "-r", 2, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vocab"] == 266 and info["chars"] == 12 and len(info["reps"]) == 2
    for row in info["reps"]:
        assert row["tokens"] > 0 and 0 < row["grammar_seconds"] < row["seconds"] and row["overhead"] > 0
        assert 0 < row["free_tokens"] <= row["tokens"]   # the free reply gets the same budget
    assert set(info["median"]) == {"overhead", "tok_s", "free_tok_s"}


# --- a real model

def test_smollm2_answers_in_valid_json(smollm2_mgpt):
    m = minigpt.load(smollm2_mgpt)
    schema = S({"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20},
                "population_millions": {"type": "number", "minimum": 0, "maximum": 50, "multipleOf": 0.5}})
    chat = m.chat(seed=1, temperature=0, max_tokens=120)
    value = valid("".join(chat.send("What is the capital of France? Answer in JSON.", response_format=schema)), schema)
    assert "paris" in value["city"].lower()
    text = "".join(chat.send("And of Germany?", response_format={"type": "json_object"}))
    assert isinstance(json.loads(text), dict)
