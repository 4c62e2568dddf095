"""Command-line verbs of the data layer: ``biglm tokenizer train`` and ``biglm prepare-data``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    train.add_argument("files", nargs="+", help=".txt / .jsonl / .json / .parquet files or globs")
    train.add_argument("--out", required=True, help="output folder (a Hugging Face tokenizer folder)")
    train.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default 8192)")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--text-field", default="text", help="field holding the text in JSON records")
    train.set_defaults(func=_train_tokenizer)

    prep = sub.add_parser("prepare-data", help="fetch the bundled demo corpus")
    prep.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    prep.add_argument("--force", action="store_true", help="fetch again even if present")
    prep.set_defaults(func=_prepare)


def _train_tokenizer(args: argparse.Namespace) -> int:
    from biglm.data.tokenizer import padded_vocab_size, train_tokenizer

    tokenizer = train_tokenizer(args.files, args.vocab_size, args.out, min_frequency=args.min_frequency,
                                text_field=args.text_field)
    print(f"tokenizer: {len(tokenizer)} tokens (embedding rows {padded_vocab_size(tokenizer)}) -> {args.out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from biglm.data.corpus import corpus_stats, fetch_demo_corpus

    for name, path in fetch_demo_corpus(args.out, force=args.force).items():
        docs, size = corpus_stats(path)
        print(f"{name}: {docs} documents, {size / 1e6:.1f} MB -> {path}")
    return 0
