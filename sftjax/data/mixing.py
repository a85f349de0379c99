"""Data amounts and weighted mixing on Grain: which examples of each source a stage sees, and in what order.

Amounts are nested by construction: each source gets one fixed permutation (seeded by the data seed and the source's
name), and an amount takes a prefix of it, so the 1/256 subset is inside the 1/64 subset, which is inside 1/16, and
so on, and a source's subset does not change when other sources are added. Mixing uses Grain's
``MapDataset.mix``, which realizes the weights exactly in order (0.7/0.3 gives 70 of every 100), over sources that
each reshuffle per epoch (``shuffle(seed).repeat()``), so a stage is a deterministic, random-access stream: the
iterator's state is a few integers and resuming is exact.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import grain
import numpy as np

from sftjax.config import ConfigError
from sftjax.config.data import parse_amount


@dataclass(frozen=True)
class MixEntry:
    """One source's share of a stage: ``amount`` (1 = all, a fraction like "1/16", or a whole count > 1) of its examples,
    drawn with sampling ``weight`` (None: proportional to the selected amount, i.e. uniform over the pooled data)."""

    amount: float | int | str = 1
    weight: float | None = None


def example_count(amount, n: int, where: str) -> int:
    """How many of ``n`` examples an amount selects: 1 is all of them, a fraction in (0, 1) that share (at least
    one example), a whole number above 1 that many."""
    value = parse_amount(amount, where)
    if value == 1:
        return n  # "amount: 1" is the whole source (a count of one example is not a useful amount)
    if value > 1 and value.denominator == 1:
        count = int(value)
        if not 1 <= count <= n:
            raise ConfigError(f"config key '{where}': a count between 1 and the source's {n} examples, got {count}")
        return count
    if not 0 < value <= 1:
        raise ConfigError(f"config key '{where}': a fraction in (0, 1] (or a whole count), got {amount!r}")
    return max(1, round(float(value) * n))


def source_seed(seed: int, name: str) -> np.random.SeedSequence:
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, digest])


def select(n: int, count: int, seed: int, name: str) -> np.ndarray:
    """Indices of the ``count`` examples an amount keeps: a prefix of the source's fixed permutation (nested)."""
    return np.random.default_rng(source_seed(seed, name)).permutation(n)[:count]


def example_weights(mix: dict[str, MixEntry], counts: dict[str, int], mean_tokens: dict[str, float] | None,
                    where: str) -> list[float]:
    """Per-source sampling probabilities over examples. ``mean_tokens`` given: the weights are token shares, so a
    source of long examples is drawn less often per example."""
    raw = []
    for name, entry in mix.items():
        w = float(counts[name]) if entry.weight is None else float(entry.weight)
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"config key '{where}.{name}.weight': expected a finite number >= 0, got {entry.weight!r}")
        raw.append(w / mean_tokens[name] if mean_tokens else w)
    total = sum(raw)
    if total <= 0:
        raise ConfigError(f"config key '{where}': the weights are all zero; expected at least one positive weight")
    return [w / total for w in raw]


def stage_stream(examples: dict[str, Sequence], mix: dict[str, MixEntry], *, seed: int, where: str,
                 weight_by: str = "examples", total: int | None = None) -> tuple[grain.MapDataset, dict]:
    """The stage's examples in order, as a MapDataset (infinite unless ``total`` cuts it), and what was selected
    ({source: {"selected": k, "available": n, "weight": p}}) for data_stats.json."""
    unknown = sorted(set(mix) - set(examples))
    if unknown:
        raise ConfigError(f"config key '{where}': mixes unknown source(s) {unknown}; sources are {sorted(examples)}")
    counts, parts, lengths = {}, [], {}
    for name in mix:
        pool = examples[name]
        if not len(pool):
            raise ConfigError(f"data source '{name}' has no usable examples")
        idx = select(len(pool), example_count(mix[name].amount, len(pool), f"{where}.{name}.amount"), seed, name)
        counts[name] = len(idx)
        chosen = [pool[i] for i in idx]
        lengths[name] = float(np.mean([len(x["input_ids"]) for x in chosen]))
        order_seed = int(source_seed(seed + 1, name).generate_state(1)[0] % 2**31)
        parts.append(grain.MapDataset.source(chosen).shuffle(seed=order_seed).repeat())
    if weight_by not in ("examples", "tokens"):
        raise ConfigError(f"config key 'data.weight_by': expected 'examples' or 'tokens', got {weight_by!r}")
    weights = example_weights(mix, counts, lengths if weight_by == "tokens" else None, where)
    stream = grain.MapDataset.mix(parts, weights)
    if total is not None:
        stream = stream[:total]
    info = {name: {"selected": counts[name], "available": len(examples[name]), "weight": w}
            for name, w in zip(mix, weights, strict=True)}
    return stream, info
