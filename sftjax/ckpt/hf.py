"""Hugging Face interop: config.json <-> ModelConfig, safetensors <-> sharded parameters.

Weights move one tensor at a time. On import every device asks for its own shard of each parameter
(``jax.make_array_from_callback``) and the callback reads only the HF tensors that shard needs (for scanned layers, one
layer at a time), so no host ever holds the whole model. On export each parameter is gathered, converted and written
to its safetensors shard before the next one is fetched. Reading and writing config.json goes through transformers'
own config classes, which also normalize old (``rope_theta`` + ``rope_scaling``) and new (``rope_parameters``) forms.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sftjax.config import ConfigError, ModelConfig, RopeScalingConfig

HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Fields that define the computation: an init_from source must agree with the model config on all of them.
ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
               "resolved_head_dim", "rope_theta", "rope_scaling", "rms_norm_eps", "tie_embeddings", "qkv_bias")
_FLOAT_DTYPES = {"F32", "F16", "BF16"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry; recomputed from the config


def resolve_hf_dir(src: str) -> Path:
    """A local HF directory, or a hub name ('org/name') fetched for users with a network."""
    path = Path(src).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json)")
        return path
    if path.exists():
        raise ConfigError(f"{path}: expected a Hugging Face model directory, got a file")
    if src.count("/") != 1 or src.startswith((".", "/", "~")):
        raise ConfigError(f"Hugging Face model directory not found: {src}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
    return Path(snapshot_download(src, allow_patterns=patterns))


def read_hf_config(hf_dir: Path) -> ModelConfig:
    """ModelConfig for an HF directory; a feature sftjax does not implement is an error naming the config field."""
    from transformers import AutoConfig

    where = hf_dir / "config.json"
    if not where.exists():
        raise ConfigError(f"{where}: file not found")
    raw = json.loads(where.read_text())
    kind = raw.get("model_type")
    if kind not in HF_CLASSES:
        raise ConfigError(f"{where}: field 'model_type' is {kind!r}; sftjax supports {sorted(HF_CLASSES)}")
    hf = AutoConfig.from_pretrained(hf_dir)

    def unsupported(field: str, value, expected: str):
        raise ConfigError(f"{where}: field '{field}' = {value!r} is not supported (expected {expected})")

    if hf.hidden_act != "silu":
        unsupported("hidden_act", hf.hidden_act, "'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf, flag, False):
            unsupported(flag, True, "false")
    if kind == "qwen2" and getattr(hf, "use_sliding_window", False):
        unsupported("use_sliding_window", True, "false")
    if kind == "mistral" and hf.sliding_window is not None and hf.sliding_window < hf.max_position_embeddings:
        unsupported("sliding_window", hf.sliding_window, "null (full attention, as in Mistral v0.3)")
    rope = dict(hf.rope_parameters or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScalingConfig(
            factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        unsupported("rope_parameters.rope_type", rope_type, "'default' or 'llama3'")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    cfg = ModelConfig(
        name=hf_dir.name, architecture=kind, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=None if head_dim * hf.num_attention_heads == hf.hidden_size else head_dim,
        rope_theta=float(rope.get("rope_theta", 10000.0)), rope_scaling=scaling, rms_norm_eps=float(hf.rms_norm_eps),
        tie_embeddings=bool(hf.tie_word_embeddings), qkv_bias=kind == "qwen2",
        max_position_embeddings=int(hf.max_position_embeddings),
    )
    cfg.validate()
    return cfg


def check_compatible(want: ModelConfig, have: ModelConfig, source: str) -> None:
    """The model config and the weights' own config must describe the same computation (names every mismatch)."""
    diffs = []
    for f in ARCH_FIELDS:
        a, b = getattr(want, f), getattr(have, f)
        if dataclasses.is_dataclass(a) or dataclasses.is_dataclass(b):
            a, b = a and dataclasses.asdict(a), b and dataclasses.asdict(b)
        if a != b:
            diffs.append(f"model.{f.replace('resolved_', '')}={a!r} but {source} has {b!r}")
    if diffs:
        raise ConfigError(
            f"config key 'model.init_from': {source} does not match the model config: " + "; ".join(diffs)
            + ". Pick the matching preset (model=NAME) or override those keys."
        )


# ---------------------------------------------------------------------------------------------------------------
# The tensor plan: where each of our parameters lives in an HF checkpoint and how its layout differs.


@dataclass(frozen=True)
class TensorMap:
    path: tuple  # key path in nnx.to_pure_dict(params)
    hf_names: tuple[str, ...]  # one name, or one per layer for a scanned (stacked) parameter
    hf_shape: tuple[int, ...]  # of one HF tensor
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    stacked: bool = False  # a scanned parameter: [layers, ...], hf_names[i] is layer i


def _same(x):
    return x


def _transpose(x):
    return x.T


def tensor_plan(cfg: ModelConfig) -> list[TensorMap]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim

    def qkv(heads):  # ours [d, heads, hd] <-> HF Linear weight [heads*hd, d]
        return (heads * hd, d), lambda x: x.T.reshape(d, heads, hd), lambda x: x.reshape(d, heads * hd).T

    o_shape = (d, h * hd), lambda x: x.T.reshape(h, hd, d), lambda x: x.reshape(h * hd, d).T
    layer = [  # (our sub-path, HF suffix, (hf_shape, to_ours, to_hf))
        (("attn", "q_proj"), "self_attn.q_proj.weight", qkv(h)),
        (("attn", "k_proj"), "self_attn.k_proj.weight", qkv(kv)),
        (("attn", "v_proj"), "self_attn.v_proj.weight", qkv(kv)),
        (("attn", "o_proj"), "self_attn.o_proj.weight", o_shape),
        (("mlp", "gate_proj"), "mlp.gate_proj.weight", ((f, d), _transpose, _transpose)),
        (("mlp", "up_proj"), "mlp.up_proj.weight", ((f, d), _transpose, _transpose)),
        (("mlp", "down_proj"), "mlp.down_proj.weight", ((d, f), _transpose, _transpose)),
        (("input_norm", "scale"), "input_layernorm.weight", ((d,), _same, _same)),
        (("post_attn_norm", "scale"), "post_attention_layernorm.weight", ((d,), _same, _same)),
    ]
    if cfg.qkv_bias:
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            layer.append(((("attn", f"{name}_bias")), f"self_attn.{name}_proj.bias",
                          ((heads * hd,), lambda x, n=heads: x.reshape(n, hd), lambda x: x.reshape(-1))))
    plan = [TensorMap(("embed",), ("model.embed_tokens.weight",), (v, d), _same, _same)]
    for sub, suffix, (shape, to_ours, to_hf) in layer:
        names = tuple(f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers))
        if cfg.scan_layers:
            plan.append(TensorMap(("layers", *sub), names, shape, to_ours, to_hf, stacked=True))
        else:
            plan += [TensorMap(("layers", i, *sub), (n,), shape, to_ours, to_hf) for i, n in enumerate(names)]
    plan.append(TensorMap(("final_norm", "scale"), ("model.norm.weight",), (d,), _same, _same))
    if not cfg.tie_embeddings:
        plan.append(TensorMap(("lm_head",), ("lm_head.weight",), (v, d), _transpose, _transpose))
    return plan


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------------------------------------------------------
# Import


def weight_files(hf_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from model.safetensors or a sharded index."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: hf_dir / file for name, file in weight_map.items()}
        for file in set(files.values()):
            if not file.exists():
                raise ConfigError(f"{index}: lists {file.name}, which is missing from {hf_dir}")
        return files
    single = hf_dir / "model.safetensors"
    if single.exists():
        from safetensors import safe_open

        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}
    others = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pth"))
    hint = f" (found {', '.join(others)}: only safetensors weights are read; re-save with safe_serialization)" \
        if others else ""
    raise ConfigError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}")


class _Reader:
    """Open safetensors files, read on the CPU backend (numpy cannot hold bfloat16; jax can)."""

    def __init__(self, files: dict[str, Path]):
        from safetensors import safe_open

        self.files = files
        self.handles = {p: safe_open(p, framework="flax") for p in set(files.values())}

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        s = self.handles[self.files[name]].get_slice(name)
        return tuple(s.get_shape()), s.get_dtype()

    def load(self, name: str) -> np.ndarray:
        import jax

        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            return np.asarray(self.handles[self.files[name]].get_tensor(name), dtype=np.float32)


def check_hf_tensors(plan: list[TensorMap], reader: _Reader, hf_dir: Path, tie: bool) -> list[str]:
    """Every expected tensor exists with the expected shape and a float dtype; unexpected ones are an error.
    Returns the names that are present but deliberately unused (reported by the caller)."""
    expected = {n: m.hf_shape for m in plan for n in m.hf_names}
    for name, shape in expected.items():
        if name not in reader.files:
            raise ConfigError(f"{hf_dir}: tensor '{name}' is missing")
        got, dtype = reader.info(name)
        if got != shape:
            raise ConfigError(f"{hf_dir}: tensor '{name}' has shape {list(got)}, the model config expects {list(shape)}")
        if dtype not in _FLOAT_DTYPES:
            raise ConfigError(f"{hf_dir}: tensor '{name}' has dtype {dtype}; expected one of {sorted(_FLOAT_DTYPES)} "
                              "(quantized weights must be dequantized first)")
    unused = [n for n in reader.files if n not in expected]
    ignorable = [n for n in unused if n.endswith(_IGNORED_SUFFIXES) or (tie and n == "lm_head.weight")]
    surprising = sorted(set(unused) - set(ignorable))
    if surprising:
        raise ConfigError(f"{hf_dir}: tensors the model config has no place for: {', '.join(surprising[:8])}"
                          + (f" and {len(surprising) - 8} more" if len(surprising) > 8 else ""))
    return ignorable


def load_hf_params(hf_dir: Path, cfg: ModelConfig, shardings: dict, log=print) -> dict:
    """Parameters (pure dict, float32, sharded as ``shardings``) from a local HF directory."""
    import jax

    check_compatible(cfg, read_hf_config(hf_dir), str(hf_dir / "config.json"))
    reader = _Reader(weight_files(hf_dir))
    plan = tensor_plan(cfg)
    for name in check_hf_tensors(plan, reader, hf_dir, cfg.tie_embeddings):
        log(f"import: not used: {name} (tied to the embedding, or recomputed)")
    params: dict = {}
    for m in plan:
        sharding = _get(shardings, m.path)
        if m.stacked:
            shape = (len(m.hf_names), *m.to_ours(np.zeros(m.hf_shape, np.float32)).shape)

            def shard(index, m=m):  # one layer at a time, only this shard's slice kept
                layers = range(len(m.hf_names))[index[0]]
                return np.stack([m.to_ours(reader.load(m.hf_names[i]))[index[1:]] for i in layers])
        else:
            cache: dict = {}
            shape = m.to_ours(np.zeros(m.hf_shape, np.float32)).shape

            def shard(index, m=m, cache=cache):
                if "x" not in cache:
                    cache["x"] = m.to_ours(reader.load(m.hf_names[0]))
                return cache["x"][index]

        _set(params, m.path, jax.make_array_from_callback(shape, sharding, shard))
    return params


# ---------------------------------------------------------------------------------------------------------------
# Export


def hf_config(cfg: ModelConfig, tokenizer=None, dtype: str = "float32"):
    """A transformers config object for ``cfg`` (save_pretrained writes config.json)."""
    import transformers

    if cfg.qkv_bias and cfg.architecture != "qwen2":
        raise ConfigError("config key 'model.qkv_bias': true is expressible in Hugging Face format only as Qwen2; "
                          f"set model.architecture=qwen2 (got {cfg.architecture!r})")
    if cfg.architecture == "qwen2" and not cfg.qkv_bias:
        raise ConfigError("config key 'model.qkv_bias': Qwen2 always has q/k/v biases; expected true")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim, hidden_act="silu", max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_embeddings, rope_parameters=rope,
        architectures=[HF_CLASSES[cfg.architecture]], dtype=dtype,
    )
    if tokenizer is not None:
        kwargs.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if cfg.architecture == "mistral":
        kwargs["sliding_window"] = None
    if cfg.architecture == "qwen2":
        kwargs["use_sliding_window"] = False
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}[cfg.architecture]
    return config_class(**kwargs)


def _to_host(x) -> np.ndarray:
    import jax
    from jax.experimental import multihost_utils

    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_hf(params: dict, cfg: ModelConfig, dst: str | Path, *, tokenizer_dir: Path | None = None,
            generation_config: dict | None = None, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
            template: str = "auto", log=print) -> Path:
    """Write an HF directory that ``AutoModelForCausalLM.from_pretrained`` loads with no extra code.

    ``template``: the chat template the weights were trained with. A named one is written into the tokenizer as its
    Jinja ``chat_template`` and its end-of-turn tokens into generation_config's ``eos_token_id``, so transformers'
    ``apply_chat_template`` and ``generate`` prompt and stop as training did (``auto`` keeps the tokenizer's own).

    Every process takes part in gathering sharded parameters; process 0 writes. Shards above ``max_shard_bytes``
    get an index file, as transformers writes them."""
    import jax
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ConfigError(f"export dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    dst = Path(dst)
    writer = jax.process_index() == 0
    tokenizer, end_of_turn = None, None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        from sftjax.data.templates import end_of_turn_ids, jinja_template

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        jinja = jinja_template(tokenizer, template)
        if jinja is not None:
            tokenizer.chat_template = jinja
            eos = (generation_config or {}).get("eos_token_id")
            end_of_turn = sorted(end_of_turn_ids(tokenizer, eos if isinstance(eos, list) else [eos]))
    config = hf_config(cfg, tokenizer, dtype)
    plan = tensor_plan(cfg)
    item = np.dtype(np_dtype).itemsize
    names = [(m, i, n) for m in plan for i, n in enumerate(m.hf_names)]
    shards: list[list] = [[]]
    size = 0
    for entry in names:  # assign tensors to shards by size before fetching anything
        nbytes = int(np.prod(entry[0].hf_shape)) * item
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    if writer:
        dst.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for file, shard in zip(files, shards, strict=True):
        tensors = {}
        for m, i, name in shard:
            leaf = _get(params, m.path)
            value = _to_host(leaf[i] if m.stacked else leaf)
            tensors[name] = np.ascontiguousarray(m.to_hf(value).astype(np_dtype))
            weight_map[name] = file
            total += tensors[name].nbytes
        if writer:
            save_file(tensors, str(dst / file), metadata={"format": "pt"})
        del tensors
    if not writer:
        return dst
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(dst)
    _write_generation_config(dst, config, generation_config, end_of_turn)
    if tokenizer is not None:
        tokenizer.save_pretrained(dst)
    log(f"export: wrote {len(weight_map)} tensors ({total / 2**20:.1f} MiB, {dtype}) in {len(files)} file(s) to {dst}")
    return dst


def _write_generation_config(dst: Path, config, source: dict | None, eos_ids: list[int] | None = None) -> None:
    from transformers import GenerationConfig

    gen = GenerationConfig.from_dict(source) if source else GenerationConfig.from_model_config(config)
    if eos_ids:
        gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    gen.save_pretrained(dst)


def read_generation_config(hf_dir: Path) -> dict | None:
    path = hf_dir / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else None


def copy_tokenizer(hf_dir: Path, dst: Path) -> Path | None:
    """Save the HF directory's tokenizer (with its chat template) to ``dst``; None when it has none."""
    from transformers import AutoTokenizer

    markers = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((hf_dir / m).exists() for m in markers):
        return None
    return save_tokenizer(AutoTokenizer.from_pretrained(hf_dir), dst)


def save_tokenizer(tokenizer, dst: Path) -> Path:
    """Write a tokenizer (and its chat template) to ``dst`` through a temporary directory, so a run killed
    half-way never leaves a partial tokenizer behind."""
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst
