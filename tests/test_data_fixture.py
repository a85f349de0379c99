"""The fixture source: masks, packing, document isolation, and bad input that is reported, never silent."""

import json

import numpy as np
import pytest

from sftjax.config import FIXTURE_DIR, ConfigError, DataConfig, SourceConfig
from sftjax.data.fixture import ByteTokenizer, FixtureStream
from tests.helpers import tiny_config


def stream(tmp_path=None, seq_len=256, **sources):
    cfg = tiny_config().data if not sources else DataConfig(seq_len=seq_len, sources={
        name: SourceConfig(path=str(path)) for name, path in sources.items()})
    cfg.seq_len = seq_len
    return FixtureStream(cfg, seed=0)


def test_eos_is_trained():
    s = stream(arith=FIXTURE_DIR / "arith.jsonl")  # no document is truncated here, so each ends with its EOS
    batch = s.next_batch(8)
    eos = ByteTokenizer.eos_id
    for r in range(8):
        seg = batch["segment_ids"][r]
        for d in np.unique(seg[seg > 0]):
            last = np.nonzero(seg == d)[0][-1]
            assert batch["targets"][r, last] == eos and batch["loss_mask"][r, last]


def test_no_label_crosses_document_boundary():
    s = stream(arith=FIXTURE_DIR / "arith.jsonl")
    b = s.next_batch(8)
    same_doc_next = (b["segment_ids"][:, 1:] == b["segment_ids"][:, :-1]) & (b["segment_ids"][:, :-1] > 0)
    # inside a document, each target is the next input token
    np.testing.assert_array_equal(b["targets"][:, :-1][same_doc_next], b["input_ids"][:, 1:][same_doc_next])
    # at a document's last slot the target is its EOS, never the next document's first token (BOS)
    last = (~same_doc_next) & (b["segment_ids"][:, :-1] > 0)
    assert (b["targets"][:, :-1][last] == ByteTokenizer.eos_id).all()
    assert not b["loss_mask"][b["segment_ids"] == 0].any()  # padding carries no loss


def test_prompts_are_masked_and_positions_reset(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "Q: 2+2?\nA:", "completion": " 4"}) + "\n")
    s = stream(seq_len=64, qa=path)
    row = s.next_batch(1)
    seg = row["segment_ids"][0]
    first = np.nonzero(seg == 1)[0]
    assert row["positions"][0, first].tolist() == list(range(len(first)))
    tok = ByteTokenizer()
    trained_targets = row["targets"][0, first][row["loss_mask"][0, first]]
    assert tok.decode(trained_targets) == " 4"  # completion bytes (+ EOS, which decode skips)
    assert trained_targets[-1] == tok.eos_id


def test_packing_fill_is_high():
    s = stream(seq_len=2048)
    b = s.next_batch(32)
    assert (b["segment_ids"] > 0).mean() >= 0.98


def test_bad_input_is_reported_malformed_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        stream(seq_len=64, bad=path)


def test_bad_input_is_reported_missing_fields(tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match=r"fields.jsonl:1: expected key 'text' or keys 'prompt' and 'completion'"):
        stream(seq_len=64, f=path)


def test_bad_input_is_reported_empty_and_missing_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="no usable records"):
        stream(seq_len=64, e=empty)
    with pytest.raises(ConfigError, match="not found"):
        stream(seq_len=64, m=tmp_path / "missing.jsonl")


def test_bad_input_is_reported_overlong_truncated_and_counted(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "x" * 500}) + "\n" + json.dumps({"text": "short"}) + "\n"
                    + json.dumps({"prompt": "p" * 500, "completion": "c"}) + "\n")
    s = stream(seq_len=64, long=path)
    assert s.stats["long"].truncated == 2  # the long text and the long prompt
    assert s.stats["long"].dropped == 1  # the truncated prompt left no completion token to learn from
    assert len(s.docs[0]) == 2


def test_bad_input_is_reported_bad_weight():
    cfg = tiny_config()
    cfg.data.sources["arith"].weight = -1.0
    with pytest.raises(ConfigError, match="data.sources.arith.weight"):
        cfg.validate()
