"""The run's data: sources -> formats -> chat template + tokens + loss masks -> per stage: amounts, weighted mix,
best-fit packing -> fixed-shape global batches, with a state that checkpoints and restores exactly.

Every example is tokenized once up front (small SFT sets; the count of everything truncated or dropped is known
before the first step). Each stage is then a Grain stream (sftjax.data.mixing, sftjax.data.packing); its length is
``steps``, or ``epochs`` passes over its selected examples (counted by packing them once), or, for a one-stage run
without a length, ``train.max_steps``. A stage's last batch is topped up with empty rows (no loss tokens), so the step
shapes never change and no example is left out.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from sftjax.config import ConfigError, DataConfig, MixConfig, StageConfig
from sftjax.data.batch import stack_rows
from sftjax.data.mixing import MixEntry, stage_stream
from sftjax.data.packing import pack, shifted


@dataclass
class SourceStats:
    """What happened to a source's records before any mixing (all counted, none silently lost)."""

    records: int = 0
    filtered: int = 0  # removed by the source's filter
    bad: int = 0  # malformed and dropped (on_bad_record=drop)
    truncated: int = 0  # longer than seq_len: cut (overlong=truncate)
    dropped: int = 0  # longer than seq_len with overlong=drop, or no loss token left
    examples: int = 0  # usable
    reasons: list[str] = field(default_factory=list)  # the first few reasons for bad records
    # the hygiene stage (sftjax.data.hygiene): PII placeholders per kind, records changed, records dropped as
    # duplicates or as contaminated, and each dropped record with what it matched
    redacted: dict[str, int] = field(default_factory=dict)
    redacted_records: int = 0
    duplicates: int = 0
    contaminated: int = 0
    dropped_duplicates: list[dict] = field(default_factory=list)
    dropped_contaminated: list[dict] = field(default_factory=list)


def tokenize_source(name: str, source_id: int, cfg: DataConfig, tokenizer, shard: tuple[int, int] = (0, 1),
                    exchange=None, limit: int = 0, hygiene=None) -> tuple[list[dict], SourceStats]:
    """A source's usable examples, in record order. With ``shard = (p, P)``, P > 1, this process renders only
    records p, p+P, ... and ``exchange`` (sftjax.data.distributed.exchange by default) gathers the rest, so every
    process returns the same list. ``limit``: only the first N records (after filters) are used (an eval sample).
    ``hygiene`` (a sftjax.data.hygiene.Hygiene, shared by a run's sources): the source's redact / dedup /
    decontaminate settings are applied to every record, in every process, before any is tokenized."""
    from sftjax.data import distributed
    from sftjax.data.formats import to_example
    from sftjax.data.sources import SourceSpec, read_source
    from sftjax.data.templates import clip_turns, render

    src = cfg.sources[name]
    filters = [asdict(src.filter)] if src.filter is not None else []
    records, read = read_source(SourceSpec(name=name, path=src.path, format=src.format, fields=dict(src.fields),
                                           filters=filters, split=src.split, kind=src.kind,
                                           on_bad_record=src.on_bad_record))
    stats = SourceStats(records=read.read, filtered=read.filtered_out, bad=read.bad, reasons=list(read.bad_reasons))
    if limit:
        records = records[:limit]
    cleaned = None
    if hygiene is not None and (src.redact or src.dedup != "none" or src.decontaminate):
        parsed = [to_example(rec.fields, src.format, where=rec.id) for rec in records]
        kept, cleaned, h = hygiene.apply([rec.id for rec in records], parsed, src.redact_kinds(), src.dedup,
                                         src.decontaminate)
        records = [records[k] for k in kept]
        for key, value in asdict(h).items():
            setattr(stats, key, value)
        if not records:
            raise ConfigError(f"data source '{name}' ({src.path}): every record was dropped by the hygiene stage "
                              f"({h.duplicates} duplicates, {h.contaminated} contaminated)")
    index, count = shard
    mine = distributed.Shard()
    for k in range(index, len(records), count):
        rec = records[k]
        try:
            example = cleaned[k] if cleaned is not None else to_example(rec.fields, src.format, where=rec.id)
            example = clip_turns(example, tokenizer, cfg.template, cfg.seq_len + 1)
            ids, trained = render(example, tokenizer, cfg.template, cfg.train_on_prompt)
        except (ConfigError, ValueError) as e:
            if count == 1:
                raise
            mine.error = (k, str(e))  # every process must still reach the exchange, or the others would hang
            break
        if len(ids) > cfg.seq_len + 1:  # a document of n tokens fills n-1 slots
            if cfg.overlong == "drop":
                mine.dropped += 1
                continue
            ids, trained = ids[: cfg.seq_len + 1], trained[: cfg.seq_len + 1]
            mine.truncated += 1
        if not any(trained[1:]):
            mine.dropped += 1  # nothing to learn from (an empty answer, or a prompt that filled the row)
            continue
        mine.indices.append(k)
        mine.examples.append(shifted(np.asarray(ids, np.int32), np.asarray(trained, bool), source_id))
    if count > 1:
        mine = (exchange or distributed.exchange)(mine, source_id)
        distributed.raise_if_failed(mine)
    examples = mine.examples
    stats.truncated, stats.dropped, stats.examples = mine.truncated, mine.dropped, len(examples)
    if not examples:
        raise ConfigError(f"data source '{name}' ({src.path}) has no usable examples: {asdict(stats)}")
    return examples, stats


class DataPipeline:
    def __init__(self, cfg: DataConfig, tokenizer, *, seed: int, global_rows: int, max_steps: int, log=print,
                 shard: tuple[int, int] = (0, 1), eval_texts=None):
        """``shard = (process index, process count)``: tokenization is split across the processes (see
        sftjax.data.distributed); the batches are the same for every process count. ``eval_texts``
        (sftjax.data.hygiene.EvalText): what sources with ``decontaminate: true`` are checked against."""
        from sftjax.data.hygiene import Hygiene

        self.cfg, self.seed, self.rows = cfg, seed, global_rows
        self.tokenizer = tokenizer
        self.source_names = list(cfg.sources)
        self.examples, self.source_stats = {}, {}
        hygiene = Hygiene(cfg.hygiene, eval_texts) if cfg.uses_hygiene else None
        for i, name in enumerate(self.source_names):
            self.examples[name], self.source_stats[name] = tokenize_source(name, i, cfg, tokenizer, shard,
                                                                           hygiene=hygiene)
            s = self.source_stats[name]
            kept = s.records - s.filtered - s.bad - s.duplicates - s.contaminated
            here = (f"; {len(range(shard[0], kept, shard[1]))} of them tokenized by process {shard[0]} of {shard[1]}"
                    if shard[1] > 1 else "")
            clean = (f", {sum(s.redacted.values())} PII redacted in {s.redacted_records} records"
                     f" ({', '.join(f'{k} {v}' for k, v in sorted(s.redacted.items()))})" if s.redacted else "")
            clean += f", {s.duplicates} duplicates" if s.duplicates else ""
            clean += f", {s.contaminated} contaminated" if s.contaminated else ""
            log(f"data: {name}: {s.examples} examples of {s.records} records ({s.filtered} filtered, {s.bad} bad, "
                f"{s.truncated} truncated, {s.dropped} dropped{clean}{here})")
        self.stages = list(cfg.stages) or [StageConfig(name="main", mix={n: MixConfig() for n in self.source_names})]
        self.steps, left = [], max_steps if max_steps > 0 else None  # train.max_steps caps the whole curriculum
        for i in range(len(self.stages)):
            n = 0 if left == 0 else self._stage_steps(i, max_steps, limit=left)
            if left is not None:
                n = min(n, left)
                left -= n
            self.steps.append(n)
        self.total_steps = sum(self.steps)
        self.consumed = [{n: {"examples": 0, "tokens": 0, "loss_tokens": 0} for n in self.source_names}
                         for _ in self.stages]
        self.stage, self.step_in_stage = 0, 0
        self._skip_empty_stages()
        self._rows = self._open(self.stage)

    # -- stage layout -----------------------------------------------------------------------------------------
    def _mix(self, i: int) -> dict[str, MixEntry]:
        return {n: MixEntry(amount=m.amount, weight=m.weight) for n, m in self.stages[i].mix.items()}

    def _stream(self, i: int):
        return stage_stream(self.examples, self._mix(i), seed=self.seed + 1000 * i, where=f"data.stages.{i}.mix",
                            weight_by=self.cfg.weight_by)

    def _open(self, i: int):
        if i >= len(self.stages):
            return None
        stream, info = self._stream(i)
        epochs = self.stages[i].epochs
        if epochs is not None:  # epochs passes over the selected examples, then the stage's stream ends
            stream = stream[: max(1, round(epochs * sum(v["selected"] for v in info.values())))]
        return iter(pack(stream.to_iter_dataset(), self.cfg.seq_len, num_bins=self.cfg.packing_bins,
                         seed=self.seed + 1000 * i))

    def _stage_steps(self, i: int, max_steps: int, limit: int | None) -> int:
        """A stage's length; an epochs stage is packed once to count its rows (only as far as a cap needs)."""
        stage = self.stages[i]
        if stage.steps is not None:
            return stage.steps
        if stage.epochs is not None:
            rows = sum(1 for _ in itertools.islice(self._open(i), None if limit is None else limit * self.rows))
            return math.ceil(rows / self.rows)
        if max_steps <= 0:
            raise ConfigError(f"config key 'train.max_steps': stage '{stage.name}' has no epochs or steps, so the run "
                              "needs a positive train.max_steps")
        return max_steps

    def stage_info(self) -> list[dict]:
        out = []
        for i, stage in enumerate(self.stages):
            _, info = self._stream(i)
            out.append({"name": stage.name, "steps": self.steps[i], "epochs": stage.epochs, "sources": info})
        return out

    def _skip_empty_stages(self) -> None:
        while self.stage < len(self.stages) and self.step_in_stage >= self.steps[self.stage]:
            self.stage, self.step_in_stage = self.stage + 1, 0

    # -- batches ----------------------------------------------------------------------------------------------
    def next_batch(self) -> tuple[str, dict[str, np.ndarray], bool]:
        """(stage name, global batch [rows, seq_len], whether this batch ends its stage)."""
        if self.stage >= len(self.stages):
            raise RuntimeError("the curriculum is finished")
        rows = [row for row in itertools.islice(self._rows, self.rows)]  # a stage's last batch may run short
        batch = stack_rows(rows, self.rows, self.cfg.seq_len)
        self._count(batch)
        name = self.stages[self.stage].name
        self.step_in_stage += 1
        ends = self.step_in_stage >= self.steps[self.stage]
        if ends:
            self.stage, self.step_in_stage = self.stage + 1, 0
            self._skip_empty_stages()
            self._rows = self._open(self.stage)
        return name, batch, ends

    def _count(self, batch: dict) -> None:
        seg, src, pos = batch["segment_ids"], batch["source_ids"], batch["positions"]
        counts = self.consumed[self.stage]
        for i, name in enumerate(self.source_names):
            mine = (src == i) & (seg > 0)
            if not mine.any():
                continue
            docs = int((mine & (pos == 0)).sum())
            counts[name]["examples"] += docs
            counts[name]["tokens"] += int(mine.sum()) + docs  # n tokens fill n-1 slots
            counts[name]["loss_tokens"] += int((mine & batch["loss_mask"]).sum())

    # -- checkpointing ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"kind": "grain", "seed": self.seed, "stage": self.stage, "step_in_stage": self.step_in_stage,
                "iterator": self._rows.get_state() if self._rows is not None else None, "consumed": self.consumed}

    def restore(self, state: dict) -> None:
        if state.get("kind") != "grain" or state.get("seed") != self.seed:
            raise ConfigError(f"checkpoint data state (kind {state.get('kind')!r}, seed {state.get('seed')}) does not "
                              f"belong to this data pipeline (seed {self.seed})")
        self.stage, self.step_in_stage, self.consumed = state["stage"], state["step_in_stage"], state["consumed"]
        self._rows = self._open(self.stage)
        if self._rows is not None and state["iterator"] is not None:
            self._rows.set_state(state["iterator"])

    def _hygiene_counts(self, name: str) -> dict:
        """The hygiene stage's counts, in the per-stage stats only when the config uses the stage."""
        if not self.cfg.uses_hygiene:
            return {}
        s = self.source_stats[name]
        return {"duplicates": s.duplicates, "contaminated": s.contaminated, "redacted": sum(s.redacted.values())}

    def stats(self) -> dict:
        """data_stats.json: realized composition per stage and source, plus what happened to each source."""
        out = {}
        for i, stage in enumerate(self.stages):
            out[stage.name] = {n: {**self.consumed[i][n], "truncated": self.source_stats[n].truncated,
                                   "dropped": self.source_stats[n].dropped + self.source_stats[n].bad,
                                   **self._hygiene_counts(n)}
                               for n in stage.mix}
        out["source_records"] = {n: asdict(s) for n, s in self.source_stats.items()}
        return out
