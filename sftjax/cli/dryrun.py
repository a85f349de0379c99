"""sftjax-dryrun: plan a training run without running it (`python -m sftjax.cli.dryrun`).

    sftjax-dryrun [--config-dir DIR] model=llama1_7b mesh.fsdp=64 data.seq_len=2048 train.global_batch_size=64 \\
        model.dtype=bfloat16 model.scan_layers=true model.remat=full dryrun.memory_gib=80 dryrun.peak_flops=989e12

Takes sftjax-train's config and overrides, plus ``dryrun.*``:

    dryrun.devices=N      devices to plan for; 0 (default) = the product of mesh.data/fsdp/tensor (a -1 axis counts 1)
    dryrun.memory_gib=G   per-device memory to fit in; 0 (default) = no check
    dryrun.peak_flops=F   peak FLOP/s of one device for the implied step time; 0 = train.peak_flops_per_device
    dryrun.json=PATH      also write the plan as JSON
    dryrun.strict=false   let dimensions the mesh does not divide be replicated (as sftjax-train does) instead of
                          refusing the plan

The real train step is lowered and compiled for N fake CPU devices from shapes alone (no data, no weights), then its
per-device memory (XLA's memory analysis) and FLOPs are printed. The fake device count has to be fixed before jax
starts, so this command sets JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=N itself, after
reading the config and before importing jax; if jax was already imported (``main()`` called from Python), it runs
itself again in a fresh process with that environment.

Exit codes: 0 the plan fits (or no dryrun.memory_gib), 1 it does not fit, 2 invalid config (a mesh that does not divide
the model's dimensions or the batch, an unknown key, ...).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sftjax.cli import config_errors
from sftjax.config import Config, ConfigError, check_override_keys, compose_config, split_config_dir

PROG = "sftjax-dryrun"
GIB = 2**30


@dataclass
class DryrunConfig:
    devices: int = 0  # 0 = the mesh product (a -1 axis counts as 1)
    memory_gib: float = 0.0  # 0 = no limit check
    peak_flops: float = 0.0  # 0 = train.peak_flops_per_device
    json: str = ""  # also write the plan here
    strict: bool = True  # refuse a mesh that does not divide a parameter dimension (false: replicate it)

    def validate(self) -> None:
        for key in ("devices", "memory_gib", "peak_flops"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"config key 'dryrun.{key}': expected a number >= 0 (0 = default), got {value!r}")


@dataclass
class DryrunAppConfig(Config):
    """The keys sftjax-dryrun accepts: sftjax-train's plus ``dryrun``."""

    dryrun: DryrunConfig = field(default_factory=DryrunConfig)


def parse_args(argv: list[str]) -> tuple[Config, DryrunConfig]:
    """Split ``dryrun.*`` from the training overrides; compose and validate both (ConfigError on bad input)."""
    config_dir, argv = split_config_dir(argv)
    check_override_keys(argv, DryrunAppConfig)
    ours = [a for a in argv if a.startswith("dryrun.")]
    rest = [a for a in argv if not a.startswith("dryrun.")]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DryrunConfig),
                                 OmegaConf.from_dotlist([a[len("dryrun."):] for a in ours]))
        dry = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"config key 'dryrun.{key}': {str(e).splitlines()[0]}") from None
    assert isinstance(dry, DryrunConfig)
    dry.validate()
    try:
        return compose_config(rest, config_dir=config_dir), dry
    except HydraException as e:  # an unknown group option, a value of the wrong type: one line, not a traceback
        msg = str(e).split("\nConfig search path")[0].strip()
        cause = f" ({str(e.__cause__).splitlines()[0]})" if e.__cause__ else ""
        raise ConfigError(" ".join(msg.split()) + cause) from None


def device_count(cfg: Config, dry: DryrunConfig) -> int:
    if dry.devices:
        return dry.devices
    return math.prod(s for s in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if s != -1)


def fake_device_env(n: int, env: dict | None = None) -> dict:
    """``env`` (default os.environ) with jax pinned to ``n`` fake CPU devices."""
    env = dict(os.environ if env is None else env)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _size(b: int | float) -> str:
    """Bytes in a fixed-width column: GiB for anything over 0.1 GiB, else the unit that keeps 3-4 digits."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= 0.1 * scale or unit == "KiB":
            return f"{b / scale:9.3f} {unit}"
    raise AssertionError


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _seconds(s: float) -> str:
    return f"{s:.3f} s" if s >= 0.1 else f"{s * 1e3:.3f} ms"


def report(p: dict) -> str:
    m = p["memory_per_device"]
    mesh = " ".join(f"{k}={v}" for k, v in p["mesh"].items())
    lines = [
        f"{PROG}: {p['model']} ({_count(p['parameters'])} parameters) on {p['devices']} fake {p['backend']} "
        f"devices, mesh {mesh}",
        f"  batch {p['global_batch_size']} x {p['seq_len']} tokens (grad_accum {p['grad_accum']}), compute "
        f"{p['compute_dtype']}, attention {p['attention']}, remat {p['remat']}, scan_layers "
        f"{str(p['scan_layers']).lower()}",
        f"  lowered in {p['lower_s']:.1f}s, compiled in {p['compile_s']:.1f}s",
    ]
    lines += [f"  replicated (the mesh does not divide it): {r}" for r in p["replicated"]]
    lines += [
        "",
        "memory per device",
        f"  parameters (float32)             {_size(m['parameters'])}",
        f"  optimizer state (AdamW mu, nu)   {_size(m['optimizer_state'])}",
        f"  batch                            {_size(m['batch'])}",
        f"  compiled: arguments              {_size(m['arguments'])}   (the three above + step)",
        f"  compiled: outputs                {_size(m['outputs'])}",
        f"  compiled: aliased (donated)      {_size(-m['aliased'])}",
        f"  compiled: temporaries            {_size(m['temporaries'])}   (activations, gradients, workspace)",
        f"  compiled: generated code         {_size(m['generated_code'])}",
        f"  total                            {_size(m['total'])}",
    ]
    if p["memory_limit"]:
        spare = p["memory_limit"] - m["total"]
        verdict = (f"fits, {_size(spare).strip()} spare" if p["fits"] else
                   f"DOES NOT FIT: {_size(-spare).strip()} over")
        lines.append(f"  limit (dryrun.memory_gib)        {_size(p['memory_limit'])}   {verdict}")
    xla = p["xla_flops_per_step"]
    if xla is None:
        xla_line = "n/a (the backend's cost analysis has no flops)"
    elif p["scan_layers"]:
        xla_line = "n/a (scan_layers: XLA counts a loop body once; unrolled layers give a full count)"
    else:
        xla_line = f"{xla:.3e}  (XLA's count over all devices, remat recompute included)"
    lines += [
        "",
        "compute per step",
        f"  tokens                           {p['tokens_per_step']:,}",
        f"  model FLOPs                      {p['model_flops_per_step']:.3e}  (6*N*tokens + causal attention over "
        "full rows of one document)",
        f"  compiled FLOPs                   {xla_line}",
        f"  step time at peak                {_seconds(p['step_s_at_peak'])}  ({p['peak_flops_per_device']:.3g} FLOP/s x "
        f"{p['devices']} devices, 100% MFU)",
        f"  tokens/s at peak                 {p['tokens_per_s_at_peak']:,.0f}",
    ]
    return "\n".join(lines)


def run(cfg: Config, dry: DryrunConfig) -> int:
    """Plan in this process (jax must already see the fake devices); print the report, return the exit code."""
    from sftjax.train.plan import plan

    peak = dry.peak_flops or cfg.train.peak_flops_per_device
    result = plan(cfg, peak_flops=peak, memory_gib=dry.memory_gib, strict=dry.strict,
                  log=lambda msg: print(f"{PROG}: {msg}", file=sys.stderr, flush=True))
    print(report(result), flush=True)
    if dry.json:
        out = Path(dry.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{PROG}: wrote {out}", file=sys.stderr)
    if result["fits"] is False:
        total = result["memory_per_device"]["total"]
        print(f"{PROG}: does not fit: the plan needs {_size(total).strip()} per device, "
              f"{_size(total - result['memory_limit']).strip()} more than dryrun.memory_gib={dry.memory_gib:g}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    with config_errors(PROG):
        cfg, dry = parse_args(argv)
        n = device_count(cfg, dry)
        cfg.check_devices(n)  # mesh vs device count and batch vs data*fsdp, before jax starts
    env = fake_device_env(n)
    ready = all(os.environ.get(k) == env[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS"))
    if "jax" in sys.modules and not ready:
        # jax is already imported here: its platform and device count are fixed, so plan in a fresh process.
        sys.exit(subprocess.run([sys.executable, "-m", "sftjax.cli.dryrun", *argv], env=env).returncode)
    os.environ.update(env)  # before jax is first imported
    with config_errors(PROG):
        code = run(cfg, dry)
    sys.exit(code)


if __name__ == "__main__":
    main()
