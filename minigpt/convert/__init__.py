"""Checkpoints in, .mgpt files out."""

from .convert import QUANT_TYPES, convert

__all__ = ["convert", "QUANT_TYPES"]
