"""Generation throughput: sftjax's jitted KV-cache decode vs HF transformers ``model.generate``, in one run.

Model: the randomly initialized 58M Llama of bench/train_throughput.py (d512, 8 layers, 8 heads, ffn 1408, vocab
32000), fp32 on the CPU, the same weights in both frameworks (sftjax's parameters copied into the HF model). Greedy,
no EOS, so every row generates exactly ``--new`` tokens after a ``--prompt``-token prompt. Per batch size prints new
tokens/s (best of ``--repeats`` timed calls after the first, which includes compilation for sftjax), the first call's
time, and the ratio; a sanity line says whether both frameworks produce the same greedy tokens at batch 1.

    python bench/generate_throughput.py [--batches 1,8,32] [--prompt 128] [--new 128] [--repeats 3] [--skip-hf]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from sftjax.ckpt.hf import _get, tensor_plan
from sftjax.config import ModelConfig
from sftjax.generate import generate
from sftjax.model import Llama

VOCAB = 32000


def model_config(args) -> ModelConfig:
    return ModelConfig(name="bench58m", vocab_size=VOCAB, hidden_size=512, intermediate_size=1408, num_layers=8,
                       num_heads=8, num_kv_heads=8, max_position_embeddings=2048, dtype="float32",
                       scan_layers=args.scan)


def prompts_for(batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed + batch)
    return rng.integers(3, VOCAB, (batch, length)).tolist()


def best_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def hf_model(cfg: ModelConfig, params: dict):
    """transformers' LlamaForCausalLM holding sftjax's parameters (through sftjax.ckpt.hf's tensor plan)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hcfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=False)
    model = LlamaForCausalLM._from_config(hcfg, attn_implementation="sdpa", dtype=torch.float32)
    sd = {}
    for m in tensor_plan(cfg):
        value = np.asarray(_get(params, m.path))
        for i, name in enumerate(m.hf_names):
            sd[name] = torch.from_numpy(np.array(m.to_hf(value[i] if m.stacked else value)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def hf_generate(model, prompts, new: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                             min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (best is reported)")
    ap.add_argument("--hf-repeats", type=int, default=None, help="timed HF calls (default: --repeats)")
    ap.add_argument("--scan", action="store_true", help="lax.scan over layers")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    hf_repeats = args.hf_repeats or args.repeats

    cfg = model_config(args)
    graphdef, state = nnx.split(Llama(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"model: {n_params / 1e6:.0f}M Llama (d512, 8 layers, ffn 1408, vocab {VOCAB}), fp32, "
          f"{jax.default_backend()}; prompt {args.prompt}, {args.new} new tokens, greedy, no EOS; "
          f"best of {args.repeats} (sftjax) / {hf_repeats} (HF)")
    hf = None if args.skip_hf else hf_model(cfg, params)
    if hf is not None:
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; jax {jax.__version__}")

    for b in batches:
        prompts = prompts_for(b, args.prompt)
        run = lambda: generate((graphdef, params), prompts, args.new)  # noqa: E731
        t = time.perf_counter()
        ours = run()
        first = time.perf_counter() - t
        assert all(len(row) == args.new for row in ours)
        jt, _ = best_time(run, args.repeats)
        jtps = b * args.new / jt
        line = (f"batch {b:3d}: sftjax {jtps:8.1f} tokens/s ({jt:.2f}s/call; first call {first:.1f}s, "
                f"~{first - jt:.1f}s compile)")
        if hf is not None:
            if b == batches[0]:
                hf_generate(hf, prompts, 4)  # warm-up
            ht, theirs = best_time(lambda: hf_generate(hf, prompts, args.new), hf_repeats)
            htps = b * args.new / ht
            line += f"  HF {htps:8.1f} tokens/s ({ht:.2f}s/call)  ratio {jtps / htps:.2f}x"
            if b == 1:
                same = ours == theirs
                agree = next((i for i, (x, y) in enumerate(zip(ours[0], theirs[0])) if x != y), args.new)
                print(f"sanity (batch 1): greedy tokens {'match' if same else 'DIFFER'} "
                      f"({agree}/{args.new} agree before the first difference)")
        print(line, flush=True)


if __name__ == "__main__":
    main()
