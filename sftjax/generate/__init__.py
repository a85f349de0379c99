"""Text generation with a KV cache (prefill + on-device decode loop) and next-token sampling."""

from sftjax.generate.decode import generate
from sftjax.generate.sampling import greedy, sample_logits

__all__ = ["generate", "greedy", "sample_logits"]
