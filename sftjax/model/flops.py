"""Parameter counts and model FLOPs, from the config alone (no allocation)."""

from __future__ import annotations

from sftjax.config import ModelConfig


def param_count(cfg: ModelConfig) -> dict[str, int]:
    d, f, h, kv, hd, L, V = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                             cfg.resolved_head_dim, cfg.num_layers, cfg.vocab_size)
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if cfg.qkv_bias:
        attn += h * hd + 2 * kv * hd
    per_layer = attn + 3 * d * f + 2 * d
    embed = V * d
    head = 0 if cfg.tie_embeddings else d * V
    layers = L * per_layer + d  # + final norm
    return {"embedding": embed, "lm_head": head, "layers": layers, "total": embed + head + layers}


def matmul_params(cfg: ModelConfig) -> int:
    """N in 6·N·tokens: every parameter used in a matmul. The input embedding is a lookup, so it is left out;
    the output projection (the lm_head, or the tied embedding used as one) is a matmul and is counted."""
    c = param_count(cfg)
    return c["layers"] + cfg.hidden_size * cfg.vocab_size


def attention_flops(cfg: ModelConfig, attended_pairs: float) -> float:
    """Forward+backward FLOPs of QK^T and PV for ``attended_pairs`` (query, key) pairs per layer and head:
    2 matmuls x 2 FLOPs x head_dim forward, twice that backward."""
    return 12.0 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * attended_pairs


def train_flops(cfg: ModelConfig, tokens: float, attended_pairs: float) -> float:
    return 6.0 * matmul_params(cfg) * tokens + attention_flops(cfg, attended_pairs)


def attended_pairs(segment_ids, positions) -> float:
    """Causal (query, key) pairs inside real documents of a packed batch: sum of position+1 over non-padding
    tokens (positions restart at 0 in every document)."""
    real = segment_ids > 0
    return float((positions[real] + 1).sum())
