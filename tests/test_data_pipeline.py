"""The whole data pipeline: sources -> template -> masks -> stages -> packed batches; counting, stages, resume."""

import json

import numpy as np
import pytest

from sftjax.config import FIXTURE_DIR, ConfigError, DataConfig, MixConfig, SourceConfig, StageConfig
from sftjax.data.pipeline import DataPipeline
from sftjax.data.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
EOT = TOK.convert_tokens_to_ids("<|im_end|>")


def pipeline(sources: dict, stages=(), seq_len=256, rows=4, max_steps=-1, **data):
    cfg = DataConfig(seq_len=seq_len, sources=sources, stages=list(stages), **data)
    cfg.validate()
    return DataPipeline(cfg, TOK, seed=0, global_rows=rows, max_steps=max_steps, log=lambda *_: None)


ARITH = {"arith": SourceConfig(path=str(FIXTURE_DIR / "arith.jsonl"), format="prompt_completion")}
BOTH = {**ARITH, "prose": SourceConfig(path=str(FIXTURE_DIR / "prose.jsonl"), format="text")}


def test_eos_is_trained():
    p = pipeline(ARITH, max_steps=2)
    _, b, _ = p.next_batch()
    seg = b["segment_ids"]
    for r in range(len(seg)):
        for d in np.unique(seg[r][seg[r] > 0]):
            idx = np.nonzero(seg[r] == d)[0]
            # the assistant turn's end-of-turn token is a trained target; ChatML's newline after it is too
            trained = b["targets"][r, idx][b["loss_mask"][r, idx]]
            assert EOT in trained.tolist()


def test_no_label_crosses_document_boundary():
    p = pipeline(BOTH, max_steps=2)
    _, b, _ = p.next_batch()
    seg = b["segment_ids"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    np.testing.assert_array_equal(b["targets"][:, :-1][same], b["input_ids"][:, 1:][same])
    assert not b["loss_mask"][seg == 0].any()


def test_prompts_are_masked():
    p = pipeline(ARITH, max_steps=1, seq_len=128, rows=1)
    _, b, _ = p.next_batch()
    first = np.nonzero(b["segment_ids"][0] == 1)[0]
    trained = b["targets"][0, first][b["loss_mask"][0, first]]
    text = TOK.decode(trained)
    assert text.startswith(" ") and text.rstrip().endswith("<|im_end|>") and "Q:" not in text  # the answer only


def test_stages_run_in_order_with_their_own_mixtures_and_epochs():
    stages = [StageConfig(name="math", epochs=1, mix={"arith": MixConfig(amount="1/10")}),
              StageConfig(name="general", steps=2, mix={"prose": MixConfig(), "arith": MixConfig(amount="1/100")})]
    p = pipeline(BOTH, stages, seq_len=512, rows=4)
    seen = []
    for _ in range(p.total_steps):
        name, b, ends = p.next_batch()
        seen.append((name, ends, set(np.unique(b["source_ids"][b["segment_ids"] > 0]).tolist())))
    assert [s[0] for s in seen] == ["math"] * p.steps[0] + ["general"] * 2
    assert [s[1] for s in seen].count(True) == 2 and seen[p.steps[0] - 1][1]
    assert all(s[2] <= {0} for s in seen[: p.steps[0]])  # stage 1 is arithmetic only
    stats = p.stats()
    assert stats["math"]["arith"]["examples"] == 300  # one epoch over 1/10 of 3000 examples, every one seen
    assert stats["general"]["prose"]["examples"] > 0 and stats["source_records"]["prose"]["records"] == 220


def test_resume_is_exact_across_a_stage_boundary():
    stages = [StageConfig(name="a", steps=3, mix={"arith": MixConfig()}),
              StageConfig(name="b", steps=3, mix={"prose": MixConfig(), "arith": MixConfig()})]
    whole = pipeline(BOTH, stages)
    batches = [whole.next_batch() for _ in range(6)]
    for cut in (2, 3, 4):
        first = pipeline(BOTH, stages)
        for _ in range(cut):
            first.next_batch()
        state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
        resumed = pipeline(BOTH, stages)
        resumed.restore(state)
        for (n1, b1, e1), (n2, b2, e2) in zip(batches[cut:], [resumed.next_batch() for _ in range(6 - cut)],
                                              strict=True):
            assert (n1, e1) == (n2, e2)
            for k in b1:
                np.testing.assert_array_equal(b1[k], b2[k])
        assert resumed.stats() == whole.stats() if cut == 6 else True


def test_max_steps_caps_the_curriculum():
    stages = [StageConfig(name="a", steps=3, mix={"arith": MixConfig()}),
              StageConfig(name="b", steps=3, mix={"prose": MixConfig()})]
    assert pipeline(BOTH, stages, max_steps=4).steps == [3, 1]
    with pytest.raises(ConfigError, match="train.max_steps"):
        pipeline(ARITH)  # one stage without a length and no train.max_steps


def test_bad_input_is_reported_overlong_truncated_or_dropped(tmp_path):
    texts, pairs = tmp_path / "texts.jsonl", tmp_path / "pairs.jsonl"
    texts.write_text(json.dumps({"text": "x" * 500}) + "\n" + json.dumps({"text": "short"}) + "\n")
    pairs.write_text(json.dumps({"prompt": "p" * 500, "completion": "c"}) + "\n"
                     + json.dumps({"prompt": "2+2?", "completion": "4"}) + "\n")
    src = {"texts": SourceConfig(path=str(texts), format="text"),
           "pairs": SourceConfig(path=str(pairs), format="prompt_completion")}
    p = pipeline(src, max_steps=1, seq_len=64)
    t, q = p.source_stats["texts"], p.source_stats["pairs"]
    assert (t.records, t.truncated, t.dropped, t.examples) == (2, 1, 0, 2)
    assert (q.records, q.truncated, q.dropped, q.examples) == (2, 1, 1, 1)  # the cut prompt left nothing to learn
    p = pipeline(src, max_steps=1, seq_len=64, overlong="drop")
    t, q = p.source_stats["texts"], p.source_stats["pairs"]
    assert (t.truncated, t.dropped, t.examples, q.dropped, q.examples) == (0, 1, 1, 1, 1)
    assert p.stats()["main"]["texts"]["dropped"] == 1  # reported in data_stats.json per stage and source
    with pytest.raises(ConfigError, match="missing field 'text'"):  # a record of the wrong format is named
        pipeline({"pairs": SourceConfig(path=str(pairs), format="text")}, max_steps=1, seq_len=64)


def test_bad_input_is_reported_config():
    with pytest.raises(ConfigError, match=r"data.stages.0.mix.poetry"):
        pipeline(ARITH, [StageConfig(mix={"poetry": MixConfig()})], max_steps=1)
    with pytest.raises(ConfigError, match=r"data.sources.arith.format"):
        pipeline({"arith": SourceConfig(path="x.jsonl", format="sonnet")}, max_steps=1)
    with pytest.raises(ConfigError, match=r"data.template"):
        pipeline(ARITH, max_steps=1, template="vicuna")
    with pytest.raises(ConfigError, match=r"data.stages.1"):
        pipeline(BOTH, [StageConfig(name="a", steps=1, mix={"arith": MixConfig()}),
                        StageConfig(name="b", mix={"prose": MixConfig()})])


def test_long_conversations_are_clipped_exactly(tmp_path):
    """Turns wholly past seq_len are not rendered, and the tokens kept are exactly those of the full rendering."""
    from sftjax.data.formats import to_example
    from sftjax.data.templates import clip_turns
    from sftjax.data.templates import render

    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 20}
             for i in range(300)]
    example = to_example({"messages": turns}, "messages")
    clipped = clip_turns(example, TOK, "auto", 257)
    assert 2 <= len(clipped.turns) < 20
    full_ids, full_trained = render(example, TOK, "auto")
    ids, trained = render(clipped, TOK, "auto")
    assert len(ids) > 257 and ids[:257] == full_ids[:257] and trained[:257] == full_trained[:257]
    short = to_example({"messages": turns[:10]}, "messages")
    assert clip_turns(short, TOK, "auto", 100_000) is short


class _ThreadGather:
    """process_allgather for P threads standing in for P processes (each call is a barrier)."""

    def __init__(self, n):
        import threading

        self.n, self.barrier, self.slots = n, threading.Barrier(n), [None] * n

    def __call__(self, index):
        def gather(x):
            self.slots[index] = np.asarray(x)
            self.barrier.wait()
            out = np.stack(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has read this round
            return out

        return gather


def _sharded(name, source_id, cfg, n, hygiene=lambda: None):
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from sftjax.data import distributed
    from sftjax.data.pipeline import tokenize_source

    gather = _ThreadGather(n)

    def run(i):
        try:
            return tokenize_source(name, source_id, cfg, TOK, (i, n), partial(distributed.exchange,
                                                                             allgather=gather(i)), hygiene=hygiene())
        except ConfigError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_sharded_equals_single_tokenization():
    """Each process renders only every P-th record; after the exchange every process holds exactly the examples
    and counts one process would have (the multi-process run itself: test_parallel.py)."""
    from sftjax.data.pipeline import tokenize_source

    for source_id, name in enumerate(BOTH):
        cfg = DataConfig(seq_len=512, sources=BOTH, overlong="drop" if name == "prose" else "truncate")
        ref, ref_stats = tokenize_source(name, source_id, cfg, TOK)
        for n in (2, 3):
            for examples, stats in _sharded(name, source_id, cfg, n):
                assert stats == ref_stats and len(examples) == len(ref)
                for a, b in zip(examples, ref, strict=True):
                    assert a.keys() == b.keys()
                    for k in a:
                        np.testing.assert_array_equal(a[k], b[k])
                        assert a[k].dtype == b[k].dtype
        assert ref_stats.dropped > 0 if name == "prose" else ref_stats.dropped == 0


def test_sharded_equals_single_with_hygiene(tmp_path):
    """Redaction, dedup and decontamination run on the whole source in every process, so P processes keep exactly
    the records, texts and counts one process keeps."""
    from sftjax.data.hygiene import EvalText, Hygiene
    from sftjax.data.pipeline import tokenize_source

    rows = [{"prompt": f"Question {i % 7}: mail me at user{i % 3}@example.com", "completion": f" answer {i % 7}"}
            for i in range(40)]
    rows[5] = {"prompt": "How many clips did Natalia sell altogether in April and May this year?", "completion": " 72"}
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = {"h": SourceConfig(path=str(path), format="prompt_completion", redact="all", dedup="near",
                             decontaminate=True)}
    cfg = DataConfig(seq_len=128, sources=src)
    texts = [EvalText("math", "q1", "How many clips did Natalia sell altogether in April and May this year?")]
    ref, ref_stats = tokenize_source("h", 0, cfg, TOK, hygiene=Hygiene(cfg.hygiene, texts))
    assert ref_stats.duplicates > 0 and ref_stats.contaminated == 1 and ref_stats.redacted["email"] > 0
    for n in (2, 3):
        for examples, stats in _sharded("h", 0, cfg, n, hygiene=lambda: Hygiene(cfg.hygiene, texts)):
            assert stats == ref_stats and len(examples) == len(ref)
            for a, b in zip(examples, ref, strict=True):
                np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def test_bad_input_is_reported_by_every_process(tmp_path):
    """A malformed record stops every process with the error one process would give (no hang in the exchange)."""
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"prompt": f"q{i}", "completion": f" a{i}"}) for i in range(9)]
    lines[4] = json.dumps({"prompt": "q4"})  # line 5: no completion; a later line is bad too
    lines[7] = json.dumps({"prompt": 7, "completion": "x"})
    path.write_text("\n".join(lines) + "\n")
    src = {"bad": SourceConfig(path=str(path), format="prompt_completion")}
    cfg = DataConfig(seq_len=64, sources=src)
    results = _sharded("bad", 0, cfg, 2)
    for r in results:
        assert isinstance(r, ConfigError) and "bad.jsonl:5" in str(r) and "completion" in str(r), r
