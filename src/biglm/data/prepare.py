"""Preparing the data: every source of a ``DataConfig`` tokenised once into its cache (``prepare_data``).

What it returns (``PreparedData``: the tokenizer's ids and each source's train / val shard folders) is what
``biglm.data.packing.build_rows`` packs into training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.data.config import DataConfig, SourceConfig
from biglm.data.shards import Shard, shard_key, tokenize_source
from biglm.data.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_fingerprint
from biglm.errors import check


@dataclass
class PreparedSource:
    """One tokenised source: its mixture weight and its train / val shard folders."""

    name: str
    weight: float
    train: Path
    val: Path


@dataclass
class PreparedData:
    """What ``prepare_data`` returns and ``build_rows`` consumes."""

    tokenizer: TokenizerInfo
    sources: list[PreparedSource]
    anneal_sources: list[PreparedSource]
    seq_len: int
    min_doc_tokens: int
    seed: int

    def summary(self) -> str:
        """A small table: documents and tokens per source and split."""
        lines = [f"{'source':<28}{'split':<7}{'weight':>8}{'docs':>11}{'tokens':>14}"]
        for group, items in (("", self.sources), ("anneal:", self.anneal_sources)):
            for s in items:
                for split, path in (("train", s.train), ("val", s.val)):
                    sh = Shard(path)
                    lines.append(f"{group + s.name:<28}{split:<7}{s.weight:>8.3g}{sh.n_docs:>11,}{sh.n_tokens:>14,}")
        return "\n".join(lines)


def prepare_data(cfg: DataConfig, tokenizer: Any = None, *, progress: bool = True) -> PreparedData:
    """Tokenise every source of ``cfg`` (train and held-out val) into ``cfg.cache_dir``.

    ``tokenizer`` is a tokenizer from ``load_tokenizer`` (or a name/folder to load; default
    ``cfg.tokenizer``). Each source is cached under ``cache_dir/NAME-KEY`` where KEY hashes the source
    (spec and file sizes/mtimes), the tokenizer and the split settings, so a rerun is a no-op and an
    interrupted run resumes. Uses ``cfg.num_workers`` processes (0 = all cores).
    """
    check(bool(cfg.sources), "DataConfig.sources: no data sources configured")
    if tokenizer is None or isinstance(tokenizer, str | Path):
        tokenizer = load_tokenizer(tokenizer or cfg.tokenizer)
    info = TokenizerInfo.from_tokenizer(tokenizer)
    fp = tokenizer_fingerprint(tokenizer)
    chunk_docs = 1024

    def prep(src: SourceConfig) -> PreparedSource:
        key = shard_key(src, fp, cfg.val_fraction, cfg.val_seed, chunk_docs)
        out = cfg.cache_path / f"{src.display_name}-{key[:12]}"
        res = tokenize_source(src, tokenizer, out, val_fraction=cfg.val_fraction, val_seed=cfg.val_seed,
                              num_workers=cfg.num_workers, chunk_docs=chunk_docs, progress=progress)
        return PreparedSource(src.display_name, src.weight, res.train, res.val)

    return PreparedData(tokenizer=info, sources=[prep(s) for s in cfg.sources],
                        anneal_sources=[prep(s) for s in cfg.anneal_sources], seq_len=cfg.seq_len,
                        min_doc_tokens=cfg.min_doc_tokens, seed=cfg.seed)
