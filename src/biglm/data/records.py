"""Labelled examples (records with named fields) from local files or Hugging Face datasets.

Pre-training reads documents (one text each, ``biglm.data.sources``); fine-tuning reads *records*:
mappings with several fields (source/target, text/label, question/context/answers). Formats, by suffix
(an extra ``.gz`` is decompressed): ``.jsonl`` (one object per line), ``.json`` (a list of objects, or an
object whose ``data`` list holds them), ``.csv`` / ``.tsv`` (a header row), ``.parquet``, ``.src`` (line-aligned
with its sibling ``.tgt``, as GLGE and fairseq ship seq2seq data: fields ``source`` and ``target``); or
``hf:NAME`` (``datasets.load_dataset(NAME, hf_config, split=split)``; hub access needed).

Every record keeps where it came from (``file:line``, ``file row N`` or ``hf:NAME[split] row N``) so that
an error names the first offending line. Malformed lines are errors here (a fine-tuning set with a
broken line is almost always a data bug), not skipped as in pre-training. Text and JSON follow
``biglm.textio``'s rules (UTF-8, a BOM accepted; no NaN or Infinity, no over-long integers, no deep
nesting); a field holding null or a non-finite number is refused where it is read (``Record.get``).
"""

from __future__ import annotations

import csv
import gzip
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError
from biglm.textio import decode_utf8, parse_json

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".src")


@dataclass
class Record:
    """One example: its fields and where it was read from."""

    fields: dict[str, Any]
    where: str

    def get(self, name: str, types: type | tuple[type, ...] = str, what: str = "a string") -> Any:
        """Field ``name``, checked: a one-line error naming the location when missing or mistyped."""
        if name not in self.fields:
            keys = ", ".join(sorted(self.fields)) or "none"
            raise BiglmError(f"{self.where}: missing field '{name}' (fields: {keys})")
        value = self.fields[name]
        if value is None:
            raise BiglmError(f"{self.where}: field '{name}' is null; expected {what}")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise BiglmError(f"{self.where}: field '{name}' must be {what}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # parquet and datasets can hold them
            raise BiglmError(f"{self.where}: field '{name}' is {value}, not a finite number; expected {what}")
        return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _suffix(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return next((s for s in RECORD_SUFFIXES if name.endswith(s)), "")


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # the caller closes it


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its newline) of every line, decoded by ``decode_utf8``'s rules."""
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, 1):
                yield lineno, decode_utf8(raw, str(path), lineno)
    except (OSError, EOFError, zlib.error) as e:  # gzip: not gzip, or cut short
        raise BiglmError(f"{path}: cannot be read ({e})") from None


def json_object(line: str | bytes, where: str, hint: str = "") -> dict[str, Any]:
    """One JSONL line as a JSON object (``biglm.textio`` rules), or a one-line ``BiglmError`` naming
    ``where`` (file:line)."""
    try:
        obj = parse_json(line, where)
    except BiglmError as e:
        raise BiglmError(f"{e}{hint}") from None
    if not isinstance(obj, dict):
        raise BiglmError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _jsonl(path: Path) -> Iterator[Record]:
    for lineno, line in text_lines(path):
        if line.strip():
            yield Record(json_object(line, f"{path}:{lineno}"), f"{path}:{lineno}")


def _json(path: Path) -> Iterator[Record]:
    data = parse_json("".join(line for _, line in text_lines(path)), str(path), at_line=True)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise BiglmError(f"{path}: expected a JSON list of objects (or an object with a 'data' list)")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise BiglmError(f"{path} item {i}: expected a JSON object, got {type(obj).__name__}")
        yield Record(obj, f"{path} item {i}")


def _csv(path: Path, delimiter: str) -> Iterator[Record]:
    reader = csv.DictReader((line for _, line in text_lines(path)), delimiter=delimiter)
    try:
        if not reader.fieldnames:
            raise BiglmError(f"{path}: no header row")
        for row in reader:
            if None in row:  # more cells than header names
                raise BiglmError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} cells, the header has "
                                 f"{len(reader.fieldnames)}")
            yield Record(dict(row), f"{path}:{reader.line_num}")
    except csv.Error as e:  # a field over csv's size limit, a stray quote
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise BiglmError(f"{path}:{reader.line_num + 1}: not valid {kind} ({e})") from None  # the line it stopped in


def _line_pairs(path: Path) -> Iterator[Record]:
    tgt = path.with_name(path.name.replace(".src", ".tgt"))
    if not tgt.is_file():
        raise BiglmError(f"{path}: no sibling target file {tgt.name} (a .src file is read with its .tgt)")
    sources = "".join(line for _, line in text_lines(path)).splitlines()
    targets = "".join(line for _, line in text_lines(tgt)).splitlines()
    if len(sources) != len(targets):
        raise BiglmError(f"{path}: {len(sources)} lines but {tgt.name} has {len(targets)}")
    for lineno, (source, target) in enumerate(zip(sources, targets), 1):
        yield Record({"source": source, "target": target}, f"{path}:{lineno}")


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq  # a dependency of `datasets`

    row = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        for batch in batches:
            for obj in batch.to_pylist():
                yield Record(obj, f"{path} row {row}")
                row += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError: not parquet, or damaged
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BiglmError(f"{path}: cannot be read as parquet ({msg})") from None


def _hf(name: str, hf_config: str | None, split: str) -> Iterator[Record]:
    try:
        import datasets
    except ImportError:
        raise BiglmError(f"hf:{name}: the `datasets` package is needed for hf: sources") from None
    try:
        ds = datasets.load_dataset(name, hf_config, split=split)
    except Exception as e:  # hub errors, missing splits, bad configs: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BiglmError(f"hf:{name}: could not load split '{split}' ({msg})") from None
    for i, obj in enumerate(ds):
        yield Record(dict(obj), f"hf:{name}[{split}] row {i}")


def read_records(spec: str, *, split: str = "train", hf_config: str | None = None,
                 limit: int = 0) -> list[Record]:
    """All records of ``spec`` (a file, or ``hf:NAME`` with ``split``/``hf_config``); ``limit`` > 0 keeps the
    first ``limit``. Raises ``BiglmError`` for a missing file, an unknown format, bad lines or no records."""
    if spec.startswith("hf:"):
        records = _hf(spec[3:], hf_config, split)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BiglmError(f"{spec}: file not found")
        kind = _suffix(path)
        if not kind:
            raise BiglmError(f"{spec}: unsupported file type (expected {', '.join(RECORD_SUFFIXES)}, "
                             "optionally .gz, or hf:NAME)")
        records = {".jsonl": lambda: _jsonl(path), ".json": lambda: _json(path), ".parquet": lambda: _parquet(path),
                   ".csv": lambda: _csv(path, ","), ".tsv": lambda: _csv(path, "\t"),
                   ".src": lambda: _line_pairs(path)}[kind]()
    out: list[Record] = []
    for record in records:
        out.append(record)
        if limit and len(out) >= limit:
            break
    if not out:
        raise BiglmError(f"{spec}: no examples (empty split)")
    return out

