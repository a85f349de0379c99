"""Llama-family Flax NNX model and attention implementations."""

from sftjax.model.llama import Llama

__all__ = ["Llama"]
