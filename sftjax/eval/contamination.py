"""What training data must not contain: the prompts and references of the configured eval suites, as
sftjax.data.hygiene.EvalText for the decontamination stage. Each suite kind is read with its own loader, so a suite
file that does not load fails here exactly as it would at eval time."""

from __future__ import annotations

from pathlib import Path

from sftjax.config import ConfigError, DataConfig, EvalConfig, SourceConfig
from sftjax.data.hygiene import EvalText, example_text


def suite_texts(name: str, suite, data: DataConfig) -> list[EvalText]:
    """The texts of one suite: questions and reference answers, HumanEval prompts and canonical solutions,
    knowledge questions and answers, judge turns and references, or every example of a held-out loss source."""
    if suite.kind != "loss" and not Path(suite.path).is_file():
        raise ConfigError(f"config key 'eval.suites.{name}.path': eval suite '{name}': {suite.path} does not exist "
                          "(decontamination reads its prompts and references)")
    out: list[EvalText] = []

    def add(item, *texts) -> None:
        out.extend(EvalText(name, str(item), t) for t in texts if isinstance(t, str) and t.strip())

    if suite.kind == "math":
        from sftjax.eval.math import load_gsm8k_jsonl

        for p in load_gsm8k_jsonl(suite.path):
            add(p["id"], p["question"], p["answer_text"])
    elif suite.kind == "code":
        from sftjax.eval.code import load_problems

        for p in load_problems(suite.path):
            add(p["task_id"], p["prompt"], p.get("canonical_solution"))
    elif suite.kind == "knowledge":
        from sftjax.eval.knowledge import load_items

        for it in load_items(suite.path):
            add(it["id"], it["question"], it["answer"])
    elif suite.kind == "judge":
        from sftjax.eval.judge import load_questions

        for q in load_questions(suite.path):
            add(q["id"], *q["turns"], *(q.get("reference") or []))
    else:
        from sftjax.data.formats import to_example
        from sftjax.data.sources import SourceSpec, read_source

        src = SourceConfig(path=suite.path, format=suite.format, fields=dict(suite.fields))
        try:
            records, _ = read_source(SourceSpec(name=name, path=src.path, format=src.format, fields=src.fields,
                                                filters=[], split=src.split, kind=src.kind))
        except ConfigError as e:
            raise ConfigError(f"eval suite '{name}' (read for decontamination): {e}") from None
        for rec in records:
            add(rec.id, example_text(to_example(rec.fields, src.format, where=rec.id)))
    return out


def eval_texts(eval_cfg: EvalConfig, data: DataConfig) -> list[EvalText]:
    """Every suite's texts, in suite order; [] when no source asks for decontamination (nothing is read)."""
    if not any(s.decontaminate for s in data.sources.values()):
        return []
    if not eval_cfg.suites:
        raise ConfigError("config key 'data.sources.*.decontaminate': a source asks for decontamination but "
                          "eval.suites is empty; configure the eval suites to check against (e.g. eval=dong)")
    return [t for name, suite in eval_cfg.suites.items() for t in suite_texts(name, suite, data)]
