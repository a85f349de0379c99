"""The Llama-family model: packing isolation, layer scan/remat equivalence, preset shapes, parity with transformers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sftjax.config import ModelConfig, RopeScalingConfig, compose_config
from sftjax.model import Llama
from sftjax.model.flops import param_count
from sftjax.model.layout import abstract_model
from tests.helpers import packed_batch


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
                attention_block=32)
    base.update(kw)
    return ModelConfig(**base)


def logits_of(model, batch):
    return model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["positions"]))


@pytest.mark.parametrize("attention", ["dense", "blockwise", "sdpa"])
def test_packed_equals_unpacked(attention):
    """Each document inside a packed row gets the logits and token losses it gets alone (fp32, <= 1e-5)."""
    cfg = tiny(attention=attention, qkv_bias=True)
    model = Llama(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    lengths = [40, 23, 50]  # 37 + 22 + 49 = 110 slots of 128, so the row also carries padding
    packed = packed_batch(rng, [lengths], seq_len=128, vocab=512)
    packed_logits = np.asarray(logits_of(model, packed))[0]
    seg = packed["segment_ids"][0]
    for d in range(1, len(lengths) + 1):
        idx = np.nonzero(seg == d)[0]
        alone = {k: np.zeros_like(v) for k, v in packed.items()}
        n = len(idx)
        for k in packed:
            alone[k][0, :n] = packed[k][0, idx]
        alone["positions"][0, n:] = np.arange(128 - n)
        alone_logits = np.asarray(logits_of(model, alone))[0, :n]
        np.testing.assert_allclose(packed_logits[idx], alone_logits, atol=1e-5)
        lp = jax.nn.log_softmax(packed_logits[idx])
        la = jax.nn.log_softmax(alone_logits)
        tgt = packed["targets"][0, idx]
        np.testing.assert_allclose(np.take_along_axis(lp, tgt[:, None], 1), np.take_along_axis(la, tgt[:, None], 1),
                                   atol=1e-5)


@pytest.mark.slow
def test_scan_and_remat_match_unrolled():
    rng = np.random.default_rng(1)
    batch = packed_batch(rng, [[30, 60], [100]], seq_len=128, vocab=512)
    ref_model = Llama(tiny(), nnx.Rngs(3))
    ref = np.asarray(logits_of(ref_model, batch))
    _, ref_state = nnx.split(ref_model)
    for scan, remat in [(True, "none"), (False, "full"), (True, "dots"), (True, "minimal")]:
        model = Llama(tiny(scan_layers=scan, remat=remat), nnx.Rngs(3))
        np.testing.assert_allclose(np.asarray(logits_of(model, batch)), ref, atol=1e-5)
        if remat != "none":
            graphdef, state = nnx.split(model)

            def loss(state):
                return logits_of(nnx.merge(graphdef, state), batch).sum()

            assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(jax.grad(loss)(state)))


def test_minimal_remat_never_reruns_the_attention_kernel(monkeypatch):
    """remat=minimal saves the fused kernel's outputs: the gradient runs its forward once (dots would run it twice)."""
    monkeypatch.setenv("SFTJAX_PALLAS_INTERPRET", "1")
    batch = packed_batch(np.random.default_rng(2), [[30, 60], [100]], seq_len=128, vocab=512)
    counts = {}
    for remat in ("none", "minimal", "dots"):
        graphdef, state = nnx.split(Llama(tiny(scan_layers=True, remat=remat, attention="pallas_gpu"), nnx.Rngs(3)))
        grad = jax.grad(lambda st: logits_of(nnx.merge(graphdef, st), batch).sum())
        counts[remat] = str(jax.make_jaxpr(grad)(state)).count("jaxpr=sftjax_packed_attention_fwd")
    assert counts == {"none": 1, "minimal": 1, "dots": 2}


PUBLISHED = {  # parameter counts of the released checkpoints
    "smollm2_135m": 134_515_008,
    "llama1_7b": 6_738_415_616,
    "llama1_13b": 13_015_864_320,
    "llama1_33b": 32_528_943_616,
    "llama2_7b": 6_738_415_616,
    "llama2_13b": 13_015_864_320,
    "llama3_2_1b": 1_235_814_400,
    "llama3_8b": 8_030_261_248,
    "llama3_1_8b": 8_030_261_248,
    "mistral_7b": 7_248_023_552,
    "qwen2_0_5b": 494_032_768,
    "qwen2_7b": 7_615_616_512,
}


def preset(name: str) -> ModelConfig:
    return compose_config([f"model={name}", "run_dir=unused"]).model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_presets_match_published_shapes(name):
    cfg = preset(name)
    assert param_count(cfg)["total"] == PUBLISHED[name]
    if cfg.hidden_size <= 1024:  # building the abstract model is cheap, but skip the big ones for time
        _, state = abstract_model(cfg)
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.to_pure_dict(state))) == PUBLISHED[name]


def test_llama3_rope_scaling_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from sftjax.model.rope import inverse_frequencies

    hf = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, max_position_embeddings=131072,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    inv_hf, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    ours = inverse_frequencies(128, 500000.0, RopeScalingConfig())
    np.testing.assert_allclose(ours, inv_hf.numpy(), rtol=1e-6)


def _hf_state_dict(model: Llama, cfg: ModelConfig):
    """Our parameters in transformers' Llama/Qwen2 naming (test-only; the real converter is sftjax.ckpt.hf)."""
    import torch

    p = nnx.to_pure_dict(nnx.state(model))
    t = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    sd = {"model.embed_tokens.weight": t(p["embed"]), "model.norm.weight": t(p["final_norm"]["scale"])}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = t(np.asarray(p["lm_head"]).T)
    for i in range(cfg.num_layers):
        lp, pre = p["layers"][i], f"model.layers.{i}."
        a = lp["attn"]
        for name in ("q", "k", "v"):
            w = np.asarray(a[f"{name}_proj"])  # [d, heads, hd]
            sd[pre + f"self_attn.{name}_proj.weight"] = t(w.reshape(w.shape[0], -1).T)
            if cfg.qkv_bias:
                sd[pre + f"self_attn.{name}_proj.bias"] = t(np.asarray(a[f"{name}_bias"]).reshape(-1))
        o = np.asarray(a["o_proj"])
        sd[pre + "self_attn.o_proj.weight"] = t(o.reshape(-1, o.shape[-1]).T)
        for name in ("gate", "up", "down"):
            sd[pre + f"mlp.{name}_proj.weight"] = t(np.asarray(lp["mlp"][f"{name}_proj"]).T)
        sd[pre + "input_layernorm.weight"] = t(lp["input_norm"]["scale"])
        sd[pre + "post_attention_layernorm.weight"] = t(lp["post_attn_norm"]["scale"])
    return sd


@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_bias_tied", "llama3_scaled"])
def test_model_matches_transformers_logits(variant):
    torch = pytest.importorskip("torch")
    import transformers

    kw = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
              attention_block=32, rope_theta=10000.0, init_std=0.2)
    if variant == "qwen2_bias_tied":
        kw.update(qkv_bias=True, tie_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)
    if variant == "llama3_scaled":
        kw.update(rope_theta=500000.0, rope_scaling=RopeScalingConfig(factor=8.0, original_max_position_embeddings=32))
    cfg = ModelConfig(**kw)
    model = Llama(cfg, nnx.Rngs(0))
    if variant == "qwen2_bias_tied":  # non-zero biases so they are really exercised
        for name in ("q_bias", "k_bias", "v_bias"):
            for layer in model.layers:
                var = getattr(layer.attn, name)
                var[...] = jax.random.normal(jax.random.key(7), var.shape) * 0.5
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                  tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=2048)
    if variant == "qwen2_bias_tied":
        hf_cfg = transformers.Qwen2Config(**common)
        hf_model = transformers.Qwen2ForCausalLM(hf_cfg)
    else:
        if cfg.rope_scaling:
            common["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    missing, unexpected = hf_model.load_state_dict(_hf_state_dict(model, cfg), strict=False)
    expected_missing = {"lm_head.weight"} if cfg.tie_embeddings else set()
    assert not unexpected and set(missing) <= expected_missing, (missing, unexpected)
    hf_model.eval()
    ids = np.random.default_rng(0).integers(0, 512, (2, 64)).astype(np.int32)
    with torch.no_grad():
        ref = hf_model(torch.from_numpy(ids).long()).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(64), (2, 64))))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    rng = np.random.default_rng(2)
    batch = packed_batch(rng, [[60, 60]], seq_len=128, vocab=512)
    ref = np.asarray(logits_of(Llama(tiny(dtype="float32"), nnx.Rngs(0)), batch))
    model = Llama(tiny(dtype="bfloat16"), nnx.Rngs(0))
    out = logits_of(model, batch)
    assert out.dtype == jnp.bfloat16
    assert model.embed[...].dtype == jnp.float32  # parameters stay float32
    real = batch["segment_ids"] > 0
    np.testing.assert_allclose(np.asarray(out, np.float32)[real], ref[real], atol=0.05)
