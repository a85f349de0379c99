"""sftjax-report on hand-made run directories laid out exactly as sftjax-train and Hydra write them."""

import json
from fractions import Fraction
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from sftjax.cli.report import main
from sftjax.report import collect_runs, write_report
from sftjax.report.collect import coordinates, stages_of

SPLITS = ("memorization", "rephrased", "date_changed", "yes_no", "comparison")


def composed(overrides: list[str]) -> str:
    """The config Hydra saves as RUN_DIR/.hydra/config.yaml: composed from conf/, not resolved, before
    apply_strategy (so data.stages stays empty under a strategy)."""
    from hydra import compose, initialize_config_module

    from sftjax.config import SuiteConfig, register_configs

    register_configs()
    with initialize_config_module(config_module="sftjax.conf", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):  # what eval=NAME would add
        cfg.eval.suites.knowledge = SuiteConfig(kind="knowledge", path="facts_test.jsonl")
        cfg.eval.suites.math = SuiteConfig(kind="math", path="math_test.jsonl")
    return OmegaConf.to_yaml(cfg)


def scores(strategy: str, amount: Fraction, k: Fraction, step: int) -> dict:
    """Deterministic fake abilities, so the table's values can be checked."""
    base = 0.1 + 0.4 * float(amount) + (0.05 if strategy == "dmt" else 0.0) + 0.2 * float(k) ** 0.25
    grow = step / 4
    return {"math": round(base * grow, 4), "memorization": round(min(1.0, 2 * base) * grow, 4),
            "generalization": round(base / 2 * grow, 4)}


def write_run(run_dir: Path, overrides: list[str], strategy: str, amount: Fraction, k: Fraction = Fraction(1, 256),
              stages=("specialized", "general")) -> None:
    """metrics.jsonl (4 steps, two stages of 2 steps), eval/step_2.json and eval/step_4.json (stage ends),
    data_stats.json and .hydra/, as the training loop writes them."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(composed(overrides))
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (run_dir / "eval").mkdir()
    lines = []
    for step in (1, 2, 3, 4):
        stage = stages[0] if step <= 2 else stages[1]
        line = {"step": step, "stage": stage, "loss": 3.0 - 0.5 * step, "lr": 3e-4, "grad_norm": 1.0,
                "tokens": 400 * step, "tokens_per_s": 900.0, "mfu": 0.01, "fill": 0.95}
        line["loss/arith" if stage == "specialized" else "loss/prose"] = 3.0 - 0.5 * step
        if stage != "specialized":
            line["loss/arith"] = 2.0 - 0.1 * step
        if step % 2 == 0:
            s = scores(strategy, amount, k, step)
            know = {"accuracy": (s["memorization"] + 4 * s["generalization"]) / 5, "memorization": s["memorization"],
                    "generalization": s["generalization"], "n": 50, "unparseable": 0,
                    **{sp: s["memorization"] if sp == "memorization" else s["generalization"] for sp in SPLITS},
                    "truncated_prompts": 0}
            suites = {
                "knowledge": {"metrics": know, "results": [{"id": "f1:memorization", "correct": True}],
                              "kind": "knowledge", "seconds": 1.5},
                "math": {"metrics": {"accuracy": s["math"], "n": 8, "unparseable": 1, "truncated_prompts": 0},
                         "results": [{"id": "m1", "prediction": "4", "correct": True}], "kind": "math",
                         "seconds": 2.0},
            }
            (run_dir / "eval" / f"step_{step}.json").write_text(
                json.dumps({"step": step, "stage": stage, "suites": suites}, indent=1))
            line.update({f"eval/{n}/{m}": v for n, su in suites.items() for m, v in su["metrics"].items()})
        lines.append(json.dumps(line))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "data_stats.json").write_text(json.dumps({st: {"arith": {"examples": 10, "tokens": 500}}
                                                         for st in stages}))


def make_sweep(root: Path) -> Path:
    """A Hydra multirun: strategy {mixed_sequential, dmt} x amount of arith {1, 1/4}; each job's directory is its
    override dirname under the sweep directory (a '/' in a value nests it, as Hydra does)."""
    sweep = root / "sweep"
    base = ["model=tiny", "data.stages=[]", "strategy.specialized=[arith]", "strategy.general=[prose]"]
    for strategy in ("mixed_sequential", "dmt"):
        for amount in ("1", "1/4"):
            job = [f"+strategy.amounts.arith={amount}", f"strategy={strategy}"]
            write_run(sweep / ",".join(job), [f"run_dir={sweep}", *base, *job], strategy, Fraction(amount),
                      stages=("specialized", "general" if strategy != "dmt" else "general_plus_k"))
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"hydra": {"overrides": {"task": [f"run_dir={sweep}", *base, "+strategy.amounts.arith=1,1/4",
                                          "strategy=mixed_sequential,dmt"]}}})))
    return sweep


def table_rows(md: str) -> list[dict]:
    lines = md.split("## Runs", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    lines = [ln for ln in lines if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in ln.strip("|").split("|")])) for ln in lines[2:]]


def test_coordinates_from_a_saved_config():
    import yaml

    cfg = yaml.safe_load(composed(["model=tiny", "data.stages=[]", "strategy=dmt", "strategy.specialized=[arith]",
                                   "strategy.general=[prose]", "+strategy.amounts.arith=1/16", "strategy.k=1/4",
                                   "train.seed=3"]))
    stages = stages_of(cfg)
    assert [s["name"] for s in stages] == ["specialized", "general_plus_k"]
    assert stages[1]["mix"] == {"prose": "1", "arith": "1/64"}  # k of the specialized amount joins stage 2
    c = coordinates(cfg, stages)
    assert c["model"] == "tiny" and c["strategy"] == "dmt" and c["k"] == Fraction(1, 4)
    assert c["amount/arith"] == Fraction(1, 16) and c["amount/prose"] == 1  # the full amount, not k's share
    assert c["epochs"] == 3.0 and c["seed"] == 3


def test_report_of_a_2x2_sweep(tmp_path):
    sweep = make_sweep(tmp_path)
    col, plots, md_path = write_report([sweep], tmp_path / "out", title="2x2")
    md = md_path.read_text()
    assert col.summary() == "4 runs, 0 skipped" and "4 runs, 0 skipped" in md
    assert "`+strategy.amounts.arith=1,1/4`" in md and "`strategy=mixed_sequential,dmt`" in md  # the swept keys
    rows = table_rows(md)
    assert len(rows) == 4
    got = {(r["strategy"], r["amount arith"]) for r in rows}
    assert got == {("mixed_sequential", "1"), ("mixed_sequential", "1/4"), ("dmt", "1"), ("dmt", "1/4")}
    # sorted: strategy (text), then amount ascending
    assert [(r["strategy"], r["amount arith"]) for r in rows] == [
        ("dmt", "1/4"), ("dmt", "1"), ("mixed_sequential", "1/4"), ("mixed_sequential", "1")]
    for r in rows:
        strategy, amount = r["strategy"], Fraction(r["amount arith"])
        assert r["k"] == ("1/256" if strategy == "dmt" else "–")
        assert r["model"] == "tiny" and r["amount prose"] == "1" and r["epochs"] == "3" and r["seed"] == "0"
        assert r["steps"] == "4" and r["eval step"] == "4" and float(r["train loss"]) == 1.0
        s = scores(strategy, amount, Fraction(1, 256), 4)
        assert float(r["math/accuracy"]) == pytest.approx(s["math"], abs=1e-3)
        assert float(r["knowledge/memorization"]) == pytest.approx(s["memorization"], abs=1e-3)
        assert float(r["knowledge/generalization"]) == pytest.approx(s["generalization"], abs=1e-3)
        assert "math/n" not in r and "knowledge/truncated_prompts" not in r  # counts are not columns
        assert r["directory"].startswith("`+strategy.amounts.arith=")
    assert rows[0]["run"] == "dmt, arith=1/4"
    drawn = {p.file for p in plots if p.file}
    assert drawn == {"ability_vs_amount.png", "strategy_comparison.png", "score_vs_epoch.png",
                     "memorization_vs_generalization.png", "knowledge_over_training.png", "train_loss_per_source.png"}
    for f in drawn:
        png = tmp_path / "out" / f
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG", f
        assert f"]({f})" in md
    assert "Not drawn: fewer than two values of k" in md  # the DMT curve needs k to vary
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(drawn | {"report.md"})


def test_score_over_training_is_by_epoch_when_epochs_are_known(tmp_path):
    col = collect_runs([make_sweep(tmp_path)])
    run = col.runs[0]
    assert run.stages[0]["epochs"] == 3.0 and [e for e in run.stage_ends()] == [("specialized", 2),
                                                                              ("general_plus_k", 4)]
    assert [run.epoch_of(s) for s in (0, 1, 2, 3, 4)] == [0.0, 1.5, 3.0, 4.5, 6.0]


def test_dmt_k_curve(tmp_path):
    root = tmp_path / "k"
    base = ["model=tiny", "data.stages=[]", "strategy.specialized=[arith]", "strategy.general=[prose]"]
    for k in ("1/256", "1/64", "1/16"):
        write_run(root / f"k={k.replace('/', '_')}", [*base, "strategy=dmt", f"strategy.k={k}"], "dmt", Fraction(1),
                  Fraction(k), stages=("specialized", "general_plus_k"))
    write_run(root / "baseline", [*base, "strategy=mixed_sequential"], "mixed_sequential", Fraction(1))
    col, plots, md_path = write_report([root], tmp_path / "out")
    by = {p.name: p for p in plots}
    assert by["DMT k curve"].file == "dmt_k.png" and (tmp_path / "out" / "dmt_k.png").stat().st_size > 5000
    assert by["Strategy comparison"].file == "strategy_comparison.png"
    assert by["Ability vs data amount"].file is None  # every run uses all of arith
    rows = table_rows(md_path.read_text())
    assert sorted(r["k"] for r in rows if r["strategy"] == "dmt") == ["1/16", "1/256", "1/64"]


def test_malformed_runs_are_counted_not_dropped(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    bad = sweep / "broken"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    crashed = sweep / "crashed"  # Hydra wrote its .hydra, the job died before logging a step
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "config.yaml").write_text(composed(["model=tiny"]))
    partial = next(p.parent for p in sweep.rglob("metrics.jsonl") if "dmt" in str(p))
    with open(partial / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.4\n')  # cut short by a crash
    (partial / "eval" / "step_9.json").write_text("{not json")
    main([str(sweep), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "4 runs, 2 skipped" in md and "4 runs, 2 skipped" in err
    assert "malformed .hydra/config.yaml" in md and "broken" in md
    assert "no metrics.jsonl or eval/step_N.json" in md and "crashed" in md
    assert "metrics.jsonl: 1 malformed line(s) ignored (first: line 5)" in md
    assert "eval/step_9.json: malformed" in md
    assert len(table_rows(md)) == 4


def test_eval_output_file_and_missing_eval_files(tmp_path):
    """An sftjax-eval output is one row per model; evaluations whose eval/step_N.json is gone are read back from
    the eval/ keys of metrics.jsonl."""
    out = tmp_path / "eval.json"
    suite = {"math": {"kind": "math", "metrics": {"accuracy": 0.25, "n": 8}, "results": [], "seconds": 1.0}}
    out.write_text(json.dumps({"models": {"embedded:smollm2-135m-instruct": suite, "runs/demo": {
        "math": {**suite["math"], "metrics": {"accuracy": 0.5, "n": 8}}}}}))
    run = tmp_path / "runs" / "r"
    write_run(run, ["model=tiny"], "none", Fraction(1), stages=("main", "main"))
    for f in (run / "eval").iterdir():
        f.unlink()
    col = collect_runs([out, tmp_path / "runs"])
    assert [r.coords["model"] for r in col.runs if r.coords.get("strategy") == "(eval only)"] == [
        "embedded:smollm2-135m-instruct", "runs/demo"]
    (r,) = [r for r in col.runs if r.name == "r"]
    assert sorted(r.evals) == [2, 4] and r.final_eval["math"]["kind"] == "math"
    assert any("read from metrics.jsonl" in w for w in col.warnings)


def test_a_directory_without_runs_exits_2(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty")])
    assert e.value.code == 2
    assert "no run directories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err


def test_failed_sweep_jobs_are_reported_from_the_manifest(tmp_path):
    """sftjax.sweep's manifest.json names each job's run directory and status; a failed job is a skipped row with
    its error, also when it left no run directory."""
    sweep = make_sweep(tmp_path)
    dead = sweep / "strategy=sequential"
    (dead / ".hydra").mkdir(parents=True)
    (dead / ".hydra" / "config.yaml").write_text(composed(["model=tiny"]))
    jobs = [{"num": 0, "run_dir": str(dead), "status": "failed", "override_dirname": "strategy=sequential",
             "error": "ConfigError: config key 'strategy.general': sequential needs\nmore"},
            {"num": 1, "run_dir": str(sweep / "never_started"), "status": "failed", "error": "OSError: disk full"}]
    (sweep / "manifest.json").write_text(json.dumps({"sweep_dir": str(sweep), "jobs": jobs}))
    col = collect_runs([sweep])
    reasons = dict(col.skipped)
    assert len(col.runs) == 4 and len(col.skipped) == 2
    assert reasons[str(dead)] == "sweep job failed: ConfigError: config key 'strategy.general': sequential needs"
    assert reasons[str((sweep / "never_started").resolve())] == "sweep job failed: OSError: disk full"
    assert col.sweeps[0]["counts"]["failed"] == 2


def test_one_source_at_a_time_lines_hold_the_others_at_their_usual_amount(tmp_path):
    base = ["model=tiny", "data.stages=[]", "strategy=multitask", "strategy.specialized=[arith]",
            "strategy.general=[prose]"]
    for name, extra, amount in (("full", [], "1"), ("a4", ["+strategy.amounts.arith=1/4"], "1/4"),
                                ("p4", ["+strategy.amounts.prose=1/4"], "1"),
                                ("p16", ["+strategy.amounts.prose=1/16"], "1")):
        write_run(tmp_path / "runs" / name, base + extra, "multitask", Fraction(amount), stages=("multitask",) * 2)
    col, plots, _ = write_report([tmp_path / "runs"], tmp_path / "out")
    (p,) = [p for p in plots if p.name == "Ability vs data amount"]
    assert p.file == "ability_vs_amount.png" and "usual amount (arith=1, prose=1)" in p.caption


def test_strategy_loss_bars_include_the_base_model(tmp_path, monkeypatch):
    """Held-out losses get their own bars (not clipped to [0, 1]), one per strategy (and schedule), and a model
    evaluated only by sftjax-eval (the base model) is drawn next to them in every panel, hatched."""
    import matplotlib.axes

    root = tmp_path / "runs"
    base = ["model=tiny", "data.stages=[]", "strategy.specialized=[arith]", "strategy.general=[prose]"]
    losses = {"mixed_sequential": 2.5, "dmt": 1.75, "mixed_sequential,strategy.schedule=stage": 2.0}
    for job, loss in losses.items():
        run = root / job
        strategy, *extra = job.split(",")
        write_run(run, [*base, f"strategy={strategy}", *extra], strategy, Fraction(1))
        record = json.loads((run / "eval" / "step_4.json").read_text())
        record["suites"]["arith_loss"] = {"kind": "loss", "metrics": {"loss": loss, "tokens": 900}, "results": [],
                                          "seconds": 1.0}
        (run / "eval" / "step_4.json").write_text(json.dumps(record))
    out = tmp_path / "base.json"
    out.write_text(json.dumps({"models": {"embedded:smollm2-135m-instruct": {
        "arith_loss": {"kind": "loss", "metrics": {"loss": 3.25}, "results": [], "seconds": 1.0}}}}))
    bars: list[tuple[str, list, object]] = []
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        bars.append((kwargs.get("label"), list(height), kwargs.get("hatch")))
        return real_bar(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    col, plots, md_path = write_report([root, out], tmp_path / "out")
    by = {p.name: p for p in plots}
    assert by["Held-out loss per strategy"].file == "strategy_loss.png"
    assert (tmp_path / "out" / "strategy_loss.png").stat().st_size > 5000
    loss_bars = {label: (h, hatch) for label, h, hatch in bars if len(h) == 1 and h[0] in (1.75, 2.0, 2.5, 3.25)}
    assert loss_bars["dmt"] == ([1.75], None) and loss_bars["mixed_sequential"] == ([2.5], None)
    assert loss_bars["mixed_sequential, schedule=stage"] == ([2.0], None)  # its own bar, not averaged in
    assert sorted(r.label for r in col.runs if r.coords["strategy"] == "mixed_sequential") == [
        "mixed_sequential", "mixed_sequential, schedule=stage"]  # by coordinate, not overrides; the base model's
    # different model does not make every trained run's label name its own
    (ref,) = [v for k, v in loss_bars.items() if k.endswith("(not fine-tuned here)")]
    assert ref == ([3.25], "//")
    assert "strategy_loss.png" in md_path.read_text()


def test_a_presets_sweep_axes_are_reported(tmp_path):
    """Axes a preset declares (hydra.sweeper.params in multirun.yaml) are listed with the command line's; a key the
    command line pins is not an axis."""
    from sftjax.report.collect import sweep_info

    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": {
        "overrides": {"task": ["experiment=dong2023_strategies", "strategy.amount=1/128,1/4", "size=cpu"]},
        "sweeper": {"params": {"size": "7b,13b", "strategy": "multitask,dmt"}}}})))
    (info,) = sweep_info(tmp_path, [])
    assert info["swept"] == ["strategy.amount=1/128,1/4", "strategy=multitask,dmt"]


def test_rubric_table_and_plot_compare_models_across_criteria(tmp_path):
    """Zhang & Chen's table: models as rows, the eight criteria + overall + the weighted score as columns, then the
    score per domain; and one plot of every criterion per model."""
    names = ["clarity", "accuracy", "completeness", "conciseness", "safety", "specificity", "consideration",
             "politeness", "overall"]

    def suite(base: float) -> dict:
        metrics = {"score": base, "n": 45, "judged": 44, "unparseable": 1,
                   **{f"criterion/{n}": round(base + 0.01 * i, 3) for i, n in enumerate(names)},
                   "domain/general/score": base - 0.05, "domain/in_domain/score": base + 0.05}
        return {"rubric": {"kind": "judge", "metrics": metrics, "results": []}}

    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"models": {"base": suite(0.5), "runs/ft": suite(0.7)}}))
    _, plots, md_path = write_report([out], tmp_path / "report")
    md = md_path.read_text()
    header = ("| model | " + " | ".join(names) + " | weighted | general (weighted) | in_domain (weighted) | judged | "
              "unparseable |")
    assert header in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "0.7" in line and "| 44 | 1 |" in line]
    assert len(rows) == 1 and "| 0.75 |" in rows[0]  # in_domain score of the fine-tuned model
    (plot,) = [p for p in plots if p.file == "rubric_criteria.png"]
    assert (tmp_path / "report" / plot.file).stat().st_size > 0


def test_knowledge_over_training_table_and_plot_label_runs_by_what_was_swept(tmp_path):
    """FineTuneBench's table: every split at every evaluation, epochs known, the base model as epoch 0; runs that
    differ only in plain overrides (a format, a learning rate) are labelled by those, not by their directories."""
    root = tmp_path / "runs"
    for lr in ("1e-5", "1e-4"):
        write_run(root / f"job_lr_{lr}", ["model=tiny", "data.stages=[]", "strategy.specialized=[arith]",
                                          "strategy.general=[prose]", "strategy=mixed_sequential", f"optim.lr={lr}"],
                  "mixed_sequential", Fraction(1))
    base = tmp_path / "base.json"
    know = {"memorization": 0.05, "rephrased": 0.1, "date_changed": 0.0, "yes_no": 0.5, "comparison": 0.45,
            "generalization": 0.2625, "accuracy": 0.22, "n": 50}
    base.write_text(json.dumps({"models": {"embedded:smollm2-135m-instruct": {
        "knowledge": {"kind": "knowledge", "metrics": know, "results": [], "seconds": 1.0}}}}))
    col, plots, md_path = write_report([root, base], tmp_path / "out")
    md = md_path.read_text()
    assert sorted(r.label for r in col.runs if r.coords.get("strategy") != "(eval only)") == ["lr=1e-4", "lr=1e-5"]
    section = md.split("## Knowledge over training", 1)[1].split("## Plots", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "epoch", "step", "memorization", "rephrased", "date_changed", "yes_no", "comparison",
                      "generalization", "n"]
    rows = [dict(zip(header, [c.strip() for c in ln.strip("|").split("|")])) for ln in lines[2:]]
    assert len(rows) == 1 + 2 * 2
    assert rows[0]["epoch"] == "0" and rows[0]["step"] == "–" and rows[0]["yes_no"] == "0.5"  # the base model first
    trained = rows[1:]
    assert [(r["epoch"], r["step"]) for r in trained] == [("3", "2"), ("6", "4")] * 2  # 3 epochs per stage
    s = scores("mixed_sequential", Fraction(1), Fraction(1, 256), 4)
    assert float(trained[1]["memorization"]) == pytest.approx(s["memorization"], abs=1e-3)
    assert float(trained[1]["comparison"]) == pytest.approx(s["generalization"], abs=1e-3)
    (plot,) = [p for p in plots if p.name == "Knowledge over training"]
    assert plot.file == "knowledge_over_training.png" and "epoch 0 is" in plot.caption
    assert (tmp_path / "out" / plot.file).stat().st_size > 5000


def test_amount_plots_draw_alone_and_mixed_runs_as_separate_lines_with_the_base_model(tmp_path, monkeypatch):
    """Dong et al.'s amount grid: each source alone, and all sources mixed at the same amount. The mixed runs form one
    line per source over that source's amount (not one point per amount of the others); the base model is a dotted
    reference; held-out losses get the same plot."""
    import matplotlib.axes

    root = tmp_path / "runs"
    base = ["model=tiny", "data.stages=[]", "strategy=multitask", "strategy.general=[]"]
    for sources in ("[arith]", "[prose]", "[arith,prose]"):
        for amount in ("1/4", "1/2"):
            run = root / f"{sources}-{amount.replace('/', '_')}"
            write_run(run, [*base, f"strategy.specialized={sources}", f"strategy.amount={amount}"], "multitask",
                      Fraction(amount) * (2 if "," in sources else 1), stages=("multitask",) * 2)
            record = json.loads((run / "eval" / "step_4.json").read_text())
            record["suites"]["arith_loss"] = {"kind": "loss", "metrics": {"loss": 2.0 - float(Fraction(amount))},
                                              "results": [], "seconds": 1.0}
            record["suites"]["math"]["metrics"]["answer_format"] = 0.5
            (run / "eval" / "step_4.json").write_text(json.dumps(record))
    out = tmp_path / "base.json"
    out.write_text(json.dumps({"models": {"embedded:smollm2-135m-instruct": {
        "arith_loss": {"kind": "loss", "metrics": {"loss": 3.0}, "results": [], "seconds": 1.0},
        "math": {"kind": "math", "metrics": {"accuracy": 0.0, "answer_format": 0.0, "n": 8}, "results": [],
                 "seconds": 1.0}}}}))
    drawn: list[tuple[str, list, list, str]] = []
    refs: list[tuple[str, float]] = []
    real_errorbar, real_axhline = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.axhline

    def errorbar(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y), kwargs.get("linestyle")))
        return real_errorbar(self, x, y, *args, **kwargs)

    def axhline(self, y=0, *args, **kwargs):
        refs.append((kwargs.get("label"), y))
        return real_axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", axhline)
    col, plots, md_path = write_report([root, out], tmp_path / "out")
    by = {p.name: p for p in plots}
    assert by["Ability vs data amount"].file == "ability_vs_amount.png"
    assert by["Held-out loss vs data amount"].file == "loss_vs_amount.png"
    assert (tmp_path / "out" / "loss_vs_amount.png").stat().st_size > 5000
    assert "dashed line named a+b+c" in by["Ability vs data amount"].caption and "Dotted" in by[
        "Ability vs data amount"].caption
    lines = {label: (x, style) for label, x, _, style in drawn}
    assert lines == {"arith alone": ([0.25, 0.5], "-"), "arith+prose": ([0.25, 0.5], "--"),
                     "prose alone": ([0.25, 0.5], "-")}  # the mixed runs once, not once per source
    # five panels (math accuracy and answer format, knowledge memorization and generalization, arith loss), three
    # lines each
    assert len(drawn) == 15 and [1.75, 1.5] in [y for label, _, y, _ in drawn if label == "arith alone"]
    # the base model in the panels where it was evaluated (math accuracy, answer format, arith loss; the score over
    # training plot draws it too)
    assert {label for label, _ in refs} == {"embedded:smollm2-135m-instruct (not fine-tuned here)"}
    assert sorted({y for _, y in refs}) == [0.0, 3.0]
    assert "math/answer_format" in table_rows(md_path.read_text())[0]
