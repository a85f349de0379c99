"""Shared builders for tests: hand-made packed rows and tiny configs."""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from sftjax.config import (
    FIXTURE_DIR,
    Config,
    DataConfig,
    MeshConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    SourceConfig,
    StageConfig,
    TrainConfig,
)
from sftjax.data.batch import empty_row, stack_rows


@dataclass(eq=False)
class Document:
    tokens: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: token is a loss target
    source: int


def materialize(docs: list[Document], seq_len: int) -> dict[str, np.ndarray]:
    """Hand-packed row in the batch contract (sftjax.data.batch), documents in the given order."""
    out = empty_row(seq_len)
    at = 0
    for seg, doc in enumerate(docs, 1):
        n = len(doc.tokens) - 1
        sl = slice(at, at + n)
        out["input_ids"][sl] = doc.tokens[:-1]
        out["targets"][sl] = doc.tokens[1:]
        out["loss_mask"][sl] = doc.trained[1:]
        out["segment_ids"][sl] = seg
        out["positions"][sl] = np.arange(n)
        out["source_ids"][sl] = doc.source
        at += n
    out["positions"][at:] = np.arange(seq_len - at)
    return out


def random_documents(rng: np.random.Generator, lengths, vocab: int, prompt_frac: float = 0.3, source: int = 0):
    docs = []
    for n in lengths:
        tokens = rng.integers(3, vocab, n).astype(np.int32)
        trained = np.arange(n) >= int(n * prompt_frac)
        docs.append(Document(tokens, trained, source))
    return docs


def packed_batch(rng: np.random.Generator, rows: list[list[int]], seq_len: int, vocab: int, sources: int = 1):
    """Rows of documents with the given lengths (each row's lengths must sum to <= seq_len + len(row))."""
    out = []
    for r, lengths in enumerate(rows):
        docs = random_documents(rng, lengths, vocab, source=r % sources)
        out.append(materialize(docs, seq_len))
    return stack_rows(out)


def tiny_config(run_dir: str = "unused", **overrides) -> Config:
    model = ModelConfig(name="tiny", vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2,
                        num_heads=4, num_kv_heads=2, attention_block=64)
    cfg = Config(
        run_dir=run_dir,
        model=model,
        optim=OptimConfig(lr=1e-3, warmup_ratio=0.0),
        mesh=MeshConfig(),
        train=TrainConfig(max_steps=3, global_batch_size=8, log_every=1, progress=False, tensorboard=False),
        data=DataConfig(seq_len=128, sources={
            "arith": SourceConfig(path=str(FIXTURE_DIR / "arith.jsonl"), format="prompt_completion"),
            "prose": SourceConfig(path=str(FIXTURE_DIR / "prose.jsonl"), format="text"),
        }, stages=[StageConfig(name="main", mix={"arith": MixConfig(weight=1.0), "prose": MixConfig(weight=1.0)})]),
    )
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.validate()
    return cfg
