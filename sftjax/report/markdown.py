"""The markdown report: what was read, one table row per run, then the plots (or why each was not drawn)."""

from __future__ import annotations

from sftjax.report.collect import EVAL_ONLY, Collection, Run, fmt_value, headline_metrics, rubric_suites
from sftjax.report.plots import SPLIT_ORDER, Plot

COORD_HEADERS = {"model": "model", "init_from": "init from", "strategy": "strategy", "k": "k", "epochs": "epochs",
                 "seed": "seed"}


def _cell(v) -> str:
    return fmt_value(v).replace("|", "\\|").replace("\n", " ")


def eval_columns(runs: list[Run]) -> list[str]:
    """"SUITE/METRIC" of every headline metric in the runs' final evaluations, in order of appearance."""
    cols: list[str] = []
    for r in runs:
        for suite, s in r.final_eval.items():
            cols += [f"{suite}/{m}" for m in headline_metrics(s["kind"], s["metrics"]) if f"{suite}/{m}" not in cols]
    return cols


def table(col: Collection) -> str:
    """One row per run: its label, coordinates, length, final training loss and final evaluation."""
    coords = col.coordinate_keys()
    evals = eval_columns(col.runs)
    header = (["run"] + [COORD_HEADERS.get(k, k.replace("amount/", "amount ")) for k in coords]
              + ["steps", "tokens", "train loss", "eval step"] + evals + ["directory"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in col.runs:
        final = r.final
        scalars = r.final_eval
        cells = ([r.label] + [r.coords.get(k) for k in coords]
                 + [final.get("step"), final.get("tokens"), final.get("loss"), r.final_eval_step]
                 + [scalars.get(c.split("/", 1)[0], {}).get("metrics", {}).get(c.split("/", 1)[1]) for c in evals]
                 + [f"`{r.name}`"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def rubric_tables(col: Collection) -> list[str]:
    """Per judge suite, Zhang & Chen's table: models as rows; each criterion, ``overall`` (the judge's own overall
    rating) and the question-weighted score as columns (normalized, 0-1), then the score per domain when the
    questions have domains."""
    out = []
    for suite, criteria in rubric_suites(col.runs):
        runs = [r for r in col.runs if suite in r.final_eval]
        domains = sorted({m.split("/")[1] for r in runs for m in r.final_eval[suite]["metrics"]
                          if m.startswith("domain/") and m.endswith("/score")})
        header = ["model", *criteria, "weighted", *(f"{d} (weighted)" for d in domains), "judged", "unparseable"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in runs:
            m = r.final_eval[suite]["metrics"]
            cells = ([r.label] + [m.get(f"criterion/{c}") for c in criteria] + [m.get("score")]
                     + [m.get(f"domain/{d}/score") for d in domains] + [m.get("judged"), m.get("unparseable")])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out += [f"### Rubric `{suite}`", "",
                "Each criterion is the mean judge rating normalized to 0-1 over the questions it applies to "
                "(weight > 0); weighted is the mean of each question's weighted score (weights renormalized over "
                "its criteria); unparseable judgments were re-asked, then left out of every mean.", "",
                "\n".join(lines), ""]
    return out


def knowledge_table(col: Collection) -> list[str]:
    """FineTuneBench's table: each knowledge split at every evaluation of every run (epochs where known), with the
    models evaluated only (the base model) first as epoch 0."""
    rows = []
    for r in col.runs:
        if r.coords.get("strategy") == EVAL_ONLY:
            if r.knowledge_suite():
                rows.append((r, None, 0))
            continue
        steps = sorted(st for st in r.evals if r.knowledge_suite(st))
        if len(steps) >= 2:
            rows += [(r, st, r.epoch_of(st)) for st in steps]
    if not any(r.coords.get("strategy") != EVAL_ONLY for r, _, _ in rows):
        return []
    rows.sort(key=lambda x: x[0].coords.get("strategy") != EVAL_ONLY)  # stable: runs keep their order

    def knowledge(r: Run, step) -> dict:
        return (r.final_eval if step is None else r.evals[step])[r.knowledge_suite(step)]["metrics"]

    splits = [sp for sp in SPLIT_ORDER if any(sp in knowledge(r, st) for r, st, _ in rows)]
    header = ["run", "epoch", "step", *splits, "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r, st, epoch in rows:
        m = knowledge(r, st)
        cells = [r.label or r.name, epoch if epoch is None else round(epoch, 2), st,
                 *[m.get(sp) for sp in splits], m.get("n")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return ["## Knowledge over training", "",
            "Accuracy (fraction correct) on each split of the knowledge suite at every evaluation: memorization asks "
            "the trained questions verbatim; rephrased, date_changed (the right answer is the abstention), yes_no and "
            "comparison ask new questions about the same facts, and generalization pools them; n counts all "
            "questions. Models evaluated without training here (the base model) are epoch 0.", "",
            "\n".join(lines), ""]


def render(col: Collection, plots: list[Plot], title: str = "sftjax report") -> str:
    out = [f"# {title}", "",
           f"{col.summary()}, from {', '.join(f'`{d}`' for d in col.roots)}.", ""]
    for s in col.sweeps:
        line = f"- sweep `{s['dir']}`: " + ("; ".join(f"`{o}`" for o in s["swept"]) or "swept keys not recorded")
        if s.get("jobs"):
            line += f" ({len(s['jobs'])} jobs: " + ", ".join(f"{n} {st}" for st, n in s["counts"].items() if n) + ")"
        out.append(line)
    if col.sweeps:
        out.append("")
    out += ["## Runs", "",
            "Coordinates come from each run's `.hydra/config.yaml` (amounts: each source's share of its data in the "
            "first stage that mixes it; k: dmt's share in its general stage); train loss is the last line of "
            "`metrics.jsonl` (nats/token); the evaluation columns are the last `eval/step_N.json` (fractions, 0-1, "
            "except loss).", "", table(col), ""]
    out += knowledge_table(col)
    out += rubric_tables(col)
    out += ["## Plots", ""]
    for p in plots:
        out += [f"### {p.name}", "", p.caption, ""]
        if p.file:
            out += [f"![{p.name}]({p.file})", ""]
    if col.skipped:
        out += ["## Skipped", ""] + [f"- `{d}`: {why}" for d, why in col.skipped] + [""]
    if col.warnings:
        out += ["## Warnings", ""] + [f"- {w}" for w in col.warnings] + [""]
    return "\n".join(out)
