"""The bundled fixture source: byte-level or Hugging Face tokens, prompt masking and best-fit packing into rows.

This is the stand-in that keeps the engine runnable and testable until the Grain data pipeline lands (it will replace
this module). It already produces the batch contract the train step consumes:

    input_ids, targets, loss_mask (bool), segment_ids (0 = padding), positions (reset per document),
    source_ids (-1 = padding)        all [rows, seq_len]

A document of n tokens fills n-1 slots: inputs are tokens[:-1], targets tokens[1:], so no label ever crosses a
document boundary and the EOS of every document is a trained target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from sftjax.config import ConfigError, DataConfig
from sftjax.data.jsonl import read_jsonl


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS and EOS."""

    bos_id = 256
    eos_id = 257
    pad_id = 0
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def encode_text(self, text: str) -> tuple[list[int], list[bool]]:
        ids = [self.bos_id] + self.encode(text) + [self.eos_id]
        return ids, [True] * len(ids)

    def encode_pair(self, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
        p, c = self.encode(prompt), self.encode(completion)
        return [self.bos_id] + p + c + [self.eos_id], [False] * (1 + len(p)) + [True] * (len(c) + 1)


class ChatTokenizer:
    """A Hugging Face tokenizer; prompt/completion records become a user turn and an assistant turn of the
    tokenizer's own chat template, with loss on the assistant turn only (its end-of-turn token included)."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.tok = AutoTokenizer.from_pretrained(self.path)
        if self.tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {self.path}: has no eos_token; documents could not end")
        self.eos_id = self.tok.eos_token_id
        self.vocab_size = len(self.tok)

    def _ids(self, x) -> list[int]:
        return list(x["input_ids"] if hasattr(x, "keys") else x)

    def encode_text(self, text: str) -> tuple[list[int], list[bool]]:
        ids = self._ids(self.tok(text)) + [self.eos_id]
        return ids, [True] * len(ids)

    def encode_pair(self, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
        if not self.tok.chat_template:
            p, c = self._ids(self.tok(prompt)), self._ids(self.tok(completion, add_special_tokens=False))
            return p + c + [self.eos_id], [False] * len(p) + [True] * (len(c) + 1)
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        head = self._ids(self.tok.apply_chat_template(turns[:1], add_generation_prompt=True, tokenize=True))
        full = self._ids(self.tok.apply_chat_template(turns, tokenize=True))
        if full[: len(head)] != head:
            raise ConfigError(f"tokenizer {self.path}: its chat template renders the prompt differently with and "
                              "without the answer, so the prompt cannot be masked exactly")
        if self.eos_id not in full[len(head):]:
            full.append(self.eos_id)  # a template without an end-of-turn token: the answer still ends with EOS
        return full, [False] * len(head) + [True] * (len(full) - len(head))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


@dataclass(eq=False)
class Document:
    tokens: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: token is a loss target
    source: int


@dataclass
class SourceStats:
    examples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    dropped: int = 0


def load_source(path: str, source_index: int, seq_len: int, tok, stats: SourceStats) -> list[Document]:
    """Read a JSONL fixture; a malformed line is an error naming file and line, over-long documents are truncated
    to seq_len+1 tokens and counted."""
    if not Path(path).exists():
        raise ConfigError(f"data source file not found: {path}")
    docs = []
    for lineno, rec in read_jsonl(path):
        if "text" in rec:
            ids, trained = tok.encode_text(str(rec["text"]))
        elif "prompt" in rec and "completion" in rec:
            ids, trained = tok.encode_pair(str(rec["prompt"]), str(rec["completion"]))
        else:
            raise ValueError(f"{path}:{lineno}: expected key 'text' or keys 'prompt' and 'completion', "
                             f"got keys {sorted(rec)}")
        if len(ids) > seq_len + 1:
            ids, trained = ids[: seq_len + 1], trained[: seq_len + 1]
            stats.truncated += 1
        if not any(trained[1:]):
            stats.dropped += 1  # nothing left to learn from (e.g. prompt longer than seq_len)
            continue
        docs.append(Document(np.asarray(ids, np.int32), np.asarray(trained, bool), source_index))
    if not docs:
        raise ConfigError(f"data source {path} has no usable records")
    return docs


@dataclass(eq=False)
class _Row:
    seq_len: int
    pieces: list[Document] = field(default_factory=list)
    used: int = 0

    def free(self) -> int:
        return self.seq_len - self.used


def pack_rows(documents: Iterator[Document], seq_len: int, num_bins: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """Best fit over a window of open rows kept in creation order: a document goes into the row with the least room
    that still holds it, else into a new row. Rows leave oldest first, once the oldest is full or the window
    overflows, so documents leave in roughly the order they were drawn (sources stay interleaved)."""
    open_rows: list[_Row] = []
    for doc in documents:
        need = len(doc.tokens) - 1
        fits = [r for r in open_rows if r.free() >= need]
        if fits:
            row = min(fits, key=_Row.free)
            row.pieces.append(doc)
            row.used += need
        else:
            open_rows.append(_Row(seq_len, [doc], need))
        while open_rows and (open_rows[0].free() == 0 or len(open_rows) > num_bins):
            yield materialize(open_rows.pop(0).pieces, seq_len)


class FixtureStream:
    """Infinite, seeded stream of packed rows mixed from the configured sources by weight (per document)."""

    def __init__(self, cfg: DataConfig, seed: int, num_bins: int = 16, tokenizer=None):
        self.cfg = cfg
        self.seq_len = cfg.seq_len
        self.tokenizer = tokenizer or ByteTokenizer()
        self.source_names = list(cfg.sources)
        self.stats = {name: SourceStats() for name in self.source_names}
        self.docs = [
            load_source(src.path, i, cfg.seq_len, self.tokenizer, self.stats[name])
            for i, (name, src) in enumerate(cfg.sources.items())
        ]
        w = np.asarray([cfg.sources[n].weight for n in self.source_names], np.float64)
        self.weights = w / w.sum()
        self.seed = seed
        self.rows_emitted = 0
        self.rng = np.random.default_rng(seed)
        self._orders = [self.rng.permutation(len(d)) for d in self.docs]
        self._cursor = [0] * len(self.docs)
        self._rows = pack_rows(self._documents(), self.seq_len, num_bins)

    def _next_document(self) -> Document:
        s = int(self.rng.choice(len(self.docs), p=self.weights))
        if self._cursor[s] == len(self._orders[s]):
            self._orders[s] = self.rng.permutation(len(self.docs[s]))  # next epoch of this source
            self._cursor[s] = 0
        doc = self.docs[s][self._orders[s][self._cursor[s]]]
        self._cursor[s] += 1
        st = self.stats[self.source_names[s]]
        st.examples += 1
        st.tokens += len(doc.tokens)
        st.loss_tokens += int(doc.trained[1:].sum())
        return doc

    def _documents(self) -> Iterator[Document]:
        while True:
            yield self._next_document()

    def next_row(self) -> dict[str, np.ndarray]:
        self.rows_emitted += 1
        return next(self._rows)

    def state(self) -> dict:
        """What a checkpoint needs to continue this stream exactly: the stream is a pure function of the config
        and seed, so the number of rows handed out is its whole state (the Grain pipeline will checkpoint its own
        iterator instead)."""
        return {"kind": "fixture", "seed": self.seed, "rows": self.rows_emitted}

    def restore(self, state: dict) -> None:
        """Replay a fresh stream up to a checkpoint's position (statistics are recounted along the way)."""
        if state.get("kind") != "fixture" or state.get("seed") != self.seed:
            raise ConfigError(f"checkpoint data state {state} does not belong to this fixture stream (seed {self.seed})")
        if self.rows_emitted:
            raise RuntimeError("restore() needs a fresh stream")
        for _ in range(int(state["rows"])):
            self.next_row()

    def next_batch(self, rows: int) -> dict[str, np.ndarray]:
        batch = [self.next_row() for _ in range(rows)]
        return {k: np.stack([r[k] for r in batch]) for k in batch[0]}


def materialize(docs: list[Document], seq_len: int) -> dict[str, np.ndarray]:
    out = {
        "input_ids": np.zeros(seq_len, np.int32),
        "targets": np.zeros(seq_len, np.int32),
        "loss_mask": np.zeros(seq_len, bool),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
        "source_ids": np.full(seq_len, -1, np.int32),
    }
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
    # Padding is one pseudo-document (segment 0) with increasing positions, so attention stays well-defined on it.
    out["positions"][at:] = np.arange(seq_len - at)
    return out
