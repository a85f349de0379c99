"""GSM8K answer extraction and scoring on hand-made cases, including the formats models actually produce."""

import json

import pytest

from sftjax.config import ConfigError
from sftjax.eval.math import extract_answer, is_correct, load_gsm8k_jsonl, score, uses_answer_format


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 44", 44.0),
        ("#### -3.5", -3.5),
        ("The answer is 1,234.", 1234.0),
        ("It costs $1,234,567.89 in total", 1234567.89),
        ("She loses -$5 then", -5.0),
        ("#### $-5", -5.0),
        ("Step 1: 2+3 = 5\nStep 2: 5*2 = 10\n#### 10", 10.0),
        ("first 7\n#### 8\nlater junk 99\n#### 12 apples (3 x 4)", 12.0),  # last marker, first number after it
        ("no marker, so 3 then 17.", 17.0),
        ("#### 3/4", 0.75),
        ("ages 3-5", 5.0),  # a hyphen between numbers is not a minus sign
        ("-12 apples", -12.0),
        ("1,2,3", 3.0),  # not thousands groups
        ("1,2345", 2345.0),
        ("about .5 of it", 0.5),
        ("value -7.", -7.0),
        ("answer: 5\n####", 5.0),  # empty marker falls back to the last number
        ("I don't know", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_tolerance_and_gold_forms():
    assert is_correct("#### 0.33333", 0.333333)
    assert not is_correct("#### 0.3335", 1 / 3)
    assert is_correct("so 1,234.", "1234")
    assert is_correct("#### 7", 7)
    assert not is_correct("no idea", "7")
    with pytest.raises(ValueError, match="no number"):
        is_correct("#### 7", "seven")


def test_answer_format_counts_only_a_number_after_the_last_marker():
    assert uses_answer_format("so 2 + 2 = 4\n#### 4") and uses_answer_format("#### $1,200 in total")
    assert not uses_answer_format("the answer is 4") and not uses_answer_format(None)
    assert not uses_answer_format("#### 4 ... then again ####")  # the last marker has no number after it
    r = score(["#### 4", "the answer is 10.", "#### nothing", "#### -3.5"], ["4", 10, "2", "-3.5"])
    assert r["n_formatted"] == 2 and r["answer_format"] == 0.5 and r["accuracy"] == 0.75
    assert [x["formatted"] for x in r["results"]] == [True, False, False, True]
    assert score([], [])["answer_format"] is None


def test_score_counts_unparseable_separately():
    r = score(["#### 4", "the answer is 10.", "I cannot tell", "#### -3.5"], ["4", 11, "#### 2", "-3.5"])
    assert r["n"] == 4 and r["n_correct"] == 2 and r["n_unparseable"] == 1
    assert r["accuracy"] == 0.5
    assert [x["correct"] for x in r["results"]] == [True, False, False, True]
    assert r["results"][2] == {"index": 2, "pred": None, "gold": 2.0, "correct": False, "parseable": False,
                               "formatted": False}
    assert score([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="2 predictions but 1"):
        score(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="#0"):
        score(["1"], ["none"])


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_load_gsm8k_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    _write(
        p,
        [
            json.dumps({"id": "a", "instruction": "q1", "output": "2+2=4\n#### 4", "answer": "4"}),
            "",
            json.dumps({"question": "q2", "output": "work\n#### 1,000"}),
            json.dumps({"question": "q3", "answer": -2.5}),
        ],
    )
    probs = load_gsm8k_jsonl(p)
    assert [x["answer"] for x in probs] == [4.0, 1000.0, -2.5]
    assert probs[0]["id"] == "a" and probs[1]["id"] == "m.jsonl:3" and probs[1]["question"] == "q2"


@pytest.mark.parametrize(
    "rec, match",
    [
        ({"question": "q", "output": "no marker 5"}, r"m.jsonl:2: expected an 'answer' field"),
        ({"question": "q", "answer": "none"}, r"m.jsonl:2: field 'answer' holds no number"),
        ({"answer": "4"}, r"m.jsonl:2: expected a string 'instruction' or 'question'"),
    ],
)
def test_load_gsm8k_jsonl_errors_name_file_and_line(tmp_path, rec, match):
    p = tmp_path / "m.jsonl"
    _write(p, [json.dumps({"question": "ok", "answer": "1"}), json.dumps(rec)])
    with pytest.raises(ConfigError, match=match):
        load_gsm8k_jsonl(p)


def test_prepared_math_test_golds_agree_with_output_marker(tmp_path):
    """Every prepared record's stored answer equals what extraction reads from its solution text."""
    from sftjax.data.prepare import prepare

    prepare(tmp_path, ["math"], limit=None, seed=0)
    path = tmp_path / "math_test.jsonl"
    probs = load_gsm8k_jsonl(path)
    assert probs
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for prob, rec in zip(probs, recs):
        assert abs(extract_answer(rec["output"]) - prob["answer"]) < 1e-4, rec["id"]
