"""PNG plots of a Collection of runs (matplotlib, Agg backend: no display needed).

Each plot is drawn only when the runs vary along its axis; otherwise it is listed as not drawn, with the reason:

ability_vs_amount.png               each ability (math/code/knowledge/judge metric) vs the data amount of the source(s)
                                    whose amount varies (log2 x, labelled 1, 1/4, ... 1/256); one line per source and
                                    setting of the other coordinates (strategy, model, ...); seeds averaged;
                                    runs mixing other sources at the same amount are a line of their own; the
                                    base model (sftjax-eval output) is a dotted reference
loss_vs_amount.png                  the same for held-out validation losses (nats/token; lower is better)
strategy_comparison.png             one group of bars per ability, one bar per strategy (and k), one panel per setting
strategy_loss.png                   the same for held-out validation losses (nats/token; lower is better)
dmt_k.png                           each ability vs dmt's k (log2 x); mixed_sequential runs of the same setting as
                                    dashed reference lines (k = 0: no specialized data in the second stage)
score_vs_epoch.png / score_vs_step.png
                                    every evaluation of a run over training (epochs when they are known for every
                                    run, else steps), abilities and validation losses
memorization_vs_generalization.png  knowledge suites: accuracy on the trained questions vs the other splits, per run
knowledge_over_training.png         knowledge suites over training: every split per evaluation, one panel per run (the
                                    base model, when given, at epoch 0)
train_loss_per_source.png           training loss (overall and per source) over steps, one line per run
rubric_criteria.png                 judge suites with per-criterion scores: one group of bars per criterion (and
                                    overall), one bar per model (Zhang & Chen's comparison across criteria)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402

from sftjax.report.collect import (EVAL_ONLY, Collection, Run, ability_metrics, fmt_value,  # noqa: E402
                                   rubric_suites, sort_value)

DPI = 100
MAX_PANELS = 9
MAX_SETTINGS = 6
SPLIT_ORDER = ("memorization", "rephrased", "date_changed", "yes_no", "comparison", "generalization")


@dataclass
class Plot:
    name: str  # what it shows, as a section title
    file: str | None  # PNG file name inside the output directory; None when not drawn
    caption: str  # how to read it, or why it was not drawn


# -- helpers ---------------------------------------------------------------------------------------------------------


def unit(kind: str, metric: str) -> str:
    """The y-axis label of a metric, with its unit."""
    if metric == "loss" or kind == "loss":
        return "loss (nats/token)"
    if metric.startswith("pass@"):
        return f"{metric} (fraction of tasks)"
    if metric == "answer_format":
        return "answers in '#### N' form (fraction)"
    if kind == "judge":
        return "rubric score (normalized, 0-1)"
    if kind in ("math", "knowledge") or metric in ("accuracy", "memorization", "generalization"):
        return "accuracy (fraction correct)"
    return metric


def _value(run: Run, suite: str, metric: str, step: int | None = None) -> float:
    suites = run.final_eval if step is None else run.evals.get(step, {})
    v = suites.get(suite, {}).get("metrics", {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _mean(values: list[float]) -> tuple[float, float, float]:
    """Mean, min and max of the finite values (nan when none)."""
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return math.nan, math.nan, math.nan
    return sum(ok) / len(ok), min(ok), max(ok)


def _final_keys(runs: list[Run], metrics_of) -> list[tuple[str, str, str]]:
    """(suite, metric, kind) of every metric ``metrics_of(kind, metrics)`` picks in the runs' final evaluations, in
    order of appearance (only those with a finite value)."""
    out: list[tuple[str, str, str]] = []
    for r in runs:
        for suite, s in r.final_eval.items():
            out += [(suite, m, s["kind"]) for m in metrics_of(s["kind"], s["metrics"])
                    if (suite, m, s["kind"]) not in out and math.isfinite(_value(r, suite, m))]
    return out


def ability_keys(runs: list[Run]) -> list[tuple[str, str, str]]:
    """Every ability (math accuracy, code pass@k, knowledge, judge score) in the runs' final evaluations."""
    return _final_keys(runs, ability_metrics)


def loss_keys(runs: list[Run]) -> list[tuple[str, str, str]]:
    """(suite, "loss", "loss") of every validation-loss suite in the runs' final evaluations."""
    return _final_keys(runs, lambda kind, metrics: ["loss"] if kind == "loss" else [])


def _figure(n: int, title: str, width: float = 4.6, height: float = 3.4):
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.9), squeeze=False,
                             layout="constrained")
    fig.suptitle(title, fontsize=12)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig, axes, out: Path, name: str) -> str:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if labels:
        # one legend column per panel column (up to 3): wider legends are cut off at the figure's edges
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels), len(axes)), fontsize=8,
                   frameon=False)
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def _amount_axis(ax, xs: list, what: str) -> None:
    """A log2 x axis over data amounts, ticks labelled as the fractions (or counts) themselves."""
    values = sorted({x for x in xs if x is not None}, key=float)
    ax.set_xscale("log", base=2)
    ax.set_xticks([float(v) for v in values])
    ax.set_xticklabels([fmt_value(v) for v in values], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    fractions = all(isinstance(v, Fraction) for v in values)
    ax.set_xlabel(f"fraction of the {what} data used (log2 scale)" if fractions
                  else f"{what} amount (fraction of the source, or examples; log2 scale)")


def _setting_label(keys: list[str], setting: tuple, varying: set[str]) -> str:
    parts = []
    for k, v in zip(keys, setting):
        if k in varying and v is not None:
            parts.append(str(v) if k == "strategy" else f"{k.removeprefix('amount/')}={fmt_value(v)}")
    return ", ".join(parts)


def _settings(runs: list[Run], keys: list[str]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(r.coords.get(k) for k in keys), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: [sort_value(v) for v in kv[0]]))


def _varying(groups, keys: list[str]) -> set[str]:
    return {k for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1}


def _usual(values: list):
    """The most common value (the largest among equally common ones): a sweep's reference point."""
    counts: dict = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: (counts[v], float(v))) if counts else None


def _not_drawn(name: str, why: str) -> Plot:
    return Plot(name, None, f"Not drawn: {why}.")


# -- (1) ability vs data amount --------------------------------------------------------------------------------------


@dataclass
class _AmountLine:
    label: str
    points: list  # [(amount, runs at that amount)], ascending
    mixed: bool  # runs that mix other sources in at the same amount: drawn dashed
    hue: tuple  # the same for a source's line alone and mixed, so the two read as a pair


def _amount_lines(runs: list[Run], keys: list[str]) -> tuple[list[list[str]], list[_AmountLine], dict, bool] | None:
    """The lines of an amount plot: (the varied amount keys' groups, the lines, each group's usual amount, whether the
    design is one source at a time); None when no source's amount varies.

    Runs are split by which other sources they mix in: "math alone" and "math+code+general" (every source at the
    same amount, the paper's composition runs) are two lines over the same x, the math amount. Within such a split,
    a source whose amount always equals the varied one moves with it and does not split the line further.
    """
    amounts = [k for k in keys if k.startswith("amount/")
               and len({r.coords.get(k) for r in runs if r.coords.get(k) is not None}) > 1]
    if not amounts:
        return None
    # sources scaled together (the same amount in every run) share one axis
    groups: list[list[str]] = []
    for k in amounts:
        for g in groups:
            if all(r.coords.get(k) == r.coords.get(g[0]) for r in runs):
                g.append(k)
                break
        else:
            groups.append([k])
    # A one-at-a-time design (each run moves at most one source off its usual amount) draws each source's line
    # through the runs that keep the others at their usual amount; a grid draws one line per other amount.
    usual = {g[0]: _usual([r.coords.get(g[0]) for r in runs]) for g in groups}
    one_at_a_time = len(groups) > 1 and all(
        sum(r.coords.get(g[0]) != usual[g[0]] for g in groups) <= 1 for r in runs)
    all_sources = [k for k in keys if k.startswith("amount/")]
    lines: list[_AmountLine] = []
    for g in groups:
        what = "+".join(k.removeprefix("amount/") for k in g)
        members = [r for r in runs if r.coords.get(g[0]) is not None]
        if one_at_a_time:
            members = [r for r in members if all(r.coords.get(h[0]) == usual[h[0]] for h in groups if h != g)]
        mixes: dict[tuple, list[Run]] = {}
        for r in members:
            mixes.setdefault(tuple(k for k in all_sources if k not in g and r.coords.get(k) is not None), []).append(r)
        for mix, part in sorted(mixes.items(), key=lambda kv: len(kv[0])):
            together = [k for k in mix if all(r.coords.get(k) == r.coords.get(g[0]) for r in part)]
            others = [k for k in keys if k not in g and k != "seed" and k not in together
                      and not (one_at_a_time and k.startswith("amount/"))]
            settings = _settings(part, others)
            varying = _varying(list(settings), others)
            name = what if len(groups) > 1 else ""
            if len(mixes) > 1:
                name = ("+".join([what, *(k.removeprefix("amount/") for k in together)]) if together
                        else f"{what} alone")
            for setting, group_runs in settings.items():
                label = _setting_label(others, setting, varying)
                hue = (what, label)
                label = f"{name}: {label}" if name and label else name or label
                by_x: dict = {}
                for r in group_runs:
                    by_x.setdefault(r.coords[g[0]], []).append(r)
                lines.append(_AmountLine(label or "all runs", sorted(by_x.items(), key=lambda kv: float(kv[0])),
                                         len(mixes) > 1 and bool(together), hue))
    # Runs mixing every varied source at one amount lie on each of those sources' lines: draw them once, in a colour
    # of their own, not as coinciding lines in the colour of whichever source came last.
    unique: dict[tuple, _AmountLine] = {}
    for line in lines:
        key = tuple((x, tuple(id(r) for r in rs)) for x, rs in line.points)
        if key in unique and line.mixed:
            unique[key].hue = ("mixed", unique[key].label)
        else:
            unique.setdefault(key, line)
    return groups, list(unique.values()), usual, one_at_a_time


def _amount_plot(col: Collection, out: Path, name: str, metrics_of, what: str, title: str, file: str,
                 caption: str) -> Plot:
    """Each metric ``metrics_of`` picks against the data amount (log2 x); models evaluated only (the base model) are
    dotted horizontal references."""
    runs = [r for r in col.runs if r.final_eval and r.coords.get("strategy") != EVAL_ONLY]
    references = [r for r in col.runs if r.final_eval and r.coords.get("strategy") == EVAL_ONLY]
    found = _amount_lines(runs, col.coordinate_keys())
    if found is None:
        return _not_drawn(name, "the evaluated runs all use the same data amount of every source")
    groups, lines, usual, one_at_a_time = found
    metrics = metrics_of(runs)
    if not metrics:
        return _not_drawn(name, f"no run has {what}")
    shown = metrics[:MAX_PANELS]
    single = "+".join(k.removeprefix("amount/") for k in groups[0]) if len(groups) == 1 else None
    fig, axes = _figure(len(shown), title + (f" ({single})" if single else ""))
    axis = single or "varied source's"
    hues = list(dict.fromkeys(line.hue for line in lines))
    for ax, (suite, metric, kind) in zip(axes, shown):
        for line in lines:
            xs = [float(x) for x, _ in line.points]
            stats = [_mean([_value(r, suite, metric) for r in rs]) for _, rs in line.points]
            ys = [s[0] for s in stats]
            err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
            ax.errorbar(xs, ys, yerr=err if any(s[1] != s[2] for s in stats if math.isfinite(s[0])) else None,
                        marker="o", capsize=3, label=line.label, color=f"C{hues.index(line.hue) % 10}",
                        linestyle="--" if line.mixed else "-")
        for r in references:
            y = _value(r, suite, metric)
            if math.isfinite(y):
                ax.axhline(y, color="0.35", linestyle=":", linewidth=1.2,
                           label=f"{r.label or r.name} (not fine-tuned here)")
        _amount_axis(ax, [x for line in lines for x, _ in line.points], axis)
        ax.set_title(f"{suite}: {metric}", fontsize=10)
        ax.set_ylabel(unit(kind, metric))
        ax.grid(alpha=0.3)
    file = _save(fig, axes, out, file)
    seeds = " Points average the seeds of a setting; bars span their min-max." if len(col.varying("seed")) > 1 else ""
    design = (" Each source's line holds the other sources at their usual amount ("
              + ", ".join(f"{k.removeprefix('amount/')}={fmt_value(v)}" for k, v in usual.items()) + ")."
              if one_at_a_time else "")
    mixed = (" A dashed line named a+b+c is the runs that mix those sources, each at the plotted amount; "
             "\"alone\" is the source trained by itself." if any(line.mixed for line in lines) else "")
    refs = " Dotted lines are models evaluated without training here (the base model)." if references else ""
    return Plot(name, file, f"{caption} (log2 scale); one line per source and setting of the other coordinates."
                f"{design}{mixed}{refs}{seeds}")


def plot_ability_vs_amount(col: Collection, out: Path) -> Plot:
    return _amount_plot(col, out, "Ability vs data amount", ability_keys, "a math, code, knowledge or judge evaluation",
                        "Ability vs amount of training data", "ability_vs_amount.png",
                        "Final evaluation of each run against the fraction of a source's training data it used")


def plot_loss_vs_amount(col: Collection, out: Path) -> Plot:
    return _amount_plot(col, out, "Held-out loss vs data amount", loss_keys, "a validation-loss evaluation",
                        "Held-out loss vs amount of training data", "loss_vs_amount.png",
                        "Final validation loss on each held-out source (response tokens only; lower is better) "
                        "against the fraction of a source's training data a run used")


# -- (2) strategy comparison -----------------------------------------------------------------------------------------


def _strategy_bars(col: Collection, out: Path, name: str, metrics_of, what: str, ylabel: str, file: str,
                   caption: str, bounded: bool) -> Plot:
    """Bars of the final evaluation: one group per metric, one bar per strategy (and k), one panel per setting of
    the other coordinates. Eval-only rows (sftjax-eval output, e.g. the base model) are drawn as one more bar each."""
    evaluated = [r for r in col.runs if r.final_eval and r.coords.get("strategy")]
    trained = [r for r in evaluated if r.coords["strategy"] != EVAL_ONLY]
    references = [r for r in evaluated if r.coords["strategy"] == EVAL_ONLY]
    if len({r.coords["strategy"] for r in trained}) < 2:
        return _not_drawn(name, "the evaluated runs use fewer than two strategies")
    metrics = metrics_of(trained)
    if not metrics:
        return _not_drawn(name, f"no run has {what}")
    keys = [k for k in col.coordinate_keys() if k not in ("strategy", "k", "schedule", "seed")]
    settings = _settings(trained, keys)
    varying = _varying(list(settings), keys)
    cut = len(settings) > MAX_SETTINGS
    settings = dict(list(settings.items())[:MAX_SETTINGS])

    def bar_of(r: Run) -> tuple:
        return r.coords["strategy"], r.coords.get("k"), r.coords.get("schedule")

    bars = sorted({bar_of(r) for r in trained}, key=lambda b: (b[0], sort_value(b[1]), b[2] or ""))
    multi_k = len({b[1] for b in bars if b[0] == "dmt"}) > 1

    def bar_label(b):
        return (b[0] + (f" k={fmt_value(b[1])}" if multi_k and b[1] is not None else "")
                + (f", schedule={b[2]}" if b[2] else ""))

    groups = [(bar_label(b), [r for r in trained if bar_of(r) == b]) for b in bars]
    groups += [(f"{r.label or r.name} (not fine-tuned here)", [r]) for r in references]
    colors = {label: f"C{i % 10}" for i, (label, _) in enumerate(groups)}
    fig, axes = _figure(len(settings), f"{name} (final evaluation)",
                        width=max(4.6, 0.5 * len(metrics) * len(groups) + 1.5))
    width = 0.8 / len(groups)
    top = 0.0
    for ax, (setting, members) in zip(axes, settings.items()):
        for j, (label, rs) in enumerate(groups):
            rs = [r for r in rs if r in members or r in references]
            if not rs:
                continue
            stats = [_mean([_value(r, s, m) for r in rs]) for s, m, _ in metrics]
            top = max([top] + [s[2] for s in stats if math.isfinite(s[2])])
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(metrics))]
            drawn = ax.bar(xs, [s[0] for s in stats], width, color=colors[label], label=label,  # nan: no bar
                           hatch="//" if rs[0] in references else None,
                           yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]] if len(rs) > 1 else None,
                           capsize=2)
            if not bounded:  # losses differ in the second decimal: bars from zero alone would hide that
                ax.bar_label(drawn, fmt="%.3f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels([f"{s}\n{m}" for s, m, _ in metrics], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1 if bounded else top * 1.25 or 1)
        ax.set_title(_setting_label(keys, setting, varying) or "all runs", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return Plot(name, _save(fig, axes, out, file), caption + (f" Only the first {MAX_SETTINGS} settings are drawn."
                                                             if cut else ""))


def plot_strategy_comparison(col: Collection, out: Path) -> Plot:
    return _strategy_bars(
        col, out, "Strategy comparison", ability_keys, "a math, code, knowledge or judge evaluation",
        "score (fraction, 0-1)", "strategy_comparison.png",
        "Final evaluation per strategy: one group of bars per ability, one bar per strategy, one panel per setting "
        "of the other coordinates (seeds averaged, bars span min-max); hatched bars are models evaluated with "
        "sftjax-eval only (e.g. the base model).", bounded=True)


def plot_strategy_loss(col: Collection, out: Path) -> Plot:
    return _strategy_bars(
        col, out, "Held-out loss per strategy", loss_keys, "a validation-loss evaluation",
        "loss (nats/token, lower is better)", "strategy_loss.png",
        "Final validation loss per strategy on each held-out source (response tokens only; lower is better): "
        "sensitive where generated-answer scores sit at the floor; hatched bars are models evaluated with "
        "sftjax-eval only (e.g. the base model).", bounded=False)


# -- (3) DMT k -------------------------------------------------------------------------------------------------------


def plot_dmt_k(col: Collection, out: Path) -> Plot:
    name = "DMT k curve"
    runs = [r for r in col.runs if r.final_eval]
    dmt = [r for r in runs if r.coords.get("strategy") == "dmt" and r.coords.get("k") is not None]
    if len({r.coords["k"] for r in dmt}) < 2:
        return _not_drawn(name, "fewer than two values of k among the evaluated dmt runs")
    metrics = ability_keys(dmt)
    if not metrics:
        return _not_drawn(name, "no dmt run has a math, code, knowledge or judge evaluation")
    keys = [k for k in col.coordinate_keys() if k not in ("strategy", "k", "seed")]
    settings = _settings(dmt, keys)
    baselines = _settings([r for r in runs if r.coords.get("strategy") == "mixed_sequential"], keys)
    varying = _varying(list(settings), keys)
    shown = metrics[:MAX_PANELS]
    fig, axes = _figure(len(shown), "DMT: ability vs k (share of specialized data kept in the general stage)")
    for ax, (suite, metric, kind) in zip(axes, shown):
        for i, (setting, members) in enumerate(settings.items()):
            label = _setting_label(keys, setting, varying)
            by_k: dict = {}
            for r in members:
                by_k.setdefault(r.coords["k"], []).append(r)
            ks = sorted(by_k, key=float)
            ys = [_mean([_value(r, suite, metric) for r in by_k[k]])[0] for k in ks]
            ax.plot([float(k) for k in ks], ys, marker="o", color=f"C{i % 10}",
                    label=f"dmt{', ' + label if label else ''}")
            if setting in baselines:
                y = _mean([_value(r, suite, metric) for r in baselines[setting]])[0]
                if math.isfinite(y):
                    ax.axhline(y, color=f"C{i % 10}", linestyle="--", linewidth=1,
                               label=f"mixed_sequential (k=0){', ' + label if label else ''}")
        ax.set_xscale("log", base=2)
        all_k = sorted({r.coords["k"] for r in dmt}, key=float)
        ax.set_xticks([float(k) for k in all_k])
        ax.set_xticklabels([fmt_value(k) for k in all_k], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("k (fraction of each specialized source, log2 scale)")
        ax.set_ylabel(unit(kind, metric))
        ax.set_title(f"{suite}: {metric}", fontsize=10)
        ax.grid(alpha=0.3)
    file = _save(fig, axes, out, "dmt_k.png")
    return Plot(name, file, "Final evaluation of dmt runs against k, the fraction of each specialized source's amount "
                "mixed into the general stage; dashed lines are mixed_sequential runs of the same setting.")


# -- (4) score over training -----------------------------------------------------------------------------------------


def plot_score_vs_epoch(col: Collection, out: Path) -> Plot:
    name = "Score over training"
    runs = [r for r in col.runs if len(r.evals) >= 2]
    if not runs:
        return _not_drawn(name, "no run was evaluated at two or more steps")
    keys: list[tuple[str, str, str]] = []
    for r in runs:
        for step in sorted(r.evals):
            for suite, s in r.evals[step].items():
                ms = ability_metrics(s["kind"], s["metrics"]) or (["loss"] if "loss" in s["metrics"] else [])
                keys += [(suite, m, s["kind"]) for m in ms if (suite, m, s["kind"]) not in keys]
    by_epoch = all(r.epoch_of(step) is not None for r in runs for step in r.evals)
    references = [r for r in col.runs if r.coords.get("strategy") == EVAL_ONLY]
    shown = keys[:MAX_PANELS]
    fig, axes = _figure(len(shown), "Evaluation over training" + (" (by epoch)" if by_epoch else " (by step)"))
    for ax, (suite, metric, kind) in zip(axes, shown):
        for i, r in enumerate(runs):
            steps = sorted(s for s in r.evals if suite in r.evals[s])
            xs = [r.epoch_of(s) if by_epoch else s for s in steps]
            ax.plot(xs, [_value(r, suite, metric, s) for s in steps], marker="o", markersize=3, color=f"C{i % 10}",
                    label=r.label)
        for j, r in enumerate(references):  # e.g. the base model: where training started from
            y = _value(r, suite, metric)
            if math.isfinite(y):
                ax.axhline(y, color="grey", linestyle=("--", "-.", ":")[j % 3], linewidth=1,
                           label=f"{r.label or r.name} (not fine-tuned here)")
        if len(runs) == 1:
            for stage, end in runs[0].stage_ends()[:-1]:
                x = runs[0].epoch_of(end) if by_epoch else end
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch (cumulative over stages)" if by_epoch else "training step")
        if not by_epoch:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(unit(kind, metric))
        ax.set_title(f"{suite}: {metric}", fontsize=10)
        ax.grid(alpha=0.3)
    file = _save(fig, axes, out, "score_vs_epoch.png" if by_epoch else "score_vs_step.png")
    return Plot(name, file, "Every evaluation of each run during training (eval/step_N.json), one line per run"
                + ("; grey lines are models evaluated with sftjax-eval only (e.g. the base model)" if references
                   else "")
                + ("" if by_epoch else "; by step, since the epochs of some evaluations are not known (a run capped "
                   "by train.max_steps, or a stage given in steps)") + ".")


# -- (5) memorization vs generalization ------------------------------------------------------------------------------


def plot_memorization(col: Collection, out: Path) -> Plot:
    name = "Memorization vs generalization"
    suites: list[str] = []
    for r in col.runs:
        suites += [s for s, v in r.final_eval.items() if v["kind"] == "knowledge" and s not in suites]
    if not suites:
        return _not_drawn(name, "no run has a knowledge evaluation")
    shown = suites[:MAX_PANELS]
    many = max(len([r for r in col.runs if s in r.final_eval]) for s in shown) > 12
    fig, axes = _figure(len(shown), "Knowledge: memorization vs generalization",
                        width=4.6 if many else max(6.0, 1.0 * len(col.runs) + 2.0))
    for ax, suite in zip(axes, shown):
        runs = [r for r in col.runs if suite in r.final_eval]
        if many:
            for i, r in enumerate(runs):
                ax.scatter(_value(r, suite, "memorization"), _value(r, suite, "generalization"), color=f"C{i % 10}",
                           label=r.label)
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("memorization accuracy (fraction correct)")
            ax.set_ylabel("generalization accuracy (fraction correct)")
        else:
            splits = [s for s in SPLIT_ORDER if any(s in r.final_eval[suite]["metrics"] for r in runs)]
            width = 0.8 / max(len(splits), 1)
            colors = {"memorization": "#1f4e99", "generalization": "#d9661f"}
            for j, split in enumerate(splits):
                ys = [_value(r, suite, split) for r in runs]
                ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(runs))],
                       ys, width,  # nan: no bar
                       color=colors.get(split, f"C{(j + 1) % 10}"), alpha=1.0 if split in colors else 0.55,
                       label=split if split != "generalization" else "generalization (all new questions)")
            ax.set_xticks(range(len(runs)))
            ax.set_xticklabels([r.label for r in runs], rotation=20, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_ylabel("accuracy (fraction correct)")
            ax.set_xlabel("run")
        ax.set_title(f"{suite}: trained questions (memorization) vs new ones", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    file = _save(fig, axes, out, "memorization_vs_generalization.png")
    return Plot(name, file, "Knowledge suites at the final evaluation: accuracy on the trained questions verbatim "
                "(memorization) vs on rephrased, date-changed, yes/no and comparison questions about the same facts "
                "(generalization pools them)" + ("; one point per run, the dotted line is equality" if many else "")
                + ".")


def plot_knowledge_over_training(col: Collection, out: Path) -> Plot:
    """FineTuneBench's question: does generalization follow memorization as epochs go by? One panel per run."""
    name = "Knowledge over training"
    suite_of = {}
    for r in col.runs:
        suite = next((r.knowledge_suite(st) for st in sorted(r.evals) if r.knowledge_suite(st)), None)
        if suite and len([st for st in r.evals if suite in r.evals[st]]) >= 2:
            suite_of[id(r)] = suite
    runs = [r for r in col.runs if id(r) in suite_of][:MAX_PANELS]
    if not runs:
        return _not_drawn(name, "no run has a knowledge evaluation at two or more steps")
    by_epoch = all(r.epoch_of(step) is not None for r in runs for step in r.evals)
    base = [r for r in col.runs if r.coords.get("strategy") == EVAL_ONLY and r.knowledge_suite()][:1]
    base_suite = base[0].knowledge_suite() if base else None
    fig, axes = _figure(len(runs), "Knowledge: memorization vs generalization over training", height=3.0)
    styles = {"memorization": dict(color="#1f4e99", linewidth=2.2),
              "generalization": dict(color="#d9661f", linewidth=2.2)}
    for ax, r in zip(axes, runs):
        suite = suite_of[id(r)]
        steps = sorted(st for st in r.evals if suite in r.evals[st])
        xs = [r.epoch_of(st) if by_epoch else st for st in steps]
        splits = [sp for sp in SPLIT_ORDER if any(sp in r.evals[st][suite]["metrics"] for st in steps)]
        for j, split in enumerate(splits):
            ys = [_value(r, suite, split, st) for st in steps]
            if base and by_epoch:  # the model before fine-tuning, at epoch 0
                xs_, ys_ = [0.0, *xs], [_value(base[0], base_suite, split), *ys]
            else:
                xs_, ys_ = xs, ys
            ax.plot(xs_, ys_, marker="o", markersize=3, label=split,
                    **styles.get(split, dict(color=f"C{(j + 2) % 10}", linewidth=1, linestyle="--", alpha=0.8)))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch" if by_epoch else "training step")
        ax.set_ylabel("accuracy (fraction correct)")
        ax.set_title(r.label, fontsize=9)
        ax.grid(alpha=0.3)
    file = _save(fig, axes, out, "knowledge_over_training.png")
    return Plot(name, file, "Accuracy per split at every evaluation during training, one panel per run: the trained "
                "questions verbatim (memorization, blue) against new questions about the same facts (generalization, "
                "orange, pooling the dashed splits)" + ("; epoch 0 is " + (base[0].label or base[0].name)
                                                        if base and by_epoch else "")
                + ("" if by_epoch else "; by step, since the epochs of some evaluations are not known") + ".")


# -- (6) training loss -----------------------------------------------------------------------------------------------


def plot_train_loss(col: Collection, out: Path) -> Plot:
    name = "Training loss per source"
    runs = [r for r in col.runs if len(r.metrics) >= 2]
    if not runs:
        return _not_drawn(name, "no run logged two or more steps")
    sources: list[str] = []
    for r in runs:
        sources += [s for s in r.sources_with_loss() if s not in sources]
    panels = ["loss"] + [f"loss/{s}" for s in sources][: MAX_PANELS - 1]
    fig, axes = _figure(len(panels), "Training loss per source")
    for ax, key in zip(axes, panels):
        for i, r in enumerate(runs):
            pts = [(m["step"], m[key]) for m in r.metrics if isinstance(m.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i % 10}", linewidth=1.2, label=r.label)
        if len(runs) == 1:
            for stage, end in runs[0].stage_ends()[:-1]:
                ax.axvline(end, color="grey", linestyle=":", linewidth=1)
        ax.set_title("all sources" if key == "loss" else f"source: {key[5:]}", fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("train loss (nats/token)")
        ax.grid(alpha=0.3)
    file = _save(fig, axes, out, "train_loss_per_source.png")
    return Plot(name, file, "Token-weighted mean training loss of each logged step (metrics.jsonl loss and "
                "loss/<source>), one line per run" + ("; dotted lines mark stage ends" if len(runs) == 1 else "")
                + ".")


def plot_rubric_criteria(col: Collection, out: Path) -> Plot:
    name = "Rubric criteria per model"
    suites = rubric_suites(col.runs)
    if not suites:
        return _not_drawn(name, "no judge suite with per-criterion scores")
    fig, axes = _figure(len(suites), name, width=9.0, height=3.6)
    for ax, (suite, criteria) in zip(axes, suites):
        runs = [r for r in col.runs if suite in r.final_eval][:MAX_SETTINGS * 2]
        width = 0.8 / max(len(runs), 1)
        for i, r in enumerate(runs):
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(criteria))]
            ys = [_value(r, suite, f"criterion/{c}") for c in criteria]
            ax.bar(xs, ys, width, label=r.label, hatch="//" if r.coords.get("strategy") == EVAL_ONLY else None)
        ax.set_xticks(range(len(criteria)), criteria, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("normalized rating (0-1)")
        ax.set_title(suite, fontsize=10)
    return Plot(name, _save(fig, axes, out, "rubric_criteria.png"),
                "Mean judge rating per criterion (normalized 0-1, over the questions each criterion applies to) and "
                "the judge's overall rating, one bar per model; hatched bars are models evaluated with sftjax-eval "
                "only.")


PLOTS = (plot_ability_vs_amount, plot_loss_vs_amount, plot_strategy_comparison, plot_strategy_loss, plot_dmt_k,
         plot_score_vs_epoch, plot_memorization, plot_knowledge_over_training, plot_train_loss, plot_rubric_criteria)


def make_plots(col: Collection, out: Path) -> list[Plot]:
    """Every plot that the runs support, written into ``out``; the others come back with file=None and why."""
    out.mkdir(parents=True, exist_ok=True)
    return [fn(col, out) for fn in PLOTS]
