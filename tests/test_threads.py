"""The C thread pool (csrc/threadpool.c) through the compiled kernels: shares are claimed dynamically, so results
must not depend on the thread count, on which thread runs a share, or on a busy process competing for the cores.

Matmul computes every output element with one dot product whatever the split, so results are compared exactly.
No timing assertions: the machines these run on are shared.
"""

import multiprocessing
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import minigpt
from minigpt import quant

_core = pytest.importorskip("minigpt.kernels._core")

# (n, rows, cols): from a single share (too small to split) to hundreds of shares, decode and prefill
SHAPES = [(1, 64, 32), (1, 512, 256), (1, 1536, 576), (1, 576, 1536), (3, 4099, 576), (17, 1536, 576), (1, 49152, 64)]
QTYPES = ["f32", "q8_0", "q4_0", "q4_1"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = _core.get_threads()
    yield
    _core.set_threads(before)


def problem(rng, n, rows, cols, qtype):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    return x, (w if qtype == "f32" else quant.quantize(w, qtype))


def both(x, w, qtype):
    return _core.matmul(x, w, qtype), _core.matmul_q8(x, w, qtype)


@contextmanager
def competitors(n, pin=None):
    """n busy processes (`while True: pass`), pinned to CPU `pin` if given, killed on exit."""
    def place():
        if pin is not None:
            os.sched_setaffinity(0, {pin})
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=place) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


# --- results do not depend on threads or contention ------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
def test_same_results_at_1_and_2_threads(qtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x, w = problem(rng, *shape, qtype)
        _core.set_threads(1)
        ref = both(x, w, qtype)
        for t in (2, 3):
            _core.set_threads(t)
            for got, want in zip(both(x, w, qtype), ref):
                np.testing.assert_array_equal(got, want, err_msg=f"{shape} {qtype} threads={t}")


@pytest.mark.parametrize("pin", [None, "first", "last"])
def test_same_results_under_a_busy_competitor(pin):
    rng = np.random.default_rng(2)
    cases = [(problem(rng, *shape, "q4_1"), shape) for shape in SHAPES[1:5]]
    _core.set_threads(1)
    refs = [both(x, w, "q4_1") for (x, w), _ in cases]
    _core.set_threads(2)
    with competitors(2 if pin is None else 1, {None: None, "first": cpus()[0], "last": cpus()[-1]}[pin]):
        for _ in range(50):
            for ((x, w), shape), ref in zip(cases, refs):
                for got, want in zip(both(x, w, "q4_1"), ref):
                    np.testing.assert_array_equal(got, want, err_msg=f"{shape}")


@pytest.mark.parametrize("busy", [0, 1])
def test_many_small_jobs_in_a_row_leave_finished_outputs_alone(busy):
    # thousands of jobs of a few microseconds, alternating two task functions and shapes, so a worker that
    # wakes late meets a newer job; an output is poisoned once checked and must stay so until it is reused
    # (a late worker writing into a finished job's output would show)
    rng = np.random.default_rng(3)
    jobs = [(problem(rng, 1, 512, 256, "q8_0"), "q8_0"), (problem(rng, 2, 256, 576, "q4_0"), "q4_0"),
            (problem(rng, 1, 1536, 576, "q4_1"), "q4_1")]
    _core.set_threads(1)
    refs = [(_core.matmul(x, w, q), _core.matmul_q8(x, w, q)) for (x, w), q in jobs]
    _core.set_threads(2)
    outs = [[np.full(ref[0].shape, np.nan, np.float32) for _ in range(4)] for ref in refs]
    with competitors(busy):
        for i in range(6000):
            j, q8 = i % 3, i // 3 % 2
            (x, w), q = jobs[j]
            out = outs[j][i // 3 % 4]
            assert np.isnan(out).all(), f"job {i}: an output was written after its call returned"
            (_core.matmul_q8 if q8 else _core.matmul)(x, w, q, out=out)
            np.testing.assert_array_equal(out, refs[j][q8], err_msg=f"job {i}")
            out.fill(np.nan)


def test_two_python_threads_call_concurrently():
    rng = np.random.default_rng(4)
    cases = [problem(rng, n, rows, 576, "q4_1") for n, rows in ((1, 1536), (5, 576), (1, 49152 // 8), (17, 300))]
    _core.set_threads(1)
    refs = [both(x, w, "q4_1") for x, w in cases]
    _core.set_threads(2)
    errors = []

    def caller(order):
        try:
            for _ in range(100):
                for k in order:
                    for got, want in zip(both(*cases[k], "q4_1"), refs[k]):
                        np.testing.assert_array_equal(got, want)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(order,)) for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_set_threads_between_calls():
    rng = np.random.default_rng(5)
    x, w = problem(rng, 1, 1536, 576, "q4_0")
    _core.set_threads(1)
    ref = both(x, w, "q4_0")
    for t in (2, 1, 3, 2, 4, 2, 2, 1, 2):
        _core.set_threads(t)
        assert _core.get_threads() == t
        for _ in range(20):
            for got, want in zip(both(x, w, "q4_0"), ref):
                np.testing.assert_array_equal(got, want, err_msg=f"threads={t}")


# --- fork --------------------------------------------------------------------------------------------

def _child_matmul(x, w, ref, conn):
    _core.set_threads(2)
    conn.send(all(bool(np.array_equal(_core.matmul_q8(x, w, "q4_1"), ref)) for _ in range(200)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")
def test_forked_child_works_while_the_parent_is_busy():
    # fork() from one Python thread while another keeps the pool busy: the child gets no workers and starts its own
    rng = np.random.default_rng(6)
    x, w = problem(rng, 1, 1536, 576, "q4_1")
    _core.set_threads(1)
    ref = _core.matmul_q8(x, w, "q4_1")
    _core.set_threads(2)
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [_core.matmul_q8(x, w, "q4_1") for _ in iter(stop.is_set, True)])
    busy.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for _ in range(3):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_matmul, args=(x, w, ref, child))
            proc.start()
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                pytest.fail("the pool deadlocked in a forked child")
            assert proc.exitcode == 0 and parent.recv() is True
    finally:
        stop.set()
        busy.join()
    np.testing.assert_array_equal(_core.matmul_q8(x, w, "q4_1"), ref)


# --- the real model ------------------------------------------------------------------------------------

def test_smollm2_decode_is_the_same_under_contention(smollm2_mgpt):
    # same thread count, so the same shares: only who runs them changes
    m = minigpt.Model(smollm2_mgpt, backend="c", threads=2)
    ids = m.tokenize("The capital of France is")

    def run():
        m.reset()
        out = [m.eval(ids).copy()]
        for _ in range(8):
            out.append(m.eval([int(np.argmax(out[-1]))]).copy())
        return np.stack(out)

    quiet = run()
    with competitors(1):
        busy = run()
    np.testing.assert_array_equal(busy, quiet)
    m.kern.set_threads(1)
    np.testing.assert_allclose(run(), quiet, rtol=0, atol=1e-4 * np.abs(quiet).max())
