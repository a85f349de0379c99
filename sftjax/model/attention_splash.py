"""Packed causal attention for TPUs: JAX's splash attention (Pallas/Mosaic) with ``SegmentIds`` and a causal mask.

Splash skips the tiles the static causal mask rules out and masks document boundaries inside the rest; its forward and
backward kernels are maintained in JAX (``jax.experimental.pallas.ops.tpu.splash_attention``). Grouped-query
attention uses the multi-query kernel once per key/value head, with that head's group of query heads. Splash applies no
softmax scale, so queries are scaled first. ``interpret=True`` runs the kernels on the CPU (how the tests cover them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

MIN_BLOCK = 128  # TPU tiles: sequence blocks are multiples of the 128-lane width
DEFAULT_BLOCK = 512


def fit_block(seq: int, block: int = DEFAULT_BLOCK) -> int:
    """The largest multiple of 128 that is <= ``block`` and divides ``seq`` (``seq`` must be a multiple of 128)."""
    b = min(block, seq) // MIN_BLOCK * MIN_BLOCK
    while b > MIN_BLOCK and seq % b:
        b -= MIN_BLOCK
    return b


@functools.lru_cache(maxsize=32)
def _kernel(seq: int, group: int, causal: bool, block: int, interpret: bool):
    mask_type = splash.CausalMask if causal else splash.FullMask
    mask = splash.MultiHeadMask([mask_type((seq, seq)) for _ in range(group)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    with jax.ensure_compile_time_eval():  # the mask tables are constants, never tracers of the first caller's trace
        return splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, segment_ids, *, causal: bool = True, interpret: bool = False):
    """q [b, s, h, d], k/v [b, s, kv, d], segment_ids [b, s] -> [b, s, h, d]."""
    b, s, h, d = q.shape
    kv = k.shape[2]
    kernel = _kernel(s, h // kv, causal, fit_block(s), interpret)
    qg = jnp.transpose((q * (d ** -0.5)).reshape(b, s, kv, h // kv, d), (0, 2, 3, 1, 4))  # [b, kv, g, s, d]
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [b, kv, s, d]
    ids = splash.SegmentIds(q=segment_ids, kv=segment_ids)
    per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over key/value heads, segment ids shared
    out = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(qg, kh, vh, ids)  # over rows
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, s, h, d).astype(q.dtype)
