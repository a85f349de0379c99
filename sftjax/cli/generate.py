"""sftjax-generate: continue prompts with a model (a Hydra app; `python -m sftjax.cli.generate`).

    sftjax-generate model.init_from=hf:DIR generate.prompts=IN.jsonl generate.output=OUT.jsonl \\
        generate.max_new_tokens=N generate.temperature=0
    sftjax-generate model.init_from=runs/exp1 generate.chat='What is the capital of France?'

Input lines are {"id": ..., "prompt": "raw text"} (no template) or {"id": ..., "messages": [...]} (rendered with the
template the model was trained with: a run's recorded data.template, else the tokenizer's own; the same renderer as
training and eval, up to where the answer starts); output lines are {"id": ..., "completion": "...", "token_ids":
[...]}.
The architecture is read from the weights (config.json or the checkpoint); model.dtype, model.attention and the mesh
apply as in training.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import (ConfigError, GenerateAppConfig, check_override_keys, register_configs,
                           to_config)
from sftjax.data.jsonl import read_jsonl
from sftjax.data.templates import prompt_ids

logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every step at INFO
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" is not news
register_configs()


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


def encode(tokenizer, template: str, rec: dict) -> list[int]:
    if "prompt" in rec:
        return list(tokenizer(rec["prompt"])["input_ids"])
    try:
        return prompt_ids(tokenizer, template, rec["messages"])
    except ConfigError as e:
        raise ConfigError(f"request {rec['id']!r}: {e}") from None


def run(app: GenerateAppConfig, log=print) -> list[dict]:
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.generate import generate
    from sftjax.parallel.mesh import initialize_distributed, make_mesh

    g = app.generate
    initialize_distributed(app.mesh)
    mesh = make_mesh(app.mesh.resolve(jax.device_count()))
    loaded = load_model(app.model.init_from, app.model, mesh, log=log)
    tokenizer, cfg, graphdef, params = loaded.tokenizer, loaded.cfg, loaded.graphdef, loaded.params
    requests = read_requests(Path(g.prompts)) if g.prompts else [
        {"id": "chat", "messages": [{"role": "user", "content": g.chat}]}]
    prompts = [encode(tokenizer, loaded.template, r) for r in requests]
    for rec, ids in zip(requests, prompts, strict=True):
        if len(ids) + g.max_new_tokens > cfg.max_position_embeddings:
            raise ConfigError(f"request {rec['id']!r}: {len(ids)} prompt tokens + generate.max_new_tokens="
                              f"{g.max_new_tokens} exceed the model's {cfg.max_position_embeddings} positions")
    eos = loaded.eos_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results, t0, new_tokens = [], time.perf_counter(), 0
    for i in range(0, len(requests), g.batch_size):
        batch = prompts[i: i + g.batch_size]
        outs = generate((graphdef, params), batch, g.max_new_tokens, eos_ids=eos, pad_id=pad,
                        temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed + i, mesh=mesh)
        for rec, ids in zip(requests[i: i + g.batch_size], outs, strict=True):
            results.append({"id": rec["id"], "completion": tokenizer.decode(ids, skip_special_tokens=True),
                            "token_ids": ids})
            new_tokens += len(ids)
        log(f"generate: {len(results)}/{len(requests)} requests")
    log(f"generate: {new_tokens} new tokens in {time.perf_counter() - t0:.1f}s (compile included)")
    return results


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
