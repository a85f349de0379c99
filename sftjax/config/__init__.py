"""The configuration schema.

Hydra composes YAML from ``conf/`` on top of these dataclasses, so an unknown key or a wrong type is rejected by
OmegaConf while composing. Value checks that OmegaConf cannot express (ranges, divisibility, cross-field rules) live in
``validate`` methods and run when the composed config is turned into these objects by :func:`to_config`, before anything
is compiled. Every error names the full key and what was expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sftjax.config.base import ConfigError, require
from sftjax.config.data import (FORMATS, TEMPLATES, DataConfig, FilterConfig, MixConfig, SourceConfig, StageConfig,
                                StrategyConfig)
from sftjax.config.eval import SUITE_KINDS, EvalConfig, GenerateConfig, JudgeConfig, SuiteConfig
from sftjax.config.model import (ARCHITECTURES, ATTENTION_IMPLS, DTYPES, EMBEDDED_MODELS, REMAT_POLICIES, ModelConfig,
                                 RopeScalingConfig, to_model_config)
from sftjax.config.serve import ServeConfig
from sftjax.config.train import MeshConfig, OptimConfig, SweepConfig, TrainConfig

__all__ = [
    "ConfigError",
    "DTYPES", "ATTENTION_IMPLS", "REMAT_POLICIES", "ARCHITECTURES", "EMBEDDED_MODELS",
    "RopeScalingConfig", "ModelConfig", "to_model_config",
    "OptimConfig", "MeshConfig", "TrainConfig", "SweepConfig",
    "FORMATS", "TEMPLATES", "FilterConfig", "SourceConfig", "MixConfig", "StageConfig", "StrategyConfig", "DataConfig",
    "SUITE_KINDS", "JudgeConfig", "SuiteConfig", "EvalConfig", "GenerateConfig",
    "ServeConfig", "ServeAppConfig",
    "Config", "GenerateAppConfig", "EvalAppConfig", "FIXTURE_DIR", "register_configs", "job_dirname",
    "compose_config", "compose_dict", "split_config_dir", "to_config", "PRESET_GROUPS", "check_override_keys", "to_dict",
]


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
            from sftjax.config.strategy import strategy_stages

            self.data.stages = strategy_stages(self.strategy, self.data, self.optim)

    def validate(self) -> None:
        for part in (self.model, self.optim, self.mesh, self.train, self.data, self.eval):
            part.validate()
        if self.model.rope_scaling is not None:
            self.model.rope_scaling.validate()
        block = self.model.attention_block
        require(
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
        require(
            micro % batch_shards == 0,
            "train.global_batch_size",
            f"global_batch_size / grad_accum ({micro}) divisible by mesh.data*mesh.fsdp ({batch_shards})",
            self.train.global_batch_size,
        )
        require(
            self.train.global_batch_size % process_count == 0,
            "train.global_batch_size",
            f"a multiple of the process count ({process_count})",
            self.train.global_batch_size,
        )
        return shape


@dataclass
class GenerateAppConfig:
    """The schema of sftjax-generate. The architecture comes from model.init_from; the other model keys (dtype,
    attention, ...) apply as in training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def validate(self) -> None:
        require(bool(self.model.init_from), "model.init_from", "hf:DIR, embedded:NAME or a run directory",
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
        require(bool(self.model.init_from) != bool(self.models), "model.init_from",
                 "hf:DIR, embedded:NAME or a run directory (or a list in 'models', not both)", self.model.init_from)
        require(all(isinstance(m, str) and m for m in self.models), "models", "a list of init_from specs",
                 self.models)
        self.model.validate()
        self.mesh.validate()
        self.eval.validate()
        require(bool(self.eval.suites), "eval.suites", "at least one suite (e.g. eval=demo)", {})
        require(self.data.template in TEMPLATES, "data.template", f"one of {TEMPLATES}", self.data.template)
        require(self.data.seq_len >= 2, "data.seq_len", "an integer >= 2", self.data.seq_len)
@dataclass
class ServeAppConfig:
    """The schema of sftjax-serve. The architecture comes from model.init_from; dtype, attention and the mesh apply
    as in training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> None:
        require(bool(self.model.init_from), "model.init_from", "hf:DIR, embedded:NAME or a run directory",
                self.model.init_from)
        self.model.validate()
        self.mesh.validate()
        self.serve.validate()


FIXTURE_DIR = Path(__file__).parent.parent / "data" / "fixtures"


def register_configs() -> None:
    """Register the schema (conf/config.yaml puts it first in its defaults list) and the ${fixture:NAME} resolver
    (the path of a data file bundled with the package)."""
    ConfigStore.instance().store(name="sftjax_schema", node=Config)
    ConfigStore.instance().store(name="sftjax_generate_schema", node=GenerateAppConfig)
    ConfigStore.instance().store(name="sftjax_eval_schema", node=EvalAppConfig)
    ConfigStore.instance().store(name="sftjax_serve_schema", node=ServeAppConfig)
    if not OmegaConf.has_resolver("fixture"):
        OmegaConf.register_new_resolver("fixture", lambda name: str(FIXTURE_DIR / name))
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def job_dirname(override_dirname: str, limit: int = 160) -> str:
    """A sweep job's directory name: its overrides, without those that do not change what is trained (eval.*, also
    removed or added with ~ or +, progress and logging switches). Path-valued overrides (a data file, say) are named
    by a hash rather than spelled out, since a path is the same in every job of a sweep and would bury the keys that
    tell jobs apart; the name is also shortened with a hash when a file name would get too long (Linux: 255 bytes)."""
    import hashlib
    import re

    quiet = ("eval.", "train.progress=", "train.tensorboard=", "train.log_every=")
    kept = [o for o in override_dirname.split(",") if o and not o.lstrip("~+").startswith(quiet)]
    def is_path(value: str) -> bool:  # a fraction ("strategy.amount=1/256") is a value to show, not a path
        return "/" in value and not re.fullmatch(r"\d+/\d+", value)

    paths = [o for o in kept if is_path(o.partition("=")[2])]
    kept = [o for o in kept if o not in paths]
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    name = ",".join(kept) or "default"
    if paths:
        name += "-" + digest
    if len(name.encode()) > limit:
        name = name.encode()[: limit - 11].decode(errors="ignore") + "-" + digest
    return name.replace("/", "_")


def split_config_dir(argv: list[str]) -> tuple[str | None, list[str]]:
    """(DIR, the other arguments) from ``--config-dir DIR``, ``--config-dir=DIR`` or ``-cd DIR``, as Hydra apps take it."""
    config_dir, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            config_dir, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config-dir="):
            config_dir = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config_dir, rest


def compose_dict(overrides: list[str] = (), config_name: str = "config", config_dir: str | Path | None = None,
                 hydra_keys: bool = False) -> DictConfig:
    """The one way sftjax composes configs outside a Hydra app: the package's conf/, plus ``config_dir`` added to
    the search path the way ``--config-dir`` does for sftjax-train (a user directory holding only data/NAME.yaml is
    enough; the package's configs stay)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    overrides = list(overrides)
    if config_dir is not None:
        path = Path(config_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--config-dir {config_dir}: no such directory")
        overrides.append(f"hydra.searchpath=[file://{path}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="sftjax.conf", version_base=None):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_keys)
    finally:
        GlobalHydra.instance().clear()


def compose_config(overrides: list[str] = (), config_name: str = "config",
                   config_dir: str | Path | None = None) -> Config:
    """Compose conf/ (and ``config_dir``) with overrides outside a Hydra app (CLIs, tests, notebooks) and validate."""
    return to_config(compose_dict(overrides, config_name, config_dir))


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
