import numpy as np
import pytest

from minigpt.engine import stream_text
from minigpt.errors import MinigptError
from minigpt.sampling import SamplerSettings, apply_repeat_penalty, candidates, make_rng, sample


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float32))


def test_greedy_is_argmax():
    x = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    assert sample(x, SamplerSettings(temperature=0), make_rng(0)) == 1


def test_top_k_top_p_min_p_filter():
    x = logits_of([0.5, 0.2, 0.15, 0.1, 0.05])
    s = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    ids, p = candidates(x, s)
    assert list(ids) == [0, 1, 2, 3, 4] and np.allclose(p, [0.5, 0.2, 0.15, 0.1, 0.05])
    assert list(candidates(x, s.with_(top_k=2))[0]) == [0, 1]
    assert list(candidates(x, s.with_(top_p=0.7))[0]) == [0, 1]          # 0.5 + 0.2 reaches 0.7
    assert list(candidates(x, s.with_(top_p=0.71))[0]) == [0, 1, 2]
    assert list(candidates(x, s.with_(min_p=0.3))[0]) == [0, 1]          # >= 0.3 * 0.5
    ids, p = candidates(x, s.with_(top_k=2, temperature=0.5))            # temperature sharpens
    assert np.isclose(p[0], 0.25 / (0.25 + 0.04))


def test_seed_reproducible_and_distribution():
    x = logits_of([0.6, 0.3, 0.1])
    s = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [sample(x, s, make_rng(7)) for _ in range(3)]
    assert a == [sample(x, s, make_rng(7)) for _ in range(3)]
    rng = make_rng(1)
    counts = np.bincount([sample(x, s, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


def test_repeat_penalty_follows_llama_cpp():
    x = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    y = apply_repeat_penalty(x, [0, 1, 1], 2.0)
    assert list(y) == [1.0, -4.0, 1.0]
    assert list(x) == [2.0, -2.0, 1.0]   # input untouched


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2), dict(top_k=-1),
                                 dict(repeat_penalty=0)])
def test_bad_settings(bad):
    with pytest.raises(MinigptError):
        SamplerSettings(**bad)


class ByteTokenizer:
    """Token i is byte i: enough to drive stream_text."""

    def stream(self):

        class D:
            buf = b""

            def push(self, i):
                self.buf += bytes([i])
                try:
                    s, self.buf = self.buf.decode(), b""
                    return s
                except UnicodeDecodeError:
                    return ""

            def flush(self):
                return self.buf.decode(errors="replace")
        return D()


def pieces(text, stops):
    return list(stream_text(iter(text.encode()), ByteTokenizer(), stops))


def test_stop_strings_cut_and_hold_back():
    assert "".join(pieces("Hello world. Bye", ["."])) == "Hello world"
    assert "".join(pieces("abc<|end|>def", ["<|end|>"])) == "abc"
    assert "".join(pieces("a <b c", ["<|end|>"])) == "a <b c"      # a partial match is released at the end
    out = pieces("xx<|e", ["<|end|>"])
    assert "".join(out) == "xx<|e"
    assert "".join(pieces("你好，世界。再见", ["。"])) == "你好，世界"


def test_streaming_never_splits_characters():
    out = pieces("héllo 你好 🙂", [])
    assert "".join(out) == "héllo 你好 🙂"
    assert all("\ufffd" not in p for p in out)


def test_a_cut_character_is_dropped_or_replaced():
    from minigpt.engine import TextStream

    for partial, end in ((True, "\ufffd"), (False, "")):
        t = TextStream(ByteTokenizer())
        out = "".join(t.push(b) for b in "好吗".encode()[:-1])   # the last character lacks its last byte
        assert out + t.flush(partial=partial) == "好" + end
