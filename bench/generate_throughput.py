"""Generation throughput: sftjax's jitted KV-cache decode vs HF transformers ``model.generate``, and how close each
decode step comes to the memory-bandwidth limit.

Model: --model 58m (the CPU reference of bench/train_throughput.py) or a conf/model preset's shapes, randomly
initialized; the same weights in both frameworks (sftjax's parameters copied into the HF model). Compute dtype is
model.dtype auto: bfloat16 on GPU/TPU (HF in bf16 too), float32 on CPU. Greedy, no EOS, so every row generates
exactly --new tokens after a --prompt-token prompt.

Per batch size:
- new tokens/s end to end (best of --repeats calls after the first, which compiles) and HF's on the same prompts;
- decode-only tokens/s: the time of a one-token call (prefill + first token) subtracted from the full call, over the
  --new - 1 decode steps;
- bytes moved per decode step: every weight a step reads in the compute dtype (all matmul weights, the output
  projection included; the input embedding is a lookup of one row per sequence) plus the KV cache a step reads (whole
  DECODE_CHUNK-slot chunks up to the newest slot, as the decoder does) and writes, plus the logits; per new token it
  is that over the batch;
- that traffic over the decode-only step time, as a fraction of the memory bandwidth measured at start (the larger
  of a copy and a read-only pass over one large array), and the tokens/s that bandwidth would allow.

    python bench/generate_throughput.py [--model 58m] [--batches 1,8,32] [--prompt 128] [--new 128] [--repeats 3]
        [--scan] [--skip-hf] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import MODELS, compute_dtype, gib, median_seconds, model_config
from flax import nnx

from sftjax.ckpt.hf import hf_config, tensor_plan
from sftjax.config import ModelConfig
from sftjax.generate import generate
from sftjax.generate.decode import DECODE_CHUNK
from sftjax.model import Llama
from sftjax.model.flops import matmul_params, param_count


def memory_bandwidth(n_bytes: int | None = None, repeats: int = 10) -> dict[str, float]:
    """Bytes/s this device's memory sustains on a large float32 array (2 GiB on accelerators, 512 MiB on CPU):
    ``copy`` reads and writes it once (an elementwise pass), ``read`` only reads it (a sum). A decode step mostly
    reads, and XLA on CPU runs elementwise passes on one thread, so the larger of the two is the limit used."""
    n_bytes = n_bytes or (2 if jax.default_backend() != "cpu" else 0.5) * 2**30
    x = jnp.ones(int(n_bytes) // 4, jnp.float32)
    out = {}
    for name, f, passes in (("copy", jax.jit(lambda a: a * 1.0001), 2), ("read", jax.jit(jnp.sum), 1)):
        jax.block_until_ready(f(x))
        out[name] = passes * x.nbytes / median_seconds(lambda: f(x), repeats)
    return out


def decode_step_bytes(cfg: ModelConfig, batch: int, prompt_slots: int, new: int) -> float:
    """Mean bytes one decode step moves, over the ``new - 1`` steps after the first token (see the module doc)."""
    width = jnp.dtype(compute_dtype()).itemsize
    weights = (matmul_params(cfg) + batch * cfg.hidden_size) * width  # + one embedding row per sequence
    kv_row = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.resolved_head_dim * width  # k and v, one slot, all layers
    budget = -(-new // 32) * 32  # generate rounds the budget to a multiple of 32
    total = prompt_slots + budget
    chunk = DECODE_CHUNK if total > DECODE_CHUNK else total
    steps = range(1, new)
    read_slots = [(((prompt_slots + i - 1) // chunk) + 1) * chunk for i in steps]  # chunks up to the newest slot
    kv = batch * kv_row * (np.mean(read_slots) + 1)  # + the slot written
    logits = batch * cfg.vocab_size * 4
    return float(weights + kv + logits)


def hf_model(cfg: ModelConfig, params: dict, device: str, dtype):
    """transformers' model for ``cfg`` holding sftjax's parameters (through sftjax.ckpt.hf's tensor plan)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="sdpa", dtype=torch.float32)
    sd = {}
    for m in tensor_plan(cfg):
        value = np.asarray(functools.reduce(operator.getitem, m.path, params), np.float32)
        for i, name in enumerate(m.hf_names):
            sd[name] = torch.from_numpy(np.array(m.to_hf(value[i] if m.stacked else value)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    model = model.to(device=device, dtype=getattr(torch, dtype.name)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def hf_generate(model, prompts, new: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out[:, ids.shape[1]:].tolist()


def best_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="58m", choices=MODELS)
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (best is reported)")
    ap.add_argument("--hf-repeats", type=int, default=None, help="timed HF calls (default: --repeats)")
    ap.add_argument("--scan", action="store_true", help="lax.scan over layers")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    hf_repeats = args.hf_repeats or args.repeats
    if args.new < 2:
        ap.error("--new must be at least 2 (decode-only time is the full call minus a one-token call)")

    cfg = model_config(args.model, max(2048, args.prompt + args.new + 64), scan_layers=args.scan)
    dtype = compute_dtype()
    graphdef, state = nnx.split(Llama(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    backend = jax.default_backend()
    bandwidth = memory_bandwidth()
    bw = max(bandwidth.values())
    print(f"model {args.model}: {param_count(cfg)['total'] / 1e6:,.1f}M parameters, d{cfg.hidden_size}, "
          f"{cfg.num_layers} layers, {cfg.num_heads}/{cfg.num_kv_heads} heads, vocab {cfg.vocab_size}; backend "
          f"{backend} ({jax.devices()[0].device_kind}), compute {dtype.name}; prompt {args.prompt}, {args.new} new "
          f"tokens, greedy, no EOS; best of {args.repeats} (sftjax) / {hf_repeats} (HF)")
    print(f"memory bandwidth (measured): copy {bandwidth['copy'] / 1e9:,.1f} GB/s, read {bandwidth['read'] / 1e9:,.1f} "
          f"GB/s; the limit below is {bw / 1e9:,.1f} GB/s; weights read per step "
          f"{gib(matmul_params(cfg) * dtype.itemsize)} ({dtype.name})")
    hf = None
    if not args.skip_hf:
        import torch

        hf = hf_model(cfg, params, "cuda" if torch.cuda.is_available() else "cpu", dtype)
        print(f"torch {torch.__version__} on {hf.device}, {torch.get_num_threads()} threads; jax {jax.__version__}")

    runs = []
    for b in batches:
        rng = np.random.default_rng(b)
        prompts = rng.integers(3, cfg.vocab_size, (b, args.prompt)).tolist()
        run = lambda n: generate((graphdef, params), prompts, n)  # noqa: E731
        t = time.perf_counter()
        ours = run(args.new)
        first = time.perf_counter() - t
        assert all(len(row) == args.new for row in ours)
        run(1)  # compiles the one-token program
        full, _ = best_time(lambda: run(args.new), args.repeats)
        one, _ = best_time(lambda: run(1), args.repeats)
        step_s = max(full - one, 1e-9) / (args.new - 1)
        prompt_slots = -(-args.prompt // 16) * 16
        step_bytes = decode_step_bytes(cfg, b, prompt_slots, args.new)
        r = dict(batch=b, tokens_s=b * args.new / full, decode_tokens_s=b / step_s, step_ms=1e3 * step_s,
                 first_call_s=first, bytes_per_step=step_bytes, bytes_per_token=step_bytes / b,
                 bandwidth_fraction=step_bytes / step_s / bw, bandwidth_limit_tokens_s=b * bw / step_bytes)
        line = (f"batch {b:3d}: sftjax {r['tokens_s']:10,.1f} tokens/s end to end, decode {r['decode_tokens_s']:10,.1f}"
                f" tokens/s ({r['step_ms']:.2f} ms/step; first call {first:.1f}s incl. compile); "
                f"{r['bytes_per_token'] / 2**20:,.1f} MiB/token, {r['bandwidth_fraction']:.0%} of the bandwidth "
                f"(limit {r['bandwidth_limit_tokens_s']:,.0f} tokens/s)")
        if hf is not None:
            if b == batches[0]:
                hf_generate(hf, prompts, 4)  # warm-up
            ht, theirs = best_time(lambda: hf_generate(hf, prompts, args.new), hf_repeats)
            r.update(hf_tokens_s=b * args.new / ht, ratio=(b * args.new / full) / (b * args.new / ht))
            line += f"\n           HF {r['hf_tokens_s']:10,.1f} tokens/s end to end; ratio {r['ratio']:.2f}x"
            if b == 1:
                agree = next((i for i, (x, y) in enumerate(zip(ours[0], theirs[0])) if x != y), args.new)
                r["greedy_agree"] = agree
                caveat = "" if dtype == jnp.float32 else "; in bf16 rounding may flip a near-tie"
                print(f"sanity (batch 1): greedy tokens {'match' if ours == theirs else 'DIFFER'} "
                      f"({agree}/{args.new} agree before the first difference{caveat})")
        print(line, flush=True)
        runs.append(r)
    if args.json:
        setup = dict(vars(args), backend=backend, device=jax.devices()[0].device_kind, dtype=dtype.name,
                     bandwidth=bandwidth, params=param_count(cfg))
        Path(args.json).write_text(json.dumps(dict(setup=setup, runs=runs), indent=1))


if __name__ == "__main__":
    main()
