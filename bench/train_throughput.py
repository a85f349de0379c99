"""Training throughput: sftjax vs HF transformers + torch on the same packed batches, in one run.

Model: Llama d512, 8 layers, 8 heads, ffn 1408, vocab 32000, seq 2048, fp32, AdamW (58M parameters).
Batches: documents of realistic, varied SFT lengths (log-normal, median ~350 tokens, prompts masked), best-fit packed
into 2048-token rows; attention is segment-isolated in both frameworks (HF builds a block-diagonal mask from the
position_ids that reset per document). Prints tokens/s (real tokens), the ratio, sftjax MFU and compile time.

    python bench/train_throughput.py [--steps 5] [--rows 1] [--skip-hf] [--attention blockwise] [--block 256]
"""

from __future__ import annotations

import argparse
import itertools
import time

import grain
import jax
import numpy as np

from sftjax.config import ModelConfig, OptimConfig
from sftjax.data.packing import pack, shifted
from sftjax.model.flops import train_flops
from sftjax.parallel.mesh import make_mesh
from sftjax.train.loop import attended_pairs, global_batch_to_device
from sftjax.train.optimizer import make_optimizer
from sftjax.train.state import init_train_state
from sftjax.train.step import jit_train_step, make_train_step

SEQ = 2048


def model_config(args) -> ModelConfig:
    return ModelConfig(name="bench58m", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8,
                       num_heads=8, num_kv_heads=8, max_position_embeddings=SEQ, attention=args.attention,
                       attention_block=args.block, scan_layers=args.scan, remat=args.remat)


def packed_rows(n_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic documents with realistic SFT lengths, packed by sftjax's packer (shared by both frameworks)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_rows * 8):
        n = int(np.clip(rng.lognormal(np.log(350), 0.9), 16, SEQ + 1))
        prompt = int(n * rng.uniform(0.1, 0.6))
        docs.append(shifted(rng.integers(3, 32000, n).astype(np.int32), np.arange(n) >= prompt, 0))
    rows = list(itertools.islice(pack(grain.MapDataset.source(docs).to_iter_dataset(), SEQ), n_rows))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def bench_sftjax(args, batches):
    cfg = model_config(args)
    mesh = make_mesh((1, 1, 1))
    optimizer, schedule = make_optimizer(OptimConfig(lr=1e-4), 1000)
    graphdef, state, shardings = init_train_state(cfg, optimizer, mesh, seed=0)
    step = jit_train_step(make_train_step(graphdef, optimizer, schedule, grad_accum=1, num_sources=1, mesh=mesh),
                          shardings, mesh)
    device_batches = [global_batch_to_device(b, mesh, args.rows) for b in batches]
    t = time.perf_counter()
    compiled = step.lower(state, device_batches[0]).compile()
    compile_s = time.perf_counter() - t
    for b in device_batches[: args.warmup]:
        state, m = compiled(state, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for b in device_batches[args.warmup :]:
        state, m = compiled(state, b)
    loss = float(m["loss"])
    return time.perf_counter() - t, compile_s, loss


def bench_hf(args, batches):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=SEQ,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(b):
        ids = torch.from_numpy(b["input_ids"]).long()
        pos = torch.from_numpy(b["positions"]).long()
        tgt = torch.from_numpy(b["targets"]).long()
        mask = torch.from_numpy(b["loss_mask"])
        logits = model(input_ids=ids, position_ids=pos).logits
        loss = torch.nn.functional.cross_entropy(logits[mask].float(), tgt[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for b in batches[: args.warmup]:
        step(b)
    t = time.perf_counter()
    for b in batches[args.warmup :]:
        loss = step(b)
    return time.perf_counter() - t, float(loss.detach())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rows", type=int, default=1, help="2048-token rows per step")
    ap.add_argument("--attention", default="blockwise")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--scan", action="store_true", help="lax.scan over layers")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--peak", type=float, default=None, help="peak FLOP/s for MFU (default: the config default)")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    total = args.warmup + args.steps
    data = packed_rows(total * args.rows)
    batches = [{k: v[i * args.rows : (i + 1) * args.rows] for k, v in data.items()} for i in range(total)]
    timed = batches[args.warmup :]
    real = sum(int((b["segment_ids"] > 0).sum()) for b in timed)
    pairs = sum(attended_pairs(b["segment_ids"], b["positions"]) for b in timed)
    fill = real / (len(timed) * args.rows * SEQ)
    cfg = model_config(args)
    from sftjax.config import TrainConfig

    peak = args.peak or TrainConfig().peak_flops_per_device
    print(f"model: 58M Llama (d512, 8 layers, ffn 1408, vocab 32000), seq {SEQ}, fp32; {args.rows} row(s)/step, "
          f"{args.steps} timed steps after {args.warmup} warm-up; fill {fill:.1%}; "
          f"docs/row {np.mean([b['segment_ids'].max() for b in timed]):.1f}")
    jt, compile_s, jloss = bench_sftjax(args, batches)
    jtps = real / jt
    mfu = train_flops(cfg, real, pairs) / jt / peak
    print(f"sftjax  ({args.attention}, block {args.block}, {'scan' if args.scan else 'unrolled'}, remat "
          f"{args.remat}): {jtps:8.1f} tokens/s  MFU {mfu:.1%} (peak {peak / 1e9:.0f} GFLOP/s)  "
          f"compile {compile_s:.1f}s  loss {jloss:.3f}")
    if not args.skip_hf:
        ht, hloss = bench_hf(args, batches)
        htps = real / ht
        print(f"HF transformers + torch (sdpa):     {htps:8.1f} tokens/s  loss {hloss:.3f}")
        print(f"ratio sftjax / HF: {jtps / htps:.2f}x")


if __name__ == "__main__":
    main()
