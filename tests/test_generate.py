"""KV-cache generation: cached greedy decode equals full recompute and transformers' generate, EOS handling, sampling,
and sharded generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sftjax.config import ModelConfig
from sftjax.generate import decode, generate, sample_logits
from sftjax.model import Llama

LENGTHS = (5, 17, 40)  # 40 > the attention block, so the prefill runs the blockwise kernel over several tiles


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
                attention_block=32, init_std=0.2)  # 0.2: logits far from flat, so argmax is not decided by rounding
    base.update(kw)
    return ModelConfig(**base)


def make_model(cfg: ModelConfig, seed: int = 0) -> Llama:
    model = Llama(cfg, nnx.Rngs(seed))
    if cfg.qkv_bias:  # biases start at zero; make them matter
        _, state = nnx.split(model)
        for path, var in nnx.to_flat_state(state):
            if str(path[-1]).endswith("_bias"):
                var[...] = jax.random.normal(jax.random.key(len(path)), var.shape) * 0.5
    return model


def prompts_of(lengths=LENGTHS, seed=0, vocab=512):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def recompute_greedy(model: Llama, prompts, steps: int, width: int = 64):
    """The reference: every step runs the full forward over right-padded rows and takes the argmax at the last token."""
    forward = jax.jit(lambda ids, seg: model(ids, seg, jnp.broadcast_to(jnp.arange(width), ids.shape)))
    rows = [list(p) for p in prompts]
    for _ in range(steps):
        ids = np.zeros((len(rows), width), np.int32)
        seg = np.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)], seg[r, : len(row)] = row, 1
        logits = np.asarray(forward(jnp.asarray(ids), jnp.asarray(seg)))
        for r, row in enumerate(rows):
            row.append(int(np.argmax(logits[r, len(row) - 1])))
    return [row[len(p):] for row, p in zip(rows, prompts)]


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("variant", ["gqa", "mha_qkv_bias_tied"])
def test_cached_greedy_equals_full_recompute(scan, variant):
    kw = dict(num_kv_heads=4, qkv_bias=True, tie_embeddings=True) if variant == "mha_qkv_bias_tied" else {}
    model = make_model(tiny(scan_layers=scan, **kw))
    prompts = prompts_of()
    assert generate(model, prompts, 20) == recompute_greedy(model, prompts, 20)


@pytest.mark.parametrize("scan", [False, True])
def test_decode_reads_the_cache_in_chunks_up_to_the_newest_slot(scan, monkeypatch):
    """With 16-slot chunks, a 20-token continuation of 40-token prompts spans 4 chunks (the later ones skipped while
    still empty): the same tokens as the full recompute."""
    monkeypatch.setattr(decode, "DECODE_CHUNK", 16)
    model = make_model(tiny(scan_layers=scan))
    prompts = prompts_of()
    assert generate(model, prompts, 20) == recompute_greedy(model, prompts, 20)


def test_decode_weights_are_cast_once_to_the_compute_dtype():
    """bf16 compute: the decode loop holds no float32 weight (each step reads every weight at 2 bytes)."""
    model = make_model(tiny(dtype="bfloat16"))
    graphdef, state = nnx.split(model)
    ids, start = decode.left_pad(prompts_of(), 0, 32, 16)
    text = decode.generate_padded.lower(
        nnx.to_pure_dict(state), ids, start, np.asarray([-1], np.int32), np.int32(8), np.int32(0), np.float32(1.0),
        np.float32(1.0), jax.random.key(0), static=decode.StaticGraph(graphdef, model.cfg), budget=32, greedy=True,
        top_k=0, use_top_p=False, mesh=None).as_text()
    loop = text[text.index("stablehlo.while"):]
    assert "tensor<64x176xf32>" not in loop and "tensor<64x176xbf16>" in loop  # the MLP's gate weight


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_bias_tied"])
def test_greedy_matches_transformers_generate(variant):
    torch = pytest.importorskip("torch")
    import transformers

    from tests.test_model import _hf_state_dict

    qwen = variant == "qwen2_bias_tied"
    cfg = tiny(qkv_bias=qwen, tie_embeddings=qwen, rope_theta=1e6 if qwen else 10000.0)
    model = make_model(cfg)
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                  tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=2048)
    hf_cls, hf_cfg_cls = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if qwen
                          else (transformers.LlamaForCausalLM, transformers.LlamaConfig))
    hf = hf_cls(hf_cfg_cls(**common))
    missing, unexpected = hf.load_state_dict(_hf_state_dict(model, cfg), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.eval()
    hf.generation_config.eos_token_id = None  # run all 32 steps, as we do with no eos_ids
    hf.generation_config.pad_token_id = 0
    prompts = prompts_of((3, 21, 50), seed=1)
    expected = []
    with torch.no_grad():
        for p in prompts:  # one prompt at a time: no padding on the transformers side
            out = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)
            expected.append(out[0, len(p):].tolist())
    assert all(len(e) == 32 for e in expected)
    assert generate(model, prompts, 32) == expected


def _first_eos_absent_elsewhere(rows, min_index=3):
    """A token row 0 produces at index >= min_index (and not before) that row 1 never produces."""
    for i, tok in enumerate(rows[0]):
        if i >= min_index and tok not in rows[0][:i] and tok not in rows[1]:
            return i, tok
    raise AssertionError("no suitable eos token in this random model; change the seed")


def test_eos_stops_a_row_while_others_continue(monkeypatch):
    model = make_model(tiny())
    prompts = prompts_of()
    full = generate(model, prompts, 24)
    cut, eos = _first_eos_absent_elsewhere(full)
    other = full[2][5]  # a second eos id
    got = generate(model, prompts, 24, eos_ids={eos, other}, pad_id=7)

    def until_eos(row):
        stops = [i for i, t in enumerate(row) if t in (eos, other)]
        return row[: stops[0]] if stops else row

    assert got == [until_eos(row) for row in full]  # every row stops before its own first eos, eos excluded
    assert len(got[0]) <= cut < len(got[1]) == 24
    assert len(got[2]) <= 5

    # The loop stops as soon as every row is done, not at max_new_tokens.
    steps = []
    original = decode.generate_padded

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        steps.append(int(out[2]))
        return out

    monkeypatch.setattr(decode, "generate_padded", spy)
    each_eos = {row[2] for row in full}  # every row's third token is an eos
    got = generate(model, prompts, 24, eos_ids=each_eos)
    assert all(len(row) <= 2 for row in got) and steps == [3]
    assert generate(model, prompts, 0) == [[], [], []]
    assert generate(model, prompts, 1) == [row[:1] for row in full]


def test_sampling_is_seeded_and_degenerates_to_greedy():
    model = make_model(tiny(scan_layers=True))
    prompts = prompts_of()
    greedy = generate(model, prompts, 16)
    a = generate(model, prompts, 16, temperature=1.0, seed=3)
    assert a == generate(model, prompts, 16, temperature=1.0, seed=3)
    assert a == generate(model, prompts, 16, temperature=1.0, seed=jax.random.key(3))
    assert a != generate(model, prompts, 16, temperature=1.0, seed=4)
    assert a != greedy
    assert generate(model, prompts, 16, temperature=0.0, seed=5) == greedy
    assert generate(model, prompts, 16, temperature=1e-4, seed=5) == greedy
    assert generate(model, prompts, 16, temperature=1.5, top_k=1, seed=5) == greedy
    assert generate(model, prompts, 16, temperature=1.5, top_p=1e-6, seed=5) == greedy


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = np.array([[0.05, 0.5, 0.02, 0.3, 0.1, 0.03]])
    logits = jnp.log(jnp.asarray(probs))
    keys = jax.random.split(jax.random.key(0), 2000)

    def draws(**kw):
        return np.asarray(jax.vmap(lambda k: sample_logits(logits, k, 1.0, **kw)[0])(keys))

    assert set(draws(top_k=3).tolist()) == {1, 3, 4}
    assert set(draws(top_p=0.75).tolist()) == {1, 3}  # 0.5 < 0.75 before token 3, 0.8 >= 0.75 before token 4
    assert set(draws(top_k=3, top_p=0.95).tolist()) == {1, 3, 4}
    plain = draws()
    assert set(plain.tolist()) == set(range(6))
    np.testing.assert_allclose(np.bincount(plain, minlength=6) / len(plain), probs[0], atol=0.03)


def test_sharded_generation_equals_single_device(eight_devices):
    from sftjax.parallel.mesh import make_mesh
    from sftjax.model.layout import param_shardings

    cfg = tiny(scan_layers=True)
    model = make_model(cfg)
    prompts = prompts_of((5, 17, 40, 9))
    expected = generate(model, prompts, 12)
    mesh = make_mesh((2, 2, 2))
    graphdef, state = nnx.split(model)
    params = jax.device_put(nnx.to_pure_dict(state), param_shardings(state, mesh))
    assert generate((graphdef, params), prompts, 12, mesh=mesh) == expected
