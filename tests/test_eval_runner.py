"""Evaluation suites on a model: in training (eval/step_N.json, the metrics line) and with sftjax-eval."""

import dataclasses
import json
import subprocess
import sys

import pytest

from sftjax.config import FIXTURE_DIR, ConfigError, EvalConfig, JudgeConfig, SuiteConfig
from sftjax.data.formats import Conversation, Turn
from sftjax.data.templates import render
from sftjax.data.tokenizer import byte_tokenizer
from tests.test_cli import ROOT, TINY, run_train, train_env

PROBLEM = {"task_id": "T/0", "prompt": "def add(a, b):\n", "entry_point": "add",
           "test": "def check(f):\n    assert f(1, 2) == 3\n"}


def write_eval_config(tmp_path, extra: str = "") -> str:
    """A config dir with eval/t.yaml: a loss suite, a math suite and a code suite on tiny local files."""
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps({"id": f"g{i}", "question": f"What is {i} + {i}?",
                                                            "answer": str(2 * i)}) + "\n" for i in range(1, 4)))
    (tmp_path / "code.jsonl").write_text(json.dumps(PROBLEM) + "\n")
    conf = tmp_path / "conf" / "eval"
    conf.mkdir(parents=True)
    (conf / "t.yaml").write_text(f"""
batch_size: 4
{extra}
suites:
  arith_loss: {{kind: loss, path: {FIXTURE_DIR / 'arith.jsonl'}, format: prompt_completion, limit: 16}}
  math: {{kind: math, path: {tmp_path / 'gsm.jsonl'}, max_new_tokens: 8}}
  code: {{kind: code, path: {tmp_path / 'code.jsonl'}, max_new_tokens: 8}}
""")
    return str(tmp_path / "conf")


def run_eval(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sftjax.cli.eval", *args], env=train_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    conf = write_eval_config(tmp, "every_n_steps: 2\nat_start: true")
    run_dir = tmp / "run"
    r = run_train("--config-dir", conf, f"run_dir={run_dir}", *TINY, "train.max_steps=3", "train.progress=false",
                  "eval=t")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, conf, run_dir, r.stdout + r.stderr


@pytest.mark.slow
def test_in_training_eval_writes_step_files_and_metrics(evaluated_run):
    _, _, run_dir, out = evaluated_run
    # at_start (step 0), every 2 steps (2) and the stage end (3, the last step)
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == ["step_0.json", "step_2.json", "step_3.json"]
    rec = json.load(open(run_dir / "eval" / "step_2.json"))
    assert rec["step"] == 2 and rec["stage"] == "main"
    assert set(rec["suites"]) == {"arith_loss", "math", "code"}
    assert rec["suites"]["math"]["metrics"]["n"] == 3 and len(rec["suites"]["math"]["results"]) == 3
    assert rec["suites"]["code"]["results"][0]["statuses"]  # every completion ran in the sandbox
    lines = {json.loads(line)["step"]: json.loads(line) for line in open(run_dir / "metrics.jsonl")}
    assert "eval/arith_loss/loss" not in lines[1]
    for step in (2, 3):
        assert lines[step]["eval/arith_loss/loss"] == pytest.approx(
            json.load(open(run_dir / "eval" / f"step_{step}.json"))["suites"]["arith_loss"]["metrics"]["loss"])
        assert "eval/math/accuracy" in lines[step] and "eval/code/pass@1" in lines[step] and "loss" in lines[step]
    # the loss suite moves with training: the base model's loss is higher than after 3 steps
    first = json.load(open(run_dir / "eval" / "step_0.json"))["suites"]["arith_loss"]["metrics"]["loss"]
    assert first > lines[3]["eval/arith_loss/loss"]
    assert "eval math (math): accuracy" in out


@pytest.mark.slow
def test_sftjax_eval_matches_in_training_eval(evaluated_run):
    """The same suites on the run's final checkpoint give the numbers training logged at its last step."""
    tmp, conf, run_dir, _ = evaluated_run
    out = tmp / "final.json"
    r = run_eval("--config-dir", conf, f"model.init_from={run_dir}", "eval=t", f"eval.output={out}",
                 "data.seq_len=128")
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.load(open(out))["models"][str(run_dir)]
    logged = json.load(open(run_dir / "eval" / "step_3.json"))["suites"]
    assert final["arith_loss"]["metrics"]["loss"] == pytest.approx(logged["arith_loss"]["metrics"]["loss"], rel=1e-5)
    assert [x["prediction"] for x in final["math"]["results"]] == [x["prediction"] for x in logged["math"]["results"]]
    assert "arith_loss/loss" in r.stdout and "math/accuracy" in r.stdout  # the table


def test_bad_input_is_reported_eval(tmp_path):
    conf = write_eval_config(tmp_path)
    (tmp_path / "gsm.jsonl").write_text('{"id": "a", "question": "q", "answer": "7"}\n{"id": "b", "question": 3}\n')
    r = run_eval("--config-dir", conf, f"model.init_from={tmp_path / 'nowhere'}", "eval=t")
    assert r.returncode == 2 and "nowhere" in r.stderr
    with pytest.raises(ConfigError, match="eval.suites.x.kind"):
        EvalConfig(suites={"x": SuiteConfig(kind="bleu", path="a.jsonl")}).validate()
    with pytest.raises(ConfigError, match="eval.suites.x.ks"):
        EvalConfig(suites={"x": SuiteConfig(kind="code", path="a.jsonl", ks=[1, 10], samples=4)}).validate()
    with pytest.raises(ConfigError, match="eval.suites.x.judge.model"):
        EvalConfig(suites={"x": SuiteConfig(kind="judge", path="q.jsonl", judge=JudgeConfig(url="http://x"))}).validate()


def test_bad_input_is_reported_malformed_eval_data(evaluated_run, tmp_path):
    _, _, run_dir, _ = evaluated_run
    conf = write_eval_config(tmp_path)
    (tmp_path / "gsm.jsonl").write_text('{"id": "a", "question": "q", "answer": "7"}\n{"id": "b", "question": 3}\n')
    r = run_eval("--config-dir", conf, f"model.init_from={run_dir}", "eval=t", "data.seq_len=128")
    assert r.returncode == 2 and "gsm.jsonl:2" in r.stderr, r.stderr[-2000:]


def test_chat_prompt_is_the_prompt_side_of_training():
    """Eval prompts are exactly what training renders before an answer: the same template, the same tokens."""
    from sftjax.eval.runner import Completer

    tok = byte_tokenizer()
    c = Completer(None, None, tok, template="auto", max_positions=256)
    ids, trained = render(Conversation([Turn("user", "hi"), Turn("assistant", "yo")]), tok, "auto")
    assert c.chat_prompt(["hi"]) == ids[: trained.index(True)]
    two = [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d")]
    ids, trained = render(Conversation(two), tok, "auto")
    last = max(i for i in range(len(trained)) if trained[i] and not trained[i - 1])
    assert c.chat_prompt(["a", "c"], ["b"]) == ids[:last]


def test_prompts_longer_than_positions_are_truncated_and_counted():
    from sftjax.eval.runner import Completer
    from sftjax.model.llama import Llama
    from flax import nnx
    from tests.helpers import tiny_config

    cfg = tiny_config().model
    graphdef, params = nnx.split(Llama(cfg, nnx.Rngs(0)))
    tok = byte_tokenizer()
    c = Completer(graphdef, params, tok, template="auto", max_positions=64, batch_size=2)
    outs = c.complete([[5] * 100, [6] * 10, [7] * 60], max_new_tokens=8)
    assert len(outs) == 3 and c.truncated_prompts == 2
    with pytest.raises(ConfigError, match="no room"):
        c.complete([[5]], max_new_tokens=64)


@pytest.mark.slow
def test_knowledge_and_judge_suites_run_and_count_unparseable(tmp_path):
    """Knowledge items and a judge rubric through the runner: an endpoint judge (a local fake OpenAI server) is
    scored; the evaluated tiny model judging itself writes no rating, which is counted, not scored as zero."""
    from flax import nnx

    from sftjax.config import DataConfig, JudgeConfig
    from sftjax.data.facts import make_fact_set
    from sftjax.eval.runner import run_suites
    from sftjax.model.llama import Llama
    from tests.helpers import tiny_config
    from tests.test_eval_judge import FakeOpenAI

    _, items = make_fact_set(2, seed=0)
    (tmp_path / "k.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    server = FakeOpenAI()  # answers "[[7]]" to every request
    try:
        suites = {
            "knowledge": SuiteConfig(kind="knowledge", path=str(tmp_path / "k.jsonl"), max_new_tokens=4),
            "mt": SuiteConfig(kind="judge", path=str(FIXTURE_DIR / "judge_questions.jsonl"), rubric="mt_bench",
                              limit=2, max_new_tokens=4, judge=JudgeConfig(url=server.url, model="fake")),
            "self": SuiteConfig(kind="judge", path=str(FIXTURE_DIR / "judge_questions.jsonl"), limit=1,
                                max_new_tokens=4, judge=JudgeConfig(max_new_tokens=8, retries=1)),
        }
        # dense attention: judge prompts are long in byte tokens, and the blockwise kernel's tile count makes the
        # prefill slow to compile (the kernels agree: test_attention)
        cfg = dataclasses.replace(tiny_config().model, attention="dense")
        graphdef, params = nnx.split(Llama(cfg, nnx.Rngs(0)))
        out = run_suites(EvalConfig(suites=suites, batch_size=4), graphdef=graphdef, params=params,
                         tokenizer=byte_tokenizer(), data=DataConfig(seq_len=128), mesh=None,
                         max_positions=cfg.max_position_embeddings, loss_rows=1, log=lambda *_: None)
    finally:
        server.server.shutdown()
        server.server.server_close()
    k = out["suites"]["knowledge"]["metrics"]
    assert k["n"] == len(items) == 10 and {"memorization", "generalization", "date_changed"} <= set(k)
    mt = out["suites"]["mt"]["metrics"]
    assert mt["n"] == 4 and mt["judged"] == 4 and mt["score"] == pytest.approx(6 / 9)  # [[7]] on 1..10
    assert len(server.requests) == 4 and server.requests[0]["body"]["model"] == "fake"
    me = out["suites"]["self"]["metrics"]
    assert me["unparseable"] == me["n"] == 1 and me["judged"] == 0 and me["score"] is None
    assert out["metrics"]["eval/mt/score"] == pytest.approx(6 / 9)


def test_local_judge_models_load_once(evaluated_run):
    """judge.init_from: a local judge model is loaded on first use and then reused (in training too, where every
    evaluation of the run asks for it again)."""
    import jax

    from sftjax.eval.runner import JudgeModels
    from sftjax.parallel.mesh import make_mesh
    from tests.helpers import tiny_config

    _, _, run_dir, _ = evaluated_run
    logs = []
    judges = JudgeModels(tiny_config().model, make_mesh((1, 1, 1), jax.devices()[:1]), EvalConfig(), "auto",
                         logs.append)
    first = judges(str(run_dir))
    assert judges(str(run_dir)) is first and sum("init_from" in m for m in logs) == 1
    assert first.complete([first.chat_prompt(["hi"])], max_new_tokens=2)[0] is not None


def test_code_suite_chat_mode_runs_the_replys_code_block(tmp_path):
    """prompt=chat: the function goes into a user turn (rendered with the run's template), no stop strings cut the
    reply, and the code block of the reply is what the sandbox runs; the reply is kept next to it."""
    from sftjax.eval.runner import code_suite

    reply = "Here you go:\n```python\ndef add(a, b):\n    # the sum\n    return a + b\n```\nIt adds."

    class Completer:
        def chat_prompt(self, turns):
            self.turns = turns
            return [1, 2, 3]

        def raw_prompt(self, text):
            raise AssertionError("chat mode must not use the raw prompt")

        def complete(self, prompts, max_new_tokens, *, temperature, stop, seed_offset):
            assert prompts == [[1, 2, 3]] and stop == ()
            return [reply]

    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    c = Completer()
    res = code_suite(SuiteConfig(kind="code", path=str(path), prompt="chat"), c)
    assert PROBLEM["prompt"] in c.turns[0]
    assert res["metrics"]["pass@1"] == 1.0 and res["results"][0]["replies"] == [reply]
    assert res["results"][0]["completions"][0].endswith("return a + b\n")
    with pytest.raises(ConfigError, match="eval.suites.x.prompt"):
        EvalConfig(suites={"x": SuiteConfig(kind="code", path="a.jsonl", prompt="fim")}).validate()


@pytest.mark.slow
def test_eval_time_excludes_no_training_time(tmp_path, monkeypatch):
    """The steps dispatched before an evaluation have finished when its clock starts: otherwise their compute is
    counted as eval time and the eval step's tokens/s comes out tens of times too high."""
    from sftjax.config import SuiteConfig as Suite
    from sftjax.train import loop
    from tests.helpers import tiny_config

    ready = []

    def fake_eval(self, state, step, stage):
        import jax

        ready.append(all(x.is_ready() for x in jax.tree.leaves(state)))
        return {"eval/x/loss": 1.0}

    monkeypatch.setattr(loop.Evaluator, "__call__", fake_eval)
    cfg = tiny_config(str(tmp_path / "run"), **{"train.max_steps": 4})
    cfg.eval.every_n_steps = 2
    cfg.eval.suites = {"x": Suite(kind="loss", path="unused.jsonl")}
    loop.train(cfg, log=lambda m: None)
    assert ready == [True, True]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval/x/loss" in x] == [2, 4]
