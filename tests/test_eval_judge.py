"""LLM-judge rubrics: presets, validation, parsing, weighting, re-asking, and the HTTP backend on a local server."""

import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftjax.config import ConfigError
from sftjax.eval.judge import (
    FIXTURE_QUESTIONS,
    PRESETS,
    CallableJudge,
    Criterion,
    HttpJudge,
    JudgeError,
    Rubric,
    chat_completions_url,
    judge_messages,
    load_questions,
    parse_judgment,
    rubric,
    score,
)

MT = rubric("mt_bench")
EIGHT = rubric("eight_category")
CRITERIA8 = [
    "clarity", "accuracy", "completeness", "conciseness", "safety", "specificity", "consideration", "politeness"
]


def eight_json(**overrides):
    vals = {n: 5 for n in EIGHT.names}
    vals.update(overrides)
    return "Solid answer.\n" + json.dumps(vals)


# ------------------------------------------------------------------------------------------------------------ rubrics


def test_presets():
    assert sorted(PRESETS) == ["eight_category", "mt_bench"]
    assert MT.per_turn and MT.format == "rating" and len(MT.criteria) == 1
    assert (MT.scale_min, MT.scale_max) == (1, 10)
    assert list(EIGHT.names) == CRITERIA8 + ["overall"]
    assert EIGHT.overall == "overall" and not EIGHT.per_turn
    assert EIGHT.weights_for({}) == {n: 1 / 8 for n in CRITERIA8}
    with pytest.raises(ConfigError, match=r"unknown judge rubric 'nope'.*eight_category.*mt_bench"):
        rubric("nope")


def test_normalization():
    assert MT.normalize(1) == 0.0 and MT.normalize(10) == 1.0 and MT.normalize(4) == pytest.approx(1 / 3)
    r = Rubric.from_dict({"name": "five", "criteria": ["helpful"], "scale_min": 0, "scale_max": 5})
    assert r.normalize(2) == pytest.approx(0.4)
    out = score(r, [{"id": "a", "turns": ["q"]}], [["x"]], CallableJudge(lambda b: ["helpful: 2"] * len(b)))
    assert out["score"] == pytest.approx(0.4) and out["raw_mean"] == pytest.approx(2.0)


def test_from_dict_ok():
    r = Rubric.from_dict(
        {
            "name": "custom",
            "criteria": [{"name": "correct", "weight": 3, "description": "right?"}, "style", {"name": "overall"}],
            "overall": "overall",
            "per_turn": False,
        }
    )
    assert r.criteria[0] == Criterion("correct", 3, "right?")
    assert r.weights_for(None) == {"correct": 0.75, "style": 0.25}


@pytest.mark.parametrize(
    "d, key",
    [
        ({"name": "x", "criteria": [{"name": "a", "weight": -1}]}, "criteria[0].weight"),
        ({"name": "x", "criteria": [{"name": "a", "weight": float("nan")}]}, "criteria[0].weight"),
        ({"name": "x", "criteria": [{"name": "a", "weight": "2"}]}, "criteria[0].weight"),
        ({"name": "x", "criteria": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}, "criteria[].weight"),
        ({"name": "x", "criteria": ["a", "A"]}, "criteria[1].name"),
        ({"name": "x", "criteria": ["a"], "scale_min": 5, "scale_max": 5}, "scale_min"),
        ({"name": "x", "criteria": ["a"], "scale_max": float("inf")}, "scale_max"),
        ({"name": "x", "criteria": []}, "criteria"),
        ({"name": "x", "criteria": ["a"], "colour": 1}, "colour"),
        ({"name": "x", "criteria": [{"name": "a", "wieght": 1}]}, "criteria[0].wieght"),
        ({"name": "x", "criteria": ["a", "b"], "format": "rating"}, "format"),
        ({"name": "x", "criteria": ["a"], "overall": "b"}, "overall"),
        ({"name": "x", "criteria": ["a"], "overall": "a"}, "criteria"),
        ({"criteria": ["a"]}, "name"),
    ],
)
def test_from_dict_errors_name_the_key(d, key):
    with pytest.raises(ConfigError, match=f"rubric key '{re.escape(key)}'"):
        Rubric.from_dict(d)


# ------------------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Helpful and correct. Rating: [[8]]", 8.0),
        ("Rating: [[ 7.5 ]]", 7.5),
        ("[[9/10]]", 9.0),
        ('Format is "[[rating]]", e.g. [[5]]. My verdict: [[3]]', 3.0),  # the last rating wins
        ("Rating: 6", 6.0),  # the line form works for one criterion too
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("[[7/5]]", None),
        ("I would give it an eight.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_mt_bench(text, expected):
    got = parse_judgment(MT, text)
    assert got == (None if expected is None else {"rating": expected})


def test_parse_json_form():
    vals = dict(zip(EIGHT.names, [7, 9, 6, 8, 10, 5, 7, 9, 8]))
    text = 'The example was {"clarity": 1}. Verdict:\n```json\n' + json.dumps(vals) + "\n```"
    assert parse_judgment(EIGHT, text) == {k: float(v) for k, v in vals.items()}
    # Keys case/whitespace-insensitive, numeric strings accepted, extra keys ignored.
    loose = {f" {k.upper()} ": str(v) for k, v in vals.items()} | {"notes": "fine"}
    assert parse_judgment(EIGHT, json.dumps(loose)) == {k: float(v) for k, v in vals.items()}


def test_parse_line_form():
    text = "Explanation...\n" + "\n".join(
        [
            "- **Clarity**: 8/10 (well organized)",
            "Accuracy = 9",
            "completeness:7",
            "  CONCISENESS :  6.5",
            "safety: 10.",
            "* specificity: 4",
            '"consideration": 7,',
            "politeness: 9",
            "Overall: 8",
        ]
    )
    assert parse_judgment(EIGHT, text) == {
        "clarity": 8, "accuracy": 9, "completeness": 7, "conciseness": 6.5, "safety": 10,
        "specificity": 4, "consideration": 7, "politeness": 9, "overall": 8,
    }


@pytest.mark.parametrize(
    "text",
    [
        eight_json(accuracy=11),  # out of range
        eight_json(safety=0),
        eight_json(clarity="high"),  # not a number
        json.dumps({n: 5 for n in CRITERIA8}),  # incomplete: no overall
        "\n".join(f"{n}: 5" for n in CRITERIA8),  # incomplete line form
        "\n".join(f"{n}: 5" for n in EIGHT.names).replace("clarity: 5", "clarity: 12"),
        "\n".join(f"{n}: 5" for n in EIGHT.names).replace("clarity: 5", "clarity: 5/7"),
        '{"clarity": 5, "accuracy": ',  # truncated JSON
        "[[8]]",  # the single-rating form is only for single-criterion rubrics
        "All good, 9 out of 10.",
    ],
)
def test_parse_rejects_bad_eight_category(text):
    assert parse_judgment(EIGHT, text) is None


# ---------------------------------------------------------------------------------------------------------- questions


def test_fixture_questions_load():
    for r in (MT, EIGHT):
        qs = load_questions(FIXTURE_QUESTIONS, r)
        assert len(qs) == 8 and all(len(q["turns"]) == 2 for q in qs)
        assert len({q["category"] for q in qs}) >= 4


@pytest.mark.parametrize(
    "line, msg",
    [
        ('{"id": "a"}', "'turns' must be a list of 1 to 2"),
        ('{"id": "a", "turns": ["1", "2", "3"]}', "'turns' must be a list of 1 to 2"),
        ('{"id": "a", "turns": [""]}', "'turns' must be a list"),
        ('{"id": "a", "turns": ["q"], "reference": ["r", "s"]}', "'reference' must be a list of 1"),
        ('{"id": "a", "turns": ["q"], "weights": {"accuracy": -1}}', "'weights.accuracy' must be a finite number"),
        ('{"id": "a", "turns": ["q"], "weights": {"acuracy": 2}}', "'weights.acuracy' is not a weighted criterion"),
        ('{"id": "a", "turns": ["q"], "weights": {"overall": 2}}', "'weights.overall' is not a weighted criterion"),
        ('{"id": "a", "turns": ["q"], "category": 3}', "'category' must be a string"),
        ('{"id": [1], "turns": ["q"]}', "'id' must be"),
    ],
)
def test_load_questions_errors(tmp_path, line, msg):
    p = tmp_path / "q.jsonl"
    p.write_text('{"id": "ok", "turns": ["fine"]}\n\n' + line + "\n")
    with pytest.raises(ConfigError, match=f"{p}:3: .*{re.escape(msg)}"):
        load_questions(p, EIGHT)


def test_load_questions_duplicate_id(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"id": 1, "turns": ["a"]}\n{"id": 1, "turns": ["b"]}\n')
    with pytest.raises(ConfigError, match=r"q.jsonl:2: duplicate id 1 \(first on line 1\)"):
        load_questions(p)


# ------------------------------------------------------------------------------------------------------------ prompts


def test_mt_bench_second_turn_has_first_turn_context():
    q = {"id": "m", "turns": ["FIRST QUESTION", "SECOND QUESTION"], "reference": ["REF ONE", "REF TWO"]}
    first = judge_messages(MT, q, ["FIRST ANSWER", "SECOND ANSWER"], 1)
    second = judge_messages(MT, q, ["FIRST ANSWER", "SECOND ANSWER"], 2)
    assert [m["role"] for m in second] == ["system", "user"]
    text = second[1]["content"]
    for s in ("FIRST QUESTION", "FIRST ANSWER", "REF ONE", "SECOND QUESTION", "SECOND ANSWER", "REF TWO", "[[rating]]"):
        assert s in text
    assert "question 2" in text and text.index("FIRST ANSWER") < text.index("SECOND QUESTION")
    assert "SECOND" not in first[1]["content"] and "FIRST ANSWER" in first[1]["content"]
    with pytest.raises(ValueError, match="turn must be 1..2"):
        judge_messages(MT, q, ["a", "b"], 3)


def test_eight_category_prompt_asks_for_json_of_every_criterion():
    q = {"id": "e", "turns": ["Q1", "Q2"]}
    text = judge_messages(EIGHT, q, ["A1", "A2"])[1]["content"]
    assert "JSON object" in text and all(f'"{n}":' in text for n in EIGHT.names)
    assert all(s in text for s in ("Q1", "A1", "Q2", "A2"))
    # The format example in the prompt must itself parse, so a judge that copies the format is read correctly.
    example = text.split("for example:\n", 1)[1].split("\n", 1)[0]
    assert parse_judgment(EIGHT, example) is not None


# ------------------------------------------------------------------------------------------------------------ scoring


def test_dynamic_weights_hand_computed():
    # accuracy 10 (1.0), the other seven 1 (0.0), overall 5. Equal weights: 1/8. With accuracy weight 3 and the other
    # seven keeping their default 1, accuracy's share is 3 / 10.
    qs = [{"id": "eq", "turns": ["q"]}, {"id": "acc", "turns": ["q"], "weights": {"accuracy": 3}}]
    reply = eight_json(accuracy=10, **{n: 1 for n in CRITERIA8 if n != "accuracy"})
    out = score(EIGHT, qs, [["a"], ["a"]], CallableJudge(lambda b: [reply] * len(b)))
    by_id = {r["id"]: r for r in out["results"]}
    assert by_id["eq"]["score"] == pytest.approx(0.125)
    assert by_id["acc"]["score"] == pytest.approx(0.3)
    assert by_id["acc"]["weights"]["accuracy"] == pytest.approx(0.3)
    assert out["score"] == pytest.approx((0.125 + 0.3) / 2)
    assert out["raw_mean"] == pytest.approx(1 + 9 * (0.125 + 0.3) / 2)
    assert out["overall"] == pytest.approx(4 / 9)  # reported, not weighted
    assert out["per_criterion"]["accuracy"] == 1.0 and out["per_criterion"]["clarity"] == 0.0
    # A weight of 0 drops a criterion from that question's score.
    zero = [{"id": "z", "turns": ["q"], "weights": {"accuracy": 0}}]
    assert score(EIGHT, zero, [["a"]], CallableJudge(lambda b: [reply] * len(b)))["score"] == 0.0


def test_mt_bench_scores_per_turn_and_category():
    qs = load_questions(FIXTURE_QUESTIONS, MT)[:3]
    seen = []

    def fake(batch):
        seen.extend(batch)
        return ["[[8]]" if "question 2" in m[1]["content"] else "[[5]]" for m in batch]

    out = score(MT, qs, [["a1", "a2"]] * 3, CallableJudge(fake))
    assert len(seen) == 6 and out["n"] == 6 and out["n_judged"] == 6 and out["n_questions"] == 3
    assert out["per_turn"]["1"]["raw_mean"] == 5 and out["per_turn"]["2"]["raw_mean"] == 8
    assert out["raw_mean"] == pytest.approx(6.5) and out["score"] == pytest.approx(5.5 / 9)
    assert set(out["per_category"]) == {q["category"] for q in qs}
    assert [r["turn"] for r in out["results"]] == [1, 2] * 3
    assert out["overall"] is None and out["attempts"] == 6


def test_unparseable_is_reasked_then_counted():
    calls = []

    def flaky(batch):
        calls.append(batch)
        return ["no idea" if len(calls) == 1 else "Rating: [[9]]" for _ in batch]

    out = score(MT, [{"id": "a", "turns": ["q"]}], [["x"]], CallableJudge(flaky))
    assert out["n_judged"] == 1 and out["n_unparseable"] == 0 and out["raw_mean"] == 9
    assert out["results"][0]["attempts"] == 2 and out["attempts"] == 2
    # The re-ask shows the judge its bad reply and the format again.
    assert calls[1][0][-2] == {"role": "assistant", "content": "no idea"}
    assert "[[N]]" in calls[1][0][-1]["content"]


def test_never_parsing_is_excluded_not_zero():
    qs = [{"id": "good", "turns": ["q"]}, {"id": "bad", "turns": ["q"]}]

    def judge(batch):
        return ["[[10]]" if "GOOD" in m[1]["content"] else "garbage " + "x" * 900 for m in batch]

    out = score(MT, qs, [["GOOD"], ["BAD"]], CallableJudge(judge), max_attempts=3)
    bad = out["results"][1]
    assert bad["criteria"] is None and bad["score"] is None and bad["attempts"] == 3
    assert len(bad["judgment"]) <= 510
    assert out["n_unparseable"] == 1 and out["n_judged"] == 1 and out["n"] == 2
    assert out["score"] == 1.0 and out["raw_mean"] == 10  # not dragged down by a zero
    assert out["attempts"] == 4
    none = score(MT, qs[1:], [["BAD"]], CallableJudge(judge), max_attempts=1)
    assert none["score"] is None and none["raw_mean"] is None and none["per_criterion"]["rating"] is None


def test_score_input_errors():
    q = [{"id": "a", "turns": ["q1", "q2"]}]
    with pytest.raises(ValueError, match="1 questions but 2 answer lists"):
        score(MT, q, [["a", "b"], ["c", "d"]], CallableJudge(lambda b: []))
    with pytest.raises(ValueError, match="question 'a' has 2 turns"):
        score(MT, q, [["only one"]], CallableJudge(lambda b: []))
    with pytest.raises(JudgeError, match="returned 0 replies for 2 requests"):
        score(MT, q, [["a", "b"]], CallableJudge(lambda b: []))


# ---------------------------------------------------------------------------------------------------- HTTP backend


class FakeOpenAI:
    """A local OpenAI-compatible /v1/chat/completions that plays a script of (status, body, delay) responses."""

    def __init__(self):
        self.script, self.requests = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload, delay = outer.script.pop(0) if outer.script else (200, "[[7]]", 0)
                time.sleep(delay)
                if status == 200:
                    payload = {"choices": [{"message": {"role": "assistant", "content": payload}}]}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client timed out and went away

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.server.shutdown()
    s.server.server_close()


MSGS = [[{"role": "user", "content": "rate this"}]]


def test_http_success(server, monkeypatch):
    monkeypatch.setenv("SFTJAX_TEST_KEY", "sk-test")
    server.script = [(200, "Rating: [[8]]", 0)]
    j = HttpJudge(server.url + "/v1/", "judge-model", api_key_env="SFTJAX_TEST_KEY", max_tokens=64)
    assert j(MSGS) == ["Rating: [[8]]"]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"] == {"model": "judge-model", "messages": MSGS[0], "temperature": 0.0, "max_tokens": 64}
    # End to end through score, with several requests on the thread pool.
    qs = [{"id": i, "turns": ["q"]} for i in range(3)]
    out = score(MT, qs, [["a"]] * 3, HttpJudge(server.url, "m", api_key_env=None))
    assert out["raw_mean"] == 7 and out["n_judged"] == 3 and server.requests[-1]["auth"] is None


@pytest.mark.parametrize(
    "url",
    ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/", "http://h:1/v1/chat/completions"],
)
def test_chat_completions_url(url):
    assert chat_completions_url(url) == "http://h:1/v1/chat/completions"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_http_retries_transient_errors(server, status):
    server.script = [(status, {"error": {"message": "busy"}}, 0), (200, "[[6]]", 0)]
    assert HttpJudge(server.url, "m", retries=2)(MSGS) == ["[[6]]"]
    assert len(server.requests) == 2


def test_http_retries_timeouts(server):
    server.script = [(200, "[[2]]", 1.0), (200, "[[3]]", 0)]
    assert HttpJudge(server.url, "m", timeout_s=0.2, retries=1)(MSGS) == ["[[3]]"]


def test_http_gives_up_after_retries(server):
    server.script = [(502, {"error": {"message": "upstream down"}}, 0)] * 3
    with pytest.raises(JudgeError, match=r"failed after 3 attempts; last error: HTTP 502: upstream down"):
        HttpJudge(server.url, "m", retries=2)(MSGS)


def test_http_endpoint_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    j = HttpJudge(f"http://127.0.0.1:{port}", "m", retries=2)
    with pytest.raises(JudgeError, match=rf"http://127\.0\.0\.1:{port}/v1/chat/completions failed after 3 attempts"):
        j(MSGS)


def test_http_400_fails_at_once(server):
    server.script = [(400, {"error": {"message": "model 'm' does not exist"}}, 0)]
    with pytest.raises(JudgeError, match=r"rejected: HTTP 400: model 'm' does not exist"):
        HttpJudge(server.url, "m", retries=3)(MSGS)
    assert len(server.requests) == 1


def test_http_malformed_response(server):
    server.script = [(200, None, 0)]  # content null: an empty, unparseable reply, not a crash
    assert HttpJudge(server.url, "m")(MSGS) == [""]
    server.script = [(201, {"unexpected": True}, 0)]
    with pytest.raises(JudgeError, match="is not a chat completion"):
        HttpJudge(server.url, "m")(MSGS)


def test_http_config_errors():
    with pytest.raises(ConfigError, match="http"):
        HttpJudge("localhost:8000", "m")
    with pytest.raises(ConfigError, match="retries >= 0"):
        HttpJudge("http://x", "m", retries=-1)


def test_callable_judge_checks_replies():
    with pytest.raises(JudgeError, match="reply #0 is NoneType"):
        CallableJudge(lambda b: [None])(MSGS)
    assert math.isclose(score(MT, [{"id": 1, "turns": ["q"]}], [["a"]], lambda b: ["[[4]]"])["raw_mean"], 4)


# ------------------------------------------------------------------------------------------- aggregation (seeded)


def seeded_judge(seed: int):
    """A fake judge whose ratings are a seeded function of what it is asked: deterministic, different per question,
    so aggregates can be recomputed independently."""
    import hashlib
    import random

    def ratings(messages) -> dict:
        key = hashlib.sha256((str(seed) + messages[-1]["content"]).encode()).hexdigest()
        rng = random.Random(key)
        return {n: rng.randint(1, 10) for n in EIGHT.names}

    return ratings, CallableJudge(lambda batch: ["Verdict.\n" + json.dumps(ratings(m)) for m in batch])


def test_seeded_judge_gives_the_expected_aggregates_per_criterion_category_and_domain():
    from sftjax.config import FIXTURE_DIR

    questions = load_questions(FIXTURE_DIR / "zhang45_questions.jsonl", EIGHT)
    answers = [["An answer."] * len(q["turns"]) for q in questions]
    ratings, judge = seeded_judge(7)
    out = score(EIGHT, questions, answers, judge)
    norm = {q["id"]: {k: (v - 1) / 9 for k, v in ratings(judge_messages(EIGHT, q, a)).items()}
            for q, a in zip(questions, answers)}

    def weights(q):
        w = {k: v for k, v in q["weights"].items() if v > 0}
        return {k: v / sum(w.values()) for k, v in w.items()}

    per_q = {q["id"]: sum(w * norm[q["id"]][k] for k, w in weights(q).items()) for q in questions}
    assert out["score"] == pytest.approx(sum(per_q.values()) / len(per_q))
    for c in CRITERIA8:
        applies = [q["id"] for q in questions if q["weights"][c] > 0]
        assert out["per_criterion"][c] == pytest.approx(sum(norm[i][c] for i in applies) / len(applies))
    assert out["per_criterion"]["overall"] == pytest.approx(sum(n["overall"] for n in norm.values()) / len(norm))
    for domain in ("general", "in_domain"):
        ids = [q["id"] for q in questions if q["domain"] == domain]
        assert out["per_domain"][domain]["score"] == pytest.approx(sum(per_q[i] for i in ids) / len(ids))
        assert out["per_domain"][domain]["n"] == len(ids)
    cats = {q["category"] for q in questions}
    assert set(out["per_category"]) == cats and out["n_unparseable"] == 0
    assert score(EIGHT, questions, answers, seeded_judge(7)[1]) == out  # the same seed, the same aggregates


def test_aggregates_by_hand():
    """Two questions, one per domain; accuracy applies only to the first."""
    qs = [{"id": "g", "domain": "general", "category": "math", "turns": ["q"],
           "weights": {**{c: 0 for c in CRITERIA8}, "accuracy": 3, "clarity": 1}},
          {"id": "b", "domain": "in_domain", "category": "ad_copy", "turns": ["q"],
           "weights": {**{c: 0 for c in CRITERIA8}, "clarity": 1, "politeness": 1}}]
    replies = iter([eight_json(accuracy=10, clarity=1, politeness=4, overall=7),
                    eight_json(accuracy=1, clarity=10, politeness=4, overall=10)])
    out = score(EIGHT, qs, [["a"], ["a"]], CallableJudge(lambda b: [next(replies) for _ in b]))
    assert out["per_domain"]["general"]["score"] == pytest.approx(0.75)  # 3/4 * 1 + 1/4 * 0
    assert out["per_domain"]["in_domain"]["score"] == pytest.approx(0.5 * 1 + 0.5 * 3 / 9)
    assert out["per_criterion"]["accuracy"] == 1.0  # the second question's 1 does not apply
    assert out["per_criterion"]["clarity"] == pytest.approx(0.5)
    assert out["per_criterion"]["politeness"] == pytest.approx(3 / 9)
    assert out["per_criterion"]["safety"] is None  # applies to no question
    assert out["overall"] == pytest.approx((6 / 9 + 1) / 2)


@pytest.mark.parametrize("line, msg", [
    ({"id": "x", "domain": "general", "category": "c", "turns": ["t"], "points": ["p"], "weights": {"clarity": 1}},
     "line 2: missing field 'guidelines'"),
    ({"id": "x", "domain": "general", "category": "c", "turns": ["t"], "points": ["p"],
      "weights": {"charm": 1}, "guidelines": {}}, r"line 2: field 'weights\.charm': unknown criterion"),
    ({"id": "x", "domain": "general", "category": "c", "turns": ["t"], "points": ["p"],
      "weights": {"clarity": -1}, "guidelines": {}}, r"line 2: 'weights\.clarity' must be a finite number >= 0"),
    ({"id": "x", "domain": "general", "category": "c", "turns": ["t"], "points": ["p"],
      "weights": {"clarity": 2}, "guidelines": {}}, r"line 2: field 'guidelines\.clarity' is missing"),
    ({"id": "x", "domain": "sales", "category": "c", "turns": ["t"], "points": ["p"],
      "weights": {"clarity": 1}, "guidelines": {"clarity": "g"}}, "line 2: field 'domain' must be one of"),
    ({"id": "x", "domain": "general", "category": "c", "turns": ["t"], "weights": {"clarity": 1},
      "guidelines": {"clarity": "g"}}, "line 2: missing field 'reference' or 'points'"),
])
def test_bad_input_is_reported_question_set(tmp_path, line, msg):
    path = tmp_path / "qs.jsonl"
    header = {"format": "sftjax-questions/1", "name": "mine", "license": "CC0", "description": "d"}
    path.write_text(json.dumps(header) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: ") + msg.removeprefix("line 2: ")):
        load_questions(path, EIGHT)
