"""The data part of the schema: sources, their formats, mixtures, stages and the strategies that build them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from sftjax.config.base import ConfigError, require
from sftjax.config.train import OptimConfig


def parse_amount(value, key: str) -> Fraction:
    """A configured data amount as an exact fraction: a share of a source ("1/16", 0.25; 1 is the whole source) or a
    count of examples (a whole number above 1). The one parser of amounts: mixing turns it into an example count,
    strategies scale it, reports show it."""
    try:
        if isinstance(value, bool):
            raise ValueError
        amount = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"config key '{key}': expected a fraction like 1/16 or a whole count, got {value!r}") from None
    return amount


REDACT_KINDS = ("email", "phone", "credit_card", "ip", "iban", "url")
DEDUP_MODES = ("none", "exact", "near")
FORMATS = ("alpaca", "messages", "prompt_completion", "text", "qa", "masking", "completion", "completion_no_system")
TEMPLATES = ("auto", "vicuna_v1.1", "llama2", "chatml", "none")


@dataclass
class FilterConfig:
    """Drop (or keep only) the records whose ``field`` matches ``regex`` (e.g. code/math-tagged chat data)."""

    field: str = "???"
    regex: str = "???"
    action: str = "drop"  # drop | keep


@dataclass
class SourceConfig:
    """Where a source lives and how its records read: ``fields`` maps the format's field names to the file's."""

    path: str = "???"  # JSONL, JSON array, Parquet, CSV, an HF dataset saved to disk, or a hub dataset name
    format: str = "messages"
    fields: dict[str, str] = field(default_factory=dict)
    filter: Optional[FilterConfig] = None
    kind: str = "auto"  # auto | jsonl | json | parquet | csv | hf_disk | hub
    split: str = "train"
    on_bad_record: str = "error"  # error | drop (counted in data_stats.json)
    # Privacy and hygiene, before tokenization (sftjax.data.hygiene; settings in data.hygiene):
    redact: Any = field(default_factory=list)  # PII kinds to replace by <KIND> placeholders, or "all"
    dedup: str = "none"  # none | exact (normalized text) | near (MinHash LSH); within and across sources
    decontaminate: bool = False  # drop examples that overlap the eval suites' prompts or references

    def redact_kinds(self) -> list[str]:
        return list(REDACT_KINDS) if self.redact == "all" else list(self.redact or [])


@dataclass
class HygieneConfig:
    """Settings shared by every source's hygiene stage."""

    phone_region: str = "US"  # how numbers without a country code are read (ISO 3166 code)
    near_threshold: float = 0.8  # near duplicates: estimated Jaccard similarity of word shingles, in (0, 1]
    near_shingle: int = 5  # words per shingle
    near_num_perm: int = 128  # MinHash permutations (more: a closer estimate, slower)
    ngram: int = 13  # decontamination: shared word n-grams (13, as in GPT-3's and Llama's studies)
    min_ngram: int = 8  # eval texts shorter than ngram use their own length, down to this; shorter ones are skipped
    overlap: float = 0.0  # share of an eval text's n-grams a training example must hold (0: any one)


@dataclass
class MixConfig:
    """A source's share of a stage. amount: 1 = all, a fraction ("1/16", 0.25) or a whole count > 1; nested and
    seeded. weight: sampling share (by data.weight_by); unset = proportional to the selected amount."""

    weight: Optional[float] = None
    amount: str = "1"


@dataclass
class StageConfig:
    """One stage of a curriculum: its own mixture and length (epochs over the selected data, or steps)."""

    name: str = "main"
    epochs: Optional[float] = None
    steps: Optional[int] = None
    mix: dict[str, MixConfig] = field(default_factory=dict)
    # Its own learning-rate schedule (warmup + cosine over this stage, restarting at its first step); unset keys
    # take optim.*. When no stage sets lr, one schedule spans the whole run.
    lr: Optional[float] = None
    warmup_ratio: Optional[float] = None
    min_lr_ratio: Optional[float] = None

    def optim(self, base: "OptimConfig") -> "OptimConfig | None":
        if self.lr is None and self.warmup_ratio is None and self.min_lr_ratio is None:
            return None
        return dataclasses.replace(
            base, lr=base.lr if self.lr is None else self.lr,
            warmup_ratio=base.warmup_ratio if self.warmup_ratio is None else self.warmup_ratio,
            min_lr_ratio=base.min_lr_ratio if self.min_lr_ratio is None else self.min_lr_ratio)


@dataclass
class StrategyConfig:
    """Builds data.stages from the specialized and general sources (sftjax.config.strategy; conf/strategy)."""

    name: str = "none"  # none | multitask | sequential | mixed_sequential | dmt
    specialized: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # sequential: the source order (default specialized, general)
    epochs: float = 3.0  # per stage
    amount: str = "1"  # the data amount of every source without its own entry in amounts (a sweep axis)
    amounts: dict[str, str] = field(default_factory=dict)  # source -> data amount (1, 1/4, ... or a count)
    k: str = "1/256"  # dmt: the share of each specialized source's amount that joins the general stage
    # run: one warmup + cosine schedule over all stages (a later stage trains at the schedule's tail) | stage: each
    # stage restarts it at optim.lr, as separate fine-tunes in sequence would
    schedule: str = "run"


@dataclass
class DataConfig:
    """Sources, formats and the stages that mix them (the contract users write most; see docs/design.md)."""

    name: str = "fixture"
    seq_len: int = 2048
    # auto: the tokenizer that comes with model.init_from (byte-level when there is none); bytes; or an HF tokenizer
    tokenizer: str = "auto"
    template: str = "auto"  # the tokenizer's chat template, or vicuna_v1.1 | llama2 | chatml | none
    train_on_prompt: bool = False
    overlong: str = "truncate"  # or drop; counted either way
    weight_by: str = "examples"  # mixture weights as shares of examples or of tokens
    packing_bins: int = 32
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage "main" over every source
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)

    @property
    def uses_hygiene(self) -> bool:
        return any(s.redact or s.dedup != "none" or s.decontaminate for s in self.sources.values())

    def validate(self) -> None:
        require(self.seq_len >= 2, "data.seq_len", "an integer >= 2", self.seq_len)
        require(self.tokenizer in ("auto", "bytes") or Path(self.tokenizer).expanduser().is_dir(), "data.tokenizer",
                 "'auto', 'bytes' or a Hugging Face tokenizer directory", self.tokenizer)
        require(self.template in TEMPLATES, "data.template", f"one of {TEMPLATES}", self.template)
        require(self.overlong in ("truncate", "drop"), "data.overlong", "'truncate' or 'drop'", self.overlong)
        require(self.weight_by in ("examples", "tokens"), "data.weight_by", "'examples' or 'tokens'", self.weight_by)
        require(self.packing_bins >= 1, "data.packing_bins", "a positive integer", self.packing_bins)
        require(len(self.sources) > 0, "data.sources", "at least one source", dict(self.sources))
        for name, src in self.sources.items():
            key = f"data.sources.{name}"
            require(src.format in FORMATS, f"{key}.format", f"one of {FORMATS}", src.format)
            require(src.on_bad_record in ("error", "drop"), f"{key}.on_bad_record", "'error' or 'drop'",
                     src.on_bad_record)
            redact = src.redact if src.redact == "all" else list(src.redact or [])
            require(redact == "all" or all(k in REDACT_KINDS for k in redact), f"{key}.redact",
                     f"'all' or a list of {list(REDACT_KINDS)}", src.redact)
            require(src.dedup in DEDUP_MODES, f"{key}.dedup", f"one of {DEDUP_MODES}", src.dedup)
            require(isinstance(src.decontaminate, bool), f"{key}.decontaminate", "true or false", src.decontaminate)
            if src.filter is not None:
                require(src.filter.action in ("drop", "keep"), f"{key}.filter.action", "'drop' or 'keep'",
                         src.filter.action)
        h = self.hygiene
        require(0 < h.near_threshold <= 1, "data.hygiene.near_threshold", "a number in (0, 1]", h.near_threshold)
        require(h.near_shingle >= 1, "data.hygiene.near_shingle", "a positive integer", h.near_shingle)
        require(h.near_num_perm >= 16, "data.hygiene.near_num_perm", "an integer >= 16", h.near_num_perm)
        require(h.ngram >= 1, "data.hygiene.ngram", "a positive integer", h.ngram)
        require(1 <= h.min_ngram <= h.ngram, "data.hygiene.min_ngram", f"an integer in [1, ngram={h.ngram}]",
                 h.min_ngram)
        require(0 <= h.overlap <= 1, "data.hygiene.overlap", "a number in [0, 1]", h.overlap)
        require(isinstance(h.phone_region, str) and len(h.phone_region) == 2 and h.phone_region.isalpha(),
                 "data.hygiene.phone_region", "a two-letter ISO 3166 region code such as US or DE", h.phone_region)
        names = [s.name for s in self.stages]
        require(len(set(names)) == len(names), "data.stages", "stages with distinct names", names)
        for i, stage in enumerate(self.stages):
            key = f"data.stages.{i}"
            require(stage.epochs is None or stage.steps is None, key, "epochs or steps, not both",
                     {"epochs": stage.epochs, "steps": stage.steps})
            require(stage.epochs is None or stage.epochs > 0, f"{key}.epochs", "a positive number", stage.epochs)
            require(stage.steps is None or stage.steps >= 1, f"{key}.steps", "a positive integer", stage.steps)
            require(len(self.stages) == 1 or stage.epochs is not None or stage.steps is not None, key,
                     "epochs or steps (each stage of a multi-stage run needs a length)", stage.name)
            require(len(stage.mix) > 0, f"{key}.mix", "at least one source", dict(stage.mix))
            require(stage.lr is None or (math.isfinite(stage.lr) and stage.lr > 0), f"{key}.lr",
                     "a positive finite number", stage.lr)
            require(stage.warmup_ratio is None or 0 <= stage.warmup_ratio < 1, f"{key}.warmup_ratio",
                     "a number in [0, 1)", stage.warmup_ratio)
            require(stage.min_lr_ratio is None or 0 <= stage.min_lr_ratio <= 1, f"{key}.min_lr_ratio",
                     "a number in [0, 1]", stage.min_lr_ratio)
            for src in stage.mix:
                require(src in self.sources, f"{key}.mix.{src}", f"one of the sources {sorted(self.sources)}", src)
