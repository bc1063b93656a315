"""Giving back the mapped pages of weights a backend copied at load (MgptFile.release, weights.unused):
only whole pages, inside the file, never one of a tensor still read; logits unchanged. Tiny synthetic models."""

import mmap
import os

import numpy as np
import pytest

import minigpt
from minigpt import kernels
from minigpt.convert import convert
from minigpt.model import weights

from synthetic import tiny_llama

IDS = [5, 60, 7, 200, 31, 9, 14]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    out = {}
    for tied in (True, False):   # matrices of 256 x 1024 in q8_0: ~70 pages each
        tiny_llama(d / f"{tied}.gguf", dim=256, hidden=1024, n_heads=4, n_kv_heads=2, wtype="Q8_0", tied=tied)
        convert(d / f"{tied}.gguf", d / f"{tied}.mgpt")
        out[tied] = d / f"{tied}.mgpt"
    return out


def mapping_rss(f):
    """Resident bytes of MgptFile f's mapping (its entry in /proc/self/smaps), or None without /proc."""
    start = np.frombuffer(f._mm, np.uint8).ctypes.data
    try:
        with open("/proc/self/smaps") as smaps:
            lines = smaps.read().splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if line.split("-", 1)[0] == f"{start:x}":
            return next(int(x.split()[1]) * 1024 for x in lines[i + 1:] if x.startswith("Rss:"))
    return None


@pytest.mark.parametrize("backend", [b for b in ("c", "numpy") if b in kernels.available_backends()])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("precision", ["balanced", "fast"])
def test_released_pages_are_whole_inside_the_file_and_of_unused_tensors_only(paths, backend, tied, precision):
    m = minigpt.load(str(paths[tied]), backend=backend, precision=precision, kv_type="f32")
    f, page = m.file, mmap.PAGESIZE
    unused = weights.unused(m.weights, m.engine.weights)
    packed = {n for n, w in m.engine.weights.items() if w.qtype.endswith("x8") and n != "output"}
    if backend == "numpy":
        assert unused == []                       # the reference reads every weight where it lies
    else:   # the matrices repacked into copies, and the head, copied to the arena in any form
        head_x8 = m.engine.weights["output"].qtype.endswith("x8")
        head = {"output"} if not tied else set() if head_x8 else {"tok_embd"}   # (get_rows reads tok_embd)
        assert set(unused) == packed | head
    ranges = f.release(unused)                    # what the model did at load: again, the same
    header = min(t.offset for t in f.tensors.values()) // page * page   # its whole pages: parsed at open
    if header and hasattr(f._mm, "madvise"):
        assert ranges[0][0] == 0 and ranges[0][1] >= header
    for a, b in ranges:
        assert a % page == 0 and b % page == 0 and 0 <= a < b <= f.file_size
    for a, b in zip(ranges, ranges[1:]):
        assert a[1] <= b[0]
    for name, t in f.tensors.items():
        if name not in unused:
            assert not any(a < t.offset + t.nbytes and t.offset < b for a, b in ranges), name
    if unused:   # the matrices of 256 x 1024 span whole pages
        assert sum(b - a for a, b in ranges) > 0.8 * sum(f.tensors[n].nbytes for n in unused)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps (Linux)")
def test_released_pages_leave_the_resident_set_and_logits_are_unchanged(paths):
    m = minigpt.load(str(paths[False]), precision="fast", kv_type="f32")
    want = m.logits(IDS)
    m.file.verify()                               # every page of the file resident again
    before = mapping_rss(m.file)
    ranges = m.file.release(weights.unused(m.weights, m.engine.weights))
    after = mapping_rss(m.file)
    given = sum(b - a for a, b in ranges)
    # (a page of padding alone, which no read touched, was not resident to begin with)
    assert given - 4 * mmap.PAGESIZE <= before - after <= given, (before, after, given)
    assert np.array_equal(m.logits(IDS), want)
    # the mapping is read-only and backed by the file: even a page still read comes back with its bytes
    m.file.release(m.file.tensors)
    assert mapping_rss(m.file) < page_count(m.file) * mmap.PAGESIZE
    assert np.array_equal(m.logits(IDS), want)
    m.file.verify()


def page_count(f):
    return -(-f.file_size // mmap.PAGESIZE)


@pytest.mark.parametrize("backend", [b for b in ("c", "numpy") if b in kernels.available_backends()])
def test_each_matrix_is_released_as_soon_as_it_is_packed(paths, backend):
    # the load's peak is then the packed copies and one original, not both in full; the head, copied to
    # the arena first, is given back as its copy goes (in steps: a tiny head takes one)
    from minigpt.engine import Engine

    m = minigpt.load(str(paths[False]), backend=backend, kv_type="f32")
    told = []
    e = Engine(m.config, m.weights, m.kern, 16, "balanced", "f32", release=told.extend)
    packed = [n for n, w in e.weights.items() if w.qtype.endswith("x8") and n != "output"]
    assert told == (["output"] + packed if backend == "c" else [])
