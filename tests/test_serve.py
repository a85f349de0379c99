"""sftjax-serve on loopback with a tiny HF model: the same tokens as sftjax.generate, the official openai client
(plain and streaming), concurrent requests, every bad request a 4xx, SIGTERM drains, and the judge suite through it."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.hf_fixtures import make_hf_model, smollm2_tokenizer, tiny_tokenizer
from tests.test_cli import ROOT, train_env

NAME = "tiny"


def start_server(*args, port: int = 0):
    proc = subprocess.Popen([sys.executable, "-m", "sftjax.cli.serve", f"serve.port={port}", *map(str, args)],
                            cwd=ROOT, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "/v1, max_batch" in line:
            url = line.split(" on ", 1)[1].split(",")[0]
            threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()
            return proc, url, lines
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines) + (proc.stderr.read() if proc.stderr else ""))


def post(url: str, path: str, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url.removesuffix("/v1") + path, data=data,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "hf"
    make_hf_model(path, "llama_gqa")
    return path


@pytest.fixture(scope="module")
def server(hf_dir):
    proc, url, lines = start_server(f"model.init_from=hf:{hf_dir}", f"serve.model_name={NAME}", "serve.max_batch=4",
                                    "serve.chunk=4")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(hf_dir):
    """Greedy answers of sftjax.generate (what sftjax-generate runs) for the same prompts."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig
    from sftjax.data.templates import prompt_ids
    from sftjax.generate import generate
    from sftjax.parallel.mesh import make_mesh

    m = load_model(f"hf:{hf_dir}", ModelConfig(), make_mesh((1, 1, 1), devices=jax.devices()[:1]),
                   log=lambda _: None)
    tok = m.tokenizer

    def answer(max_tokens: int, prompt: str | None = None, messages: list | None = None) -> str:
        ids = prompt_ids(tok, m.template, messages) if messages else list(tok(prompt)["input_ids"])
        out = generate((m.graphdef, m.params), [ids], max_tokens, eos_ids=m.eos_ids, pad_id=tok.pad_token_id or 0)
        return tok.decode(out[0], skip_special_tokens=True), len(out[0])

    return answer


def test_greedy_answers_equal_sftjax_generate(server, reference):
    msgs = [{"role": "user", "content": "w3 w4 w9"}]
    status, body = post(server, "/v1/chat/completions", {"model": NAME, "messages": msgs, "max_tokens": 24,
                                                         "temperature": 0})
    assert status == 200, body
    text, n = reference(24, messages=msgs)
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"]["completion_tokens"] == n and body["object"] == "chat.completion"
    status, body = post(server, "/v1/completions", {"model": NAME, "prompt": "w5 w9 w11", "max_tokens": 20,
                                                    "temperature": 0})
    assert status == 200 and body["choices"][0]["text"] == reference(20, prompt="w5 w9 w11")[0]


def test_health_reports_load_and_compiled_programs(server):
    status, _ = post(server, "/v1/completions", {"model": NAME, "prompt": "w5 w9", "max_tokens": 4, "temperature": 0})
    assert status == 200
    with urllib.request.urlopen(server.removesuffix("/v1") + "/health", timeout=60) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["model"] == NAME and health["busy"] == 0
    assert health["requests"] >= 1 and health["tokens"] >= 1
    assert set(health["compiled"]) == {"prefill", "insert", "decode"} and health["compiled"]["prefill"] >= 1


def test_the_openai_client_works_plain_and_streaming(server, reference):
    import openai

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [NAME]
    msgs = [{"role": "user", "content": "w7 w8"}]
    want = reference(16, messages=msgs)[0]
    out = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0)
    assert out.choices[0].message.content == want and out.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == want and finish in ("stop", "length") and usage.completion_tokens > 0
    text = client.completions.create(model=NAME, prompt="w1 w2", max_tokens=8, temperature=0, n=2)
    assert len(text.choices) == 2 and text.choices[0].text == text.choices[1].text  # greedy: n equal choices


def test_long_prompts_and_long_answers_cross_buckets_and_windows(server, reference):
    """A prompt above one attention block (256 tokens: the blockwise prefill's multi-block bucket) and answers that
    outgrow the engine's smallest decode windows (128, 256 slots) still equal sftjax.generate, decoded side by side."""
    long_prompt = " ".join(f"w{3 + (i * 7) % 400}" for i in range(300))
    cases = [(long_prompt, 40), ("w5 w6", 200), ("w8 w9 w10", 12)]
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: post(server, "/v1/completions", {"model": NAME, "prompt": c[0], "max_tokens": c[1],
                                                                        "temperature": 0}), cases))
    for (prompt, n), (status, body) in zip(cases, got):
        assert status == 200, body
        text, length = reference(n, prompt=prompt)
        assert body["choices"][0]["text"] == text
        assert body["usage"]["completion_tokens"] == length == n  # no early EOS: every window is crossed
    assert got[0][1]["usage"]["prompt_tokens"] == 300


def test_stop_strings_end_the_answer_and_are_not_returned(server, reference):
    prompts = [f"w{i} w{i + 3}" for i in range(1, 40)]
    full, prompt = next((t, p) for t, p in ((reference(24, prompt=p)[0], p) for p in prompts) if len(t) >= 8)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    status, body = post(server, "/v1/completions", {"model": NAME, "prompt": prompt, "max_tokens": 24,
                                                    "temperature": 0, "stop": [stop]})
    assert status == 200 and body["choices"][0]["text"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_sixteen_concurrent_requests_equal_their_sequential_answers(server):
    reqs = [{"model": NAME, "prompt": " ".join(f"w{j}" for j in range(i % 5, i % 5 + 2 + i % 7)),
             "max_tokens": 4 + 3 * (i % 6), "temperature": 0} for i in range(16)]
    sequential = [post(server, "/v1/completions", r)[1]["choices"][0]["text"] for r in reqs]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: post(server, "/v1/completions", r), reqs))
    assert all(status == 200 for status, _ in together)
    assert [b["choices"][0]["text"] for _, b in together] == sequential
    seeded = {"model": NAME, "prompt": "w1", "max_tokens": 12, "temperature": 1.0, "seed": 5}
    alone = post(server, "/v1/completions", seeded)[1]["choices"][0]["text"]
    with ThreadPoolExecutor(4) as pool:  # a seeded request draws the same tokens whatever shares its batch
        crowd = list(pool.map(lambda r: post(server, "/v1/completions", r), [seeded] + reqs[:3]))
    assert crowd[0][1]["choices"][0]["text"] == alone


@pytest.mark.parametrize("path, body, raw, status, words", [
    ("/v1/chat/completions", None, b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "w1"}]}, None, 404,
     "'gpt-9' does not exist"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "w1"}], "logprobs": True},
     None, 400, "unsupported field 'logprobs'"),
    ("/v1/completions", {"model": NAME, "prompt": "w1", "max_tokens": 5000}, None, 400, "exceed the model's 2048"),
    ("/v1/completions", {"model": NAME, "prompt": "w1", "temperature": "hot"}, None, 400, "'temperature' must be"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "robot", "content": "w1"}]}, None, 400,
     "messages[0]"),
])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, path, body, raw, status, words):
    got, reply = post(server, path, body, raw)
    assert got == status and words in reply["error"]["message"], reply
    assert post(server, "/v1/completions", {"model": NAME, "prompt": "w1", "max_tokens": 2})[0] == 200


def test_oversized_body_is_refused(server):
    host, port = server.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000000\r\n\r\n{")
        reply = b""
        while b"max_body_bytes" not in reply and (part := s.recv(65536)):  # headers and body may come apart
            reply += part
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "max_body_bytes" in reply
    assert post(server, "/v1/completions", {"model": NAME, "prompt": "w1", "max_tokens": 2})[0] == 200


def test_judge_suite_through_a_live_server(server):
    """The judge client of sftjax-eval talks to sftjax-serve like to any endpoint; the tiny model cannot rate, so
    every judgment is re-asked and then counted unparseable (never scored)."""
    from sftjax.eval.judge import HttpJudge, rubric, score

    judge = HttpJudge(server, NAME, api_key_env=None, max_tokens=8, retries=0)
    out = score(rubric("mt_bench"), [{"id": 1, "turns": ["w1 w2"]}, {"id": 2, "turns": ["w3"]}], [["w4"], ["w5"]],
                judge, max_attempts=2)
    assert out["n"] == 2 and out["n_judged"] + out["n_unparseable"] == 2 and out["attempts"] >= 2


def test_sigterm_drains_in_flight_requests_then_exits_0(hf_dir):
    proc, url, lines = start_server(f"model.init_from=hf:{hf_dir}", f"serve.model_name={NAME}", "serve.chunk=2")
    result = {}

    def long_request():
        result["reply"] = post(url, "/v1/completions", {"model": NAME, "prompt": "w1", "max_tokens": 200,
                                                       "temperature": 1.0, "seed": 1})

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert proc.wait(timeout=120) == 0, "".join(lines)
    status, body = result["reply"]
    assert status == 200 and body["usage"]["completion_tokens"] > 0


def test_bad_start_exits_2(hf_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "sftjax.cli.serve", f"model.init_from=hf:{hf_dir}",
                            f"serve.port={port}"], cwd=ROOT, env=train_env(), capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 2 and "serve.port" in r.stderr and str(port) in r.stderr
    r = subprocess.run([sys.executable, "-m", "sftjax.cli.serve", f"model.init_from={tmp_path / 'nope'}"],
                       cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "model.init_from" in r.stderr


@pytest.mark.parametrize("which", ["smollm2", "word_level"])
def test_incremental_decoding_equals_a_whole_decode(which):
    """Choice decodes only the newest tokens (with one step of context); released text must equal decoding the whole
    answer, for multi-byte characters split across byte-level tokens too, and a stop string spanning chunks must cut
    at its first character."""
    from sftjax.config.serve import ServeConfig
    from sftjax.generate.engine import Result
    from sftjax.serve.app import Choice, Job, Served

    tok = smollm2_tokenizer() if which == "smollm2" else tiny_tokenizer()
    text = ("Größe: 3 × 4 = 12 ✓ — naïve café 🚀🚀 done.\n  indented line\tand tabs" if which == "smollm2" else
            "w3 w4 w5 w6 w7 w8 w9 w10 w11")
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    whole = tok.decode(ids, skip_special_tokens=True)
    served = Served(None, tok, "", frozenset(), "m", 2048, ServeConfig())

    def job(stop):
        return Job(prompt=[1], max_tokens=len(ids), temperature=0, top_p=1, top_k=0, seed=0, stop=stop, n=1,
                   stream=True, include_usage=False)

    for step in (1, 2, 3, 5):
        c = Choice(served, job([]), 0)
        released = "".join(c.add(ids[i:i + step]) for i in range(0, len(ids), step))
        released += c.close(Result(list(ids), "length"))
        assert released == whole == c.text, step
        assert "\ufffd" not in released

    stop = "café" if which == "smollm2" else "w7 w8"
    for step in (1, 2, 4):
        c = Choice(served, job([stop, "never"]), 0)
        released = ""
        for i in range(0, len(ids), step):
            released += c.add(ids[i:i + step])
            if c.finish:
                break
        released += c.close(Result(list(ids), "stop"))
        assert released == whole[: whole.index(stop)] and c.finish == "stop", step


def test_a_row_freed_by_a_long_request_serves_the_next_one_like_generate(hf_dir):
    """Engine level, no HTTP: once a long request leaves a row, that row holds state beyond the next short request's
    decode window. It must neither compute NaN there (0/0 over an empty mask) nor let it leak into the next request
    (found by the stop-string test: every token after the first came out as id 0)."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig
    from sftjax.generate import generate
    from sftjax.generate.engine import Engine, Request
    from sftjax.parallel.mesh import make_mesh

    m = load_model(f"hf:{hf_dir}", ModelConfig(), make_mesh((1, 1, 1), devices=jax.devices()[:1]), log=lambda _: None)
    engine = Engine(m.graphdef, m.params, m.cfg, max_batch=2, max_len=1024, chunk=4, pad_id=2)
    engine.warmup(16)
    engine.start()

    def run(prompts):
        done = []
        for ids, n in prompts:
            box = {"event": threading.Event()}
            engine.submit(Request(ids, n, lambda kind, p, box=box: (box.update(r=p), box["event"].set())
                                  if kind == "done" else None, stop_ids=frozenset(m.eos_ids)))
            done.append(box)
        for box in done:
            assert box["event"].wait(120)
        return [box["r"].tokens for box in done]

    def reference(ids, n):
        return generate((m.graphdef, m.params), [ids], n, eos_ids=m.eos_ids, pad_id=2)[0]

    try:
        long = [3 + (i * 7) % 400 for i in range(300)]
        first = run([(long, 20), ([7, 8], 150)])  # a 512-slot prompt bucket and a 256-slot window
        assert first == [reference(long, 20), reference([7, 8], 150)]
        for ids in ([9, 12], [15, 4, 6]):
            assert run([(ids, 24)]) == [reference(ids, 24)]
    finally:
        engine.stop()


def test_warmup_leaves_nothing_to_compile_for_a_warmed_shape(hf_dir):
    """A greedy request whose prompt bucket and decode window warmup covered runs on programs already compiled
    (found by bench/serve_throughput.py: every prefill and the row copy compiled again on first use, because the
    warm calls differed from the serving calls in a defaulted static flag and in the cache's placement)."""
    import jax

    from sftjax.ckpt.init_from import load_model
    from sftjax.config import ModelConfig
    from sftjax.generate import engine as engine_module
    from sftjax.parallel.mesh import make_mesh

    m = load_model(f"hf:{hf_dir}", ModelConfig(), make_mesh((1, 1, 1), devices=jax.devices()[:1]), log=lambda _: None)
    engine = engine_module.Engine(m.graphdef, m.params, m.cfg, max_batch=2, max_len=256, chunk=4, pad_id=2)
    engine.warmup(32)
    before = engine.programs
    engine.start()
    try:
        boxes = []
        for ids in ([5, 6, 7], [9] * 20):
            box = {"event": threading.Event()}
            engine.submit(engine_module.Request(ids, 12, lambda kind, p, box=box: box["event"].set()
                                                if kind == "done" else None))
            boxes.append(box)
        assert all(box["event"].wait(120) for box in boxes)
    finally:
        engine.stop()
    assert engine.programs == before
