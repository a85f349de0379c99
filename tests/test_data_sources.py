"""Source readers: every kind reads in file order with traceable ids, fields are renamed, filters are counted, and
bad input is an error naming source, file and line (or, with on_bad_record: drop, a count) -- never silent."""

import csv
import json

import pytest

from sftjax.config import ConfigError
from sftjax.data.sources import Record, SourceSpec, read_source

ROWS = [{"question": "1+1?", "answer": "2", "tag": "a"},
        {"question": "Capital of France?", "answer": "Paris", "tag": "b"},
        {"question": "3*4?", "answer": "12", "tag": "c"}]


def write_jsonl(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


def read(path, name="math", **kw):
    return read_source(SourceSpec(name=name, path=str(path), **kw))


def error(path, match, **kw):
    with pytest.raises(ConfigError) as e:
        read(path, **kw)
    for m in [match] if isinstance(match, str) else match:
        assert m in str(e.value), str(e.value)
    return str(e.value)


# --- one test per reader kind ------------------------------------------------------------------------------------

def test_jsonl_ids_are_lines(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [ROWS[0], "", ROWS[1], ROWS[2]])  # a blank line: ids still match lines
    recs, stats = read(p)
    assert [r.id for r in recs] == [f"math:{p}:1", f"math:{p}:3", f"math:{p}:4"]
    assert [r.fields for r in recs] == ROWS and all(r.source == "math" for r in recs)
    assert (stats.read, stats.filtered_out, stats.bad, stats.kept) == (3, 0, 0, 3)
    lines = p.read_text().splitlines()
    for r in recs:  # an id leads back to the exact line
        assert json.loads(lines[int(r.id.rsplit(":", 1)[1]) - 1]) == r.fields


def test_json_array(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps(ROWS, indent=2))
    recs, _ = read(p)
    assert [r.fields for r in recs] == ROWS and [r.id for r in recs] == [f"math:{p}:{i}" for i in range(3)]


def test_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS + [{"question": "n", "answer": "7", "tag": None}]), p)
    recs, _ = read(p, fields={"instruction": "question"})
    assert [r.fields["instruction"] for r in recs] == ["1+1?", "Capital of France?", "3*4?", "n"]
    assert recs[3].id == f"math:{p}:3" and recs[3].fields["tag"] is None


def test_csv_lines_and_strings(tmp_path):
    p = tmp_path / "m.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerow(["multi\nline question", "12"])  # a quoted newline: the next row starts two lines later
        w.writerow(["q2", "007"])
    recs, _ = read(p)
    assert [r.id for r in recs] == [f"math:{p}:2", f"math:{p}:4"]
    assert recs[0].fields == {"question": "multi\nline question", "answer": "12"}
    assert recs[1].fields["answer"] == "007"  # kept as written, not guessed to be the number 7
    p.write_bytes(b"\xef\xbb\xbfquestion,answer\r\nq,a\r\n")  # a spreadsheet export: BOM and CRLF
    assert read(p, fields={"instruction": "question"})[0][0].fields == {"instruction": "q", "answer": "a"}


def test_hf_disk_dataset_and_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    recs, _ = read(tmp_path / "one", fields={"output": "answer"})
    assert [r.fields["output"] for r in recs] == ["2", "Paris", "12"] and recs[2].id == f"math:{tmp_path / 'one'}:2"
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    recs, _ = read(tmp_path / "dd", split="test")
    assert [r.id for r in recs] == ["math:test:0"] and recs[0].fields == ROWS[1]
    error(tmp_path / "dd", ["data.sources.math.split", "['test', 'train']", "'dev'"], split="dev")


def test_hub_name_dispatches_to_load_dataset(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS[:2])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)  # so "org/name" is surely not a local path
    recs, _ = read("org/name", split="validation")
    assert calls == [("org/name", "validation")] and [r.id for r in recs] == ["math:validation:0", "math:validation:1"]

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    error("org/name", ["data source 'math'", "hub dataset 'org/name'", "ConnectionError: no network"])


def test_kind_detection(tmp_path):
    p = write_jsonl(tmp_path / "data.txt", ROWS)
    error(p, ["data.sources.math.kind", "data.txt"])  # an unknown extension must be named, not guessed
    assert len(read(p, kind="jsonl")[0]) == 3
    (tmp_path / "plain").mkdir()
    error(tmp_path / "plain", ["data.sources.math.path", "save_to_disk"])
    error(tmp_path / "missing.jsonl", ["file not found", "missing.jsonl", "data.sources.math.path"])


# --- mapping and filters -----------------------------------------------------------------------------------------

def test_field_mapping_renames_and_keeps_the_rest(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a", "output": "shadowed", "meta": 1}])
    recs, _ = read(p, fields={"instruction": "question", "output": "answer"})
    assert recs[0].fields == {"instruction": "q", "output": "a", "meta": 1}


def test_filters_drop_and_keep_with_counts(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"text": "```python```"}, {"text": "2 + 3"}, {"text": "prose"},
                                           {"text": "more prose"}, {"text": "keep me"}])
    code_or_math = {"field": "text", "regex": r"```|\d+\s*[-+*/]\s*\d+", "action": "drop"}
    recs, stats = read(p, filters=[code_or_math])
    assert [r.fields["text"] for r in recs] == ["prose", "more prose", "keep me"]
    assert [r.id.rsplit(":", 1)[1] for r in recs] == ["3", "4", "5"]  # ids still point at the original lines
    assert (stats.read, stats.filtered_out, stats.filtered_by, stats.kept) == (5, 2, [2], 3)
    recs, stats = read(p, filters=[code_or_math, {"field": "text", "regex": "prose", "action": "keep"}])
    assert [r.fields["text"] for r in recs] == ["prose", "more prose"] and stats.filtered_by == [2, 1]


def test_filter_searches_messages_as_json(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "x = 1 + 2"}]},
                                              {"messages": [{"role": "user", "content": "hello"}]}])
    recs, _ = read(p, format="messages", filters=[{"field": "messages", "regex": r"\d\s*\+", "action": "drop"}])
    assert [r.id for r in recs] == [f"math:{p}:2"]


def test_from_dict_takes_the_config_spelling(tmp_path):
    spec = SourceSpec.from_dict("general", {"path": "data/chat.jsonl", "format": "messages", "weight": 2.0,
                                            "filter": {"field": "text", "regex": "```", "action": "drop"}})
    assert spec.filters == [{"field": "text", "regex": "```", "action": "drop"}] and spec.format == "messages"


# --- bad input ---------------------------------------------------------------------------------------------------

def test_malformed_json_line(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [ROWS[0], '{"question": "q", ', ROWS[1]])
    error(p, ["data source 'math'", f"{p}:2", "not valid JSON"])


def test_json_file_not_an_array(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"question": "q"}))
    error(p, ["data source 'math'", str(p), "expected a JSON array of objects, got a JSON dict"])
    p.write_text(json.dumps([ROWS[0], "text"]))
    error(p, [f"{p} element 1", "expected a JSON object, got str"])
    write_jsonl(p, ROWS)  # JSON Lines under a .json name: say so
    error(p, [f"{p}:2", "set kind: jsonl"])


def test_mapped_field_missing(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [ROWS[0], {"question": "q"}])
    error(p, ["data source 'math'", f"{p}:2", "canonical field 'output'", "file field 'answer'"],
          fields={"instruction": "question", "output": "answer"})


def test_non_utf8(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    error(p, [f"{p}:2", "not valid UTF-8", "byte offset 36"])  # 19 bytes of line 1, 17 into line 2
    c = tmp_path / "m.csv"
    c.write_bytes(b"question,answer\nq,a\ncaf\xe9,b\n")
    error(c, ["data source 'math'", f"{c}:3", "not valid UTF-8"])
    j = tmp_path / "m.json"
    j.write_bytes(b'[\n{"question": "caf\xe9"}\n]')
    error(j, [f"{j}:2", "not valid UTF-8"])


def test_empty_source_says_why(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", ["", "  "])
    error(p, ["data source 'math'", "no records", "the source itself is empty"])
    p = write_jsonl(tmp_path / "f.jsonl", [{"text": "1+1"}])
    error(p, ["all 1 read were removed", "1 by filters", "data.sources.math.filter"],
          filters=[{"field": "text", "regex": r"\d", "action": "drop"}])
    p = write_jsonl(tmp_path / "b.jsonl", ["not json"])
    error(p, ["all 1 read were removed", "1 as malformed", "not valid JSON"], on_bad_record="drop")


def test_invalid_config_values(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", ROWS)
    error(p, ["data.sources.math.filter", "invalid regular expression", "'(unclosed'"],
          filters=[{"field": "question", "regex": "(unclosed", "action": "drop"}])
    error(p, ["data.sources.math.filter.action", "'remove'"],
          filters=[{"field": "question", "regex": "x", "action": "remove"}])
    error(p, ["data.sources.math.on_bad_record"], on_bad_record="skip")
    error(p, ["data.sources.math.kind"], kind="xml")
    error(p, [f"{p}:1", "filter field 'text' is missing"], filters=[{"field": "text", "regex": "x", "action": "drop"}])


def test_drop_counts_bad_records(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"question": "a", "answer": "1"}\nnot json\n[1, 2]\n{"question": "caf\xe9"}\n'
                  b'{"question": "b"}\n\n{"question": "c", "answer": "3"}\n')
    recs, stats = read(p, fields={"output": "answer"}, on_bad_record="drop")
    assert [r.id for r in recs] == [f"math:{p}:1", f"math:{p}:7"]
    assert (stats.read, stats.bad, stats.kept) == (6, 4, 2)
    reasons = stats.bad_reasons
    assert [r.split(": ", 2)[1] for r in reasons] == [f"{p}:{n}" for n in (2, 3, 4, 5)]
    assert "not valid JSON" in reasons[0] and "got list" in reasons[1] and "UTF-8" in reasons[2]
    assert "canonical field 'output'" in reasons[3]
    c = tmp_path / "m.csv"
    c.write_bytes(b"question,answer\nq,a\nonly-one-field\nq3,a3\n")
    recs, stats = read(c, on_bad_record="drop")
    assert [r.id for r in recs] == [f"math:{c}:2", f"math:{c}:4"] and stats.bad == 1
    assert "expected 2 fields" in stats.bad_reasons[0]


def test_bad_reasons_are_capped(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", ["bad"] * 9 + [ROWS[0]])
    recs, stats = read(p, on_bad_record="drop")
    assert len(recs) == 1 and stats.bad == 9 and len(stats.bad_reasons) == 5


def test_record_is_plain_python(tmp_path):
    recs, _ = read(write_jsonl(tmp_path / "m.jsonl", ROWS[:1]))
    assert recs[0] == Record(id=f"math:{tmp_path / 'm.jsonl'}:1", source="math", fields=ROWS[0])
