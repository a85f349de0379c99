"""Strategy presets (conf/strategy) build the stages of Dong et al.'s four strategies."""

import pytest

from sftjax.config import ConfigError, compose_config

# the fixture data config's two sources stand in for specialized (arith) and general (prose) data
SOURCES = ["data.stages=[]", "strategy.specialized=[arith]", "strategy.general=[prose]"]


def stages(*overrides):
    cfg = compose_config(["run_dir=x", *SOURCES, *overrides])
    return [(s.name, s.epochs, {n: m.amount for n, m in s.mix.items()}) for s in cfg.data.stages]


def test_strategy_presets_build_their_stages():
    assert stages("strategy=multitask") == [("multitask", 3.0, {"arith": "1", "prose": "1"})]
    assert stages("strategy=sequential") == [("arith", 3.0, {"arith": "1"}), ("prose", 3.0, {"prose": "1"})]
    assert stages("strategy=sequential", "strategy.order=[prose,arith]") == [
        ("prose", 3.0, {"prose": "1"}), ("arith", 3.0, {"arith": "1"})]
    assert stages("strategy=mixed_sequential", "strategy.epochs=1") == [
        ("specialized", 1.0, {"arith": "1"}), ("general", 1.0, {"prose": "1"})]
    assert stages("strategy=dmt") == [("specialized", 3.0, {"arith": "1"}),
                                      ("general_plus_k", 3.0, {"prose": "1", "arith": "1/256"})]


def test_dmt_k_scales_each_specialized_amount():
    got = stages("strategy=dmt", "strategy.k=1/4", "+strategy.amounts.arith=1/16", "+strategy.amounts.prose=200")
    assert got[0][2] == {"arith": "1/16"}
    assert got[1][2] == {"prose": "200", "arith": "1/64"}
    got = stages("strategy=dmt", "strategy.k=1/4", "+strategy.amounts.arith=400")
    assert got[1][2]["arith"] == "100"  # a count scales to a smaller count


@pytest.mark.parametrize("override, key", [
    ("strategy.specialized=[poetry]", "strategy.specialized"),
    ("strategy.k=2", "strategy.k"),
    ("strategy.k=zero", "strategy.k"),
    ("strategy.general=[]", "strategy.general"),
    ("strategy.name=curriculum", "strategy.name"),
])
def test_bad_input_is_reported_strategy(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        stages("strategy=dmt", override)


def test_strategy_and_explicit_stages_conflict():
    with pytest.raises(ConfigError, match="use one or the other"):
        compose_config(["run_dir=x", "strategy=multitask", "strategy.specialized=[arith]"])  # fixture has stages


def test_strategy_schedule_restarts_at_each_stage_when_asked():
    """schedule=run: one warmup + cosine over the stages; schedule=stage: each stage restarts it at optim.lr."""
    from sftjax.train.optimizer import staged_schedule

    run = compose_config(["run_dir=x", *SOURCES, "strategy=sequential", "optim.lr=1e-3", "optim.warmup_ratio=0.25"])
    per_stage = compose_config(["run_dir=x", *SOURCES, "strategy=sequential", "optim.lr=1e-3",
                                "optim.warmup_ratio=0.25", "strategy.schedule=stage"])
    assert [s.lr for s in run.data.stages] == [None, None]
    assert [s.lr for s in per_stage.data.stages] == [1e-3, 1e-3]
    steps = [8, 8]
    one = staged_schedule(run.optim, steps, [s.optim(run.optim) for s in run.data.stages])
    each = staged_schedule(per_stage.optim, steps, [s.optim(per_stage.optim) for s in per_stage.data.stages])
    assert float(one(12)) < 0.5e-3 < float(one(8)) < 1e-3  # stage 2 trains on the schedule's tail
    assert float(each(8)) == pytest.approx(float(each(0))) and float(each(10)) == pytest.approx(1e-3)  # restarted
    with pytest.raises(ConfigError, match="strategy.schedule"):
        compose_config(["run_dir=x", *SOURCES, "strategy=sequential", "strategy.schedule=epoch"])
