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
