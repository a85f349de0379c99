"""Learning-rate schedule values and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sftjax.config import ModelConfig, OptimConfig
from sftjax.model import Llama
from sftjax.train.optimizer import decay_mask, lr_schedule, make_optimizer


def test_schedule_values_at_warmup_end_mid_and_end():
    cfg = OptimConfig(lr=2e-5, warmup_ratio=0.1, min_lr_ratio=0.1)
    sched = lr_schedule(cfg, total_steps=100)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(1e-5)  # halfway through the 10 warm-up steps
    assert float(sched(10)) == pytest.approx(2e-5)  # warm-up end = peak
    # cosine midpoint between step 10 and 100: halfway between peak and floor
    assert float(sched(55)) == pytest.approx(2e-6 + (2e-5 - 2e-6) * 0.5, rel=1e-5)
    assert float(sched(100)) == pytest.approx(2e-6)  # end = lr * min_lr_ratio
    values = [float(sched(i)) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warm-up


def test_schedule_without_warmup_starts_at_peak():
    sched = lr_schedule(OptimConfig(lr=1e-3, warmup_ratio=0.0, min_lr_ratio=0.0), total_steps=10)
    assert float(sched(0)) == pytest.approx(1e-3)
    assert float(sched(10)) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_mask_excludes_norms_and_biases():
    model = Llama(ModelConfig(qkv_bias=True, num_layers=1), nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    mask = decay_mask(params)
    flat = {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["embed"] and flat["lm_head"]
    assert flat["layers/0/attn/q_proj"] and flat["layers/0/mlp/down_proj"]
    assert not flat["final_norm/scale"] and not flat["layers/0/input_norm/scale"]
    assert not flat["layers/0/attn/q_bias"] and not flat["layers/0/attn/v_bias"]


@pytest.mark.slow
def test_weight_decay_applies_only_where_masked():
    """With zero gradients, AdamW changes only decayed parameters (by lr * wd * p)."""
    model = Llama(ModelConfig(qkv_bias=True, num_layers=1), nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    params["layers"][0]["attn"]["q_bias"] = jnp.ones_like(params["layers"][0]["attn"]["q_bias"])
    opt, _ = make_optimizer(OptimConfig(lr=0.1, warmup_ratio=0.0, min_lr_ratio=1.0, weight_decay=0.1), 10)
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["embed"], params["embed"] * (1 - 0.1 * 0.1), rtol=1e-6)
    np.testing.assert_array_equal(new["final_norm"]["scale"], params["final_norm"]["scale"])
    np.testing.assert_array_equal(new["layers"][0]["attn"]["q_bias"], params["layers"][0]["attn"]["q_bias"])


def test_gradient_clipping_applies_before_adam():
    """b1=b2=0 and eps=1 make Adam's update -lr * g / (|g| + 1), which reveals the gradient's scale: with clipping to
    norm 1 the gradient (30, 40) enters as (0.6, 0.8)."""
    def update(clip):
        opt, _ = make_optimizer(OptimConfig(lr=1.0, warmup_ratio=0.0, min_lr_ratio=1.0, weight_decay=0.0,
                                            grad_clip=clip, b1=0.0, b2=0.0, eps=1.0), 10)
        params = {"w": jnp.zeros(2)}
        updates, _ = opt.update({"w": jnp.array([30.0, 40.0])}, opt.init(params), params)
        return np.asarray(updates["w"])

    np.testing.assert_allclose(update(1.0), [-0.6 / 1.6, -0.8 / 1.8], rtol=1e-6)
    np.testing.assert_allclose(update(0.0), [-30 / 31, -40 / 41], rtol=1e-6)


def test_stage_with_its_own_lr_restarts_the_schedule():
    from sftjax.config import StageConfig
    from sftjax.train.optimizer import staged_schedule

    base = OptimConfig(lr=1e-3, warmup_ratio=0.0, min_lr_ratio=0.0)
    stages = [StageConfig(name="a"), StageConfig(name="b", lr=1e-4, warmup_ratio=0.5)]
    sched = staged_schedule(base, [10, 10], [s.optim(base) for s in stages])
    assert float(sched(0)) == pytest.approx(1e-3) and float(sched(9)) < 1e-4  # stage a: cosine from 1e-3 to ~0
    assert float(sched(10)) == pytest.approx(0.0, abs=1e-12)  # stage b warms up again from 0 ...
    assert float(sched(15)) == pytest.approx(1e-4, rel=1e-5)  # ... to its own peak at half its length
    # no stage sets a schedule: one schedule over the whole run
    one = staged_schedule(base, [10, 10], [None, None])
    assert float(one(10)) == pytest.approx(float(lr_schedule(base, 20)(10)))
