"""XLA fp32 matmul peak on this machine: the default `train.peak_flops_per_device` for MFU on CPU.

    python bench/matmul_peak.py [--size 2048] [--repeats 20]
"""

import argparse
import time

import jax
import jax.numpy as jnp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)")
    best_overall = 0.0
    for n in (1024, 2048, 4096):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        best = float("inf")
        for _ in range(args.repeats if n < 4096 else max(3, args.repeats // 4)):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t)
        gflops = 2 * n**3 / best / 1e9
        best_overall = max(best_overall, gflops)
        print(f"fp32 matmul {n}x{n}: {gflops:,.0f} GFLOP/s (best of repeats)")
    print(f"peak: {best_overall:,.0f} GFLOP/s -> train.peak_flops_per_device={best_overall * 1e9:.3g}")


if __name__ == "__main__":
    main()
