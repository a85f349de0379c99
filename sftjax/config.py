"""The configuration schema.

Hydra composes YAML from ``conf/`` on top of these dataclasses, so an unknown key or a wrong type is rejected by
OmegaConf while composing. Value checks that OmegaConf cannot express (ranges, divisibility, cross-field rules) live in
``validate`` methods and run when the composed config is turned into these objects by :func:`to_config`, before anything
is compiled. Every error names the full key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is impossible; the message names the key and the expected value."""


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")


DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "sdpa")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ARCHITECTURES = ("llama", "mistral", "qwen2")
EMBEDDED_MODELS = ("smollm2-135m-instruct",)  # shipped inside a PyPI package (see sftjax.ckpt.gguf)


@dataclass
class RopeScalingConfig:
    """Llama 3.1-style frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs)."""

    type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def validate(self) -> None:
        _require(self.type == "llama3", "model.rope_scaling.type", "'llama3'", self.type)
        _require(self.factor >= 1.0, "model.rope_scaling.factor", "a number >= 1", self.factor)
        _require(
            self.high_freq_factor > self.low_freq_factor > 0,
            "model.rope_scaling.high_freq_factor",
            f"a number > low_freq_factor ({self.low_freq_factor}) > 0",
            self.high_freq_factor,
        )
        _require(
            self.original_max_position_embeddings > 0,
            "model.rope_scaling.original_max_position_embeddings",
            "a positive integer",
            self.original_max_position_embeddings,
        )


@dataclass
class ModelConfig:
    """One Llama-family architecture; Llama 1/2/3, Mistral, Qwen2 and SmolLM2 differ only in these flags."""

    name: str = "tiny"
    # The Hugging Face model_type this maps to on export (llama | mistral | qwen2); it changes no computation.
    architecture: str = "llama"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScalingConfig] = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position_embeddings: int = 2048
    init_std: float = 0.02
    # Compute dtype of activations and matmuls; parameters are always kept in float32.
    # auto: bfloat16 on GPU/TPU, float32 on CPU.
    dtype: str = "auto"
    scan_layers: bool = False  # lax.scan over layers (fast compile) or unrolled (fastest on the CPU backend)
    remat: str = "none"
    attention: str = "auto"  # auto: blockwise on CPU/TPU, sdpa (cuDNN) on GPU
    attention_block: int = 256
    # "" = random init; "hf:DIR" (or "hf:org/name" with a network) = a Hugging Face model; otherwise a run directory
    # or an sftjax checkpoint directory (its latest checkpoint's parameters; the optimizer starts fresh).
    init_from: str = ""

    def validate(self) -> None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            _require(getattr(self, key) > 0, f"model.{key}", "a positive integer", getattr(self, key))
        _require(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            f"a divisor of model.num_heads ({self.num_heads})",
            self.num_kv_heads,
        )
        if self.head_dim is None:
            _require(
                self.hidden_size % self.num_heads == 0,
                "model.head_dim",
                f"set explicitly, since hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                None,
            )
        else:
            _require(self.head_dim > 0 and self.head_dim % 2 == 0, "model.head_dim", "a positive even integer",
                     self.head_dim)
        _require(self.dtype in DTYPES, "model.dtype", f"one of {DTYPES}", self.dtype)
        _require(self.remat in REMAT_POLICIES, "model.remat", f"one of {REMAT_POLICIES}", self.remat)
        _require(self.attention in ATTENTION_IMPLS, "model.attention", f"one of {ATTENTION_IMPLS}", self.attention)
        _require(self.attention_block > 0, "model.attention_block", "a positive integer", self.attention_block)
        _require(self.rope_theta > 0, "model.rope_theta", "a positive number", self.rope_theta)
        _require(self.rms_norm_eps > 0, "model.rms_norm_eps", "a positive number", self.rms_norm_eps)
        _require(self.init_std > 0, "model.init_std", "a positive number", self.init_std)
        _require(self.architecture in ARCHITECTURES, "model.architecture", f"one of {ARCHITECTURES}",
                 self.architecture)
        if self.init_from.startswith("hf:"):
            _require(len(self.init_from) > 3, "model.init_from", "'hf:DIR' or 'hf:org/name'", self.init_from)
        if self.init_from.startswith("embedded:"):
            _require(self.init_from[9:] in EMBEDDED_MODELS, "model.init_from",
                     f"one of {['embedded:' + m for m in EMBEDDED_MODELS]}", self.init_from)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay (optax)."""

    name: str = "adamw"
    lr: float = 3e-4
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # not applied to norms and biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables

    def validate(self) -> None:
        _require(self.name == "adamw", "optim.name", "'adamw'", self.name)
        _require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "a positive finite number", self.lr)
        _require(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", "a number in [0, 1)", self.warmup_ratio)
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        _require(self.weight_decay >= 0, "optim.weight_decay", "a number >= 0", self.weight_decay)
        _require(0 <= self.b1 < 1, "optim.b1", "a number in [0, 1)", self.b1)
        _require(0 <= self.b2 < 1, "optim.b2", "a number in [0, 1)", self.b2)
        _require(self.eps > 0, "optim.eps", "a positive number", self.eps)
        _require(self.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0 disables clipping)", self.grad_clip)


@dataclass
class MeshConfig:
    """Device mesh (data, fsdp, tensor) and multi-process setup.

    One of data/fsdp/tensor may be -1: it takes all devices the others leave.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-process: set coordinator ("host:port"), num_processes and process_id, or the environment variables
    # SFTJAX_COORDINATOR / SFTJAX_NUM_PROCESSES / SFTJAX_PROCESS_ID; auto=true lets jax detect TPU pods and SLURM.
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False

    def validate(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for key, value in sizes.items():
            _require(value == -1 or value >= 1, f"mesh.{key}", "a positive integer or -1 (fill)", value)
        _require(
            sum(v == -1 for v in sizes.values()) <= 1,
            "mesh",
            "at most one of data/fsdp/tensor set to -1",
            sizes,
        )
        _require(self.num_processes >= 1, "mesh.num_processes", "a positive integer", self.num_processes)
        _require(
            0 <= self.process_id < self.num_processes,
            "mesh.process_id",
            f"an integer in [0, {self.num_processes})",
            self.process_id,
        )

    def resolve(self, device_count: int) -> tuple[int, int, int]:
        """Mesh shape for ``device_count`` devices; fails before compilation when the product does not match."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            _require(
                device_count % known == 0,
                "mesh",
                f"data*fsdp*tensor to divide the device count {device_count}",
                {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor},
            )
            sizes[sizes.index(-1)] = device_count // known
        _require(
            math.prod(sizes) == device_count,
            "mesh",
            f"data*fsdp*tensor == device count {device_count}",
            {"data": sizes[0], "fsdp": sizes[1], "tensor": sizes[2]},
        )
        return sizes[0], sizes[1], sizes[2]


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
    """Builds data.stages from the specialized and general sources (sftjax.data.strategy; conf/strategy)."""

    name: str = "none"  # none | multitask | sequential | mixed_sequential | dmt
    specialized: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # sequential: the source order (default specialized, general)
    epochs: float = 3.0  # per stage
    amount: str = "1"  # the data amount of every source without its own entry in amounts (a sweep axis)
    amounts: dict[str, str] = field(default_factory=dict)  # source -> data amount (1, 1/4, ... or a count)
    k: str = "1/256"  # dmt: the share of each specialized source's amount that joins the general stage


@dataclass
class DataConfig:
    """Sources, formats and the stages that mix them (the contract users write most; see ARCHITECTURE.md)."""

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

    def validate(self) -> None:
        _require(self.seq_len >= 2, "data.seq_len", "an integer >= 2", self.seq_len)
        _require(self.tokenizer in ("auto", "bytes") or Path(self.tokenizer).expanduser().is_dir(), "data.tokenizer",
                 "'auto', 'bytes' or a Hugging Face tokenizer directory", self.tokenizer)
        _require(self.template in TEMPLATES, "data.template", f"one of {TEMPLATES}", self.template)
        _require(self.overlong in ("truncate", "drop"), "data.overlong", "'truncate' or 'drop'", self.overlong)
        _require(self.weight_by in ("examples", "tokens"), "data.weight_by", "'examples' or 'tokens'", self.weight_by)
        _require(self.packing_bins >= 1, "data.packing_bins", "a positive integer", self.packing_bins)
        _require(len(self.sources) > 0, "data.sources", "at least one source", dict(self.sources))
        for name, src in self.sources.items():
            key = f"data.sources.{name}"
            _require(src.format in FORMATS, f"{key}.format", f"one of {FORMATS}", src.format)
            _require(src.on_bad_record in ("error", "drop"), f"{key}.on_bad_record", "'error' or 'drop'",
                     src.on_bad_record)
            if src.filter is not None:
                _require(src.filter.action in ("drop", "keep"), f"{key}.filter.action", "'drop' or 'keep'",
                         src.filter.action)
        names = [s.name for s in self.stages]
        _require(len(set(names)) == len(names), "data.stages", "stages with distinct names", names)
        for i, stage in enumerate(self.stages):
            key = f"data.stages.{i}"
            _require(stage.epochs is None or stage.steps is None, key, "epochs or steps, not both",
                     {"epochs": stage.epochs, "steps": stage.steps})
            _require(stage.epochs is None or stage.epochs > 0, f"{key}.epochs", "a positive number", stage.epochs)
            _require(stage.steps is None or stage.steps >= 1, f"{key}.steps", "a positive integer", stage.steps)
            _require(len(self.stages) == 1 or stage.epochs is not None or stage.steps is not None, key,
                     "epochs or steps (each stage of a multi-stage run needs a length)", stage.name)
            _require(len(stage.mix) > 0, f"{key}.mix", "at least one source", dict(stage.mix))
            _require(stage.lr is None or (math.isfinite(stage.lr) and stage.lr > 0), f"{key}.lr",
                     "a positive finite number", stage.lr)
            _require(stage.warmup_ratio is None or 0 <= stage.warmup_ratio < 1, f"{key}.warmup_ratio",
                     "a number in [0, 1)", stage.warmup_ratio)
            _require(stage.min_lr_ratio is None or 0 <= stage.min_lr_ratio <= 1, f"{key}.min_lr_ratio",
                     "a number in [0, 1]", stage.min_lr_ratio)
            for src in stage.mix:
                _require(src in self.sources, f"{key}.mix.{src}", f"one of the sources {sorted(self.sources)}", src)


@dataclass
class TrainConfig:
    max_steps: int = -1  # -1: as long as the data stages say; otherwise a cap on the whole run
    seed: int = 0
    global_batch_size: int = 8  # rows of data.seq_len per optimizer step, over all devices and micro-batches
    grad_accum: int = 1
    log_every: int = 10
    # Checkpoints (Orbax, async) go to RUN_DIR/checkpoints every save_every steps (0: only at the end and on
    # SIGTERM/SIGINT); the last keep_last are kept, plus the keep_best best by best_metric (a metrics.jsonl key).
    save_every: int = 0
    keep_last: int = 2
    keep_best: int = 0
    best_metric: str = "loss"
    best_mode: str = "min"
    async_checkpointing: bool = True
    export_hf: bool = False  # write RUN_DIR/hf (Hugging Face format) at the end
    export_dtype: str = "float32"
    # Peak FLOP/s of one device for MFU. The default is the XLA fp32 matmul peak measured on the 2-core CPU we
    # develop on (bench/matmul_peak.py: 216 GFLOP/s); pass your accelerator's number (e.g. 989e12 for H100 bf16).
    peak_flops_per_device: float = 2.2e11
    progress: bool = True  # tqdm bar
    tensorboard: bool = True

    def validate(self) -> None:
        _require(self.max_steps >= 1 or self.max_steps == -1, "train.max_steps",
                 "a positive integer, or -1 (the data stages' own length)", self.max_steps)
        _require(self.global_batch_size >= 1, "train.global_batch_size", "a positive integer",
                 self.global_batch_size)
        _require(self.grad_accum >= 1, "train.grad_accum", "a positive integer", self.grad_accum)
        _require(
            self.global_batch_size % self.grad_accum == 0,
            "train.grad_accum",
            f"a divisor of train.global_batch_size ({self.global_batch_size})",
            self.grad_accum,
        )
        _require(self.log_every >= 1, "train.log_every", "a positive integer", self.log_every)
        _require(self.save_every >= 0, "train.save_every", "an integer >= 0", self.save_every)
        _require(self.keep_last >= 1, "train.keep_last", "a positive integer", self.keep_last)
        _require(self.keep_best >= 0, "train.keep_best", "an integer >= 0", self.keep_best)
        _require(self.best_mode in ("min", "max"), "train.best_mode", "'min' or 'max'", self.best_mode)
        _require(self.export_dtype in ("float32", "bfloat16", "float16"), "train.export_dtype",
                 "float32, bfloat16 or float16", self.export_dtype)
        _require(self.peak_flops_per_device > 0, "train.peak_flops_per_device", "a positive number",
                 self.peak_flops_per_device)


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

    def validate(self, key: str) -> None:
        _require(self.kind in SUITE_KINDS, f"{key}.kind", f"one of {SUITE_KINDS}", self.kind)
        _require(isinstance(self.path, str) and bool(self.path) and self.path != "???", f"{key}.path",
                 "the eval data file", self.path)
        _require(self.limit >= 0, f"{key}.limit", "an integer >= 0 (0 = all)", self.limit)
        _require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "a positive integer", self.max_new_tokens)
        _require(math.isfinite(self.temperature) and self.temperature >= 0, f"{key}.temperature",
                 "a number >= 0 (0 = greedy)", self.temperature)
        _require(self.samples >= 1, f"{key}.samples", "a positive integer", self.samples)
        _require(bool(self.ks) and all(k >= 1 for k in self.ks), f"{key}.ks", "a list of k >= 1", self.ks)
        _require(self.kind != "code" or all(k <= self.samples for k in self.ks), f"{key}.ks",
                 f"every k <= {key}.samples ({self.samples})", self.ks)
        _require(self.scorer in ("exact", "contains", "judge"), f"{key}.scorer", "exact | contains | judge",
                 self.scorer)
        _require(self.judge.retries >= 0, f"{key}.judge.retries", "an integer >= 0", self.judge.retries)
        _require(not (self.judge.url and self.judge.init_from), f"{key}.judge.url",
                 "either judge.url (an endpoint) or judge.init_from (a local model), not both", self.judge.url)
        _require(not self.judge.url or bool(self.judge.model), f"{key}.judge.model",
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
        _require(self.every_n_steps >= 0, "eval.every_n_steps", "an integer >= 0 (0 = off)", self.every_n_steps)
        _require(self.batch_size >= 1, "eval.batch_size", "a positive integer", self.batch_size)
        for name, suite in self.suites.items():
            suite.validate(f"eval.suites.{name}")


@dataclass
class SweepConfig:
    """Guards for `sftjax-train -m` (sftjax.sweep): the grid is counted before anything launches."""

    max_jobs: int = 64
    confirm: bool = False  # launch a grid larger than max_jobs


@dataclass
class Config:
    run_dir: str = "???"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def apply_strategy(self) -> None:
        """strategy.name != none writes data.stages (once, when the config is composed); they are then checked
        like any others."""
        if self.strategy.name != "none":
            from sftjax.data.strategy import strategy_stages

            self.data.stages = strategy_stages(self.strategy, self.data)

    def validate(self) -> None:
        for part in (self.model, self.optim, self.mesh, self.train, self.data, self.eval):
            part.validate()
        if self.model.rope_scaling is not None:
            self.model.rope_scaling.validate()
        block = self.model.attention_block
        _require(
            self.data.seq_len % block == 0 or self.data.seq_len < block,
            "data.seq_len",
            f"a multiple of model.attention_block ({block}) or shorter than it",
            self.data.seq_len,
        )

    def check_devices(self, device_count: int, process_count: int = 1) -> tuple[int, int, int]:
        """Cross-checks that need the device count; returns the mesh shape."""
        shape = self.mesh.resolve(device_count)
        batch_shards = shape[0] * shape[1]
        micro = self.train.global_batch_size // self.train.grad_accum
        _require(
            micro % batch_shards == 0,
            "train.global_batch_size",
            f"global_batch_size / grad_accum ({micro}) divisible by mesh.data*mesh.fsdp ({batch_shards})",
            self.train.global_batch_size,
        )
        _require(
            self.train.global_batch_size % process_count == 0,
            "train.global_batch_size",
            f"a multiple of the process count ({process_count})",
            self.train.global_batch_size,
        )
        return shape


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
        _require(bool(self.prompts) != bool(self.chat), "generate.prompts",
                 "a prompts JSONL file, or generate.chat='a message' (exactly one of the two)", self.prompts)
        if self.prompts:
            _require(Path(self.prompts).is_file(), "generate.prompts", "an existing JSONL file", self.prompts)
        _require(self.max_new_tokens >= 1, "generate.max_new_tokens", "a positive integer", self.max_new_tokens)
        _require(math.isfinite(self.temperature) and self.temperature >= 0, "generate.temperature",
                 "a number >= 0 (0 = greedy)", self.temperature)
        _require(self.top_k >= 0, "generate.top_k", "an integer >= 0 (0 = no limit)", self.top_k)
        _require(0 < self.top_p <= 1, "generate.top_p", "a number in (0, 1]", self.top_p)
        _require(self.batch_size >= 1, "generate.batch_size", "a positive integer", self.batch_size)


@dataclass
class GenerateAppConfig:
    """The schema of sftjax-generate. The architecture comes from model.init_from; the other model keys (dtype,
    attention, ...) apply as in training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def validate(self) -> None:
        _require(bool(self.model.init_from), "model.init_from", "hf:DIR, embedded:NAME or a run directory",
                 self.model.init_from)
        self.model.validate()
        self.mesh.validate()
        self.generate.validate()


@dataclass
class EvalAppConfig:
    """The schema of sftjax-eval: the suites of ``eval`` on one model (model.init_from) or on several side by side
    (``models``). ``data`` supplies the chat template and, for loss suites, seq_len and packing."""

    model: ModelConfig = field(default_factory=ModelConfig)
    models: list[str] = field(default_factory=list)  # several init_from specs (base vs fine-tuned), one table
    mesh: MeshConfig = field(default_factory=MeshConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        _require(bool(self.model.init_from) != bool(self.models), "model.init_from",
                 "hf:DIR, embedded:NAME or a run directory (or a list in 'models', not both)", self.model.init_from)
        _require(all(isinstance(m, str) and m for m in self.models), "models", "a list of init_from specs",
                 self.models)
        self.model.validate()
        self.mesh.validate()
        self.eval.validate()
        _require(bool(self.eval.suites), "eval.suites", "at least one suite (e.g. eval=demo)", {})
        _require(self.data.template in TEMPLATES, "data.template", f"one of {TEMPLATES}", self.data.template)
        _require(self.data.seq_len >= 2, "data.seq_len", "an integer >= 2", self.data.seq_len)


FIXTURE_DIR = Path(__file__).parent / "data" / "fixtures"


def register_configs() -> None:
    """Register the schema (conf/config.yaml puts it first in its defaults list) and the ${fixture:NAME} resolver
    (the path of a data file bundled with the package)."""
    ConfigStore.instance().store(name="sftjax_schema", node=Config)
    ConfigStore.instance().store(name="sftjax_generate_schema", node=GenerateAppConfig)
    ConfigStore.instance().store(name="sftjax_eval_schema", node=EvalAppConfig)
    if not OmegaConf.has_resolver("fixture"):
        OmegaConf.register_new_resolver("fixture", lambda name: str(FIXTURE_DIR / name))
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def job_dirname(override_dirname: str, limit: int = 160) -> str:
    """A sweep job's directory name: its overrides, without those that do not change what is trained (eval.*,
    progress and logging switches), shortened with a hash when a file name would get too long (Linux: 255 bytes)."""
    import hashlib

    quiet = ("eval.", "train.progress=", "train.tensorboard=", "train.log_every=")
    kept = [o for o in override_dirname.split(",") if o and not o.startswith(quiet)]
    name = ",".join(kept) or "default"
    if len(name.encode()) > limit:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = name.encode()[: limit - 11].decode(errors="ignore") + "-" + digest
    return name.replace("/", "_")


def compose_config(overrides: list[str] = (), config_name: str = "config") -> Config:
    """Compose conf/ with overrides outside a Hydra app (tests, notebooks) and validate it."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module(config_module="sftjax.conf", version_base=None):
        return to_config(compose(config_name=config_name, overrides=list(overrides)))


def to_config(cfg: DictConfig | dict, schema: type = Config):
    """Turn a composed config into validated dataclasses (raises ConfigError naming the key)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, schema)
    if isinstance(obj, Config):
        obj.apply_strategy()
    obj.validate()
    return obj


def to_model_config(values: dict) -> ModelConfig:
    """A ModelConfig from a plain dict (as stored in checkpoints), type-checked by the schema."""
    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), values))
    assert isinstance(obj, ModelConfig)
    return obj


PRESET_GROUPS = ("experiment", "scale", "size")


def check_override_keys(overrides: list[str], schema: type = Config) -> None:
    """Reject a misspelled override before Hydra composes, naming the closest valid key.

    Hydra would also refuse it, but without saying what the key should have been. Group selections (model=NAME),
    Hydra's own keys and +/~ edits are left to Hydra; keys below free-form dicts (data.sources.NAME) are not checked.
    """
    import difflib
    import typing

    for arg in overrides:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key = arg.split("=", 1)[0]
        if key in PRESET_GROUPS:
            continue  # a config group that only selects presets (conf/experiment, conf/scale, conf/size)
        node: Any = schema
        done: list[str] = []
        for part in key.split("."):
            if not dataclasses.is_dataclass(node):
                break  # a scalar or a free-form mapping such as data.sources
            hints = typing.get_type_hints(node)
            if part not in hints:
                where = ".".join(done) or "the top level"
                valid = sorted(hints)
                close = difflib.get_close_matches(part, valid, n=1)
                hint = f" (did you mean '{'.'.join(done + close)}'?)" if close else ""
                raise ConfigError(f"unknown config key '{key}'{hint}; keys under {where}: {', '.join(valid)}")
            done.append(part)
            # Optional[X] -> X; other generics (dict[str, X]) are free-form and stop the walk
            args = [a for a in typing.get_args(hints[part]) if a is not type(None)]
            node = args[0] if typing.get_origin(hints[part]) is typing.Union and len(args) == 1 else hints[part]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
