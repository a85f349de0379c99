"""Training throughput: sftjax vs HF transformers + torch on the same packed batches, in one process, on whatever
backend JAX finds, so that one command reproduces a reference figure on the machine at hand.

Models: 58m (Llama d512, 8 layers, 8 heads, ffn 1408, vocab 32000, untied: the CPU reference, the default) or a
conf/model preset (smollm2_135m, llama3_2_1b, llama3_8b, ...) with random init. Compute dtype is model.dtype auto
(bfloat16 on GPU/TPU, float32 on CPU); AdamW. Batches: documents of realistic, varied SFT lengths (log-normal, median
~350 tokens, prompts masked), best-fit packed into --seq rows; attention is segment-isolated in both frameworks (HF
builds a block-diagonal mask from the position_ids that reset per document).

Per attention implementation: tokens/s (real tokens), model TFLOP/s (6·N·tokens + attention over attended pairs), MFU
against --peak and against a matmul peak measured at start (what this device reaches on its main op), peak memory
(the device's high-water mark for the process, so run one implementation per process to compare memory; XLA's plan
for the step where the backend reports no peak), compile time, and the first batch's loss and final hidden states
before any update next to the dense reference's on the same params: a wrong kernel shows there before it hides inside
a throughput figure. HF runs eager (and torch.compile with --hf-compile): bf16 autocast and fused AdamW on CUDA, fp32
on CPU. With HF, JAX allocates on demand instead of taking 75% of the device up front; --skip-hf for JAX's default.

    python bench/train_throughput.py [--model 58m] [--steps 5] [--rows 1] [--attention auto|blockwise,sdpa,...]
        [--scan] [--remat none] [--skip-hf] [--hf-compile] [--json out.json] [--dry]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from _common import MODELS, compute_dtype, device_peak_bytes, gib, matmul_peak, packed_rows, short_error, xla_bytes
from _common import model_config as preset_config
from flax import nnx

from sftjax.config import ModelConfig, OptimConfig, TrainConfig
from sftjax.model.attention import resolve
from sftjax.model.flops import attended_pairs, matmul_params, param_count, train_flops
from sftjax.parallel.mesh import make_mesh
from sftjax.parallel.rules import activation_mesh
from sftjax.data.batch import to_device
from sftjax.model.loss import masked_token_losses
from sftjax.train.optimizer import make_optimizer
from sftjax.model.layout import abstract_model
from sftjax.train.state import init_train_state
from sftjax.train.step import jit_train_step, make_train_step

H100_BF16_DENSE = 989e12  # H100/H200 SXM datasheet, dense bf16


def model_config(args, attention: str = "auto") -> ModelConfig:
    return preset_config(args.model, args.seq, attention=attention, attention_block=args.block,
                         scan_layers=args.scan, remat=args.remat)


def first_pass(graphdef, mesh):
    """Forward only: (mean loss over trained tokens, float32 final hidden states). At random init the loss sits near
    log(vocab) and moves little with attention (a non-causal mask: 7e-3); the hidden states show it plainly (1.2)."""

    def f(params, b):
        with activation_mesh(mesh):
            model = nnx.merge(graphdef, params)
            hidden = model.hidden_states(b["input_ids"], b["segment_ids"], b["positions"])
            tok, mask, _ = masked_token_losses(hidden, model.head_kernel(), b["targets"], b["loss_mask"],
                                               b["source_ids"])
        real = (b["segment_ids"] > 0)[..., None]
        return tok.sum() / jnp.maximum(mask.sum(), 1), jnp.where(real, hidden.astype(jnp.float32), 0.0)

    return jax.jit(f)


def bench_sftjax(args, impl, batches, mesh, reference):
    cfg = model_config(args, impl)
    optimizer, schedule = make_optimizer(OptimConfig(lr=1e-4), 1000)
    graphdef, state, shardings = init_train_state(cfg, optimizer, mesh, seed=0)
    dev = [to_device(b, mesh, args.rows) for b in batches]
    loss0, hidden = first_pass(graphdef, mesh)(state["params"], dev[0])
    ref0, ref_hidden = reference(state["params"], dev[0])  # not donated here; the train step's params are
    hidden_err = float(jnp.abs(hidden - ref_hidden).max() / jnp.abs(ref_hidden).max())
    loss0, ref0 = float(loss0), float(ref0)
    del hidden, ref_hidden
    step = jit_train_step(make_train_step(graphdef, optimizer, schedule, grad_accum=1, num_sources=1, mesh=mesh),
                          shardings, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, dev[0]).compile()
    compile_s = time.perf_counter() - t
    for b in dev[: args.warmup]:
        state, m = compiled(state, b)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for b in dev[args.warmup :]:
        state, m = compiled(state, b)
    jax.block_until_ready((state, m))
    return dict(seconds=time.perf_counter() - t, compile_s=compile_s, loss=float(m["loss"]), loss0=loss0, ref0=ref0,
                hidden_err=hidden_err, peak_bytes=device_peak_bytes(), xla_bytes=xla_bytes(compiled))


def bench_hf(args, cfg, batches, compiled_mode: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from sftjax.ckpt.hf import hf_config

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="sdpa", dtype=torch.float32).to(dev)
    net.train()
    fwd = torch.compile(net) if compiled_mode else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=dev == "cuda")
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(b):
        ids, pos, tgt = (torch.from_numpy(b[k]).long().to(dev) for k in ("input_ids", "positions", "targets"))
        mask = torch.from_numpy(b["loss_mask"]).to(dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            logits = fwd(input_ids=ids, position_ids=pos).logits
        loss = torch.nn.functional.cross_entropy(logits[mask].float(), tgt[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return loss

    t = time.perf_counter()
    for b in batches[: args.warmup]:
        step(b)
    sync()
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for b in batches[args.warmup :]:
        loss = step(b)
    sync()
    out = dict(seconds=time.perf_counter() - t, compile_s=first_s, loss=float(loss.detach()),
               peak_bytes=torch.cuda.max_memory_allocated() if dev == "cuda" else None)
    del net, fwd, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="58m", choices=MODELS)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    ap.add_argument("--rows", type=int, default=1, help="packed rows per step")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per row")
    ap.add_argument("--attention", default="auto", help="comma-separated: auto, dense, blockwise, sdpa, pallas_gpu, "
                                                        "splash; each is one run in this process")
    ap.add_argument("--block", type=int, default=256, help="blockwise attention tile")
    ap.add_argument("--scan", action="store_true", help="lax.scan over layers")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--peak", type=float, default=None, help="peak FLOP/s for MFU (default: 989e12 on GPU, "
                                                             "train.peak_flops_per_device on CPU)")
    ap.add_argument("--matmul-size", type=int, default=None, help="side of the measured matmul (8192; CPU 2048)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-compile", action="store_true", help="also run HF under torch.compile")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--dry", action="store_true", help="print the config, parameter count and FLOPs; run nothing")
    args = ap.parse_args()
    if not (args.skip_hf or args.dry):
        # torch shares the device with JAX in this process: JAX then takes memory as it needs it, not 75% up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    backend, dtype = jax.default_backend(), compute_dtype()
    cfg = model_config(args)
    impls = [s.strip() for s in args.attention.split(",") if s.strip()]
    total = args.warmup + args.steps
    data = packed_rows(total * args.rows, args.seq, cfg.vocab_size)
    batches = [{k: v[i * args.rows : (i + 1) * args.rows] for k, v in data.items()} for i in range(total)]
    timed = batches[args.warmup :]
    real = sum(int((b["segment_ids"] > 0).sum()) for b in timed)
    slots = len(timed) * args.rows
    flops = train_flops(cfg, real, sum(attended_pairs(b["segment_ids"], b["positions"]) for b in timed))
    peak = args.peak or {"gpu": H100_BF16_DENSE, "cpu": TrainConfig().peak_flops_per_device}.get(backend)
    print(f"model {args.model}: {param_count(cfg)['total'] / 1e6:,.1f}M parameters ({matmul_params(cfg) / 1e6:,.1f}M "
          f"in matmuls), d{cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads}/{cfg.num_kv_heads} heads, "
          f"ffn {cfg.intermediate_size}, vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'}")
    print(f"backend {backend} ({jax.devices()[0].device_kind}), compute {dtype.name}; seq {args.seq}, {args.rows} "
          f"row(s)/step, {args.steps} timed steps after {args.warmup} warm-up; fill {real / (slots * args.seq):.1%}, "
          f"docs/row {sum(int(b['segment_ids'].max(axis=1).sum()) for b in timed) / slots:.1f}; "
          f"model FLOPs/step {flops / args.steps / 1e12:.3f} TFLOP")
    if args.dry:
        print(cfg)
        return

    mm = matmul_peak(dtype, args.matmul_size)
    peak = peak or mm  # TPU: no datasheet default here, MFU is against the measured matmul
    print(f"matmul peak ({dtype.name}, measured): {mm / 1e12:.3f} TFLOP/s; --peak {peak / 1e12:.3f} TFLOP/s")
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    reference = first_pass(abstract_model(dataclasses.replace(cfg, attention="dense"))[0], mesh)
    runs = []
    for impl in impls:
        r = dict(framework="sftjax", name=impl)
        try:
            r["name"] = resolved = resolve(impl, head_dim=cfg.resolved_head_dim, seq_len=args.seq)
            r["name"] += "" if resolved == impl else f" ({impl})"
            r.update(bench_sftjax(args, impl, batches, mesh, reference))
            rel = abs(r["loss0"] - r["ref0"]) / abs(r["ref0"])
            print(f"  first batch, before any update: loss {r['name']} {r['loss0']:.6f} vs dense {r['ref0']:.6f}, "
                  f"rel diff {rel:.2e}; final hidden states max abs diff {r['hidden_err']:.2e} (of max abs)")
        except Exception as e:  # noqa: BLE001 - one failing implementation (OOM, unsupported) must not end the run
            r["error"] = short_error(e)
        runs.append(r)
        report(r, real, flops, peak, mm, args)
    if not args.skip_hf:
        for mode in ("eager", "compile") if args.hf_compile else ("eager",):
            r = dict(framework="hf", name=f"torch sdpa {mode}")
            try:
                r.update(bench_hf(args, cfg, batches, mode == "compile"))
            except Exception as e:  # noqa: BLE001
                r["error"] = short_error(e)
            runs.append(r)
            report(r, real, flops, peak, mm, args)
    table(runs, args)
    if args.json:
        setup = dict(vars(args), backend=backend, device=jax.devices()[0].device_kind, dtype=dtype.name,
                     real_tokens=real, model_flops=flops, peak=peak, matmul_peak=mm, params=param_count(cfg))
        Path(args.json).write_text(json.dumps(dict(setup=setup, runs=runs), indent=1))


def report(r, real, flops, peak, mm, args):
    """Adds the derived figures to a run and prints its line."""
    tag = f"{r['framework']} {r['name']}"
    if "error" in r:
        print(f"{tag}: FAILED {r['error']}")
        return
    s = r["seconds"]
    r.update(tokens_s=real / s, tflops=flops / s / 1e12, mfu=flops / s / peak, mfu_matmul=flops / s / mm)
    xla = f", XLA plan {gib(r['xla_bytes'])}" if r.get("xla_bytes") else ""
    layout = f" [{'scan' if args.scan else 'unrolled'}, remat {args.remat}]" if r["framework"] == "sftjax" else ""
    print(f"{tag}{layout}: {r['tokens_s']:,.1f} tokens/s, {r['tflops']:.3f} TFLOP/s, MFU {r['mfu']:.1%} (peak) / "
          f"{r['mfu_matmul']:.1%} (matmul), peak memory {gib(r['peak_bytes'])}{xla}, "
          f"{'compile' if r['framework'] == 'sftjax' else 'warm-up'} {r['compile_s']:.1f}s, loss {r['loss']:.4f}")


def table(runs, args):
    hf = {r["name"].split()[-1]: r["tokens_s"] for r in runs if r["framework"] == "hf" and "tokens_s" in r}
    cols = ["run", "tokens/s", "TFLOP/s", "MFU", "MFU mm", "peak mem", "compile s", "loss0 rel", "hidden err"] + \
        [f"x HF {m}" for m in hf]
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([f"{r['framework']} {r['name']}", "failed"] + [""] * (len(cols) - 2))
            continue
        rel = [f"{abs(r['loss0'] - r['ref0']) / abs(r['ref0']):.1e}", f"{r['hidden_err']:.1e}"] if "loss0" in r else \
            ["", ""]
        mem = gib(r["peak_bytes"]) if r["peak_bytes"] or not r.get("xla_bytes") else f"{gib(r['xla_bytes'])} (XLA)"
        ratios = [f"{r['tokens_s'] / v:.2f}" if r["framework"] == "sftjax" else "" for v in hf.values()]
        rows.append([f"{r['framework']} {r['name']}", f"{r['tokens_s']:,.1f}", f"{r['tflops']:.3f}", f"{r['mfu']:.1%}",
                     f"{r['mfu_matmul']:.1%}", mem, f"{r['compile_s']:.1f}"] + rel + ratios)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    print(f"\nsummary ({args.model}, seq {args.seq}, {args.rows} row(s)/step, {args.steps} steps)")
    for row in [cols] + rows:
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
