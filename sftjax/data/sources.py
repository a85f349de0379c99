"""Source readers: one configured data source (a file, a saved Hugging Face dataset or a hub name) becomes an ordered
list of plain-Python records with canonical field names, before any tokenization or mixing.

Studying data composition needs to know where every example came from, so each record's id leads back to its origin:
``NAME:PATH:LINE`` for JSONL and CSV (1-based line the record starts on), ``NAME:PATH:INDEX`` for JSON arrays, Parquet
and a saved single Dataset (0-based), ``NAME:SPLIT:INDEX`` for a saved DatasetDict or a hub dataset. For the same
reason nothing is lost silently: a malformed record stops the read with an error naming source, file and line
(``on_bad_record: error``) or is counted in :class:`SourceReadStats` (``drop``), as is every record a filter removes.
Order is file order, so reads are reproducible and ids stable.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from sftjax.config import ConfigError, require
from sftjax.data.jsonl import read_jsonl

KINDS = ("auto", "jsonl", "json", "parquet", "csv", "hf_disk", "hub")
ON_BAD_RECORD = ("error", "drop")
FILTER_ACTIONS = ("drop", "keep")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
               ".csv": "csv"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SURROGATE = re.compile("[\udc80-\udcff]")  # where errors="surrogateescape" put an undecodable byte
_MAX_REASONS = 5


class _BadRecord(Exception):
    """A record that cannot be used; on_bad_record decides whether it stops the read or is only counted."""


@dataclass
class SourceSpec:
    """One entry of ``data.sources``. ``format`` is carried for the stage that renders records into tokens; this
    layer only renames fields, so it never needs to know what a format means."""

    name: str
    path: str
    format: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # canonical name -> name in the file
    filters: list[dict] = field(default_factory=list)  # {field, regex, action: drop|keep}, applied in order
    split: str = "train"
    kind: str = "auto"
    on_bad_record: str = "error"

    @classmethod
    def from_dict(cls, name: str, raw: Mapping) -> SourceSpec:
        """Takes the data config's spelling (one ``filter`` mapping or a ``filters`` list); keys that belong to the
        mixing pipeline, such as ``weight``, are left to it."""
        require(not ("filter" in raw and "filters" in raw), f"data.sources.{name}.filter", "'filter' or 'filters', "
                 "not both", dict(raw))
        filters = raw.get("filters", raw.get("filter")) or []
        filters = [filters] if isinstance(filters, Mapping) else list(filters)
        spec = cls(name, str(raw.get("path", "")), str(raw.get("format", "")), dict(raw.get("fields") or {}),
                   [dict(f) if isinstance(f, Mapping) else f for f in filters], raw.get("split", "train"),
                   raw.get("kind", "auto"), raw.get("on_bad_record", "error"))
        spec.validate()
        return spec

    def validate(self) -> list[tuple[str, re.Pattern, str]]:
        """Everything checkable without opening a file, so a typo fails in milliseconds rather than after a long
        read; returns the compiled filters."""
        key = f"data.sources.{self.name}"
        require(isinstance(self.path, str) and bool(self.path), f"{key}.path",
                 "a file, a directory saved with save_to_disk, or a hub name 'org/name'", self.path)
        require(self.kind in KINDS, f"{key}.kind", f"one of {KINDS}", self.kind)
        require(self.on_bad_record in ON_BAD_RECORD, f"{key}.on_bad_record", f"one of {ON_BAD_RECORD}",
                 self.on_bad_record)
        require(isinstance(self.split, str) and bool(self.split), f"{key}.split", "a split name", self.split)
        require(isinstance(self.fields, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in
                 self.fields.items()), f"{key}.fields", "a mapping of canonical name to name in the file", self.fields)
        compiled = []
        for i, f in enumerate(self.filters):
            fkey = f"{key}.filter" if len(self.filters) == 1 else f"{key}.filter[{i}]"
            require(isinstance(f, Mapping) and set(f) == {"field", "regex", "action"} and isinstance(f["field"], str),
                     fkey, "a mapping with exactly the keys field (a name), regex and action", f)
            require(f["action"] in FILTER_ACTIONS, f"{fkey}.action", f"one of {FILTER_ACTIONS}", f["action"])
            try:
                compiled.append((f["field"], re.compile(str(f["regex"])), f["action"]))
            except re.error as e:
                raise ConfigError(f"config key '{fkey}.regex' (source '{self.name}'): invalid regular expression "
                                  f"{f['regex']!r}: {e}") from None
        return compiled


@dataclass
class Record:
    id: str  # traceable to the line / row it came from (module docstring)
    source: str
    fields: dict[str, Any]  # mapped keys under their canonical names, every other key as in the file


@dataclass
class SourceReadStats:
    read: int = 0  # records met in the source, whatever became of them
    filtered_out: int = 0
    bad: int = 0  # malformed records dropped under on_bad_record: drop
    bad_reasons: list[str] = field(default_factory=list)  # the first few, so a report can show what went wrong
    filtered_by: list[int] = field(default_factory=list)  # records removed, per filter in order

    @property
    def kept(self) -> int:
        return self.read - self.filtered_out - self.bad


def read_source(spec: SourceSpec) -> tuple[list[Record], SourceReadStats]:
    """Eager on purpose: mixing by weight needs each source's size, and an empty or broken source should fail at
    startup, not hours into a run."""
    filters = spec.validate()
    kind = _detect_kind(spec)
    stats, records = SourceReadStats(filtered_by=[0] * len(filters)), []
    for locator, where, rec in _hf_rows(spec, kind) if kind in ("hf_disk", "hub") else _FILE_READERS[kind](spec):
        stats.read += 1
        try:
            if isinstance(rec, _BadRecord):
                raise rec
            fields = _canonical(rec, spec.fields)
            removed_by = _apply_filters(fields, filters)
        except _BadRecord as e:
            reason = f"data source '{spec.name}': {where}: {e}"
            if spec.on_bad_record == "error":
                raise ConfigError(reason) from None
            stats.bad += 1
            stats.bad_reasons += [reason][: _MAX_REASONS - len(stats.bad_reasons)]
            continue
        if removed_by is None:
            records.append(Record(f"{spec.name}:{locator}", spec.name, fields))
        else:
            stats.filtered_out += 1
            stats.filtered_by[removed_by] += 1
    if not records:
        why = ["the source itself is empty"] if stats.read == 0 else [f"all {stats.read} read were removed"]
        if stats.filtered_out:
            why.append(f"{stats.filtered_out} by filters (config key 'data.sources.{spec.name}.filter', per filter: "
                       f"{stats.filtered_by})")
        if stats.bad:
            why.append(f"{stats.bad} as malformed (first: {stats.bad_reasons[0]})")
        raise ConfigError(f"data source '{spec.name}' ({spec.path}) has no records: " + "; ".join(why))
    return records, stats


def _detect_kind(spec: SourceSpec) -> str:
    p, key = Path(spec.path), f"data.sources.{spec.name}"
    if spec.kind == "hub":
        return "hub"
    if p.is_dir() and spec.kind in ("auto", "hf_disk"):
        require((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file(), f"{key}.path",
                 "a dataset directory written by save_to_disk (with dataset_info.json or dataset_dict.json)", spec.path)
        return "hf_disk"
    if p.is_file() and spec.kind != "hf_disk":
        require(spec.kind != "auto" or p.suffix.lower() in _EXTENSIONS, f"{key}.kind",
                 f"one of {KINDS[1:]}, since the format of {spec.path} cannot be told from its extension", spec.kind)
        return _EXTENSIONS[p.suffix.lower()] if spec.kind == "auto" else spec.kind
    if spec.kind == "auto" and not p.exists() and p.suffix.lower() not in _EXTENSIONS and _HUB_NAME.match(spec.path):
        return "hub"  # not a local path, but shaped like org/name
    what = "not a file" if p.exists() else "file not found"
    raise ConfigError(f"data source '{spec.name}': {what}: {spec.path} (resolved to {p.absolute()}; config key "
                      f"'{key}.path'" + (f", kind {spec.kind}" if spec.kind != "auto" else "") + ")")


def _where_utf8(path: str) -> str:
    """Text-mode decoding reports offsets inside its read buffer, not the file; rescan to name the line and byte."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}:{lineno}: not valid UTF-8 (byte offset {offset + e.start} in the file)"
            offset += len(raw)
    return f"{path}: not valid UTF-8"


def _jsonl_rows(spec: SourceSpec) -> Iterator[tuple[str, str, Any]]:
    if spec.on_bad_record == "error":  # read_jsonl's first error is the run's error
        try:
            for lineno, rec in read_jsonl(spec.path):
                yield f"{spec.path}:{lineno}", f"{spec.path}:{lineno}", rec
        except ConfigError as e:
            raise ConfigError(f"data source '{spec.name}': {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"data source '{spec.name}': {_where_utf8(spec.path)}") from None
        return
    offset = 0  # drop: read_jsonl cannot resume after an error, so its rules are applied line by line here
    with open(spec.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where, offset = f"{spec.path}:{lineno}", offset + len(raw)
            try:
                line = raw.decode("utf-8")
                rec = json.loads(line) if line.strip() else None
            except UnicodeDecodeError as e:
                rec = _BadRecord(f"not valid UTF-8 (byte offset {offset - len(raw) + e.start} in the file)")
            except json.JSONDecodeError as e:
                rec = _BadRecord(f"not valid JSON ({e.msg})")
            if rec is not None:
                yield where, where, rec if isinstance(rec, (dict, _BadRecord)) else _BadRecord(
                    f"expected a JSON object, got {type(rec).__name__}")


def _json_rows(spec: SourceSpec) -> Iterator[tuple[str, str, Any]]:
    head = f"data source '{spec.name}': {spec.path}"
    try:
        data = json.loads(Path(spec.path).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"data source '{spec.name}': {_where_utf8(spec.path)}") from None
    except json.JSONDecodeError as e:
        hint = "; it looks like JSON Lines: set kind: jsonl" if e.msg == "Extra data" else ""
        raise ConfigError(f"{head}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}){hint}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{head}: expected a JSON array of objects, got a JSON {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{spec.path}:{i}", f"{spec.path} element {i}", rec if isinstance(rec, dict) else _BadRecord(
            f"expected a JSON object, got {type(rec).__name__}")


def _csv_rows(spec: SourceSpec) -> Iterator[tuple[str, str, Any]]:
    """The stdlib reader rather than pyarrow's: values stay the strings written in the file (no guessed numbers or
    dates), and each row keeps the line it starts on, quoted newlines included. utf-8-sig: spreadsheet exports start
    with a byte-order mark that would otherwise become part of the first column's name."""
    with open(spec.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if any(_SURROGATE.search(h) for h in header):
            raise ConfigError(f"data source '{spec.name}': {_where_utf8(spec.path)} (in the header)")
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{spec.path}:{start}", reader.line_num + 1
            if len(row) != len(header):
                if row:  # an empty row is a blank line
                    yield where, where, _BadRecord(f"expected {len(header)} fields (the header's), got {len(row)}")
            elif any(_SURROGATE.search(v) for v in row):
                yield where, where, _BadRecord("not valid UTF-8")
            else:
                yield where, where, dict(zip(header, row))


def _parquet_rows(spec: SourceSpec) -> Iterator[tuple[str, str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(spec.path).to_pylist()  # every record ends up as Python objects anyway
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError or its own types for a corrupt file
        raise ConfigError(f"data source '{spec.name}': {spec.path}: not a readable Parquet file ({e})") from None
    for i, rec in enumerate(rows):
        yield f"{spec.path}:{i}", f"{spec.path} row {i}", rec


def _hf_rows(spec: SourceSpec, kind: str) -> Iterator[tuple[str, str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"config key 'data.sources.{spec.name}.kind': reading {kind} sources needs the "
                          "'datasets' package (pip install datasets)"
                          + (f"; {spec.path} is not a local path either" if kind == "hub" else "")) from None
    try:
        if kind == "hub":
            ds, label, where = datasets.load_dataset(spec.path, split=spec.split), spec.split, \
                f"hub dataset {spec.path} split {spec.split}"
        else:
            ds, label, where = datasets.load_from_disk(spec.path), spec.path, spec.path
    except Exception as e:  # network, auth, missing-dataset and corrupt-directory errors: keep their text
        what = f"hub dataset '{spec.path}' split '{spec.split}' (not a local path either)" if kind == "hub" else \
            f"the dataset saved at {spec.path}"
        raise ConfigError(f"data source '{spec.name}': could not load {what}: {type(e).__name__}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        require(spec.split in ds, f"data.sources.{spec.name}.split", f"one of the splits in {spec.path}: "
                 f"{sorted(ds)}", spec.split)
        ds, label, where = ds[spec.split], spec.split, f"{spec.path} split {spec.split}"
    for i, rec in enumerate(ds):
        yield f"{label}:{i}", f"{where} row {i}", rec


_FILE_READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def _canonical(rec: dict, mapping: dict[str, str]) -> dict:
    """Mapped values come first under their canonical names; a file key that a canonical name shadows is dropped,
    since the mapping says where that canonical field really comes from."""
    out = {}
    for canon, name in mapping.items():
        if rec.get(name) is None:
            raise _BadRecord(f"canonical field '{canon}' is mapped to file field '{name}', which this record lacks "
                             f"or has null (its keys: {sorted(map(str, rec))[:20]})")
        out[canon] = rec[name]
    used = set(mapping.values())
    out.update((k, v) for k, v in rec.items() if k not in used and k not in out)
    return out


def _apply_filters(fields: dict, filters: list[tuple[str, re.Pattern, str]]) -> Optional[int]:
    """Index of the first filter that removes the record, else None. A non-string value (a messages list) is
    searched as its JSON text, so one regex reaches every turn."""
    for i, (name, rx, action) in enumerate(filters):
        if name not in fields:
            raise _BadRecord(f"filter field '{name}' is missing (its keys: {sorted(map(str, fields))[:20]})")
        v = fields[name]
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        if (rx.search(text) is not None) != (action == "keep"):
            return i
    return None
