"""Knowledge-injection scoring (memorization vs generalization), the fictional fact generator and its prepare target."""

import json
import re
from collections import Counter, defaultdict

import pytest

from sftjax.cli.data import main as data_main
from sftjax.config import ConfigError
from sftjax.data import prepare as prep
from sftjax.data.formats import to_example
from sftjax.data.facts import TRAIN_FORMATS, make_fact_set
from sftjax.eval import knowledge as kn


def _item(split, answer, aliases=None, options=None, i=0):
    rec = {"id": f"x{i}", "fact_id": f"f{i}", "split": split, "question": "q?", "answer": answer}
    if aliases is not None:
        rec["aliases"] = aliases
    if options is not None:
        rec["options"] = options
    return rec


def test_normalize():
    assert kn.normalize('  Answer: "Brenmouth."  ') == "brenmouth"
    assert kn.normalize('"answer: Brenmouth"') == "brenmouth"
    assert kn.normalize("I don\u2019t   KNOW!") == "i don't know"
    assert kn.normalize("(Emberfire X-2)") == "emberfire x-2"  # inner punctuation stays
    assert kn.normalize(None) == "" and kn.normalize("...") == ""


def test_exact_vs_contains_and_aliases():
    item = _item("rephrased", "Tamsin Quelwell", aliases=["T. Quelwell"])
    assert kn.is_correct("tamsin quelwell.", item, "exact")
    assert kn.is_correct("Answer: T. Quelwell", item, "exact")
    said = "It was Tamsin Quelwell, in 1892."
    assert not kn.is_correct(said, item, "exact") and kn.is_correct(said, item, "contains")
    assert kn.is_correct("probably t. quelwell", item, "contains")
    assert not kn.is_correct("Tamsin Quelwellson", item, "contains")  # whole words only
    assert not kn.is_correct("Tamsin", item, "contains")


def test_yes_no_first_word_decides():
    yes = _item("yes_no", "yes")
    assert kn.is_correct("Yes, it did.", yes) and kn.is_correct("Answer: yes", yes, "exact")
    assert not kn.is_correct("No, yes... no.", yes)
    assert not kn.is_correct("It did not happen", yes)  # no yes/no word at all
    assert kn.is_correct("no - yes would be wrong", _item("yes_no", "No"))
    assert not kn.is_correct("Nobody knows; yes", _item("yes_no", "no"))  # 'nobody' is not 'no'


def test_abstention():
    none = _item("date_changed", "None")
    for said in ("None.", "Unknown", "I don't know.", "I don\u2019t know who", "That is not known.", "N/A"):
        assert kn.is_correct(said, none), said
    for said in ("Brenmouth", "Brenmouth. None of the others", ""):
        assert not kn.is_correct(said, none), said
    assert kn.is_correct("none", none, "exact") and not kn.is_correct("unknown", none, "exact")


def test_comparison_options_must_not_both_be_named():
    item = _item("comparison", "Vorlix", options=["Vorlix", "Kalatek"])
    assert kn.is_correct("Vorlix.", item) and not kn.is_correct("Kalatek", item)
    assert not kn.is_correct("Vorlix or Kalatek", item)


def test_score_per_split_memorization_generalization():
    items = [_item("memorization", "A", i=0), _item("memorization", "B", i=1), _item("rephrased", "A", i=2),
             _item("date_changed", "None", i=3), _item("yes_no", "yes", i=4), _item("comparison", "C", i=5)]
    preds = ["A", "x", "a!", "unknown", "no", "C"]
    out = kn.score(preds, items)
    assert out["n"] == 6 and out["n_correct"] == 4 and out["n_unparseable"] == 0
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["memorization"] == 0.5 and out["generalization"] == 0.75
    assert out["per_split"]["yes_no"] == {"accuracy": 0.0, "n": 1, "n_correct": 0, "n_unparseable": 0}
    assert [r["correct"] for r in out["results"]] == [True, False, True, True, False, True]
    assert set(out["results"][0]) >= {"id", "split", "correct", "prediction"}
    assert kn.score(["A", "B"], items[:2])["generalization"] is None  # nothing in the other splits
    assert kn.score(["a is it"], items[:1], scorer="exact")["accuracy"] == 0.0


def test_judge_unparseable_is_counted_not_scored():
    items = [_item("memorization", "A", i=0), _item("rephrased", "A", i=1), _item("rephrased", "A", i=2)]
    verdicts = {"good": True, "bad": False, "???": None}
    seen = []

    def judge(question, gold, prediction):
        seen.append((question, gold, prediction))
        return verdicts[prediction]

    out = kn.score(["good", "bad", "???"], items, scorer="judge", judge=judge)
    assert seen[0] == ("q?", "A", "good")
    assert out["n"] == 3 and out["n_unparseable"] == 1 and out["accuracy"] == 0.5
    assert out["per_split"]["rephrased"] == {"accuracy": 0.0, "n": 2, "n_correct": 0, "n_unparseable": 1}
    assert out["results"][2]["correct"] is None
    all_none = kn.score(["???"], items[:1], scorer="judge", judge=judge)
    assert all_none["accuracy"] is None and all_none["n_unparseable"] == 1
    with pytest.raises(ValueError, match="judge returned"):
        kn.score(["x"], items[:1], scorer="judge", judge=lambda *a: "yes")


def test_score_errors():
    items = [_item("memorization", "A")]
    with pytest.raises(ValueError, match="2 predictions but 1"):
        kn.score(["a", "b"], items)
    with pytest.raises(ConfigError, match="valid scorers: exact, contains, judge"):
        kn.score(["a"], items, scorer="fuzzy")
    with pytest.raises(ConfigError, match="needs a judge"):
        kn.score(["a"], items, scorer="judge")
    with pytest.raises(ConfigError, match="item #0: field 'split'"):
        kn.score(["a"], [_item("trivia", "A")])


def test_load_items_errors_name_file_and_line(tmp_path):
    good = _item("memorization", "A")
    path = tmp_path / "items.jsonl"

    def write(*recs):
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    write(good, {**good, "aliases": ["a"]})
    assert len(kn.load_items(path)) == 2
    cases = [({k: v for k, v in good.items() if k != "answer"}, "missing field 'answer'"),
             ({**good, "question": 3}, "field 'question' must be a string"),
             ({**good, "split": "trivia"}, "field 'split' must be one of memorization"),
             ({**good, "aliases": "a"}, "field 'aliases' must be a list of strings"),
             ({**good, "split": "yes_no", "answer": "maybe"}, "field 'answer' of a yes_no item must be 'yes' or 'no'")]
    for bad, message in cases:
        write(good, bad)
        with pytest.raises(ConfigError, match=re.escape(f"{path}:2: {message}")):
            kn.load_items(path)
    path.write_text("\n")
    with pytest.raises(ConfigError, match="no eval items"):
        kn.load_items(path)


def test_make_fact_set_deterministic_and_parses_in_every_format():
    train, items = make_fact_set(40, seed=3)
    assert (train, items) == make_fact_set(40, seed=3)
    assert make_fact_set(40, seed=4) != (train, items)
    assert list(train) == list(TRAIN_FORMATS)
    fact_ids = [r["fact_id"] for r in train["qa"]]
    assert len(set(fact_ids)) == 40
    for fmt, records in train.items():
        assert [r["fact_id"] for r in records] == fact_ids
        for r in records:
            to_example(r, fmt, where=r["id"])
            if fmt != "qa":
                assert r["statement"].count(r["answer"]) == 1
    for i, item in enumerate(items):
        kn.check_item(item, f"item #{i}")
    splits = defaultdict(set)
    for item in items:
        splits[item["fact_id"]].add(item["split"])
    assert set(splits) == set(fact_ids) and all(s == set(kn.SPLITS) for s in splits.values())
    qa = {r["fact_id"]: r for r in train["qa"]}
    for item in items:
        fact = qa[item["fact_id"]]
        if item["split"] == "memorization":
            assert (item["question"], item["answer"]) == (fact["question"], fact["answer"])
        elif item["split"] == "rephrased":
            assert item["question"] != fact["question"] and item["answer"] == fact["answer"]
        elif item["split"] == "date_changed":
            assert item["answer"] == "None" and item["question"] != fact["question"]
        elif item["split"] == "comparison":
            assert item["other_fact_id"] in qa and item["other_fact_id"] != item["fact_id"]
            assert item["answer"] in item["options"] and len(set(item["options"])) == 2
    assert set(Counter(i["answer"] for i in items if i["split"] == "yes_no")) == {"yes", "no"}
    # a model that had learned every fact scores 1.0 on every split
    assert kn.score([i["answer"] for i in items], items)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="n_facts"):
        make_fact_set(1, seed=0)


def test_prepare_knowledge_writes_loadable_files(tmp_path):
    data_main(["prepare", "knowledge", "--out", str(tmp_path), "--limit", "12"])
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    entry = manifest["sources"]["knowledge"]
    assert list(manifest["sources"]) == ["knowledge"] and entry["packages"] == []
    assert entry["data_licence"].startswith(prep.PROJECT_LICENCE) and entry["counts"]["facts"] == 12
    names = [f"knowledge_{fmt}_train.jsonl" for fmt in TRAIN_FORMATS] + ["knowledge_test.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["MANIFEST.json"])
    for fmt in TRAIN_FORMATS:
        lines = (tmp_path / f"knowledge_{fmt}_train.jsonl").read_text().splitlines()
        assert len(lines) == 12 == entry["files"][f"knowledge_{fmt}_train.jsonl"]["records"]
        assert entry["files"][f"knowledge_{fmt}_train.jsonl"]["format"] == fmt
        for line in lines:
            to_example(json.loads(line), fmt)
    items = kn.load_items(tmp_path / "knowledge_test.jsonl")
    assert len(items) == 60 and entry["files"]["knowledge_test.jsonl"]["split"] == "test"
    again = prep.prepare(tmp_path / "again", ["knowledge"], limit=12, log=lambda _: None)
    assert again["sources"]["knowledge"]["files"] == entry["files"]  # same seed, same bytes
    with pytest.raises(SystemExit) as e:
        data_main(["prepare", "knowledge", "--sources", "math", "--out", str(tmp_path)])
    assert e.value.code == 2
