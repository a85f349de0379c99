"""sftjax-eval: run evaluation suites on a checkpoint or an HF directory (a Hydra app; `python -m sftjax.cli.eval`).

    sftjax-eval model.init_from=runs/exp1 eval=demo eval.output=runs/exp1/eval/final.json
    sftjax-eval 'models=[embedded:smollm2-135m-instruct,runs/demo]' eval=demo      # side by side

The suites are the ones training runs (conf/eval/*.yaml, sftjax.eval.runner), so base and fine-tuned models are
scored by exactly the same code. The architecture is read from the weights; model.dtype, model.attention and the
mesh apply as in training. Chat prompts use the template each model was trained with (a run's recorded data.template,
else the tokenizer's own); data.template=NAME forces one for every model.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sftjax.cli import config_errors
from sftjax.config import EvalAppConfig, check_override_keys, register_configs, to_config

logging.getLogger("absl").setLevel(logging.WARNING)
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
register_configs()


def run(app: EvalAppConfig, log=print) -> dict:
    """{init_from: {"suites": ..., "metrics": ...}} for every model evaluated, in order."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.eval.runner import JudgeModels, run_suites
    from sftjax.parallel.mesh import initialize_distributed, make_mesh

    initialize_distributed(app.mesh)
    mesh = make_mesh(app.mesh.resolve(jax.device_count()))
    batch_rows = mesh.shape["data"] * mesh.shape["fsdp"]
    judges = JudgeModels(app.model, mesh, app.eval, app.data.template, log)  # shared by every model evaluated
    out = {}
    for spec in app.models or [app.model.init_from]:
        log(f"eval: {spec}")
        m = load_model(spec, app.model, mesh, log=log)
        data = app.data if app.data.template != "auto" else dataclasses.replace(app.data, template=m.template)
        out[spec] = run_suites(app.eval, graphdef=m.graphdef, params=m.params, tokenizer=m.tokenizer, data=data,
                               mesh=mesh, max_positions=m.cfg.max_position_embeddings,
                               loss_rows=max(batch_rows, app.eval.batch_size // batch_rows * batch_rows),
                               log=log, judges=judges, eos_ids=sorted(m.eos_ids))
    return out


def table(results: dict) -> str:
    """Suites x metrics down, models across: the before/after comparison in one glance."""
    models = list(results)
    keys = []
    for r in results.values():
        keys += [k for k in r["metrics"] if k not in keys and not k.endswith(("/n", "/truncated_prompts", "/tokens",
                                                                              "/examples", "/judged"))]
    short = [_short(m) for m in models]
    width = max([len(k) for k in keys] + [6])
    cols = [max(len(s), 8) for s in short]
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>{c}}" for s, c in zip(short, cols))]
    lines.append("-" * len(lines[0]))
    for k in keys:
        cells = []
        for m, c in zip(models, cols):
            v = results[m]["metrics"].get(k)
            cells.append(f"{'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else str(v)):>{c}}")
        lines.append(f"{k.removeprefix('eval/'):<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _short(spec: str) -> str:
    return spec.removeprefix("embedded:").removeprefix("hf:")[-28:]


@hydra.main(version_base=None, config_path="pkg://sftjax.conf", config_name="evaluate")
def _main(dcfg: DictConfig) -> None:
    with config_errors("sftjax-eval"):
        app = to_config(dcfg, EvalAppConfig)
        results = run(app, log=lambda m: print(m, file=sys.stderr))
    if app.eval.output:
        from sftjax.eval.runner import write_json

        write_json(Path(app.eval.output), {"models": {k: v["suites"] for k, v in results.items()}})
        print(f"sftjax-eval: wrote {app.eval.output}", file=sys.stderr)
    print(table(results))


def main() -> None:
    with config_errors("sftjax-eval"):
        check_override_keys(sys.argv[1:], EvalAppConfig)
    _main()


if __name__ == "__main__":
    main()
