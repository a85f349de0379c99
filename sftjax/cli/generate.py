"""sftjax-generate: continue prompts with a model (a Hydra app; `python -m sftjax.cli.generate`).

    sftjax-generate model.init_from=hf:DIR generate.prompts=IN.jsonl generate.output=OUT.jsonl \\
        generate.max_new_tokens=N generate.temperature=0
    sftjax-generate model.init_from=runs/exp1 generate.chat='What is the capital of France?'

Input lines are {"id": ..., "prompt": "raw text"} (no template) or {"id": ..., "messages": [...]} (the tokenizer's chat
template with the assistant turn opened); output lines are {"id": ..., "completion": "...", "token_ids": [...]}.
The architecture is read from the weights (config.json or the checkpoint); model.dtype, model.attention and the mesh
apply as in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import (ConfigError, GenerateAppConfig, ModelConfig, check_override_keys, register_configs,
                           to_config)
from sftjax.data.jsonl import read_jsonl

logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every step at INFO
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" is not news
register_configs()
RUNTIME_FIELDS = ("dtype", "attention", "attention_block", "remat")  # model keys that do not change the weights


def read_requests(path: Path) -> list[dict]:
    requests = []
    for lineno, rec in read_jsonl(path):
        if "id" not in rec or ("prompt" in rec) == ("messages" in rec):
            raise ConfigError(f"{path}:{lineno}: expected an object with 'id' and one of 'prompt' or 'messages'")
        body = rec.get("prompt", rec.get("messages"))
        if not body:
            raise ConfigError(f"{path}:{lineno}: request {rec['id']!r} has an empty prompt")
        if "messages" in rec and not (isinstance(body, list) and all(
                isinstance(m, dict) and {"role", "content"} <= set(m) for m in body)):
            raise ConfigError(f"{path}:{lineno}: 'messages' must be a list of {{'role', 'content'}} objects")
        requests.append(rec)
    if not requests:
        raise ConfigError(f"{path}: no requests")
    return requests


def encode(tokenizer, rec: dict) -> list[int]:
    if "prompt" in rec:
        return list(tokenizer(rec["prompt"])["input_ids"])
    if not tokenizer.chat_template:
        raise ConfigError(f"request {rec['id']!r} has messages, but the tokenizer has no chat template")
    out = tokenizer.apply_chat_template(rec["messages"], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def model_config_for(source, runtime: ModelConfig) -> ModelConfig:
    from sftjax.ckpt import hf
    from sftjax.ckpt.checkpoints import latest_meta, model_config_of

    if source.kind == "hf":  # imported into either layout
        cfg = dataclasses.replace(hf.read_hf_config(source.path), scan_layers=runtime.scan_layers)
    else:  # restored in the layout it was saved in
        cfg = model_config_of(latest_meta(source.path)[2])
    return dataclasses.replace(cfg, init_from=runtime.init_from, **{f: getattr(runtime, f) for f in RUNTIME_FIELDS})


def run(app: GenerateAppConfig, log=print) -> list[dict]:
    import jax
    from transformers import AutoTokenizer

    from sftjax.ckpt.init_from import load_initial_params, resolve_init_source
    from sftjax.generate import generate
    from sftjax.parallel.mesh import initialize_distributed, make_mesh
    from sftjax.train.state import abstract_model, param_shardings

    g = app.generate
    initialize_distributed(app.mesh)
    mesh = make_mesh(app.mesh.resolve(jax.device_count()))
    source = resolve_init_source(app.model.init_from, log=log)
    if source.tokenizer_dir is None:
        raise ConfigError(f"config key 'model.init_from': {source.path} has no tokenizer; sftjax-generate needs one")
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir)
    cfg = model_config_for(source, app.model)
    requests = read_requests(Path(g.prompts)) if g.prompts else [
        {"id": "chat", "messages": [{"role": "user", "content": g.chat}]}]
    prompts = [encode(tokenizer, r) for r in requests]
    for rec, ids in zip(requests, prompts, strict=True):
        if len(ids) + g.max_new_tokens > cfg.max_position_embeddings:
            raise ConfigError(f"request {rec['id']!r}: {len(ids)} prompt tokens + generate.max_new_tokens="
                              f"{g.max_new_tokens} exceed the model's {cfg.max_position_embeddings} positions")
    graphdef, abstract = abstract_model(cfg)
    with jax.set_mesh(mesh):
        shardings = param_shardings(abstract, mesh)
    from flax import nnx

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
    params = load_initial_params(cfg, source, shapes, shardings, log=log)
    eos = {tokenizer.eos_token_id} | _generation_eos(source.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results, t0, new_tokens = [], time.perf_counter(), 0
    for i in range(0, len(requests), g.batch_size):
        batch = prompts[i: i + g.batch_size]
        outs = generate((graphdef, params), batch, g.max_new_tokens, eos_ids=eos - {None}, pad_id=pad,
                        temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed + i, mesh=mesh)
        for rec, ids in zip(requests[i: i + g.batch_size], outs, strict=True):
            results.append({"id": rec["id"], "completion": tokenizer.decode(ids, skip_special_tokens=True),
                            "token_ids": ids})
            new_tokens += len(ids)
        log(f"generate: {len(results)}/{len(requests)} requests")
    log(f"generate: {new_tokens} new tokens in {time.perf_counter() - t0:.1f}s (compile included)")
    return results


def _generation_eos(gen: dict | None) -> set:
    ids = (gen or {}).get("eos_token_id")
    return set(ids) if isinstance(ids, list) else ({ids} if ids is not None else set())


@hydra.main(version_base=None, config_path="pkg://sftjax.conf", config_name="generate")
def _main(dcfg: DictConfig) -> None:
    with config_errors("sftjax-generate"):
        app = to_config(dcfg, GenerateAppConfig)
        results = run(app, log=lambda m: print(m, file=sys.stderr))
    if app.generate.output:
        out = Path(app.generate.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results), encoding="utf-8")
        print(f"sftjax-generate: wrote {len(results)} completions to {out}", file=sys.stderr)
    for r in results:
        print(f"[{r['id']}] {r['completion']}")


def main() -> None:
    with config_errors("sftjax-generate"):
        check_override_keys(sys.argv[1:], GenerateAppConfig)
    _main()


if __name__ == "__main__":
    main()
