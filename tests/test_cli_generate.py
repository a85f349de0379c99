"""sftjax-generate end to end on a tiny HF model: the JSONL contract, greedy tokens equal transformers', bad input."""

import json
import subprocess
import sys

import pytest

from tests.hf_fixtures import make_hf_model
from tests.test_cli import ROOT, train_env

torch = pytest.importorskip("torch")


def run_generate(*args):
    return subprocess.run([sys.executable, "-m", "sftjax.cli.generate", *map(str, args)], cwd=ROOT, env=train_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "hf"
    make_hf_model(path, "llama_gqa")
    return path


def test_generate_writes_the_jsonl_contract(hf_dir, tmp_path):
    import transformers

    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "w5 w9 w11"}) + "\n\n"
                       + json.dumps({"id": "chat", "messages": [{"role": "user", "content": "w3 w4"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    r = run_generate(f"model.init_from=hf:{hf_dir}", f"generate.prompts={prompts}", f"generate.output={out}",
                     "generate.max_new_tokens=12", "generate.temperature=0")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, "chat"]
    assert all(set(row) == {"id", "completion", "token_ids"} for row in rows)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": "w3 w4"}], add_generation_prompt=True)
    for row, ids in zip(rows, [tok("w5 w9 w11")["input_ids"], list(chat["input_ids"])], strict=True):
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=2,
                                  pad_token_id=2)[0, len(ids):].tolist()
        assert row["token_ids"] == [t for t in want if t != 2][: len(row["token_ids"])]
        assert len(row["token_ids"]) == (want.index(2) if 2 in want else 12)
        assert row["completion"] == tok.decode(row["token_ids"], skip_special_tokens=True)
    assert f"[chat] {rows[1]['completion']}" in r.stdout


@pytest.mark.slow
def test_generate_bad_input_is_reported(hf_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "prompt": "w1"}) + "\n{not json\n")
    r = run_generate(f"model.init_from=hf:{hf_dir}", f"generate.prompts={bad}")
    assert r.returncode == 2 and f"{bad}:2: not valid JSON" in r.stderr
    bad.write_text(json.dumps({"id": 7, "prompt": ""}) + "\n")
    r = run_generate(f"model.init_from=hf:{hf_dir}", f"generate.prompts={bad}")
    assert r.returncode == 2 and "7" in r.stderr and "empty prompt" in r.stderr
    r = run_generate(f"model.init_from=hf:{hf_dir}", "generate.chat=w1", "generate.temperature=-1")
    assert r.returncode == 2 and "generate.temperature" in r.stderr
    r = run_generate("generate.chat=w1")
    assert r.returncode == 2 and "model.init_from" in r.stderr
    r = run_generate(f"model.init_from=hf:{hf_dir}", "generate.chat=w1", "generate.max_new_tokns=3")
    assert r.returncode == 2 and "did you mean 'generate.max_new_tokens'" in r.stderr


CHAT = [{"role": "system", "content": "w1 w2"}, {"role": "user", "content": "w3 w4"},
        {"role": "assistant", "content": "w5 w6"}, {"role": "user", "content": "w7"}]


def training_prefix(tokenizer, template: str, messages: list[dict]) -> list[int]:
    """What training rendered of ``messages`` plus an answer, before that answer's first trained token."""
    from sftjax.data.formats import Conversation, Turn
    from sftjax.data.templates import render

    turns = [Turn(m["role"], m["content"]) for m in messages if m["role"] != "system"] + [Turn("assistant", "w8")]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    ids, trained = render(Conversation(turns=turns, system=system), tokenizer, template)
    start = max(i for i in range(1, len(trained)) if trained[i] and not trained[i - 1])
    return ids[:start]


@pytest.fixture(scope="module")
def loaded_hf(hf_dir):
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig
    from sftjax.parallel.mesh import make_mesh

    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return load_model(f"hf:{hf_dir}", ModelConfig(), mesh, log=lambda m: None), mesh


@pytest.mark.parametrize("template", ["auto", "vicuna_v1.1", "llama2", "chatml"])
def test_generate_prompt_equals_training_prefix(hf_dir, loaded_hf, tmp_path, template):
    """A run trained with ``template`` is prompted by sftjax-generate exactly as training rendered the prompt (not
    with the tokenizer's own chat template), and stops on the same end-of-turn tokens as eval."""
    from sftjax.ckpt import hf
    from sftjax.ckpt.checkpoints import save_params_only
    from sftjax.ckpt.init_from import load_model
    from sftjax.cli.generate import encode
    from sftjax.config import ModelConfig
    from sftjax.eval.runner import Completer

    base, mesh = loaded_hf
    run = save_params_only(tmp_path / "run", base.params, base.cfg, extra={"config": {"data": {"template": template}}})
    hf.copy_tokenizer(hf_dir, run / "tokenizer")
    m = load_model(str(run), ModelConfig(), mesh, log=lambda m: None)
    assert m.template == template
    ids = encode(m.tokenizer, m.template, {"id": 1, "messages": CHAT})
    assert ids == training_prefix(m.tokenizer, template, CHAT)
    own = m.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert (ids == list(own["input_ids"])) == (template in ("auto", "chatml"))  # the old path differed
    completer = Completer(m.graphdef, m.params, m.tokenizer, template=m.template, max_positions=64,
                          eos_ids=sorted(m.eos_ids))
    assert completer.eos == m.eos_ids
