import os
import threading

import numpy as np
import pytest

from minigpt import chatfile, quant
from minigpt.config import Config
from minigpt.convert.gguf import GGUFFile
from minigpt.errors import FormatError
from minigpt.format import ALIGN, MgptFile, Writer, tensor_storage_shape

from synthetic import mgpt_with_header

CFG = Config(arch="llama", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=300, context_length=64)


def write(path, tensors):
    specs = [(n, q, a.shape if q in ("f32", "f16") else shape) for n, (q, a, shape) in tensors.items()]
    with Writer(path, CFG, {"model": "gpt2", "tokens": ["a", "你"]}, "{{ x }}", specs) as w:
        for n, (q, a, _) in tensors.items():
            w.write(n, a)


@pytest.fixture
def sample_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 64)).astype(np.float32)
    tensors = {
        "norm": ("f32", rng.standard_normal(64).astype(np.float32), None),
        "w4": ("q4_1", quant.quantize(x, "q4_1"), (33, 64)),
        "w8": ("q8_0", quant.quantize(x, "q8_0"), (33, 64)),
        "h": ("f16", x.astype(np.float16), None),
    }
    path = tmp_path / "m.mgpt"
    write(path, tensors)
    return path, tensors


def test_roundtrip_zero_copy_aligned(sample_file):
    path, tensors = sample_file
    f = MgptFile(path)
    assert f.config == CFG and f.tokenizer["tokens"] == ["a", "你"] and f.chat_template == "{{ x }}"
    for name, (q, a, _) in tensors.items():
        t = f.tensor(name)
        assert f.tensors[name].offset % ALIGN == 0
        assert np.array_equal(t, a) and not t.flags.writeable and not t.flags.owndata
    f.verify()


def test_truncated_file_is_rejected(sample_file, tmp_path):
    path, _ = sample_file
    data = path.read_bytes()
    for n in (0, 10, 30, len(data) // 2, len(data) - 1):
        p = tmp_path / f"t{n}.mgpt"
        p.write_bytes(data[:n])
        with pytest.raises(FormatError):
            MgptFile(p)


def test_bit_flips_are_detected(sample_file, tmp_path):
    path, _ = sample_file
    data = bytearray(path.read_bytes())
    f = MgptFile(path)
    hdr = bytearray(data)
    hdr[40] ^= 0x04                        # inside the JSON header
    (tmp_path / "h.mgpt").write_bytes(hdr)
    with pytest.raises(FormatError, match="checksum"):
        MgptFile(tmp_path / "h.mgpt")
    body = bytearray(data)
    body[f.tensors["w4"].offset + 5] ^= 0x10   # inside tensor data: caught by verify()
    (tmp_path / "b.mgpt").write_bytes(body)
    g = MgptFile(tmp_path / "b.mgpt")          # opening reads no weights ...
    with pytest.raises(FormatError, match="w4"):
        g.verify()                              # ... verifying does


def test_foreign_and_missing_files(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(FormatError, match="GGUF"):
        MgptFile(tmp_path / "x.gguf")
    (tmp_path / "r.bin").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(FormatError):
        MgptFile(tmp_path / "r.bin")
    with pytest.raises(FormatError):
        MgptFile(tmp_path / "missing.mgpt")


def test_header_lies_are_caught(sample_file, tmp_path):
    """A header with a consistent checksum but impossible tensor entries is still rejected."""
    path, _ = sample_file
    for i, mutate in enumerate([
        lambda m: m["tensors"][1].update(shape=[99, 64]),           # more bytes than stored
        lambda m: m["tensors"][1].update(offset=m["tensors"][1]["offset"] + 1),  # unaligned
        lambda m: m["tensors"][2].update(offset=m["tensors"][1]["offset"]),      # overlapping
        lambda m: m["tensors"][1].update(qtype="q9_9"),
        lambda m: m["config"].update(n_heads=5),                    # not a multiple of n_kv_heads
        lambda m: m.update(file_size=m["file_size"] + 64),
    ]):
        with pytest.raises(FormatError):
            MgptFile(mgpt_with_header(path, tmp_path / f"lie{i}.mgpt", mutate))


def test_malformed_headers_are_format_errors(sample_file, tmp_path):
    """Headers a hostile file may hold, checksum recomputed (issue #12): each a FormatError, never another
    exception, and never work proportional to the numbers it claims."""
    path, _ = sample_file
    changes = [
        lambda m: m.update(tensors=[]),                            # no tensors at all
        lambda m: m.update(tensors=5),
        lambda m: m.update(data_offset="64"),
        lambda m: m["tensors"][0].update(qtype=["f32"]),           # unhashable type name
        lambda m: m["tensors"][0].update(name=7),
        lambda m: m["tensors"][1].update(shape=[2 ** 40, 2 ** 40]),  # a size past int64
        lambda m: m["config"].update(norm_eps="x"),
        lambda m: b'{"a":' * 50_000 + b"1" + b"}" * 50_000,        # nested past the recursion limit
        # found by tests/test_fuzz.py: `minigpt info` and minigpt.load crashed, int() overflowed or took a str
        lambda m: m.update(tokenizer=[]),
        lambda m: m.update(tokenizer="gpt2"),
        lambda m: m.update(chat_template=5),
        lambda m: m.update(config=[]),
        lambda m: m["tensors"][1].update(offset=float("inf")),       # Infinity in the JSON
        lambda m: m["tensors"][1].update(shape=[float("inf"), 64]),
        lambda m: m["tensors"][1].update(shape=["33", 64]),
        lambda m: m["tensors"][1].update(nbytes=True),
        lambda m: m["tensors"][1].update(crc32="0x1234"),
        lambda m: m["tensors"][1].update(shape=[33, 64, 1]),
    ]
    for i, change in enumerate(changes):
        with pytest.raises(FormatError) as e:
            MgptFile(mgpt_with_header(path, tmp_path / f"bad{i}.mgpt", change))
        assert len(str(e.value)) < 400


def test_long_values_are_cut_in_messages(sample_file, tmp_path):
    path, _ = sample_file
    for i, (change, named) in enumerate([(lambda m: m["tensors"][0].update(qtype="q" * 2000), "quant type 'qqq"),
                                         (lambda m: m["tensors"][0].update(shape=[1] * 2000), "malformed tensor entry")]):
        with pytest.raises(FormatError, match=named) as e:
            MgptFile(mgpt_with_header(path, tmp_path / f"long{i}.mgpt", change))
        assert len(str(e.value)) < 300


def test_clip_shows_what_repr_cannot():
    from minigpt.errors import clip
    assert clip([1, 10 ** 5000]) == "<a list holding an integer too long to show>"   # repr raises ValueError


def test_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path):
    """Opening a FIFO waits for a writer, for ever: refused before (issue #12: `-m`, `convert`, `--resume`)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # should the check regress, a writer turns the wait into a failure rather than a hung test run
    unblock = threading.Timer(10, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    unblock.start()
    try:
        for read in (MgptFile, GGUFFile, chatfile.read_header):
            with pytest.raises(FormatError, match="fifo: not a .* [(]not a regular file[)]$"):
                read(fifo)
    finally:
        unblock.cancel()
    with pytest.raises(FormatError, match=r"not a minigpt model file \(a folder\)$"):
        MgptFile(tmp_path)


def test_long_values_are_clipped_in_errors():
    with pytest.raises(FormatError) as e:
        tensor_storage_shape("q" * 100_000, (2, 64))
    assert len(str(e.value)) < 100
    with pytest.raises(FormatError) as e:
        Config.from_dict({**CFG.to_dict(), "x" * 100_000: 1})
    assert len(str(e.value)) < 300


def test_writer_is_atomic(tmp_path):
    out = tmp_path / "m.mgpt"
    with pytest.raises(RuntimeError):
        with Writer(out, CFG, {}, None, [("a", "f32", (4,))]):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
