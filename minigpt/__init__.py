"""minigpt: run quantized GPT-style language models on a CPU, with every step in plain sight."""

from .api import Model, load
from .chat import ChatSession
from .errors import MinigptError

__version__ = "0.1.0"
__all__ = ["load", "Model", "ChatSession", "MinigptError", "__version__"]
