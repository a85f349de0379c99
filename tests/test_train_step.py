"""Exact loss normalization and sharding invariance of the jitted train step."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sftjax.config import ModelConfig, OptimConfig
from sftjax.parallel.mesh import make_mesh
from sftjax.data.batch import to_device
from sftjax.train.optimizer import make_optimizer
from sftjax.train.state import init_train_state
from sftjax.train.step import jit_train_step, loss_and_grads, make_train_step
from tests.helpers import packed_batch

MODEL = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
                    attention_block=32)
SEQ = 128


def ragged_batch(seed=0, rows=8):
    """Rows with different numbers and lengths of documents, so rows carry very different loss-token counts."""
    rng = np.random.default_rng(seed)
    layouts = []
    for r in range(rows):
        n_docs = 1 + r % 4
        cuts = rng.multinomial(SEQ - 10 * r, np.ones(n_docs) / n_docs)
        layouts.append([int(c) + 1 for c in cuts if c > 3] or [20])
    return packed_batch(rng, layouts, SEQ, vocab=512, sources=2)


@functools.lru_cache(maxsize=None)
def _loss_fn(mesh_shape, devices, grad_accum):
    mesh = make_mesh(mesh_shape, list(devices))
    optimizer, _ = make_optimizer(OptimConfig(), 10)
    graphdef, state, _ = init_train_state(MODEL, optimizer, mesh, seed=0)
    fn = jax.jit(functools.partial(loss_and_grads, graphdef, grad_accum=grad_accum, num_sources=2, mesh=mesh),
                 out_shardings=NamedSharding(mesh, PartitionSpec()))
    return mesh, state["params"], fn


def compute(mesh_shape, devices, batch, grad_accum):
    mesh, params, fn = _loss_fn(mesh_shape, tuple(devices), grad_accum)
    loss, grads, _ = fn(params, to_device(batch, mesh, batch["input_ids"].shape[0]))
    return float(loss), jax.tree.map(np.asarray, grads)


def rel_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(la, lb)))
    return num / np.sqrt(sum((y**2).sum() for y in lb))


@pytest.mark.slow
def test_loss_invariant_to_split(eight_devices):
    """batch x grad_accum x devices: every split of the same global batch gives the same loss and gradient."""
    batch = ragged_batch()
    ref_loss, ref_grads = compute((1, 1, 1), eight_devices[:1], batch, grad_accum=1)
    # a mean of per-row means would differ a lot from the exact token mean on these ragged rows
    assert ref_loss > 0
    splits = [
        ((1, 1, 1), 1, 2),
        ((1, 1, 1), 1, 8),
        ((8, 1, 1), 8, 1),
        ((2, 1, 1), 2, 4),
        ((2, 2, 2), 8, 2),
    ]
    for mesh_shape, n_dev, accum in splits:
        loss, grads = compute(mesh_shape, eight_devices[:n_dev], batch, grad_accum=accum)
        assert abs(loss - ref_loss) / ref_loss <= 1e-6, (mesh_shape, accum, loss, ref_loss)
        assert rel_diff(grads, ref_grads) <= 1e-6, (mesh_shape, accum, rel_diff(grads, ref_grads))


def test_loss_is_token_mean_not_mean_of_means(eight_devices):
    batch = ragged_batch(seed=1)
    loss, _ = compute((1, 1, 1), eight_devices[:1], batch, grad_accum=1)
    # recompute per-row losses by running each row alone: the token-weighted mean of them is the global loss
    per_row, counts = [], []
    for r in range(8):
        row = {k: v[r : r + 1] for k, v in batch.items()}
        per_row.append(compute((1, 1, 1), eight_devices[:1], row, grad_accum=1)[0])
        counts.append(int(row["loss_mask"].sum()))
    token_mean = np.dot(per_row, counts) / sum(counts)
    assert loss == pytest.approx(token_mean, rel=1e-5)
    assert abs(np.mean(per_row) - token_mean) > 1e-3  # the two notions really differ on this batch


def run_steps(mesh_shape, devices, batches, grad_accum=1, model=MODEL):
    mesh = make_mesh(mesh_shape, devices)
    optimizer, schedule = make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0), 10)
    graphdef, state, shardings = init_train_state(model, optimizer, mesh, seed=0)
    step = jit_train_step(make_train_step(graphdef, optimizer, schedule, grad_accum=grad_accum, num_sources=2,
                                          mesh=mesh), shardings, mesh)
    losses = []
    for b in batches:
        state, metrics = step(state, to_device(b, mesh, b["input_ids"].shape[0]))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state["params"]), state


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_equals_single(eight_devices, scan):
    """3 steps on 8 fake devices with fsdp=4, tensor=2 match 3 steps on one device."""
    model = ModelConfig(**{**MODEL.__dict__, "scan_layers": scan})
    batches = [ragged_batch(seed=s) for s in range(3)]
    single_losses, single_params, _ = run_steps((1, 1, 1), eight_devices[:1], batches, model=model)
    losses, params, state = run_steps((1, 4, 2), eight_devices, batches, model=model)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert rel_diff(params, single_params) < 1e-5
    # the parameters really are sharded: the MLP kernel is split over fsdp (embed) and tensor (mlp)
    layer = state["params"]["layers"]["mlp"] if scan else state["params"]["layers"][0]["mlp"]
    spec = layer["gate_proj"].sharding.spec
    assert "fsdp" in str(spec) and "tensor" in str(spec)
