"""Training strategies as stage lists (Dong et al. 2023): how specialized and general data are ordered and mixed.

multitask         one stage mixing every source
sequential        one stage per source, in ``order`` (default: specialized, then general)
mixed_sequential  the specialized sources mixed, then the general ones
dmt               dual-stage mixed fine-tuning: the specialized sources mixed, then the general sources plus a
                  fraction ``k`` of each specialized source's amount (k=1/256 in the paper's best setting)

``amounts`` gives a source's data amount (the paper's 1, 1/4, ... 1/256 axis), ``amount`` that of every other
source; every stage runs ``epochs``. ``schedule=stage`` restarts the learning-rate schedule at each stage (each
stage's ``lr`` is set to ``optim.lr``); ``run`` (default) keeps one schedule over the whole run.
"""

from __future__ import annotations

from fractions import Fraction

from sftjax.config.base import ConfigError
from sftjax.config.data import DataConfig, MixConfig, StageConfig, StrategyConfig, parse_amount
from sftjax.config.train import OptimConfig

STRATEGIES = ("none", "multitask", "sequential", "mixed_sequential", "dmt")


def positive_amount(value, key: str) -> Fraction:
    f = parse_amount(value, key)
    if f <= 0:
        raise ConfigError(f"config key '{key}': expected a positive fraction, got {value!r}")
    return f


def _scaled(amount: str, k: Fraction, key: str) -> str:
    """An amount times k: a fraction stays a fraction, a count becomes a smaller count (at least one)."""
    a = positive_amount(amount, key)
    if a > 1:
        return str(max(1, int(a * k)))
    return str(a * k)


def strategy_stages(s: StrategyConfig, data: DataConfig, optim: OptimConfig | None = None) -> list[StageConfig]:
    if s.name not in STRATEGIES:
        raise ConfigError(f"config key 'strategy.name': expected one of {STRATEGIES}, got {s.name!r}")
    if s.schedule not in ("run", "stage"):
        raise ConfigError(f"config key 'strategy.schedule': expected run | stage, got {s.schedule!r}")
    if s.name == "none":
        return []
    if data.stages:
        raise ConfigError(f"config key 'strategy': strategy={s.name} builds data.stages, but the data config sets "
                          "its own stages; use one or the other")
    for key in ("specialized", "general"):
        unknown = [n for n in getattr(s, key) if n not in data.sources]
        if unknown:
            raise ConfigError(f"config key 'strategy.{key}': {unknown} are not data sources "
                              f"(sources: {sorted(data.sources)})")
    if not s.specialized and not s.general:
        raise ConfigError("config key 'strategy.specialized': expected at least one specialized or general source")
    if s.epochs <= 0:
        raise ConfigError(f"config key 'strategy.epochs': expected a positive number, got {s.epochs}")
    unknown = [n for n in s.amounts if n not in data.sources]
    if unknown:
        raise ConfigError(f"config key 'strategy.amounts': {unknown} are not data sources")

    def mix(names, scale: Fraction | None = None) -> dict[str, MixConfig]:
        out = {}
        for n in names:
            amount = str(s.amounts.get(n, s.amount))
            out[n] = MixConfig(amount=_scaled(amount, scale, f"strategy.amounts.{n}") if scale else amount)
        return out

    def stage(name, names, scale=None) -> StageConfig:
        lr = (optim or OptimConfig()).lr if s.schedule == "stage" else None
        return StageConfig(name=name, epochs=s.epochs, mix=mix(names, scale), lr=lr)

    if s.name == "multitask":
        return [stage("multitask", s.specialized + s.general)]
    if s.name == "sequential":
        order = list(s.order) or s.specialized + s.general
        unknown = [n for n in order if n not in data.sources]
        if unknown:
            raise ConfigError(f"config key 'strategy.order': {unknown} are not data sources")
        return [stage(n, [n]) for n in order]
    if not s.specialized or not s.general:
        raise ConfigError(f"config key 'strategy.general': {s.name} needs both specialized and general sources")
    if s.name == "mixed_sequential":
        return [stage("specialized", s.specialized), stage("general", s.general)]
    k = positive_amount(s.k, "strategy.k")
    if k > 1:
        raise ConfigError(f"config key 'strategy.k': expected a fraction in (0, 1], got {s.k!r}")
    second = stage("general_plus_k", s.general)
    second.mix.update(mix(s.specialized, k))
    return [stage("specialized", s.specialized), second]
