"""Every concrete hostile input of issue #12 (tests/hostile.py) as a user runs it: one `error:` line and
exit 1, or it works; no hang, bounded memory, nothing left behind. tools/hostile.py prints the same cases
as a table with times and memory."""

import resource

import pytest

import hostile

pytestmark = pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux (prlimit, wait4, FIFOs)")

HANG_TIMEOUT = 30   # seconds; a case that passes takes about one


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return hostile.Workspace(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", hostile.CASES, ids=[c.name for c in hostile.CASES])
def test_hostile_input(case, workspace):
    r = hostile.run(case, workspace, timeout=HANG_TIMEOUT)
    bad = hostile.problems(case, r, workspace)
    assert not bad, f"{r.display}: {'; '.join(bad)}\nstderr: {r.stderr[:1000]}"
