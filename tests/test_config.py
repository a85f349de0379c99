"""Config errors name the bad key and the expected value, before anything is compiled."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from sftjax.config import ConfigError, compose_config


def compose(*overrides):
    return compose_config(["run_dir=unused", *overrides])


def test_defaults_compose_and_validate():
    cfg = compose()
    assert cfg.model.name == "tiny" and cfg.optim.weight_decay == 0.1 and cfg.data.sources


def test_config_unknown_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose("model.hiden_size=32")
    assert "hiden_size" in str(e.value) + str(e.value.__cause__)


def test_config_unknown_group_option_is_reported():
    with pytest.raises(Exception, match="llama9"):
        compose("model=llama9")


def test_config_wrong_type_names_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose("optim.lr=fast")
    text = str(e.value) + str(e.value.__cause__)
    assert "lr" in text and "fast" in text


@pytest.mark.parametrize(
    "override,key,expected",
    [
        ("optim.lr=-1e-4", "optim.lr", "positive"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio", "[0, 1)"),
        ("model.num_kv_heads=3", "model.num_kv_heads", "divisor of model.num_heads"),
        ("model.dtype=float64", "model.dtype", "float32"),
        ("train.grad_accum=3", "train.grad_accum", "divisor of train.global_batch_size"),
        ("data.seq_len=200", "data.seq_len", "multiple of model.attention_block"),
        ("mesh.data=0", "mesh.data", "positive integer or -1"),
        ("model.init_from=embedded:nope", "model.init_from", "embedded:smollm2-135m-instruct"),
        ("model.architecture=gpt2", "model.architecture", "qwen2"),
    ],
)
def test_config_impossible_value_names_key_and_expectation(override, key, expected):
    with pytest.raises(ConfigError) as e:
        compose(override)
    assert f"'{key}'" in str(e.value) and expected in str(e.value)


def test_config_mesh_product_must_match_device_count():
    cfg = compose("mesh.data=3", "mesh.fsdp=1", "mesh.tensor=1")
    with pytest.raises(ConfigError, match=r"'mesh'.*device count 8"):
        cfg.check_devices(8)
    cfg = compose("mesh.data=-1", "mesh.fsdp=2", "mesh.tensor=2")
    assert cfg.check_devices(8) == (2, 2, 2)


def test_config_batch_must_split_over_data_shards():
    cfg = compose("mesh.data=-1", "train.global_batch_size=4")
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        cfg.check_devices(8)


def test_config_misspelled_override_suggests_the_key():
    from sftjax.config import check_override_keys

    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_stpes' \(did you mean 'train.max_steps'\?\)"):
        check_override_keys(["train.max_stpes=3"])
    with pytest.raises(ConfigError, match="keys under model:.*hidden_size"):
        check_override_keys(["model.hiden=3"])
    # valid keys, group selections, free-form source names and Hydra's own keys pass
    check_override_keys(["train.max_steps=3", "model=tiny", "data.sources.mine.path=x.jsonl", "hydra.verbose=true",
                         "model.rope_scaling.factor=8", "+extra=1"])
