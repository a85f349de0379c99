"""The model part of the schema: one Llama-family architecture and how checkpoints store it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import OmegaConf

from sftjax.config.base import require


DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "sdpa", "pallas_gpu", "splash")
REMAT_POLICIES = ("none", "minimal", "full", "dots", "dots_no_batch")
ARCHITECTURES = ("llama", "mistral", "qwen2")
EMBEDDED_MODELS = ("smollm2-135m-instruct",)  # shipped inside a PyPI package (see sftjax.ckpt.gguf)


@dataclass
class RopeScalingConfig:
    """Llama 3.1-style frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs)."""

    type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def validate(self) -> None:
        require(self.type == "llama3", "model.rope_scaling.type", "'llama3'", self.type)
        require(self.factor >= 1.0, "model.rope_scaling.factor", "a number >= 1", self.factor)
        require(
            self.high_freq_factor > self.low_freq_factor > 0,
            "model.rope_scaling.high_freq_factor",
            f"a number > low_freq_factor ({self.low_freq_factor}) > 0",
            self.high_freq_factor,
        )
        require(
            self.original_max_position_embeddings > 0,
            "model.rope_scaling.original_max_position_embeddings",
            "a positive integer",
            self.original_max_position_embeddings,
        )


@dataclass
class ModelConfig:
    """One Llama-family architecture; Llama 1/2/3, Mistral, Qwen2 and SmolLM2 differ only in these flags."""

    name: str = "tiny"
    # The Hugging Face model_type this maps to on export (llama | mistral | qwen2); it changes no computation.
    architecture: str = "llama"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScalingConfig] = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position_embeddings: int = 2048
    init_std: float = 0.02
    # Compute dtype of activations and matmuls; parameters are always kept in float32.
    # auto: bfloat16 on GPU/TPU, float32 on CPU.
    dtype: str = "auto"
    scan_layers: bool = False  # lax.scan over layers (fast compile) or unrolled (fastest on the CPU backend)
    remat: str = "none"
    # auto: splash on TPU, sdpa (cuDNN) on GPU, blockwise on CPU; pallas_gpu: the fused segment-aware GPU kernel
    attention: str = "auto"
    attention_block: int = 256
    # "" = random init; "hf:DIR" (or "hf:org/name" with a network) = a Hugging Face model; otherwise a run directory
    # or an sftjax checkpoint directory (its latest checkpoint's parameters; the optimizer starts fresh).
    init_from: str = ""

    def validate(self) -> None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            require(getattr(self, key) > 0, f"model.{key}", "a positive integer", getattr(self, key))
        require(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            f"a divisor of model.num_heads ({self.num_heads})",
            self.num_kv_heads,
        )
        if self.head_dim is None:
            require(
                self.hidden_size % self.num_heads == 0,
                "model.head_dim",
                f"set explicitly, since hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                None,
            )
        else:
            require(self.head_dim > 0 and self.head_dim % 2 == 0, "model.head_dim", "a positive even integer",
                     self.head_dim)
        require(self.dtype in DTYPES, "model.dtype", f"one of {DTYPES}", self.dtype)
        require(self.remat in REMAT_POLICIES, "model.remat", f"one of {REMAT_POLICIES}", self.remat)
        require(self.attention in ATTENTION_IMPLS, "model.attention", f"one of {ATTENTION_IMPLS}", self.attention)
        require(self.attention_block > 0, "model.attention_block", "a positive integer", self.attention_block)
        require(self.rope_theta > 0, "model.rope_theta", "a positive number", self.rope_theta)
        require(self.rms_norm_eps > 0, "model.rms_norm_eps", "a positive number", self.rms_norm_eps)
        require(self.init_std > 0, "model.init_std", "a positive number", self.init_std)
        require(self.architecture in ARCHITECTURES, "model.architecture", f"one of {ARCHITECTURES}",
                 self.architecture)
        if self.init_from.startswith("hf:"):
            require(len(self.init_from) > 3, "model.init_from", "'hf:DIR' or 'hf:org/name'", self.init_from)
        if self.init_from.startswith("embedded:"):
            require(self.init_from[9:] in EMBEDDED_MODELS, "model.init_from",
                     f"one of {['embedded:' + m for m in EMBEDDED_MODELS]}", self.init_from)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads


def to_model_config(values: dict) -> ModelConfig:
    """A ModelConfig from a plain dict (as stored in checkpoints), type-checked by the schema."""
    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), values))
    assert isinstance(obj, ModelConfig)
    return obj
