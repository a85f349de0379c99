"""sftjax-convert: move weights between Hugging Face, sftjax and GGUF.

    sftjax-convert hf-to-sftjax SRC_HF_DIR DST_DIR     (SRC may be a hub name for users with a network)
    sftjax-convert sftjax-to-hf SRC_DIR DST_HF_DIR     (SRC_DIR: a run directory or a checkpoint directory;
                                                         the latest checkpoint is used)
    sftjax-convert gguf-to-hf SRC_GGUF DST_HF_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from sftjax.config import ConfigError

logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every step at INFO
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" is not news


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * factor)
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}")


def _fresh_destination(dst: Path) -> None:
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst}: destination exists and is not empty; choose a new directory")


def _single_host_mesh():
    import jax

    from sftjax.parallel.mesh import make_mesh

    return make_mesh((1, jax.device_count(), 1))  # fsdp over every device: one shard of each tensor per device


def hf_to_sftjax(src: str, dst: Path, scan_layers: bool) -> None:
    import json

    import jax

    from sftjax.ckpt import hf
    from sftjax.ckpt.checkpoints import save_params_only
    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig

    _fresh_destination(dst)
    t0 = time.perf_counter()
    m = load_model(f"hf:{src}", ModelConfig(scan_layers=scan_layers), _single_host_mesh())
    save_params_only(dst, m.params, dataclasses.replace(m.cfg, init_from=""), extra={"source": str(m.source.path)})
    hf.copy_tokenizer(m.source.path, dst / "tokenizer")
    if m.source.generation_config is not None:
        (dst / "generation_config.json").write_text(json.dumps(m.source.generation_config, indent=2))
    n = sum(x.size for x in jax.tree.leaves(m.params))
    print(f"sftjax-convert: {m.source.path} -> {dst}: {m.cfg.architecture}, {n / 1e6:.1f}M parameters, "
          f"{time.perf_counter() - t0:.1f}s")


def sftjax_to_hf(src: Path, dst: Path, dtype: str, max_shard_bytes: int) -> None:
    from sftjax.ckpt import hf
    from sftjax.ckpt.init_from import load_model, resolve_init_source
    from sftjax.config import ModelConfig

    _fresh_destination(dst)
    t0 = time.perf_counter()
    source = resolve_init_source(str(src))
    if source.kind != "sftjax":
        raise ConfigError(f"{src}: expected a run directory or an sftjax checkpoint directory")
    m = load_model(source, ModelConfig(init_from=str(src)), _single_host_mesh(), log=lambda _: None)
    hf.save_hf(m.params, m.cfg, dst, tokenizer_dir=source.tokenizer_dir, generation_config=source.generation_config,
               dtype=dtype, max_shard_bytes=max_shard_bytes, template=m.template)
    print(f"sftjax-convert: {source.where} -> {dst} in {time.perf_counter() - t0:.1f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sftjax-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hf-to-sftjax", help="a Hugging Face model directory -> an sftjax checkpoint directory")
    p.add_argument("src")
    p.add_argument("dst", type=Path)
    p.add_argument("--scan-layers", action="store_true", help="store layers stacked (for model.scan_layers=true)")
    p = sub.add_parser("sftjax-to-hf", help="a run or checkpoint directory -> a Hugging Face model directory")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-size", type=_parse_size, default="5GB",
                   help="split model.safetensors above this size (default 5GB)")
    p = sub.add_parser("gguf-to-hf", help="a GGUF file -> a Hugging Face model directory (float32)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "hf-to-sftjax":
            hf_to_sftjax(args.src, args.dst, args.scan_layers)
        elif args.command == "sftjax-to-hf":
            sftjax_to_hf(args.src, args.dst, args.dtype, args.max_shard_size)
        else:
            from sftjax.ckpt.gguf import gguf_to_hf

            gguf_to_hf(args.src, args.dst)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"sftjax-convert: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
