"""One packed attention layer, forward + backward, for every implementation this backend can run: which is fastest,
how far each is from an exact reference, and what it costs in memory, before it is blamed or praised inside a model.

Inputs: documents with realistic SFT lengths (log-normal, median ~350 tokens), packed into rows of each --seqs
length; rows = --tokens / seq, so every length does the same token count (default b4x2048 and b1x8192). q, k, v are
random in the compute dtype (bfloat16 on GPU/TPU, float32 on CPU); the loss is a fixed random weighting of the output
summed over real tokens (padding excluded), so that dq, dk and dv are all exercised.

Per implementation: median ms of jax.value_and_grad over --repeats (after a compiling warm-up call), model TFLOP/s
(12·heads·head_dim·attended pairs, no recomputation counted), the max abs error of the output (real tokens) and of
dq, dk, dv against dense attention in float32 at highest matmul precision (relative to the reference's max abs), and
memory: XLA's plan for the executable and the device's peak where the backend reports it. One that fails (refused by
resolve(), out of memory, ...) prints its error on one line and the rest still run.

    python bench/attention.py [--seqs 2048,8192] [--tokens 8192] [--heads 32] [--kv-heads 8] [--head-dim 64]
        [--repeats 10] [--block 256] [--impls dense,blockwise,...] [--interpret]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from _common import compute_dtype, device_peak_bytes, gib, median_seconds, packed_rows, short_error, xla_bytes

from sftjax.config import ConfigError
from sftjax.model.attention import IMPLEMENTATIONS, attention, resolve
from sftjax.model.flops import attended_pairs


def loss_fn(impl, seg, pos, w, real, block):
    def f(q, k, v):
        out = attention(q, k, v, seg, pos, causal=True, impl=impl, block=block)
        return jnp.sum(jnp.where(real, out.astype(jnp.float32) * w, 0.0))

    return jax.value_and_grad(f, argnums=(0, 1, 2))


def rel_err(x, ref) -> float:
    return float(jnp.abs(x.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())


def bench_seq(args, seq, dtype):
    rows = args.tokens // seq
    data = packed_rows(rows, seq, vocab=1000)
    seg, pos = jnp.asarray(data["segment_ids"]), jnp.asarray(data["positions"])
    pairs = attended_pairs(data["segment_ids"], data["positions"])
    flops = 12.0 * args.heads * args.head_dim * pairs
    ks = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(ks[0], (rows, seq, args.heads, args.head_dim), jnp.float32)
    k = jax.random.normal(ks[1], (rows, seq, args.kv_heads, args.head_dim), jnp.float32)
    v = jax.random.normal(ks[2], (rows, seq, args.kv_heads, args.head_dim), jnp.float32)
    w = jax.random.normal(ks[3], q.shape, jnp.float32)
    real = (seg > 0)[:, :, None, None]
    print(f"\nseq {seq}: b{rows}x{seq}, {args.heads}/{args.kv_heads} heads, head_dim {args.head_dim}, {dtype.name}; "
          f"docs/row {float(data['segment_ids'].max(axis=1).mean()):.1f}, attended pairs {pairs / rows / seq**2:.1%} "
          f"of seq^2 per row")
    ref = None
    try:
        with jax.default_matmul_precision("highest"):  # no TF32 in the reference on GPU
            ref_out = jax.jit(lambda q, k, v: attention(q, k, v, seg, pos, impl="dense"))(q, k, v)
            _, ref_grads = jax.jit(loss_fn("dense", seg, pos, w, real, args.block))(q, k, v)
            ref = (jnp.where(real, ref_out, 0.0),) + ref_grads
        jax.block_until_ready(ref)
    except Exception as e:  # noqa: BLE001
        print(f"  float32 dense reference failed ({short_error(e)}); errors are n/a")
    qc, kc, vc = (x.astype(dtype) for x in (q, k, v))
    del q, k, v
    results = []
    for impl in args.impls:
        name = impl + (" (interpret)" if args.interpret and impl in ("pallas_gpu", "splash") else "")
        r = dict(seq=seq, rows=rows, impl=name)
        try:
            resolve(impl, head_dim=args.head_dim, seq_len=seq)
            fn = jax.jit(loss_fn(impl, seg, pos, w, real, args.block))
            t = time.perf_counter()
            compiled = fn.lower(qc, kc, vc).compile()
            r["compile_s"] = time.perf_counter() - t
            _, grads = jax.block_until_ready(compiled(qc, kc, vc))  # the warm-up call
            r["ms"] = 1e3 * median_seconds(lambda: compiled(qc, kc, vc), args.repeats)
            r["tflops"] = flops / r["ms"] * 1e3 / 1e12
            r["xla_bytes"], r["peak_bytes"] = xla_bytes(compiled), device_peak_bytes()
            if ref is not None:
                out = jax.jit(lambda q, k, v: attention(q, k, v, seg, pos, impl=impl, block=args.block))(qc, kc, vc)
                r.update({f"err_{n}": rel_err(x, y) for n, x, y in
                          zip(("out", "dq", "dk", "dv"), (jnp.where(real, out, 0),) + tuple(grads), ref)})
            del grads, compiled
            errs = ("  err " + " ".join(f"{n} {r['err_' + n]:.1e}" for n in ("out", "dq", "dk", "dv"))
                    if "err_out" in r else "  err n/a")
            print(f"  {name:24s} {r['ms']:10.2f} ms  {r['tflops']:8.3f} TFLOP/s{errs}  XLA plan {gib(r['xla_bytes'])}"
                  f", device peak {gib(r['peak_bytes'])}, compile {r['compile_s']:.1f}s")
        except ConfigError as e:
            r["error"] = "skipped: " + str(e).replace("config key 'model.attention': ", "").split("; use")[0]
            print(f"  {name:24s} {r['error']}")
        except Exception as e:  # noqa: BLE001 - e.g. dense out of memory at 8192: report and go on
            r["error"] = short_error(e)
            print(f"  {name:24s} FAILED {r['error']}")
        results.append(r)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", default="2048,8192")
    ap.add_argument("--tokens", type=int, default=8192, help="rows x seq, the same at every length")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--block", type=int, default=256, help="blockwise attention tile")
    ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    ap.add_argument("--interpret", action="store_true",
                    help="run the Pallas kernels (pallas_gpu, splash) in interpret mode: tiny shapes only")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args()
    args.impls = args.impls.split(",")
    if args.interpret:
        os.environ["SFTJAX_PALLAS_INTERPRET"] = "1"  # read by resolve() and the kernels at trace time
    dtype = compute_dtype()
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); XLA plan = arguments + outputs + "
          f"temporaries of the value_and_grad executable; device peak is the process's high-water mark so far")
    results = [r for seq in map(int, args.seqs.split(",")) for r in bench_seq(args, seq, dtype)]
    print(f"\nsummary (ms = forward+backward, median of {args.repeats}; errors relative to max |float32 dense|)")
    cols = ["shape", "impl", "ms", "TFLOP/s", "err out", "err dq", "err dk", "err dv", "XLA plan"]
    rows = []
    for r in results:
        if "ms" not in r:
            rows.append([f"b{r['rows']}x{r['seq']}", r["impl"], "-", "", "", "", "", "",
                         "skipped" if r["error"].startswith("skipped") else "failed"])
            continue
        errs = [f"{r['err_' + n]:.1e}" if f"err_{n}" in r else "n/a" for n in ("out", "dq", "dk", "dv")]
        rows.append([f"b{r['rows']}x{r['seq']}", r["impl"], f"{r['ms']:.2f}", f"{r['tflops']:.3f}"] + errs +
                    [gib(r["xla_bytes"])])
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    for row in [cols] + rows:
        print("  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    if args.json:
        setup = dict(vars(args), backend=jax.default_backend(), device=jax.devices()[0].device_kind, dtype=dtype.name)
        Path(args.json).write_text(json.dumps(dict(setup=setup, runs=results), indent=1))


if __name__ == "__main__":
    main()
