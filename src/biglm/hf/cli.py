"""Verbs ``export-hf`` and ``import-hf``.

    biglm export-hf --ckpt RUN_OR_CKPT --out HF_DIR [--push-to-hub USER/NAME [--private]] [--force]
    biglm import-hf HF_DIR --out CKPT_DIR [--force]
    biglm import-hf --from-llama LLAMA_DIR --out CKPT_DIR [--tokenizer PATH] [--force]
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export-hf`` and ``import-hf`` sub-parsers."""
    p = subparsers.add_parser(
        "export-hf", help="export a checkpoint as a transformers model folder",
        description="Write a biglm checkpoint as a transformers folder that loads with "
                    "AutoModelForMaskedLM.from_pretrained(HF_DIR, trust_remote_code=True); causal and "
                    "bidirectional-ar checkpoints as a causal LM (AutoModelForCausalLM; plain Llama where it fits).")
    p.add_argument("--ckpt", required=True, help="run folder (newest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, help="transformers folder to write")
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="also upload the folder to this Hub repository (e.g. user/name)")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=export_main)

    p = subparsers.add_parser(
        "import-hf", help="import a transformers (BiGLM or Llama) folder as a checkpoint",
        description="Convert an exported BiGLM folder, or with --from-llama a Llama-layout causal model, "
                    "into a biglm checkpoint folder.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="transformers model folder")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--from-llama", action="store_true",
                   help="HF_DIR is a Llama causal LM: add [MASK], pad the vocabulary, "
                        "make attention bidirectional")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (--from-llama; default: HF_DIR)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=import_main)


def export_main(args: argparse.Namespace) -> int:
    from biglm.hf.convert import export_hf, push_to_hub

    out = export_hf(args.ckpt, args.out, force=args.force)
    print(f"exported {args.ckpt} -> {out}")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"pushed {out} -> {url}")
    return 0


def import_main(args: argparse.Namespace) -> int:
    from biglm.errors import BiglmError
    from biglm.hf.convert import import_hf, import_llama

    if args.tokenizer and not args.from_llama:
        raise BiglmError("--tokenizer is only used with --from-llama (a BiGLM folder carries its tokenizer)")
    if args.from_llama:
        out = import_llama(args.hf_dir, args.out, tokenizer=args.tokenizer, force=args.force)
    else:
        out = import_hf(args.hf_dir, args.out, force=args.force)
    print(f"imported {args.hf_dir} -> {out}")
    return 0
