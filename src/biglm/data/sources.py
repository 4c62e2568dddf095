"""Read documents (plain strings) from local files, globs, folders or Hugging Face datasets.

File formats, chosen by suffix (an extra ``.gz`` is decompressed on the fly):

* ``.txt``: the whole file is ONE document, unless ``txt_split`` is ``paragraphs`` (blank-line
  separated blocks) or ``lines`` (one document per non-empty line).
* ``.jsonl``: one JSON object per line, text in ``text_field``. Malformed lines (bad JSON, no such
  field, not a string) are skipped and counted; one warning per file names the count and the first
  bad ``file:line``.
* ``.json``: a list of strings or of objects with ``text_field``, or a dict whose values are strings
  or such objects (as in the bundled Wikipedia summaries). Bad entries are skipped and counted.
* ``.parquet``: column ``text_field``.

Empty and whitespace-only documents are skipped silently. A missing file, a glob matching nothing, a
file that is not text (NUL bytes or mostly invalid UTF-8 in its first 64 KiB: a binary file given as a
text source) or a source yielding no document at all raises ``BiglmError`` with one line naming it;
when no record has the ``text_field``, the message says so and lists the fields the records do have.
"""

from __future__ import annotations

import glob
import gzip
import io
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from biglm.data.config import SourceConfig
from biglm.errors import BiglmError
from biglm.textio import parse_json

log = logging.getLogger("biglm.data")

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def as_source(spec: SourceConfig | str | os.PathLike) -> SourceConfig:
    """A ``SourceConfig`` from a config, a path, a glob or an ``hf:NAME`` string."""
    return spec if isinstance(spec, SourceConfig) else SourceConfig(path=str(spec))


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def resolve_files(spec: SourceConfig | str) -> list[Path]:
    """The sorted local files of a source (empty for ``hf:`` sources); raises on nothing to read."""
    spec = as_source(spec)
    if spec.path.startswith("hf:"):
        return []
    p = Path(spec.path).expanduser()
    if any(c in spec.path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise BiglmError(f"{spec.path}: glob matches no file")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
        if not files:
            raise BiglmError(f"{spec.path}: folder holds no .txt/.jsonl/.json/.parquet file")
    elif p.is_file():
        files = [p]
    else:
        raise BiglmError(f"{spec.path}: file not found")
    for f in files:
        if not _kind(f):
            raise BiglmError(f"{f}: unsupported file type (expected .txt, .jsonl, .json or .parquet, optionally .gz)")
    return files


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # the caller closes it


SNIFF_BYTES = 1 << 16


def check_text_file(path: Path) -> None:
    """Raise ``BiglmError`` when the start of ``path`` (decompressed if ``.gz``) is not text."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise BiglmError(f"{path}: cannot be read ({e})") from None
    if b"\x00" in head:
        raise BiglmError(f"{path}: binary data (NUL bytes in its first 64 KiB), not UTF-8 text; a "
                         f"{_kind(path)} source must be a text file")
    text = head.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd")
    if invalid > 0.1 * len(text):
        raise BiglmError(f"{path}: not UTF-8 text ({invalid / len(text):.0%} of its first 64 KiB is not valid "
                         "UTF-8); convert it to UTF-8")


class _BadCounter:
    """Counts skipped records of one file and warns once, at the end, with the first location; remembers
    the fields of the first object that lacked the text field."""

    def __init__(self, path: Path, unit: str):
        self.path, self.unit, self.count, self.first = path, unit, 0, ""
        self.without_field = 0
        self.fields: list[str] | None = None

    def add(self, where: str, record: Any = None) -> None:
        self.count += 1
        self.first = self.first or where
        if isinstance(record, dict):
            self.without_field += 1
            if self.fields is None:
                self.fields = [str(k) for k in record]

    def report(self) -> None:
        if self.count:
            log.warning("%s: skipped %d malformed %s (first at %s)", self.path, self.count, self.unit, self.first)


def _text_of(record: Any, field: str) -> str | None:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get(field), str):
        return record[field]
    return None


def _iter_txt(path: Path, mode: str) -> Iterator[str]:
    with _open_text(path) as f:
        if mode == "file":
            yield f.read()
        elif mode == "lines":
            yield from (line.rstrip("\n") for line in f)
        else:
            block: list[str] = []
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield "".join(block).rstrip("\n")
                    block = []
            if block:
                yield "".join(block).rstrip("\n")


def _iter_jsonl(path: Path, field: str, bad: _BadCounter) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = parse_json(line, f"{path}:{lineno}")
            except BiglmError:  # counted as a bad line below, like any other
                record = None
            text = _text_of(record, field)
            if text is None:
                bad.add(f"{path}:{lineno}", record)
                continue
            yield text


def _iter_json(path: Path, field: str, bad: _BadCounter) -> Iterator[str]:
    with _open_text(path) as f:
        data = parse_json(f.read(), str(path), at_line=True)
    if isinstance(data, dict):
        items: Iterable[tuple[str, Any]] = ((f"key {k!r}", v) for k, v in data.items())
    elif isinstance(data, list):
        items = ((f"item {i}", v) for i, v in enumerate(data))
    else:
        raise BiglmError(f"{path}: expected a JSON list or object of documents, got {type(data).__name__}")
    for where, value in items:
        text = _text_of(value, field)
        if text is None:
            bad.add(f"{path} {where}", value)
            continue
        yield text


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # a dependency of `datasets`
    except ImportError:
        raise BiglmError(f"{path}: reading parquet needs `pyarrow` (pip install pyarrow)") from None

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise BiglmError(f"{path}: no column '{field}' (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))


def _iter_hf(spec: SourceConfig) -> Iterator[str]:
    name = spec.path[3:]
    try:
        import datasets
    except ImportError:
        raise BiglmError(f"{spec.path}: the `datasets` package is needed for hf: sources") from None
    kwargs: dict[str, Any] = {"split": spec.split, "streaming": spec.streaming}
    if spec.data_files:
        kwargs["data_files"] = list(spec.data_files)
    try:
        ds = datasets.load_dataset(name, spec.hf_config, **kwargs)
    except Exception as e:  # hub errors, missing files, bad configs: all one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BiglmError(f"{spec.path}: could not load dataset ({msg})") from None
    features = getattr(ds, "column_names", None)
    if features is not None and spec.text_field not in features:
        raise BiglmError(f"{spec.path}: no field '{spec.text_field}' (fields: {', '.join(features)})")
    for row in ds:
        text = row.get(spec.text_field)
        if isinstance(text, str):
            yield text


def iter_documents(spec: SourceConfig | str) -> Iterator[str]:
    """Iterate the non-empty documents of a source, in a fixed order.

    Paths are resolved eagerly, so a missing file or an empty glob raises ``BiglmError`` at the call;
    a source that turns out to contain no document raises when the iterator is exhausted.
    """
    spec = as_source(spec)
    files = resolve_files(spec)
    return _documents(spec, files)


def _documents(spec: SourceConfig, files: list[Path]) -> Iterator[str]:
    counters: list[_BadCounter] = []

    def raw() -> Iterator[str]:
        if not files:
            yield from _iter_hf(spec)
        for f in files:
            kind = _kind(f)
            if kind != ".parquet":
                check_text_file(f)
            if kind == ".txt":
                yield from _iter_txt(f, spec.txt_split)
            elif kind in (".jsonl", ".json"):
                counters.append(_BadCounter(f, "lines" if kind == ".jsonl" else "entries"))
                reader = _iter_jsonl if kind == ".jsonl" else _iter_json
                yield from reader(f, spec.text_field, counters[-1])
            else:
                yield from _iter_parquet(f, spec.text_field)

    n = 0
    for text in raw():
        if not text.strip():
            continue
        yield text
        n += 1
        if spec.max_documents is not None and n >= spec.max_documents:
            break
    if n:  # warnings for skipped records only when there is a corpus (else the error below says it all)
        for counter in counters:
            counter.report()
        return
    lacking = [c for c in counters if c.without_field]
    if lacking:
        count = sum(c.without_field for c in counters)
        fields = ", ".join(lacking[0].fields or []) or "none"
        raise BiglmError(f"{spec.path}: no record has a string field '{spec.text_field}' ({count:,} records; "
                         f"the first has fields: {fields}); set text_field to the field that holds the text")
    raise BiglmError(f"{spec.path}: no documents found (empty corpus)")


def source_signature(spec: SourceConfig | str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each local file, so that a cache notices edited inputs."""
    out = []
    for f in resolve_files(spec):
        st = f.stat()
        out.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return out
