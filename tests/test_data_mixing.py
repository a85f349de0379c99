"""Amounts, weighted mixing and Grain packing: nested seeded subsets, realized weights, fill, exact resume."""

import collections

import numpy as np
import pytest

from sftjax.config import ConfigError
from sftjax.data.mixing import MixEntry, example_count, select, stage_stream
from sftjax.data.packing import fill, pack, shifted

EOS = 2


def make_examples(n: int, source: int, rng, median: float = 350.0, seq_len: int = 2048):
    out = []
    for _ in range(n):
        k = int(np.clip(rng.lognormal(np.log(median), 0.9), 8, seq_len + 1))
        tokens = rng.integers(3, 32000, k).astype(np.int32)
        tokens[-1] = EOS
        out.append(shifted(tokens, np.arange(k) >= int(k * 0.3), source))
    return out


@pytest.fixture(scope="module")
def sources():
    rng = np.random.default_rng(0)
    return {"math": make_examples(1500, 0, rng, 200.0), "code": make_examples(800, 1, rng, 600.0),
            "general": make_examples(400, 2, rng)}


def test_mixture_matches_weights(sources):
    mix = {"math": MixEntry(weight=0.5), "code": MixEntry(weight=0.3), "general": MixEntry(weight=0.2)}
    stream, info = stage_stream(sources, mix, seed=0, where="data.stages.0.mix")
    counts = collections.Counter(int(stream[i]["source_ids"][0]) for i in range(2000))
    assert [counts[s] / 2000 for s in range(3)] == pytest.approx([0.5, 0.3, 0.2], abs=0.002)
    assert {k: v["weight"] for k, v in info.items()} == pytest.approx({"math": 0.5, "code": 0.3, "general": 0.2})
    # weights as token shares: long examples are drawn less often, tokens land on the weights
    stream, _ = stage_stream(sources, mix, seed=0, where="w", weight_by="tokens")
    tokens = collections.Counter()
    for i in range(6000):
        ex = stream[i]
        tokens[int(ex["source_ids"][0])] += len(ex["input_ids"])
    total = sum(tokens.values())
    assert [tokens[s] / total for s in range(3)] == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


def test_default_weights_pool_the_data_and_epochs_see_each_example(sources):
    mix = {"math": MixEntry(amount="1/4"), "general": MixEntry(amount=1)}
    selected = 375 + 400
    stream, info = stage_stream(sources, mix, seed=3, where="w", total=2 * selected)  # two epochs
    assert len(stream) == 2 * selected and info["math"]["selected"] == 375
    seen = collections.Counter(id(stream[i]["input_ids"]) for i in range(len(stream)))
    # proportional weights: every selected example comes round about twice (sources interleave exactly)
    assert len(seen) > 0.95 * selected and max(seen.values()) <= 3


def test_amounts_are_nested_and_seeded():
    fractions = ["1/256", "1/64", "1/16", "1/4", 1]
    subsets = [set(select(10_000, example_count(a, 10_000, "k"), seed=5, name="math")) for a in fractions]
    assert [len(s) for s in subsets] == [39, 156, 625, 2500, 10_000]
    assert all(a < b for a, b in zip(subsets, subsets[1:]))  # 1/256 ⊂ 1/64 ⊂ ... ⊂ 1
    assert set(select(10_000, 39, seed=5, name="math")) == subsets[0]  # seeded: the same again
    assert set(select(10_000, 39, seed=6, name="math")) != subsets[0]
    assert set(select(10_000, 39, seed=5, name="code")) != subsets[0]  # each source its own permutation
    assert example_count(250, 10_000, "k") == 250 and example_count(0.5, 3, "k") == 2 and example_count("1/1000", 10, "k") == 1


@pytest.mark.parametrize("amount, expected", [
    (0, "fraction in (0, 1]"), (-1, "fraction in (0, 1]"), (1.5, "fraction in (0, 1]"), ("abc", "fraction like 1/16"),
    (20_000, "a count between 1 and the source's 10000 examples"), (True, "fraction like 1/16"),
])
def test_bad_input_is_reported_amounts(amount, expected):
    with pytest.raises(ConfigError, match="data.stages.0.mix.math.amount") as e:
        example_count(amount, 10_000, "data.stages.0.mix.math.amount")
    assert expected in str(e.value)


def test_bad_input_is_reported_weights_and_sources(sources):
    with pytest.raises(ConfigError, match="all zero"):
        stage_stream(sources, {"math": MixEntry(weight=0), "code": MixEntry(weight=0.0)}, seed=0, where="m")
    with pytest.raises(ConfigError, match=r"m\.code\.weight.*>= 0"):
        stage_stream(sources, {"math": MixEntry(weight=1), "code": MixEntry(weight=-1)}, seed=0, where="m")
    with pytest.raises(ConfigError, match=r"unknown source\(s\) \['poetry'\]"):
        stage_stream(sources, {"poetry": MixEntry()}, seed=0, where="m")
    with pytest.raises(ConfigError, match="'empty' has no usable examples"):
        stage_stream({"empty": []}, {"empty": MixEntry()}, seed=0, where="m")


def packed_rows(sources, n_rows: int, seed: int = 0):
    stream, _ = stage_stream(sources, {k: MixEntry() for k in sources}, seed=seed, where="m")
    it = iter(pack(stream.to_iter_dataset(), 2048, num_bins=32))
    return it, [next(it) for _ in range(n_rows)]


def test_packing_fills_rows_and_isolates_documents(sources):
    _, rows = packed_rows(sources, 60)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    assert fill(batch) >= 0.98
    seg, pos = batch["segment_ids"], batch["positions"]
    same_doc_next = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    np.testing.assert_array_equal(batch["targets"][:, :-1][same_doc_next], batch["input_ids"][:, 1:][same_doc_next])
    last = (~same_doc_next) & (seg[:, :-1] > 0)
    assert (batch["targets"][:, :-1][last] == EOS).all() and batch["loss_mask"][:, :-1][last].all()  # EOS trained
    assert not batch["loss_mask"][seg == 0].any() and (batch["source_ids"][seg == 0] == -1).all()
    starts = (seg > 0) & np.concatenate([np.ones((len(seg), 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    assert (pos[starts] == 0).all()  # positions reset at every document
    assert set(np.unique(batch["source_ids"])) == {-1, 0, 1, 2}  # rows mix sources


def test_packed_stream_resume_is_exact(sources):
    it, _ = packed_rows(sources, 7)
    state = it.get_state()
    after = [next(it) for _ in range(5)]
    again, _ = packed_rows(sources, 0)
    again.set_state(state)
    for a, b in zip(after, [next(again) for _ in range(5)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
