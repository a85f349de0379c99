"""sftjax-serve under load: N concurrent streaming requests with prompt and output lengths drawn from log-normal
distributions; prints requests/s, output tokens/s, p50/p99 time to first token and inter-token latency, then plain
sftjax.generate on the same prompts (batches of serve.max_batch, each batch padded to its longest answer) for
comparison.

    .venv/bin/python bench/serve_throughput.py [--init-from embedded:smollm2-135m-instruct | --model 58m]
        [--requests 32] [--concurrency 8] [--max-batch 8] [--prompt-words 40] [--output-tokens 64]

``--model 58m`` serves the CPU reference shapes of bench/train_throughput.py, randomly initialized and written as an
HF directory under bench_out/ with SmolLM2's tokenizer (so its vocabulary is 49,152, not 32,000: 66M parameters).
A random model rarely emits EOS, so its answers run to their budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the price of the bundle is lower than the sum of its parts when customers buy two or more items".split()


def workload(n: int, prompt_words: int, output_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = int(np.clip(rng.lognormal(np.log(prompt_words), 0.6), 3, 8 * prompt_words))
        tokens = int(np.clip(rng.lognormal(np.log(output_tokens), 0.5), 4, 4 * output_tokens))
        out.append((" ".join(rng.choice(WORDS, words)), tokens))
    return out


def random_58m() -> str:
    """An HF directory of the 58M reference shapes (random weights) with the embedded default's tokenizer."""
    from _common import model_config
    from flax import nnx

    from sftjax.ckpt.gguf import embedded_default_dir
    from sftjax.ckpt.hf import save_hf
    from sftjax.model import Llama

    dst = ROOT / "bench_out" / "serve_58m"
    if (dst / "config.json").exists():
        return f"hf:{dst}"
    cfg = dataclasses.replace(model_config("58m", 2048), vocab_size=49152)  # the tokenizer's vocabulary
    params = nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(0))))
    save_hf(params, cfg, dst, tokenizer_dir=embedded_default_dir(log=lambda _: None), log=lambda _: None)
    return f"hf:{dst}"


def start(init_from: str, max_batch: int, name: str):
    proc = subprocess.Popen([sys.executable, "-m", "sftjax.cli.serve", f"model.init_from={init_from}",
                             "serve.port=0", f"serve.max_batch={max_batch}", f"serve.model_name={name}"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "/v1, max_batch" in line:  # then keep reading, so a full pipe never blocks the server's logging
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split(" on ", 1)[1].split(",")[0]
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def one(client, name: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps, tokens = [], 0
    stream = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": (stamps[0] - t0) if stamps else end - t0, "gaps": np.diff(stamps).tolist(), "tokens": tokens,
            "seconds": end - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init-from", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--model", choices=["58m"], help="serve randomly initialized reference shapes instead")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--prompt-words", type=int, default=40)
    ap.add_argument("--output-tokens", type=int, default=64)
    args = ap.parse_args()
    import openai

    if args.model == "58m":
        args.init_from = random_58m()
    work = workload(args.requests, args.prompt_words, args.output_tokens)
    proc, url = start(args.init_from, args.max_batch, "bench")
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        one(client, "bench", work[0][0], 4)  # compile the first shapes outside the measurement
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda w: one(client, "bench", *w), work))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    tokens = sum(r["tokens"] for r in results)
    ttft = np.asarray([r["ttft"] for r in results])
    gaps = np.asarray([g for r in results for g in r["gaps"]] or [float("nan")])
    print(f"sftjax-serve: {args.init_from}, {args.requests} requests, concurrency {args.concurrency}, max_batch "
          f"{args.max_batch}, prompts ~{args.prompt_words} words, outputs ~{args.output_tokens} tokens (greedy)")
    print(f"  {args.requests / wall:.2f} requests/s, {tokens / wall:,.1f} output tokens/s ({tokens} tokens in "
          f"{wall:.1f} s)")
    print(f"  time to first token p50 {np.percentile(ttft, 50) * 1e3:,.0f} ms, p99 {np.percentile(ttft, 99) * 1e3:,.0f} ms")
    print(f"  inter-token latency p50 {np.nanpercentile(gaps, 50) * 1e3:,.1f} ms, p99 "
          f"{np.nanpercentile(gaps, 99) * 1e3:,.1f} ms (between streamed text chunks)")
    plain(args, work)


def plain(args, work) -> None:
    """The same prompts through sftjax.generate in batches of max_batch (what sftjax-generate does)."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig
    from sftjax.generate import generate
    from sftjax.parallel.mesh import make_mesh

    m = load_model(args.init_from, ModelConfig(), make_mesh((1, 1, 1), devices=jax.devices()[:1]), log=lambda _: None)
    tok = m.tokenizer
    prompts = [list(tok(p)["input_ids"]) for p, _ in work]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    generate((m.graphdef, m.params), prompts[:1], 4, eos_ids=m.eos_ids, pad_id=pad)
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(work), args.max_batch):
        budget = max(n for _, n in work[i: i + args.max_batch])
        outs = generate((m.graphdef, m.params), prompts[i: i + args.max_batch], budget, eos_ids=m.eos_ids,
                        pad_id=pad)
        tokens += sum(min(len(o), n) for o, (_, n) in zip(outs, work[i: i + args.max_batch]))
    wall = time.perf_counter() - t0
    print(f"sftjax.generate, batches of {args.max_batch}: {len(work) / wall:.2f} requests/s, {tokens / wall:,.1f} "
          f"useful output tokens/s ({wall:.1f} s, compile excluded for the first shape only)")


if __name__ == "__main__":
    main()
