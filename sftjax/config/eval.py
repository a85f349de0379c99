"""The evaluation and generation part of the schema: suites, their judges, and sftjax-generate's settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sftjax.config.base import require


SUITE_KINDS = ("loss", "math", "code", "knowledge", "judge")


@dataclass
class JudgeConfig:
    """Who grades a judge suite: an OpenAI-compatible endpoint (url + model), a local model (init_from), or, when
    both are empty, the model under evaluation itself."""

    url: str = ""  # e.g. http://localhost:8000/v1 ; POSTs /chat/completions
    model: str = ""  # the endpoint's model name
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment only, never stored in the config
    init_from: str = ""  # hf:DIR | embedded:NAME | a run dir: a local sftjax judge
    retries: int = 3
    timeout_s: float = 60.0
    max_new_tokens: int = 256


@dataclass
class SuiteConfig:
    """One evaluation. kind: loss (validation loss of a held-out source, read like a data source), math (GSM8K
    accuracy), code (HumanEval pass@k, sandboxed), knowledge (memorization vs generalization), judge (rubric)."""

    kind: str = "???"
    path: str = "???"  # the eval data (JSONL; for loss, anything a data source reads)
    limit: int = 0  # the first N items (0 = all)
    format: str = "messages"  # loss: the source's format, as in data.sources
    fields: dict[str, str] = field(default_factory=dict)  # loss: field map, as in data.sources
    max_new_tokens: int = 256
    temperature: float = 0.0
    samples: int = 1  # code: completions per task (pass@k is reported for every k in ks <= samples)
    ks: list[int] = field(default_factory=lambda: [1])
    scorer: str = "contains"  # knowledge: exact | contains | judge
    rubric: str = "eight_category"  # judge: mt_bench | eight_category
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prompt_suffix: str = ""  # math/knowledge: appended to each question (e.g. an answer-format instruction)
    prompt: str = "raw"  # code: raw (Codex protocol: the model continues the function) | chat (the function in a
    #                      user turn, rendered with the run's template; the reply's first code block is run)

    def validate(self, key: str) -> None:
        require(self.kind in SUITE_KINDS, f"{key}.kind", f"one of {SUITE_KINDS}", self.kind)
        require(isinstance(self.path, str) and bool(self.path) and self.path != "???", f"{key}.path",
                 "the eval data file", self.path)
        require(self.limit >= 0, f"{key}.limit", "an integer >= 0 (0 = all)", self.limit)
        require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "a positive integer", self.max_new_tokens)
        require(math.isfinite(self.temperature) and self.temperature >= 0, f"{key}.temperature",
                 "a number >= 0 (0 = greedy)", self.temperature)
        require(self.samples >= 1, f"{key}.samples", "a positive integer", self.samples)
        require(bool(self.ks) and all(k >= 1 for k in self.ks), f"{key}.ks", "a list of k >= 1", self.ks)
        require(self.kind != "code" or all(k <= self.samples for k in self.ks), f"{key}.ks",
                 f"every k <= {key}.samples ({self.samples})", self.ks)
        require(self.prompt in ("raw", "chat"), f"{key}.prompt", "raw | chat", self.prompt)
        require(self.scorer in ("exact", "contains", "judge"), f"{key}.scorer", "exact | contains | judge",
                 self.scorer)
        require(self.judge.retries >= 0, f"{key}.judge.retries", "an integer >= 0", self.judge.retries)
        require(not (self.judge.url and self.judge.init_from), f"{key}.judge.url",
                 "either judge.url (an endpoint) or judge.init_from (a local model), not both", self.judge.url)
        require(not self.judge.url or bool(self.judge.model), f"{key}.judge.model",
                 "the endpoint's model name (judge.url is set)", self.judge.model)


@dataclass
class EvalConfig:
    """Evaluation suites, run during training (every_n_steps, at every stage end) and by sftjax-eval."""

    every_n_steps: int = 0  # 0 = not periodically
    at_stage_end: bool = True  # also after each stage's last step (when there are suites)
    at_start: bool = False  # also before the first step (the base model's scores, for a before/after table)
    batch_size: int = 8  # generation rows per call
    seed: int = 0
    suites: dict[str, SuiteConfig] = field(default_factory=dict)
    output: str = ""  # sftjax-eval: also write the results JSON here

    def validate(self) -> None:
        require(self.every_n_steps >= 0, "eval.every_n_steps", "an integer >= 0 (0 = off)", self.every_n_steps)
        require(self.batch_size >= 1, "eval.batch_size", "a positive integer", self.batch_size)
        for name, suite in self.suites.items():
            suite.validate(f"eval.suites.{name}")


@dataclass
class GenerateConfig:
    """sftjax-generate: prompts JSONL in, completions JSONL out."""

    prompts: str = ""  # lines {"id", "prompt"} (raw text) or {"id", "messages"} (chat template applied)
    chat: str = ""  # or one user message given on the command line (its completion is printed)
    output: str = ""  # "" prints to stdout only
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def validate(self) -> None:
        require(bool(self.prompts) != bool(self.chat), "generate.prompts",
                 "a prompts JSONL file, or generate.chat='a message' (exactly one of the two)", self.prompts)
        if self.prompts:
            require(Path(self.prompts).is_file(), "generate.prompts", "an existing JSONL file", self.prompts)
        require(self.max_new_tokens >= 1, "generate.max_new_tokens", "a positive integer", self.max_new_tokens)
        require(math.isfinite(self.temperature) and self.temperature >= 0, "generate.temperature",
                 "a number >= 0 (0 = greedy)", self.temperature)
        require(self.top_k >= 0, "generate.top_k", "an integer >= 0 (0 = no limit)", self.top_k)
        require(0 < self.top_p <= 1, "generate.top_p", "a number in (0, 1]", self.top_p)
        require(self.batch_size >= 1, "generate.batch_size", "a positive integer", self.batch_size)
