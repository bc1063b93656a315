"""One module per architecture: a forward pass over explicit weights."""

from . import gemma3, llama

FORWARD = {"llama": llama.forward, "gemma3": gemma3.forward}   # by Config.arch
