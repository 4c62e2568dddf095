"""The data layer: tokenizers, document sources, on-disk token shards and packed training rows.

Typical use (what the trainer does)::

    from biglm.data import DataConfig, build_rows, load_tokenizer, prepare_data

    tok = load_tokenizer(cfg.data.tokenizer)
    prepared = prepare_data(cfg.data, tok)          # tokenise once into cfg.data.cache_dir
    rows = build_rows(prepared, "train", batch_size=8, rank=rank, world_size=world_size)
    for batch in rows.batches():                    # {"input_ids": (B, T), "document_ids": (B, T)}
        ...

Names are imported lazily so that tokenisation worker processes start without torch/transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DataConfig": "config", "SourceConfig": "config",
    "PreparedData": "prepare", "PreparedSource": "prepare", "prepare_data": "prepare",
    "TokenizerInfo": "tokenizer", "load_tokenizer": "tokenizer", "train_tokenizer": "tokenizer",
    "padded_vocab_size": "tokenizer", "ensure_special_tokens": "tokenizer", "tokenizer_fingerprint": "tokenizer",
    "iter_documents": "sources", "resolve_files": "sources",
    "Shard": "shards", "ShardResult": "shards", "tokenize_source": "shards", "write_shard": "shards",
    "PackedRows": "packing", "build_rows": "packing",
    "fetch_demo_corpus": "corpus",
    "Record": "records", "read_records": "records",
}

__all__ = [
    "DataConfig", "PackedRows", "PreparedData", "PreparedSource", "Record", "Shard", "ShardResult", "SourceConfig",
    "TokenizerInfo", "build_rows", "ensure_special_tokens", "fetch_demo_corpus", "iter_documents",
    "load_tokenizer", "padded_vocab_size", "prepare_data", "read_records", "resolve_files", "tokenize_source",
    "tokenizer_fingerprint", "train_tokenizer", "write_shard",
]

if TYPE_CHECKING:
    from biglm.data.config import DataConfig, SourceConfig
    from biglm.data.corpus import fetch_demo_corpus
    from biglm.data.packing import PackedRows, build_rows
    from biglm.data.prepare import PreparedData, PreparedSource, prepare_data
    from biglm.data.records import Record, read_records
    from biglm.data.shards import Shard, ShardResult, tokenize_source, write_shard
    from biglm.data.sources import iter_documents, resolve_files
    from biglm.data.tokenizer import (
        TokenizerInfo,
        ensure_special_tokens,
        load_tokenizer,
        padded_vocab_size,
        tokenizer_fingerprint,
        train_tokenizer,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"biglm.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'biglm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
