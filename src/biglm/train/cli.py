"""The ``pretrain`` and ``plot`` verbs.

``biglm pretrain --config configs/demo.yaml --out runs/demo [--resume] [--section.field value ...]``
trains (under ``torchrun`` on every rank; see ``biglm.train.parallel`` for multi-node launches).
``biglm plot RUN_DIR [--out PNG]`` draws the loss and learning-rate curves of a run.
``biglm consolidate CHECKPOINT_OR_RUN [--out FOLDER]`` writes the single-file model of a sharded checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biglm.config_cli import add_config_options, sections_of
from biglm.errors import BiglmError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` and ``plot`` to the ``biglm`` command line."""
    p = subparsers.add_parser(
        "pretrain", help="pretrain a model from a YAML config", add_help=False,
        description="Pretrain a BiGLM. Any config field can be overridden with --section.field VALUE "
                    "(e.g. --train.lr 1e-3 --model.num_layers 4 --objective.biglm.alpha 0.3).")
    p.add_argument("--config", type=Path, help="run config YAML (default with --resume: RUN_DIR/config.yaml)")
    p.add_argument("--out", type=Path, help="run folder (checkpoints, metrics.jsonl, config.yaml); required "
                                            "unless --print-config")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --out")
    add_config_options(p, run_sections, run_extra)
    p.set_defaults(func=pretrain_command, accepts_overrides=True)

    q = subparsers.add_parser("plot", help="plot a run's loss and learning-rate curves to PNG")
    q.add_argument("run_dir", type=Path, help="run folder holding metrics.jsonl")
    q.add_argument("--out", type=Path, help="PNG path (default RUN_DIR/metrics.png)")
    q.set_defaults(func=plot_command)

    c = subparsers.add_parser(
        "consolidate", help="write model.safetensors of a sharded training checkpoint",
        description="Join the shards of a sharded training checkpoint (train.checkpoint_format: sharded) into "
                    "model.safetensors, on one process, for export-hf, generate and evaluate.")
    c.add_argument("checkpoint", type=Path, help="checkpoint folder, or run folder (its newest intact checkpoint)")
    c.add_argument("--out", type=Path, help="write a new model checkpoint folder here (default: add the weights "
                                            "file to the checkpoint itself)")
    c.add_argument("--force", action="store_true", help="replace --out if it is an existing checkpoint (another "
                                                        "kind of folder is never replaced)")
    c.set_defaults(func=consolidate_command)


def run_sections() -> dict[str, type]:
    """The sections of a run config, for ``--help``."""
    from biglm.train.config import SECTIONS, RunConfig

    return sections_of(RunConfig, SECTIONS)


def run_extra() -> dict[str, tuple[str, str, str]]:
    """Run-config keys that are no dataclass field, or mean more in a run config."""
    from biglm.config import PRESETS
    from biglm.objectives import OBJECTIVE_PRESETS

    return {"model.preset": ("NAME", "none", f"Start from a model preset ({', '.join(PRESETS)})."),
            "model.vocab_size": ("INT|auto", "auto", "Embedding rows; auto = the tokenizer's size padded to a "
                                                     "multiple of 64."),
            "objective.preset": ("NAME", "none", f"Start from an objective preset ({', '.join(OBJECTIVE_PRESETS)}).")}


def pretrain_command(args: argparse.Namespace) -> int:
    from biglm.config_cli import print_config
    from biglm.train.config import load_run_config
    from biglm.train.setup import fit_to_end, setup

    if args.out is None and (args.resume or not args.print_config):
        raise BiglmError("--out is required: the run folder to write (or, with --resume, to continue)")
    config = args.config
    if config is None:
        if not args.resume:
            raise BiglmError("--config is required (only --resume may take RUN_DIR/config.yaml)")
        config = resume_config(args.out)
    cfg = load_run_config(config, getattr(args, "overrides", []))
    if args.print_config:
        data = cfg.to_dict()
        if cfg.vocab_size_auto:
            data["model"]["vocab_size"] = "auto"
        print_config(data)
        return 0
    trainer, metrics = fit_to_end(lambda: setup(cfg, args.out, resume=args.resume), run_dir=args.out,
                                  inputs=cfg.inputs())
    if trainer.env.is_main and metrics:
        val = f", val_loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
        print(f"done: step {trainer.step}, loss {metrics['loss']:.4f}{val}; run folder {args.out}")
    return 0


def resume_config(run_dir: Path) -> Path:
    """``RUN_DIR/config.yaml``, or when it is missing, empty or unreadable the copy saved in the newest
    intact checkpoint (every checkpoint holds the run config), with a note."""
    from biglm.configurable import load_yaml
    from biglm.errors import ConfigError
    from biglm.train.checkpointing import CONFIG, find_resume_checkpoint

    path = run_dir / "config.yaml"
    try:
        problem = "" if load_yaml(path) else "empty"
    except ConfigError as e:
        problem = "missing" if not path.exists() else f"unreadable ({e})"
    if not problem:
        return path
    newest = find_resume_checkpoint(run_dir, note=lambda _: None)
    if newest is None:
        raise BiglmError(f"{path}: {problem}, and {run_dir} has no checkpoint holding the run config; pass --config")
    print(f"note: {path} is {problem}; using the run config saved in {newest / CONFIG}", file=sys.stderr)
    return newest / CONFIG


def plot_command(args: argparse.Namespace) -> int:
    from biglm.train.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def consolidate_command(args: argparse.Namespace) -> int:
    from biglm.train.sharded import consolidate_checkpoint

    out = consolidate_checkpoint(args.checkpoint, args.out, force=args.force)
    print(f"wrote {out / 'model.safetensors'}")
    return 0
