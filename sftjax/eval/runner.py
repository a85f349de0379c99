"""Run evaluation suites on a model: the same code during training (the loop's eval hook) and in sftjax-eval.

A suite is data plus a scorer (sftjax.config.SuiteConfig): validation loss of a held-out source, GSM8K-style math
accuracy, HumanEval pass@k (sandboxed), knowledge injection (memorization vs generalization) or an LLM-judge rubric.
Generation goes through :class:`Completer`, which renders chat prompts with the run's own template (the exact
prompt side of what training rendered) and decodes with sftjax.generate's KV cache. Each suite returns a dict with
its scalar ``metrics`` (flat, for metrics.jsonl and TensorBoard) and its per-item ``results``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from sftjax.config import ConfigError, DataConfig, EvalConfig, ModelConfig, SourceConfig, SuiteConfig
from sftjax.data.templates import end_of_turn_ids, prompt_ids

CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")  # Codex paper's stop set


class Completer:
    """A model under evaluation: chat or raw prompts in, text out.

    Prompts longer than the model's positions allow (with the token budget) keep their last tokens and are counted
    in ``truncated_prompts``: an eval set should not stop on one long item, but the cut must be visible."""

    def __init__(self, graphdef, params, tokenizer, *, template: str, max_positions: int, mesh=None,
                 batch_size: int = 8, seed: int = 0, eos_ids: Sequence[int] = ()):
        self.graphdef, self.params, self.tokenizer, self.template = graphdef, params, tokenizer, template
        self.max_positions, self.mesh, self.batch_size, self.seed = max_positions, mesh, batch_size, seed
        self.eos = end_of_turn_ids(tokenizer, eos_ids)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncated_prompts = 0

    def chat_prompt(self, turns: Sequence[str], answers: Sequence[str] = ()) -> list[int]:
        """Token ids of a conversation (user turns, with the earlier assistant answers) up to where the model's next
        answer starts, rendered exactly as training renders the prompt side of the same conversation."""
        messages = []
        for i, user in enumerate(turns):
            messages.append({"role": "user", "content": user})
            if i + 1 < len(turns):
                messages.append({"role": "assistant", "content": answers[i] if i < len(answers) else ""})
        return prompt_ids(self.tokenizer, self.template, messages)

    def raw_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def complete(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed_offset: int = 0) -> list[str]:
        from sftjax.generate import generate

        room = self.max_positions - max_new_tokens
        if room < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                              f"{self.max_positions} positions")
        fitted = []
        for p in prompts:
            if len(p) > room:
                self.truncated_prompts += 1
                p = p[-room:]
            fitted.append(list(p) or [self.pad])
        texts = []
        for i in range(0, len(fitted), self.batch_size):
            outs = generate((self.graphdef, self.params), fitted[i : i + self.batch_size], max_new_tokens,
                            eos_ids=self.eos, pad_id=self.pad, temperature=temperature,
                            seed=self.seed + seed_offset + i, mesh=self.mesh)
            texts += [_cut(self.tokenizer.decode(o, skip_special_tokens=True), stop) for o in outs]
        return texts


def _cut(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (generation itself stops only at EOS)."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:at]


def _limited(items: list, limit: int) -> list:
    return items[:limit] if limit else items


# -- suites ----------------------------------------------------------------------------------------------------------


def math_suite(suite: SuiteConfig, completer: Completer) -> dict:
    from sftjax.eval import math as gsm

    problems = _limited(gsm.load_gsm8k_jsonl(suite.path), suite.limit)
    prompts = [completer.chat_prompt([p["question"] + suite.prompt_suffix]) for p in problems]
    preds = completer.complete(prompts, suite.max_new_tokens, temperature=suite.temperature)
    scored = gsm.score(preds, [p["answer"] for p in problems])
    results = [{"id": p["id"], "prediction": pred, **r} for p, pred, r in zip(problems, preds, scored["results"])]
    return {"metrics": {"accuracy": scored["accuracy"], "n": scored["n"], "unparseable": scored["n_unparseable"],
                        "answer_format": scored["answer_format"]},
            "results": results}


def code_suite(suite: SuiteConfig, completer: Completer) -> dict:
    from sftjax.eval import code

    problems = _limited(code.load_problems(suite.path), suite.limit)
    completions: dict[str, list[str]] = {p["task_id"]: [] for p in problems}
    replies: dict[str, list[str]] = {p["task_id"]: [] for p in problems}
    chat = suite.prompt == "chat"
    if chat:  # no stop strings: a reply's code block holds the very lines (def, #, assert) that end a raw completion
        prompts = [completer.chat_prompt([code.chat_instruction(p)]) for p in problems]
    else:
        prompts = [completer.raw_prompt(p["prompt"]) for p in problems]
    for s in range(suite.samples):
        outs = completer.complete(prompts, suite.max_new_tokens, temperature=suite.temperature,
                                  stop=() if chat else CODE_STOPS, seed_offset=1000 * s)
        for p, out in zip(problems, outs, strict=True):
            replies[p["task_id"]].append(out)
            completions[p["task_id"]].append(code.completion_from_reply(p, out) if chat else out)
    scored = code.score(problems, completions, ks=suite.ks)
    results = [{"task_id": t, "completions": completions[t], **({"replies": replies[t]} if chat else {}), **v}
               for t, v in scored["per_task"].items()]
    return {"metrics": {**scored["pass@k"], "n": scored["n_tasks"]}, "results": results}


def knowledge_suite(suite: SuiteConfig, completer: Completer, judge_fn=None) -> dict:
    from sftjax.eval import knowledge

    items = _limited(knowledge.load_items(suite.path), suite.limit)
    prompts = [completer.chat_prompt([it["question"] + suite.prompt_suffix]) for it in items]
    preds = completer.complete(prompts, suite.max_new_tokens, temperature=suite.temperature)
    scored = knowledge.score(preds, items, scorer=suite.scorer, judge=judge_fn)
    metrics = {"accuracy": scored["accuracy"], "memorization": scored["memorization"],
               "generalization": scored["generalization"], "n": scored["n"], "unparseable": scored["n_unparseable"]}
    metrics.update({split: v["accuracy"] for split, v in scored["per_split"].items()})
    return {"metrics": metrics, "results": scored["results"]}


def judge_suite(suite: SuiteConfig, completer: Completer, judge) -> dict:
    from sftjax.eval import judge as rubric_judge

    rubric = rubric_judge.rubric(suite.rubric)
    questions = _limited(rubric_judge.load_questions(suite.path, rubric), suite.limit)
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max(len(q["turns"]) for q in questions)):
        todo = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        prompts = [completer.chat_prompt(questions[i]["turns"][: turn + 1], answers[i]) for i in todo]
        for i, out in zip(todo, completer.complete(prompts, suite.max_new_tokens, temperature=suite.temperature),
                          strict=True):
            answers[i].append(out)
    scored = rubric_judge.score(rubric, questions, answers, judge, max_attempts=suite.judge.retries + 1)
    metrics = {"score": scored["score"], "n": scored["n"], "judged": scored["n_judged"],
               "unparseable": scored["n_unparseable"]}
    metrics.update({f"criterion/{k}": v for k, v in (scored.get("per_criterion") or {}).items()})
    for domain, d in (scored.get("per_domain") or {}).items():  # general vs in-domain (a question set's domains)
        metrics[f"domain/{domain}/score"] = d["score"]
        metrics.update({f"domain/{domain}/criterion/{k}": v for k, v in d["per_criterion"].items()})
    return {"metrics": metrics, "results": scored["results"], "per_category": scored.get("per_category"),
            "per_domain": scored.get("per_domain"),
            "answers": [{"id": q["id"], "answers": a} for q, a in zip(questions, answers)]}


def loss_suite(name: str, suite: SuiteConfig, graphdef, params, tokenizer, data: DataConfig, mesh,
               rows: int) -> dict:
    """Token-weighted mean loss over every example of a held-out source, each seen once, packed like training."""
    from sftjax.data.batch import process_rows, stack_rows, to_device
    from sftjax.data.packing import pack
    from sftjax.data.pipeline import tokenize_source

    import grain

    cfg = dataclasses.replace(data, sources={name: SourceConfig(path=suite.path, format=suite.format,
                                                                fields=dict(suite.fields))}, stages=[])
    examples, stats = tokenize_source(name, 0, cfg, tokenizer, (jax.process_index(), jax.process_count()),
                                      limit=suite.limit)
    packed = list(pack(grain.MapDataset.source(examples).to_iter_dataset(), data.seq_len,
                       num_bins=data.packing_bins))
    fn = _loss_fn(graphdef, mesh)
    total, count = 0.0, 0
    for i in range(0, len(packed), rows):
        batch = stack_rows(packed[i : i + rows], rows, data.seq_len)
        local = process_rows(batch, jax.process_index(), jax.process_count())
        s, c = fn(params, to_device(local, mesh, rows))
        total, count = total + float(s), count + int(c)
    return {"metrics": {"loss": total / max(count, 1), "tokens": count, "examples": len(examples),
                        "truncated": stats.truncated, "dropped": stats.dropped}, "results": []}


_LOSS_FNS: dict = {}  # id -> (graphdef, mesh, jitted): holding both keeps their ids from being reused


def _loss_fn(graphdef, mesh):
    key = (id(graphdef), id(mesh))
    if key not in _LOSS_FNS:
        from sftjax.model.loss import token_losses

        def sums(params, batch):
            tok, mask, _ = token_losses(graphdef, params, batch, mesh)
            return tok.sum(), mask.sum()

        _LOSS_FNS[key] = (graphdef, mesh, jax.jit(sums))
    return _LOSS_FNS[key][2]


# -- the runner ------------------------------------------------------------------------------------------------------


class JudgeModels:
    """Local judge models (``judge.init_from``), each loaded once and reused by every suite and every evaluation of
    a run. ``runtime`` supplies the keys that do not change the weights (dtype, attention, ...)."""

    def __init__(self, runtime: ModelConfig, mesh, eval_cfg: EvalConfig, template: str, log=print):
        self.runtime, self.mesh, self.eval_cfg, self.template, self.log = runtime, mesh, eval_cfg, template, log
        self._loaded: dict[str, Completer] = {}

    def __call__(self, init_from: str) -> Completer:
        if init_from not in self._loaded:
            from sftjax.ckpt.init_from import load_model

            m = load_model(init_from, self.runtime, self.mesh, log=self.log)
            self._loaded[init_from] = Completer(
                m.graphdef, m.params, m.tokenizer, template=self.template,
                max_positions=m.cfg.max_position_embeddings, mesh=self.mesh, batch_size=self.eval_cfg.batch_size,
                seed=self.eval_cfg.seed, eos_ids=sorted(m.eos_ids))
        return self._loaded[init_from]


def make_judge(suite: SuiteConfig, completer: Completer, judges: Callable[[str], Completer] | None = None):
    """The judge backend of a suite: an HTTP endpoint, a separate local model, or the model under evaluation."""
    from sftjax.eval import judge as rubric_judge

    j = suite.judge
    if j.url:
        return rubric_judge.HttpJudge(j.url, j.model, api_key_env=j.api_key_env, timeout_s=j.timeout_s,
                                      retries=j.retries)
    if j.init_from and judges is None:
        raise ConfigError("config key 'judge.init_from': no judge loader was given for a local judge model")
    judge_completer = judges(j.init_from) if j.init_from else completer

    def chat(batch_of_messages):
        prompts = []
        for messages in batch_of_messages:
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            users = [m["content"] for m in messages if m["role"] == "user"]
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            if system:
                users[0] = system + "\n\n" + users[0]
            prompts.append(judge_completer.chat_prompt(users, answers))
        return judge_completer.complete(prompts, j.max_new_tokens)

    return rubric_judge.CallableJudge(chat)


def run_suites(eval_cfg: EvalConfig, *, graphdef, params, tokenizer, data: DataConfig, mesh, max_positions: int,
               loss_rows: int, log=print, judges: Callable[[str], Completer] | None = None,
               eos_ids: Sequence[int] = ()) -> dict:
    """Every configured suite on one model: {"suites": {name: {"kind", "metrics", "results", "seconds"}},
    "metrics": {"eval/NAME/METRIC": value}} (the flat scalars go to metrics.jsonl and TensorBoard)."""
    completer = Completer(graphdef, params, tokenizer, template=data.template, max_positions=max_positions,
                          mesh=mesh, batch_size=eval_cfg.batch_size, seed=eval_cfg.seed, eos_ids=eos_ids)
    out, flat = {}, {}
    for name, suite in eval_cfg.suites.items():
        t0 = time.perf_counter()
        before = completer.truncated_prompts
        if suite.kind == "loss":
            res = loss_suite(name, suite, graphdef, params, tokenizer, data, mesh, loss_rows)
        elif suite.kind == "math":
            res = math_suite(suite, completer)
        elif suite.kind == "code":
            res = code_suite(suite, completer)
        elif suite.kind == "knowledge":
            judge_fn = None
            if suite.scorer == "judge":
                judge_fn = knowledge_judge(make_judge(suite, completer, judges))
            res = knowledge_suite(suite, completer, judge_fn)
        else:
            res = judge_suite(suite, completer, make_judge(suite, completer, judges))
        res["metrics"]["truncated_prompts"] = completer.truncated_prompts - before
        res.update(kind=suite.kind, seconds=round(time.perf_counter() - t0, 2))
        out[name] = res
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in res["metrics"].items() if k in _HEADLINE)
        log(f"eval {name} ({suite.kind}): {shown} [{res['seconds']:.0f}s]")
        flat.update({f"eval/{name}/{k}": v for k, v in res["metrics"].items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {"suites": out, "metrics": flat}


_HEADLINE = ("loss", "accuracy", "pass@1", "pass@10", "score", "memorization", "generalization", "n", "unparseable")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def knowledge_judge(judge):
    """A yes/no grader for knowledge answers from a rubric judge backend; None when its reply has no verdict."""

    def grade(question: str, gold: str, prediction: str):
        text = judge([[{"role": "user", "content":
                        f"Question: {question}\nReference answer: {gold}\nCandidate answer: {prediction}\n"
                        "Does the candidate answer agree with the reference? Reply with exactly one word: yes or no."}
                       ]])[0].strip().lower()
        words = [w.strip(".,!:;\"'") for w in text.split()]
        verdict = next((w for w in words if w in ("yes", "no")), None)
        return None if verdict is None else verdict == "yes"

    return grade


def write_json(path: Path, value) -> None:
    """Eval results as JSON, written atomically (a reader never sees half a file); numpy scalars become numbers."""

    def default(x):
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        raise TypeError(f"not JSON serializable: {type(x).__name__}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=default))
    tmp.replace(path)
