"""Data pipeline throughput and fill: read -> template -> tokenize -> mix -> pack, on one core, against the tiny
model's training appetite at the same seq_len; fill against naive padding (one example per row). With
``--hygiene both`` (the default) the pipeline is built twice: without and with every hygiene stage (redact all PII
kinds, near-duplicate removal, decontamination against 1,000 synthetic eval items).

    .venv/bin/python bench/data_throughput.py [--examples 20000] [--seq-len 2048] [--steps 20] [--hygiene off|on|both]

The data: chat records (messages format) with log-normal lengths around a realistic SFT median (~350 tokens), one in
ten carrying an e-mail address and a phone number, one in twenty a copy of an earlier record, written to a temporary
JSONL; the tokenizer is SmolLM2's when the embedded model is cached, else the byte-level one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the model data train token loss mask stage source weight amount mixture general math code answer "
         "question because therefore which however example value result step batch").split()


def write_chat(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kept = []
    with open(path, "w") as f:
        for i in range(n):
            words = int(np.clip(rng.lognormal(np.log(260), 0.9), 8, 3000))
            prompt = max(2, int(words * rng.uniform(0.1, 0.6)))
            text = list(rng.choice(WORDS, words))
            if i % 10 == 3:
                text[prompt // 2] = f"write to user{i}@example.com or call +1 212-555-01{i % 100:02d}"
            if i % 20 == 19:  # a copy of an earlier record
                text, prompt = kept[i - 7]
            kept.append((text, prompt))
            f.write(json.dumps({"id": i, "messages": [
                {"role": "user", "content": " ".join(text[:prompt])},
                {"role": "assistant", "content": " ".join(text[prompt:])}]}) + "\n")


def tokenizer():
    from sftjax.ckpt.gguf import EMBEDDED_SUBDIR, REQUIRED_FILES, default_cache_dir
    from sftjax.data.tokenizer import load_tokenizer

    cached = default_cache_dir() / EMBEDDED_SUBDIR
    if all((cached / f).exists() for f in REQUIRED_FILES):
        return load_tokenizer(cached), "SmolLM2"
    return load_tokenizer(None), "byte-level"


def tiny_appetite(seq_len: int, rows: int, steps: int = 5) -> float:
    """Tokens/s the tiny model's train step consumes at this seq_len (all cores, as in training)."""
    import jax

    from sftjax.config import ModelConfig, OptimConfig
    from sftjax.parallel.mesh import make_mesh
    from sftjax.data.batch import to_device
    from sftjax.train.optimizer import make_optimizer
    from sftjax.train.state import init_train_state
    from sftjax.train.step import jit_train_step, make_train_step

    cfg = ModelConfig(attention_block=256)  # conf/model/tiny.yaml (vocab 512): the hungriest model we train
    mesh = make_mesh((1, 1, 1))
    optimizer, schedule = make_optimizer(OptimConfig(), 100)
    graphdef, state, shardings = init_train_state(cfg, optimizer, mesh, 0)
    step = jit_train_step(make_train_step(graphdef, optimizer, schedule, grad_accum=1, num_sources=1, mesh=mesh),
                          shardings, mesh)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, cfg.vocab_size, (rows, seq_len)).astype(np.int32),
             "targets": rng.integers(0, cfg.vocab_size, (rows, seq_len)).astype(np.int32),
             "loss_mask": np.ones((rows, seq_len), bool), "segment_ids": np.ones((rows, seq_len), np.int32),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
             "source_ids": np.zeros((rows, seq_len), np.int32)}
    device_batch = to_device(batch, mesh, rows)
    state, m = step(state, device_batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, device_batch)
    jax.block_until_ready(m)
    return rows * seq_len * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=8, help="rows per batch")
    ap.add_argument("--steps", type=int, default=20, help="batches drawn after construction")
    ap.add_argument("--hygiene", choices=["off", "on", "both"], default="both")
    args = ap.parse_args()

    appetite = tiny_appetite(args.seq_len, args.rows)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the pipeline gets one core
    tok, tok_name = tokenizer()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.hygiene]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat.jsonl"
        write_chat(path, args.examples, seed=0)
        for hygiene in modes:
            measure(path, tok, tok_name, args, appetite, hygiene)


def measure(path: Path, tok, tok_name: str, args, appetite: float, hygiene: bool) -> None:
    from sftjax.config import DataConfig, SourceConfig
    from sftjax.data.hygiene import EvalText
    from sftjax.data.pipeline import DataPipeline

    extra = {"redact": "all", "dedup": "near", "decontaminate": True} if hygiene else {}
    cfg = DataConfig(seq_len=args.seq_len, sources={"chat": SourceConfig(path=str(path), format="messages", **extra)})
    rng = np.random.default_rng(1)
    evals = [EvalText("synthetic", str(i), " ".join(rng.choice(WORDS, 40))) for i in range(1000)] if hygiene else None
    t0 = time.perf_counter()
    pipe = DataPipeline(cfg, tok, seed=0, global_rows=args.rows, max_steps=args.steps, log=lambda *_: None,
                        eval_texts=evals)
    build_s = time.perf_counter() - t0
    lengths = np.asarray([len(x["input_ids"]) for x in pipe.examples["chat"]])
    t0 = time.perf_counter()
    real = 0
    for _ in range(args.steps):
        _, batch, _ = pipe.next_batch()
        real += int((batch["segment_ids"] > 0).sum())
    pack_s = time.perf_counter() - t0
    tokens = int(lengths.sum())
    fill = real / (args.steps * args.rows * args.seq_len)
    naive = float(np.minimum(lengths, args.seq_len).mean() / args.seq_len)
    s = pipe.source_stats["chat"]
    print(f"\n== hygiene {'on (redact all, dedup near, decontaminate)' if hygiene else 'off'}")
    print(f"data: {args.examples} chat records, {tok_name} tokenizer, {tokens:,} tokens (median "
          f"{int(np.median(lengths))} per example), seq_len {args.seq_len}, one core")
    if hygiene:
        print(f"hygiene: {sum(s.redacted.values())} PII redacted ({s.redacted}), {s.duplicates} duplicates, "
              f"{s.contaminated} contaminated dropped")
    print(f"read + clean + template + tokenize: {tokens / build_s:12,.0f} tokens/s ({build_s:.1f} s)")
    print(f"mix + pack + batch:                 {real / pack_s:12,.0f} tokens/s ({args.steps} batches of {args.rows} "
          "rows)")
    end_to_end = 1 / (1 / (tokens / build_s) + 1 / (real / pack_s))
    print(f"end to end:                         {end_to_end:12,.0f} tokens/s")
    print(f"tiny model's training step:         {appetite:12,.0f} tokens/s -> the loader is "
          f"{end_to_end / appetite:.0f}x its appetite")
    print(f"fill: {fill:.1%} packed (best-fit, {cfg.packing_bins} bins) vs {naive:.1%} with one example per row")

if __name__ == "__main__":
    main()
