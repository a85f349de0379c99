"""`sftjax-data inspect`: the realized composition of a data config's first batches, before any compute is spent.

It runs the real pipeline (the same tokenizer, template, amounts, mixing and packing as training) and reports, per
stage and source, examples / tokens / loss tokens / truncated / dropped, the fill of the rows drawn, example-length
histograms, and a few decoded documents with the trained spans marked, so a user can see exactly what the loss sees.
"""

from __future__ import annotations

import numpy as np

from sftjax.config import Config
from sftjax.data.pipeline import DataPipeline
from sftjax.data.tokenizer import run_tokenizer

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"  # marks around the tokens that carry loss


def marked(tokenizer, input_ids: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray) -> str:
    """One document's text with its trained target spans wrapped in ⟦ ⟧ (the first input token is never a target)."""
    parts = [tokenizer.decode([int(input_ids[0])])]
    run, trained = [], bool(loss_mask[0])
    for tok, m in zip(targets.tolist(), loss_mask.tolist(), strict=True):
        if m != trained and run:
            text = tokenizer.decode(run)
            parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
            run = []
        trained = m
        run.append(tok)
    if run:
        text = tokenizer.decode(run)
        parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
    return "".join(parts)


def histogram(lengths: np.ndarray, seq_len: int) -> list[tuple[str, int]]:
    edges = [0] + [2**k for k in range(4, int(np.log2(seq_len)) + 1)] + [seq_len + 1]
    counts, _ = np.histogram(lengths, bins=edges)
    return [(f"{lo}-{hi - 1}", int(c)) for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]


def inspect_data(cfg: Config, batches: int, show: int = 3, source=None, eval_texts=None, log=print) -> dict:
    """Draw the first ``batches`` global batches; returns the report (the contract of inspect.json). ``source``: the
    resolved ``model.init_from`` (sftjax.ckpt.init_from), whose tokenizer the data is made with; ``eval_texts``:
    what decontamination checks against, as in training."""
    tokenizer = run_tokenizer(cfg, None, source)
    pipe = DataPipeline(cfg.data, tokenizer, seed=cfg.train.seed, global_rows=cfg.train.global_batch_size,
                        max_steps=cfg.train.max_steps, log=log, eval_texts=eval_texts)
    drawn, real, shown = 0, 0, []
    for _ in range(min(batches, pipe.total_steps)):
        _, batch, _ = pipe.next_batch()
        drawn += 1
        real += int((batch["segment_ids"] > 0).sum())
        for r in range(len(batch["segment_ids"])):
            seg = batch["segment_ids"][r]
            for d in np.unique(seg[seg > 0]):
                if len(shown) < show:
                    idx = np.nonzero(seg == d)[0]
                    shown.append({"source": pipe.source_names[int(batch["source_ids"][r, idx[0]])],
                                  "text": marked(tokenizer, batch["input_ids"][r, idx], batch["targets"][r, idx],
                                                 batch["loss_mask"][r, idx])})
    stats = pipe.stats()
    slots = drawn * cfg.train.global_batch_size * cfg.data.seq_len
    return {
        "batches": drawn,
        "stages": [{"name": s["name"], "steps": s["steps"]} for s in pipe.stage_info()],
        **{name: stats[name] for name in (s.name for s in pipe.stages)},
        "source_records": stats["source_records"],
        "fill": real / slots if slots else 0.0,
        "lengths": {n: histogram(np.asarray([len(x["input_ids"]) + 1 for x in ex]), cfg.data.seq_len)
                    for n, ex in pipe.examples.items()},
        "examples_shown": shown,
    }


def print_report(report: dict, out=print) -> None:
    out(f"{report['batches']} batches drawn; fill {report['fill']:.1%}")
    out("stages: " + ", ".join(f"{s['name']} ({s['steps']} steps)" for s in report["stages"]))
    for stage in report["stages"]:
        out(f"\nstage {stage['name']}:")
        out(f"  {'source':<16}{'examples':>10}{'tokens':>12}{'loss tokens':>13}{'truncated':>11}{'dropped':>9}")
        for name, s in report[stage["name"]].items():
            out(f"  {name:<16}{s['examples']:>10,}{s['tokens']:>12,}{s['loss_tokens']:>13,}{s['truncated']:>11,}"
                f"{s['dropped']:>9,}")
    hygiene = {n: s for n, s in report["source_records"].items()
               if s.get("redacted") or s.get("duplicates") or s.get("contaminated")}
    if hygiene:
        out("\nhygiene (before tokenization):")
        out(f"  {'source':<16}{'redacted':>10}{'in records':>12}{'duplicates':>12}{'contaminated':>14}  per kind")
        for name, s in hygiene.items():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["redacted"].items()))
            out(f"  {name:<16}{sum(s['redacted'].values()):>10,}{s['redacted_records']:>12,}{s['duplicates']:>12,}"
                f"{s['contaminated']:>14,}  {kinds}")
        for name, s in hygiene.items():
            for d in s["dropped_contaminated"][:3]:
                out(f"  {name}: dropped {d['record']}: overlaps {d['suite']} item {d['item']} ({d['overlap']:.0%} "
                    "of its n-grams)")
            for d in s["dropped_duplicates"][:3]:
                out(f"  {name}: dropped {d['record']}: duplicate of {d['duplicate_of']}")
    out("\nexample lengths (tokens):")
    for name, bins in report["lengths"].items():
        out(f"  {name}: " + "  ".join(f"{b}: {c}" for b, c in bins if c))
    out(f"\ndecoded documents; {TRAINED_OPEN}trained{TRAINED_CLOSE} spans carry the loss:")
    for ex in report["examples_shown"]:
        out(f"--- {ex['source']}\n{ex['text']}")
