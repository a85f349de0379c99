"""Data privacy and hygiene: PII redaction (measured on a fixture of realistic messages), deduplication and
decontamination, in the pipeline and its statistics."""

import json
from pathlib import Path

import pytest

from sftjax.config import ConfigError, DataConfig, EvalConfig, SourceConfig, SuiteConfig
from sftjax.config.data import REDACT_KINDS, HygieneConfig
from sftjax.data.hygiene import EvalText, find_pii, iban_valid, luhn_valid, redact
from sftjax.data.pipeline import DataPipeline
from sftjax.data.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
PII_FIXTURE = Path(__file__).parent / "fixtures" / "pii_messages.jsonl"


def spans_of(record: dict) -> list[tuple[str, int, int]]:
    """The labelled (kind, start, end) of a fixture message, located in order of appearance."""
    out, pos = [], {}
    for p in record["pii"]:
        start = record["text"].find(p["value"], pos.get(p["value"], 0))
        assert start >= 0, (record["id"], p)
        pos[p["value"]] = start + 1
        out.append((p["kind"], start, start + len(p["value"])))
    return out


def test_redaction_precision_and_recall_per_kind():
    """Every labelled PII span must be found with its kind (recall) and every found span must be labelled
    (precision). A found span counts as a hit when it overlaps a labelled span of the same kind."""
    records = [json.loads(line) for line in PII_FIXTURE.read_text().splitlines() if line.strip()]
    tp = {k: 0 for k in REDACT_KINDS}
    fp = {k: 0 for k in REDACT_KINDS}
    fn = {k: 0 for k in REDACT_KINDS}
    misses = []
    for rec in records:
        gold = spans_of(rec)
        found = find_pii(rec["text"], REDACT_KINDS, "US")
        for kind, s, e in gold:
            if any(k == kind and s < fe and fs < e for fs, fe, k in found):
                tp[kind] += 1
            else:
                fn[kind] += 1
                misses.append(f"missed {kind} {rec['text'][s:e]!r} in {rec['id']}")
        for fs, fe, kind in found:
            if not any(k == kind and s < fe and fs < e for k, s, e in gold):
                fp[kind] += 1
                misses.append(f"false {kind} {rec['text'][fs:fe]!r} in {rec['id']}")
    print(f"\nredaction on {len(records)} messages ({PII_FIXTURE.name}):")
    print(f"{'kind':<12}{'labelled':>9}{'found':>7}{'precision':>11}{'recall':>8}")
    for k in REDACT_KINDS:
        p = tp[k] / max(tp[k] + fp[k], 1)
        r = tp[k] / max(tp[k] + fn[k], 1)
        print(f"{k:<12}{tp[k] + fn[k]:>9}{tp[k] + fp[k]:>7}{p:>11.3f}{r:>8.3f}")
    print("\n".join(misses))
    for k in REDACT_KINDS:
        assert tp[k] + fn[k] >= 10, f"the fixture needs examples of {k}"
        assert tp[k] / max(tp[k] + fp[k], 1) >= 0.9, (k, misses)
        # phone: numbers written nationally (020 7946 0018) are read in data.hygiene.phone_region (US here), so the
        # fixture's UK, German, French and Australian national numbers are out of reach by design
        assert tp[k] / max(tp[k] + fn[k], 1) >= (0.75 if k == "phone" else 0.95), (k, misses)


@pytest.mark.parametrize("text", [
    "Upgrade to v2.14.1 (or version 1.2.3.4) before 2024-03-15 at 14:30.",
    "Total $1,299.99 incl. 19% VAT, or 1.234,56 € in Germany; order ORD-2024-558812, ticket #A7731-22.",
    "Tracking 1Z999AA10123456784 and 9400 1000 0000 0000 0000 00; see section 4.2.1.3, pi is 3.14159.",
    "Card-like but not Luhn-valid: 1234 5678 9012 3456. Invoice INV-000123, SKU 8841-22-A, postal code 94107.",
])
def test_versions_dates_prices_and_order_ids_survive(text):
    assert redact(text, REDACT_KINDS)[0] == text


def test_redaction_replaces_each_kind_with_its_placeholder():
    text = ("Mail jo.doe+billing@mail.example.co.uk or call +1 415-555-0132; card 4111-1111-1111-1111, IBAN "
            "DE89 3704 0044 0532 0130 00, host 203.0.113.7, docs https://docs.example.com/a?b=1.")
    out, counts = redact(text, REDACT_KINDS)
    assert out == ("Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>, IBAN <IBAN>, host <IP>, docs <URL>.")
    assert counts == {k: 1 for k in REDACT_KINDS}
    assert redact(text, ["email"])[0].startswith("Mail <EMAIL> or call +1 415-555-0132")


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")
    assert not iban_valid("DE89 3704 0044 0532 0130")  # too short for Germany


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tails(d: dict) -> dict:
    """Record ids without their directory (ids are source:path:line)."""
    return {k: v.rsplit("/", 1)[-1] if isinstance(v, str) else v for k, v in d.items()}


def qa(q: str, a: str) -> dict:
    return {"prompt": q, "completion": " " + a}


def pipeline(sources: dict, eval_texts=None, **hygiene) -> DataPipeline:
    cfg = DataConfig(seq_len=512, sources=sources, hygiene=HygieneConfig(**hygiene))
    cfg.validate()
    return DataPipeline(cfg, TOK, seed=0, global_rows=2, max_steps=1, log=lambda *_: None, eval_texts=eval_texts)


def test_exact_dedup_keeps_the_first_within_and_across_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [qa("What is 2+2?", "4"), qa("Name a colour.", "Red"),
                                           qa("what is  2+2?", "4"), qa("Other", "x")])
    b = write_jsonl(tmp_path / "b.jsonl", [qa("Name a colour.", "Red"), qa("New question", "y")])
    pipe = pipeline({"a": SourceConfig(path=a, format="prompt_completion", dedup="exact"),
                     "b": SourceConfig(path=b, format="prompt_completion", dedup="exact")})
    sa, sb = pipe.source_stats["a"], pipe.source_stats["b"]
    assert (sa.examples, sa.duplicates, sb.examples, sb.duplicates) == (3, 1, 1, 1)
    assert [tails(d) for d in sa.dropped_duplicates] == [{"record": "a.jsonl:3", "duplicate_of": "a.jsonl:1"}]
    assert [tails(d) for d in sb.dropped_duplicates] == [{"record": "b.jsonl:1", "duplicate_of": "a.jsonl:2"}]
    stats = pipe.stats()
    assert stats["main"]["a"]["duplicates"] == 1 and stats["source_records"]["b"]["duplicates"] == 1


def test_near_dedup_follows_the_threshold(tmp_path):
    base = ("The quarterly report shows that revenue grew by twelve percent while costs stayed flat, "
            "driven mostly by the new subscription tier and lower churn in the enterprise segment")
    near = base.replace("twelve", "eleven")  # one word of thirty changed
    far = "A completely different text about gardening, tomatoes, watering schedules and the best soil for herbs."
    path = write_jsonl(tmp_path / "n.jsonl", [qa("Summarize.", base), qa("Summarize.", near), qa("Summarize.", far)])
    src = {"n": SourceConfig(path=path, format="prompt_completion", dedup="near")}
    assert pipeline(src, near_threshold=0.5).source_stats["n"].duplicates == 1
    assert pipeline(src, near_threshold=1.0).source_stats["n"].duplicates == 0
    exact_only = {"n": SourceConfig(path=path, format="prompt_completion", dedup="exact")}
    assert pipeline(exact_only).source_stats["n"].duplicates == 0


def test_decontamination_drops_overlapping_examples_and_names_the_eval_item(tmp_path):
    question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?")
    rows = [qa(question, "72"), qa("Tell me about clips.", "Clips hold paper together."),
            qa("Short one", "Natalia sold clips")]  # shares fewer words than any n-gram
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    texts = [EvalText("math", "gsm-1", question), EvalText("math", "gsm-2", "72")]
    pipe = pipeline({"t": SourceConfig(path=path, format="prompt_completion", decontaminate=True)}, eval_texts=texts)
    s = pipe.source_stats["t"]
    assert s.contaminated == 1 and s.examples == 2
    assert [tails(d) for d in s.dropped_contaminated] == [{"record": "train.jsonl:1", "suite": "math",
                                                           "item": "gsm-1", "overlap": 1.0}]


def test_decontamination_reads_every_suite_kind(tmp_path):
    from sftjax.eval.contamination import eval_texts

    math = write_jsonl(tmp_path / "m.jsonl", [{"question": "Q one two three", "answer": "7"}])
    judge = write_jsonl(tmp_path / "j.jsonl", [{"id": "x", "turns": ["First turn"], "reference": ["Ref"]}])
    loss = write_jsonl(tmp_path / "l.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "there"}]}])
    ev = EvalConfig(suites={"m": SuiteConfig(kind="math", path=math), "j": SuiteConfig(kind="judge", path=judge),
                            "l": SuiteConfig(kind="loss", path=loss)})
    data = DataConfig(sources={"s": SourceConfig(path="x.jsonl", decontaminate=True)})
    got = {(t.suite, t.text) for t in eval_texts(ev, data)}
    assert got == {("m", "Q one two three"), ("m", "7"), ("j", "First turn"), ("j", "Ref"), ("l", "hi\nthere")}
    assert eval_texts(ev, DataConfig(sources={"s": SourceConfig(path="x.jsonl")})) == []  # nothing asked, nothing read


def test_bad_input_is_reported_decontamination_suite_missing(tmp_path):
    from sftjax.eval.contamination import eval_texts

    data = DataConfig(sources={"s": SourceConfig(path="x.jsonl", decontaminate=True)})
    ev = EvalConfig(suites={"gsm": SuiteConfig(kind="math", path=str(tmp_path / "nope.jsonl"))})
    with pytest.raises(ConfigError, match=r"eval suite 'gsm'.*nope\.jsonl does not exist"):
        eval_texts(ev, data)
    with pytest.raises(ConfigError, match="eval.suites is empty"):
        eval_texts(EvalConfig(), data)


@pytest.mark.parametrize("source, hygiene, key", [
    ({"redact": ["email", "ssn"]}, {}, "data.sources.s.redact"),
    ({"redact": "some"}, {}, "data.sources.s.redact"),
    ({"dedup": "fuzzy"}, {}, "data.sources.s.dedup"),
    ({"dedup": "near"}, {"near_threshold": 0.0}, "data.hygiene.near_threshold"),
    ({"dedup": "near"}, {"near_threshold": 1.5}, "data.hygiene.near_threshold"),
    ({"decontaminate": True}, {"overlap": 2.0}, "data.hygiene.overlap"),
    ({"redact": "all"}, {"phone_region": "USA"}, "data.hygiene.phone_region"),
])
def test_bad_input_is_reported_hygiene_config(source, hygiene, key):
    """Checked when the config is validated, before any file is read (the source path does not even exist)."""
    cfg = DataConfig(sources={"s": SourceConfig(path="/does/not/exist.jsonl", **source)},
                     hygiene=HygieneConfig(**hygiene))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()


def test_redaction_in_the_pipeline_is_counted_and_reaches_the_tokens(tmp_path):
    rows = [qa("My e-mail is ann@example.com, call +1 212-555-0187.", "Noted, Ann."), qa("No PII here, v1.2.3", "ok")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pipe = pipeline({"p": SourceConfig(path=path, format="prompt_completion", redact="all")})
    s = pipe.source_stats["p"]
    assert s.redacted == {"email": 1, "phone": 1} and s.redacted_records == 1 and s.examples == 2
    text = TOK.decode(pipe.examples["p"][0]["input_ids"].tolist())
    assert "<EMAIL>" in text and "<PHONE>" in text and "ann@example.com" not in text
