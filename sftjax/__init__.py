"""sftjax: supervised fine-tuning of Llama-family models in JAX/Flax NNX, built to study data composition."""

__version__ = "0.1.0"
