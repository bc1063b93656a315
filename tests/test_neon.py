"""The x8 kernels checked in C alone (tests/c/x8_check.c against a float64 reference), so that the ARM64
NEON kernels are tested on this x86 machine: the harness is cross-built with aarch64-linux-gnu-gcc and run
under qemu-aarch64 as a CPU with the dotprod extension (-cpu max: the SDOT kernels) and one without
(-cpu cortex-a57: the ARMv8.0 kernels). Built natively too, it checks the host's own x8 kernels the same way.
The KV cache's row slots (tests/c/kv_check.c: f16 and q8_0 conversions, ops_neon.c on ARM64) likewise.

Needs gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them); the ARM64 tests skip without them.
"""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
HARNESS = os.path.join(ROOT, "tests", "c", "x8_check.c")
KV_HARNESS = os.path.join(ROOT, "tests", "c", "kv_check.c")
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"

pytestmark = pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree's csrc/")


def build(cc, out, *flags, harness=HARNESS):
    """cc harness csrc/*.c -> out; fails the test with the compiler's output if the build fails."""
    cmd = [cc, "-O2", "-Wall", "-Wno-unused-function", *flags, "-I", CSRC, harness,
           *sorted(glob.glob(os.path.join(CSRC, "*.c"))), "-o", str(out), "-lm", "-pthread"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return str(out)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def arm64_harness(tmp_path_factory):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    # static: qemu then needs no aarch64 sysroot (-L) to find the C library
    return build(CROSS_CC, tmp_path_factory.mktemp("arm64") / "x8_check", "-static")


@pytest.mark.parametrize("cpu, dotprod", [("max", "yes"), ("cortex-a57", "no")])
def test_neon_x8_kernels_under_qemu(arm64_harness, cpu, dotprod):
    rc, out = run([QEMU, "-cpu", cpu, arm64_harness])
    assert f"isa: neon, dotprod: {dotprod}\n" in out, out
    assert rc == 0 and "PASS" in out, out


@pytest.fixture(scope="module")
def native_harness(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return build(cc, tmp_path_factory.mktemp("native") / "x8_check")


@pytest.mark.parametrize("isa", ["best", "avx2"])
def test_native_x8_kernels(native_harness, isa):
    rc, out = run([native_harness, isa])
    if rc == 2:
        pytest.skip(f"this CPU or build has no {isa} kernels: {out.strip()}")
    if "isa: scalar" in out:
        pytest.skip("no x8 kernels on this machine")
    assert rc == 0 and "PASS" in out, out


# --- the KV cache's row slots (f16, q8_0): ops_neon.c under qemu, the host's own natively

def _cross_compiler():
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")


@pytest.fixture(scope="module")
def arm64_kv_harness(tmp_path_factory):
    _cross_compiler()
    return build(CROSS_CC, tmp_path_factory.mktemp("arm64kv") / "kv_check", "-static", harness=KV_HARNESS)


@pytest.mark.parametrize("isa", ["neon", "scalar"])
def test_kv_rows_under_qemu(arm64_kv_harness, isa):
    rc, out = run([QEMU, "-cpu", "cortex-a57", arm64_kv_harness, isa])
    assert f"isa: {isa}\n" in out, out
    assert rc == 0 and "PASS" in out, out


@pytest.fixture(scope="module")
def native_kv_harness(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return build(cc, tmp_path_factory.mktemp("nativekv") / "kv_check", harness=KV_HARNESS)


@pytest.mark.parametrize("isa", ["best", "avx2", "scalar"])
def test_native_kv_rows(native_kv_harness, isa):
    rc, out = run([native_kv_harness, isa])
    if rc == 2:
        pytest.skip(f"this CPU or build has no {isa} kernels: {out.strip()}")
    assert rc == 0 and "PASS" in out, out
