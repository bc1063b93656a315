"""The model: one weights table (weights.py), one decoder (decoder.py, the reference the C decoder
mirrors), and one small file per architecture with what is particular to it (names, conversion hooks,
template default). The architectures' feature rows are in minigpt/config.py."""

from ..config import ARCHITECTURES
from . import gemma3, llama

ARCH_FILES = {"llama": llama, "gemma3": gemma3}   # by Config.arch
# a GGUF's general.architecture -> the minigpt architecture it converts into
GGUF_ARCHS = {g: arch for arch, f in ARCH_FILES.items() for g in f.GGUF_ARCHS}
assert set(ARCH_FILES) == set(ARCHITECTURES), "every feature row needs its architecture file"
