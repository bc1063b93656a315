"""Run every hostile input of issue #12 (tests/hostile.py) as a user would and print a table: the
command, its exit code, its error line, seconds, peak memory, PASS or FAIL.

    python tools/hostile.py [-k TEXT] [--timeout S] [--seconds S] [--keep DIR]

A case passes when it ends with one `error:` line and exit 1 (or works, where that is right) within
--seconds, below tests/hostile.MAX_MB of peak memory, and leaves nothing behind; see tests/hostile.py.
Exit status: the number of failing cases (0: all pass).
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # this checkout's minigpt, and the case list

import hostile  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="Only cases whose name holds this text.")
    ap.add_argument("--timeout", type=float, default=30, help="Kill a case after this many seconds.")
    ap.add_argument("--seconds", type=float, default=5, help="A case that takes longer fails.")
    ap.add_argument("--keep", default=None, help="Build the inputs in this folder and keep them.")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="minigpt-hostile-")
    w = hostile.Workspace(root)
    cases = [c for c in hostile.CASES if a.k.lower() in c.name.lower()]
    print(f"{'case':<52} {'exit':>4} {'s':>5} {'MB':>4}  verdict  command / error line")
    failed, kind = 0, None
    for case in cases:
        if case.kind != kind:
            kind = case.kind
            print(f"--- {hostile.KINDS[kind]}")
        r = hostile.run(case, w, a.timeout)
        bad = hostile.problems(case, r, w, a.seconds)
        failed += bool(bad)
        code = "kill" if r.returncode is None else r.returncode
        line = r.error_line if not case.works else "(works)"
        print(f"{case.name:<52} {code:>4} {r.seconds:5.1f} {r.peak_mb:4.0f}  {'FAIL' if bad else 'PASS':<7}  {r.display}")
        print(f"{'':<78}  {line[:160] + ('...' if len(line) > 160 else '')}")
        if bad:
            print(f"{'':<78}  FAIL: {'; '.join(bad)}")
    print(f"{len(cases) - failed} of {len(cases)} cases pass" + (f"; inputs in {root}" if a.keep else ""))
    if not a.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
