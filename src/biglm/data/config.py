"""``DataConfig`` / ``SourceConfig``: which corpora to tokenise, how to mix them and how to pack rows.

Kept free of heavy imports (no torch, no transformers) so that configs load fast and tokenisation
workers start quickly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from biglm.configurable import from_dict, to_dict
from biglm.errors import check


@dataclass
class SourceConfig:
    """One text source.

    ``path`` is a local file (``.txt``, ``.jsonl``, ``.json``, ``.parquet``, optionally ``.gz``), a glob
    of such files, a folder (every supported file under it), or ``hf:NAME`` for a Hugging Face
    ``datasets`` dataset (``hf_config``, ``split``, ``streaming`` and ``data_files`` are passed to
    ``datasets.load_dataset``; e.g. ``hf:HuggingFaceTB/smollm-corpus`` with ``hf_config: cosmopedia-v2``).
    """

    path: str
    """A file, glob, folder or ``hf:NAME`` (see above)."""
    weight: float = 1.0
    """Mixture weight: each packed document comes from this source with probability ∝ weight."""
    name: str | None = None
    """Short name used for cache folders and logs (default: derived from ``path``)."""
    text_field: str = "text"
    """Field holding the text in ``.jsonl`` / ``.json`` objects, parquet columns and HF datasets."""
    split: str = "train"
    """Hugging Face dataset split (not the held-out validation split, see ``DataConfig.val_fraction``)."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name (``hf:`` sources)."""
    streaming: bool = False
    """Stream an ``hf:`` dataset instead of downloading it whole."""
    data_files: list[str] = field(default_factory=list)
    """``data_files`` for ``hf:`` builders such as ``hf:json`` or ``hf:parquet``."""
    max_documents: int | None = None
    """Read at most this many documents (after skipping empty ones)."""
    txt_split: Literal["file", "paragraphs", "lines"] = "file"
    """How a ``.txt`` file is cut into documents: the whole file is one document (default), or one
    document per blank-line-separated paragraph, or one per non-empty line."""

    def __post_init__(self) -> None:
        where = f"SourceConfig(path={self.path!r})"
        check(isinstance(self.path, str) and self.path.strip() != "", f"{where}.path: must be a non-empty string")
        check(self.weight > 0, f"{where}.weight={self.weight}: must be > 0")
        check(self.max_documents is None or self.max_documents > 0,
              f"{where}.max_documents={self.max_documents}: must be > 0 (or null for all)")
        check(self.txt_split in ("file", "paragraphs", "lines"),
              f"{where}.txt_split={self.txt_split!r}: expected 'file', 'paragraphs' or 'lines'")
        check(bool(self.text_field), f"{where}.text_field: must be non-empty")

    @property
    def display_name(self) -> str:
        """``name`` if given, else a file-system-safe name derived from ``path``."""
        if self.name:
            return _safe(self.name)
        p = self.path[3:] if self.path.startswith("hf:") else self.path
        base = p.rstrip("/").split("/")[-1] if not self.path.startswith("hf:") else p.replace("/", "_")
        for ext in (".gz", ".jsonl", ".json", ".parquet", ".txt"):
            base = base.removesuffix(ext)
        if self.hf_config:
            base += f"_{self.hf_config}"
        return _safe(base) or "source"

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the tokenised content (``weight``/``name`` do not)."""
        d = to_dict(self)
        for k in ("weight", "name"):
            d.pop(k)
        return d


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._")[:60]


@dataclass
class DataConfig:
    """Everything the data pipeline needs: tokenizer, sources and their mixture, packing and caching."""

    tokenizer: str = ""
    """Hugging Face tokenizer name or local folder (see ``biglm.data.load_tokenizer``)."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Training sources (paths, globs, folders or ``hf:NAME``; or mappings of the fields below), mixed by weight."""
    anneal_sources: list[SourceConfig] = field(default_factory=list)
    """Second mixture used once the trainer calls ``PackedRows.set_phase("anneal")`` (may be empty)."""
    seq_len: int = 2048
    """Tokens per packed row."""
    min_doc_tokens: int = 20
    """Documents with at most this many tokens are dropped when packing."""
    val_fraction: float = 0.005
    """Fraction of documents (chosen by a hash of index and seed) held out for validation."""
    cache_dir: str = "data/cache"
    """Folder of the tokenised shards (reused across runs with the same sources and tokenizer)."""
    num_workers: int = 0
    """Tokenisation processes; 0 means one per CPU core."""
    seed: int = 1234
    """Seed of the document shuffle and the source sampling."""
    val_seed: int = 0
    """Seed of the held-out split; separate from ``seed`` so that runs with different seeds share one
    validation set (and one tokenised cache)."""

    def __post_init__(self) -> None:
        check(isinstance(self.seq_len, int) and self.seq_len > 0, f"DataConfig.seq_len={self.seq_len}: must be > 0")
        check(self.min_doc_tokens >= 0, f"DataConfig.min_doc_tokens={self.min_doc_tokens}: must be >= 0")
        check(0.0 <= self.val_fraction < 1.0, f"DataConfig.val_fraction={self.val_fraction}: must be in [0, 1)")
        check(self.num_workers >= 0, f"DataConfig.num_workers={self.num_workers}: must be >= 0 (0 = all cores)")
        check(bool(self.cache_dir), "DataConfig.cache_dir: must be non-empty")
        for f in ("seed", "val_seed"):
            check(getattr(self, f) >= 0, f"DataConfig.{f}={getattr(self, f)}: must be >= 0")
        for group in ("sources", "anneal_sources"):
            items = getattr(self, group)
            # Accept bare paths and plain dicts, as written by hand in Python.
            items[:] = [_as_source(s, f"DataConfig.{group}[{i}]") for i, s in enumerate(items)]
            names = [s.display_name for s in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            check(not dup, f"DataConfig.{group}: duplicate source name(s) {', '.join(dup)}; "
                  "set `name:` to tell them apart")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a mapping (e.g. the ``data:`` section of a YAML file); sources may be bare paths."""
        data = dict(data)
        for group in ("sources", "anneal_sources"):
            if isinstance(data.get(group), list):
                data[group] = [{"path": s} if isinstance(s, str) else s for s in data[group]]
        return from_dict(cls, data, "data")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML-serialisable), sources included as dicts."""
        d = to_dict(self)
        for group in ("sources", "anneal_sources"):
            d[group] = [to_dict(s) for s in getattr(self, group)]
        return d

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir)


def _as_source(s: Any, where: str) -> SourceConfig:
    if isinstance(s, SourceConfig):
        return s
    if isinstance(s, str):
        return SourceConfig(path=s)
    check(isinstance(s, dict), f"{where}: expected a path or a mapping of SourceConfig fields, got {s!r}")
    return from_dict(SourceConfig, s, where)
