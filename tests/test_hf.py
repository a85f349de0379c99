"""Hugging Face interop, proven against transformers (torch CPU, fp32): import, export, round trip, bad input."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from sftjax.ckpt import hf
from sftjax.config import ConfigError, ModelConfig
from sftjax.generate import generate
from sftjax.parallel.mesh import make_mesh
from sftjax.model.layout import abstract_model, param_shardings
from tests.hf_fixtures import VARIANTS, make_hf_model
from tests.test_cli import ROOT, run_train, train_env

torch = pytest.importorskip("torch")
IDS = np.random.default_rng(0).integers(0, 512, (2, 48)).astype(np.int32)


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(IDS).long()).logits.numpy()


def import_model(hf_dir, cfg: ModelConfig, mesh):
    graphdef, abstract = abstract_model(cfg)
    with jax.set_mesh(mesh):
        shardings = param_shardings(abstract, mesh)
    params = hf.load_hf_params(hf_dir, cfg, shardings, log=lambda *_: None)
    state = nnx.state(nnx.eval_shape(lambda: nnx.merge(graphdef, abstract)))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state), params


def our_logits(model) -> np.ndarray:
    seg = np.ones_like(IDS)
    pos = np.broadcast_to(np.arange(IDS.shape[1], dtype=np.int32), IDS.shape)
    return np.asarray(model(IDS, seg, pos))


def all_tensors(hf_dir) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_roundtrip(variant, tmp_path, eight_devices):
    """import -> logits equal transformers' (<= 1e-4); export -> transformers loads it -> same logits; the
    exported tensors are bit-identical to the source; greedy decoding gives the same tokens."""
    import transformers

    src = tmp_path / "src"
    ref_model = make_hf_model(src, variant)
    ref = hf_logits(ref_model)
    cfg = hf.read_hf_config(src)
    for scan, mesh in [(False, make_mesh((1, 1, 1), devices=eight_devices[:1])),
                       (True, make_mesh((1, 4, 2)))]:  # and scanned layers sharded fsdp=4 x tensor=2
        cfg.scan_layers = scan
        model, params = import_model(src, cfg, mesh)
        diff = float(np.abs(our_logits(model) - ref).max())
        assert diff <= 1e-4, (variant, scan, diff)
        out = tmp_path / f"out{int(scan)}"
        hf.save_hf(params, cfg, out, tokenizer_dir=src, max_shard_bytes=150_000 if scan else 5 * 2**30,
                   log=lambda *_: None)
        assert (out / "model.safetensors.index.json").exists() == scan  # sharded above the size limit
        a, b = all_tensors(src), all_tensors(out)
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bit-identical
        back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        np.testing.assert_array_equal(hf_logits(back), ref)
        again, _ = import_model(out, cfg, mesh)  # our own (sharded-index) export imports back to the same model
        np.testing.assert_array_equal(our_logits(again), our_logits(model))
        tok = transformers.AutoTokenizer.from_pretrained(out)
        assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "w1"}],
                                                                  add_generation_prompt=True, tokenize=False)
    # greedy decoding of 32 tokens: sftjax.generate (KV cache) on the imported weights vs transformers' generate
    prompt = IDS[:1, :8]
    with torch.no_grad():
        want = ref_model.generate(torch.from_numpy(prompt).long(), max_new_tokens=32, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
    assert generate(model, [prompt[0].tolist()], 32) == [want]


@pytest.mark.slow
def test_convert_cli_round_trip(tmp_path):
    """sftjax-convert hf-to-sftjax then sftjax-to-hf gives back the same tensors, config and tokenizer."""
    src, mid, out = tmp_path / "src", tmp_path / "sftjax", tmp_path / "out"
    make_hf_model(src, "qwen2_bias_tied")

    def convert(*args):
        return subprocess.run([sys.executable, "-m", "sftjax.cli.convert", *map(str, args)], cwd=ROOT, env=train_env(),
                              capture_output=True, text=True, timeout=300)

    r = convert("hf-to-sftjax", src, mid, "--scan-layers")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (mid / "tokenizer" / "tokenizer.json").exists() and (mid / "checkpoints" / "0").is_dir()
    r = convert("sftjax-to-hf", mid, out, "--max-shard-size", "100KB")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = all_tensors(src), all_tensors(out)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert (out / "generation_config.json").exists() and (out / "chat_template.jinja").exists()
    r = convert("sftjax-to-hf", mid, out)
    assert r.returncode == 2 and "not empty" in r.stderr
    r = convert("hf-to-sftjax", tmp_path / "nope", tmp_path / "x")
    assert r.returncode == 2 and "not found" in r.stderr
    r = convert("gguf-to-hf", src / "config.json", tmp_path / "g")
    assert r.returncode == 2 and "not a GGUF file" in r.stderr
    r = convert("sftjax-to-hf", src, tmp_path / "y")
    assert r.returncode == 2 and "not a run directory or an sftjax checkpoint directory" in r.stderr
    assert f"write hf:{src}" in r.stderr  # an HF directory given where a checkpoint is expected says what to write


@pytest.mark.slow
def test_train_init_from_hf_and_export(tmp_path):
    """model.init_from=hf:DIR starts from the HF weights (a tiny lr keeps them close) and train.export_hf writes a
    directory transformers loads, tokenizer and chat template included."""
    import transformers

    src = tmp_path / "src"
    make_hf_model(src, "llama_gqa")
    run_dir = tmp_path / "run"
    r = run_train(f"run_dir={run_dir}", "model=tiny", f"model.init_from=hf:{src}", "model.rms_norm_eps=1e-5",
                  "model.attention_block=64", "data.seq_len=128", "train.global_batch_size=2", "train.max_steps=2",
                  "train.progress=false", "train.export_hf=true", "optim.lr=1e-7")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "tokenizer" / "tokenizer.json").exists()
    exported = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    a = all_tensors(src)
    b = {k: v.detach().numpy() for k, v in exported.state_dict().items()}
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5  # moved by ~lr, far from a random init
    assert transformers.AutoTokenizer.from_pretrained(run_dir / "hf").chat_template


def test_init_from_mismatch_names_every_field(tmp_path):
    src = tmp_path / "src"
    make_hf_model(src, "llama_gqa", with_tokenizer=False)
    want = ModelConfig(hidden_size=32, num_kv_heads=4, rms_norm_eps=1e-5)
    with pytest.raises(ConfigError) as e:
        hf.check_compatible(want, hf.read_hf_config(src), "x/config.json")
    msg = str(e.value)
    assert "model.hidden_size=32 but x/config.json has 64" in msg and "model.num_kv_heads=4" in msg


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, field", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters.rope_type"),
])
def test_bad_input_is_reported_unsupported_hf_config(tmp_path, change, field):
    src = tmp_path / "src"
    make_hf_model(src, "llama_gqa", with_tokenizer=False)
    _edit_config(src, **change)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        hf.read_hf_config(src)


def test_bad_input_is_reported_bad_tensors(tmp_path):
    src = tmp_path / "src"
    make_hf_model(src, "llama_gqa", with_tokenizer=False)
    cfg = hf.read_hf_config(src)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tensors = load_file(src / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"

    def broken(**edit):
        bad = dict(tensors)
        bad.update(edit)
        for k in [k for k, v in edit.items() if v is None]:
            del bad[k]
        save_file(bad, str(src / "model.safetensors"), metadata={"format": "pt"})

    broken(**{name: tensors[name][:100]})
    with pytest.raises(ConfigError, match=rf"'{name}' has shape \[100, 64\], the model config expects \[176, 64\]"):
        import_model(src, cfg, mesh)
    broken(**{name: tensors[name].astype(np.int8)})
    with pytest.raises(ConfigError, match=rf"'{name}' has dtype I8"):
        import_model(src, cfg, mesh)
    broken(**{name: None})
    with pytest.raises(ConfigError, match=rf"'{name}' is missing"):
        import_model(src, cfg, mesh)
    broken(**{"model.layers.2.mlp.up_proj.weight": tensors[name]})
    with pytest.raises(ConfigError, match="no place for: model.layers.2.mlp.up_proj.weight"):
        import_model(src, cfg, mesh)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only safetensors"):
        import_model(src, cfg, mesh)


@pytest.mark.parametrize("template", ["vicuna_v1.1", "llama2", "chatml"])
def test_exported_chat_template_renders_like_training(tmp_path, template):
    """transformers' apply_chat_template on an export of a run trained with ``template`` gives exactly the tokens
    training used, up to the assistant turn, and generation_config stops on the template's end of turn."""
    from transformers import AutoTokenizer

    from sftjax.ckpt.init_from import load_model
    from sftjax.data.templates import end_of_turn_ids
    from tests.test_cli_generate import CHAT, training_prefix

    src = tmp_path / "src"
    make_hf_model(src, "llama_gqa")
    m = load_model(f"hf:{src}", ModelConfig(), make_mesh((1, 1, 1), devices=jax.devices()[:1]), log=lambda m: None)
    dst = hf.save_hf(m.params, m.cfg, tmp_path / "hf", tokenizer_dir=src, template=template, log=lambda m: None)
    exported = AutoTokenizer.from_pretrained(dst)
    for messages in (CHAT, CHAT[1:2]):
        got = exported.apply_chat_template(messages, add_generation_prompt=True)
        assert list(got["input_ids"]) == training_prefix(m.tokenizer, template, messages)
    eos = json.loads((dst / "generation_config.json").read_text())["eos_token_id"]
    assert set(eos if isinstance(eos, list) else [eos]) == end_of_turn_ids(m.tokenizer)
