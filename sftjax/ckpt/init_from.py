"""Where ``model.init_from`` parameters come from: an HF directory (``hf:DIR``) or an sftjax run/checkpoint dir.

Either way the weights' own config is checked against the model config first (every mismatching field named), and
the tokenizer and generation config that belong to the weights come along for the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftjax.ckpt import hf
from sftjax.ckpt.checkpoints import abstract_like, latest_meta, model_config_of, restore_params
from sftjax.config import ConfigError, ModelConfig


@dataclass
class Initial:
    params: dict
    tokenizer_dir: Path | None  # a directory AutoTokenizer.from_pretrained loads, if the source has one
    generation_config: dict | None


def load_initial_params(cfg: ModelConfig, abstract_params: dict, shardings: dict, log=print) -> Initial:
    src = cfg.init_from
    if src.startswith("hf:"):
        hf_dir = hf.resolve_hf_dir(src[3:])
        log(f"init_from: importing Hugging Face weights from {hf_dir}")
        params = hf.load_hf_params(hf_dir, cfg, shardings, log=log)
        has_tokenizer = any((hf_dir / m).exists() for m in ("tokenizer.json", "tokenizer_config.json"))
        return Initial(params, hf_dir if has_tokenizer else None, hf.read_generation_config(hf_dir))
    path = Path(src).expanduser()
    if not path.exists():
        raise ConfigError(f"config key 'model.init_from': {src} does not exist (expected hf:DIR, a run directory "
                          "or an sftjax checkpoint directory)")
    root, step, meta = latest_meta(path)
    stored = model_config_of(meta)
    where = f"checkpoint {root / str(step)}"
    hf.check_compatible(cfg, stored, where)
    if stored.scan_layers != cfg.scan_layers:
        raise ConfigError(f"config key 'model.scan_layers': {where} was saved with scan_layers={stored.scan_layers}; "
                          f"expected the same (got {cfg.scan_layers})")
    log(f"init_from: parameters of {where}")
    params = restore_params(root, step, abstract_like(abstract_params, shardings))
    owner = root.parent
    tokenizer = owner / "tokenizer"
    gen = owner / "generation_config.json"
    return Initial(params, tokenizer if tokenizer.is_dir() else None,
                   hf.read_generation_config(owner) if gen.exists() else None)
