"""The batch contract, in one place: the fields of a packed row and their dtypes, the empty (padding) row, stacking
rows into a batch, each process's share of a global batch, and its placement on the mesh.

A row holds ``seq_len`` slots. ``input_ids``/``targets`` are a document's tokens shifted by one, ``loss_mask`` says
which targets are trained (a boolean, never a token id), ``segment_ids`` number the documents of the row from 1 (0 is
padding), ``positions`` restart at 0 in every document, ``source_ids`` name the data source (-1 on padding). The data
pipeline, the eval loss suite, the train step, the planner, the tests and the benchmarks all build and read batches
through this module, so a field added here is added everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELDS: dict[str, type] = {
    "input_ids": np.int32,
    "targets": np.int32,
    "loss_mask": np.bool_,
    "segment_ids": np.int32,
    "positions": np.int32,
    "source_ids": np.int32,
}
DOCUMENT_FIELDS = ("input_ids", "targets", "loss_mask", "source_ids")  # per token of a document; packing adds the rest


def empty_row(seq_len: int) -> dict[str, np.ndarray]:
    """A row of padding: segment 0, no loss, positions counting on as padding's own segment."""
    return {"input_ids": np.zeros(seq_len, np.int32), "targets": np.zeros(seq_len, np.int32),
            "loss_mask": np.zeros(seq_len, bool), "segment_ids": np.zeros(seq_len, np.int32),
            "positions": np.arange(seq_len, dtype=np.int32), "source_ids": np.full(seq_len, -1, np.int32)}


def stack_rows(rows: Sequence[dict[str, np.ndarray]], n_rows: int | None = None, seq_len: int | None = None
          ) -> dict[str, np.ndarray]:
    """Rows -> a batch [rows, seq_len] per field, padded with empty rows up to ``n_rows`` (then ``seq_len`` is
    needed when ``rows`` is empty)."""
    rows = list(rows)
    if n_rows is not None and len(rows) < n_rows:
        width = seq_len if seq_len is not None else len(rows[0]["input_ids"])
        rows += [empty_row(width)] * (n_rows - len(rows))
    return {k: np.stack([np.asarray(r[k], dt) for r in rows]) for k, dt in FIELDS.items()}


def process_rows(batch: dict[str, np.ndarray], process_index: int, process_count: int) -> dict[str, np.ndarray]:
    """This process's contiguous share of a global batch (the rows ``to_device`` expects from it)."""
    rows = len(batch["input_ids"])
    if rows % process_count:
        raise ValueError(f"a global batch of {rows} rows does not split over {process_count} processes")
    local = rows // process_count
    return {k: v[process_index * local : (process_index + 1) * local] for k, v in batch.items()}


def batch_shardings(mesh) -> dict:
    """Rows over the data and fsdp mesh axes, the sequence unsharded."""
    from jax.sharding import NamedSharding, PartitionSpec

    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    return {k: rows for k in FIELDS}


def batch_spec(mesh, rows: int, seq_len: int) -> dict:
    """Abstract global batch (shapes, dtypes, shardings): what the train step is compiled for."""
    import jax

    placed = batch_shardings(mesh)
    return {k: jax.ShapeDtypeStruct((rows, seq_len), dt, sharding=placed[k]) for k, dt in FIELDS.items()}


def to_device(local: dict[str, np.ndarray], mesh, global_rows: int) -> dict:
    """This process's rows (``process_rows``) -> the global batch as jax Arrays sharded on ``mesh``."""
    import jax

    placed = batch_shardings(mesh)
    return {k: jax.make_array_from_process_local_data(placed[k], v, (global_rows,) + v.shape[1:])
            for k, v in local.items()}
