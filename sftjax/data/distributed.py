"""Tokenization split across processes: each renders only its share of a source's records, then all exchange tokens.

Tokenizing (chat templates, loss-mask spans) is the expensive part of preparing SFT data, so process p of P renders
records p, p+P, p+2P, ... only. The resulting token arrays are then all-gathered, and every process rebuilds the
same examples in record order. Everything after that (amounts, mixing, packing) is a cheap, deterministic function of
the examples and the seed, run identically everywhere; each process keeps only its own rows of every global batch.
This is what makes a run's batches independent of the process count: 1 and 2 processes see the same rows, in the
same order. An error on any process (a malformed record) is exchanged too, so every process stops with the error of
the lowest failing record (the one a single process would have hit first) instead of hanging in a collective.

Written by hand: Grain shards reads by process, but its sharded pipelines then pack and mix per process, which ties
the data order to the process count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sftjax.config import ConfigError
from sftjax.data.packing import shifted


@dataclass
class Shard:
    """The tokenized share of one source on this process: examples with their record indices, and counters."""

    indices: list[int] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    error: tuple[int, str] | None = None  # (record index, message) of the first record that failed here


def _allgather(x: np.ndarray) -> np.ndarray:
    """[P, *x.shape]: every process's x (all of the same shape and dtype)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def encode(shard: Shard) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A shard as flat arrays: a header [examples, tokens, truncated, dropped, error index, error bytes] and the
    payload (record indices, lengths, tokens = inputs + the last target, loss mask)."""
    lens = np.asarray([len(e["input_ids"]) for e in shard.examples], np.int32)
    tokens = np.concatenate([np.r_[e["input_ids"], e["targets"][-1:]] for e in shard.examples] or [np.zeros(0)])
    mask = np.concatenate([e["loss_mask"] for e in shard.examples] or [np.zeros(0)])
    err_at, err = shard.error if shard.error else (-1, "")
    err_bytes = np.frombuffer(err.encode(), np.uint8)
    header = np.asarray([len(lens), len(tokens), shard.truncated, shard.dropped, err_at, len(err_bytes)], np.int32)
    payload = {"indices": np.asarray(shard.indices, np.int32), "lens": lens, "tokens": tokens.astype(np.int32),
               "mask": mask.astype(np.uint8), "error": err_bytes}
    return header, payload


def decode(headers: np.ndarray, payloads: list[dict[str, np.ndarray]], source_id: int) -> Shard:
    """The union of every process's shard, examples in record order; the error of the lowest failing record."""
    merged, errors = [], []
    out = Shard(truncated=int(headers[:, 2].sum()), dropped=int(headers[:, 3].sum()))
    for h, p in zip(headers, payloads, strict=True):
        n_ex, n_tok, err_at, err_len = int(h[0]), int(h[1]), int(h[4]), int(h[5])
        if err_at >= 0:
            errors.append((err_at, bytes(p["error"][:err_len]).decode()))
        lens = p["lens"][:n_ex].astype(np.int64)
        tok_at = np.concatenate([[0], np.cumsum(lens + 1)])  # an example of n slots has n + 1 tokens ...
        mask_at = np.concatenate([[0], np.cumsum(lens)])  # ... and n loss flags
        assert tok_at[-1] == n_tok, (tok_at[-1], n_tok)
        for i in range(n_ex):
            trained = np.r_[False, p["mask"][mask_at[i] : mask_at[i + 1]].astype(bool)]
            tokens = p["tokens"][tok_at[i] : tok_at[i + 1]]
            merged.append((int(p["indices"][i]), shifted(tokens, trained, source_id)))
    merged.sort(key=lambda item: item[0])
    out.indices = [i for i, _ in merged]
    out.examples = [e for _, e in merged]
    out.error = min(errors) if errors else None
    return out


def exchange(shard: Shard, source_id: int, allgather=_allgather) -> Shard:
    """Every process's shard of one source, on every process (a collective: all processes call it in step)."""
    header, payload = encode(shard)
    headers = allgather(header)
    gathered = {}
    for key, column in ({"indices": 0, "lens": 0, "tokens": 1, "mask": 1, "error": 5}).items():
        width = max(1, int(headers[:, column].max()))
        padded = np.zeros(width, payload[key].dtype)
        padded[: len(payload[key])] = payload[key]
        gathered[key] = allgather(padded)
    payloads = [{k: v[i] for k, v in gathered.items()} for i in range(len(headers))]
    return decode(headers, payloads, source_id)


def raise_if_failed(shard: Shard) -> None:
    if shard.error is not None:
        raise ConfigError(shard.error[1])
