"""``biglm align``: PPO, GRPO or DPO of a policy checkpoint, on the shared trainer.

    biglm align --method ppo --init runs/chat --reward runs/rm --prompts prompts.jsonl \\
        --valid-prompts held-out.jsonl --pretrain corpus.jsonl --ptx.coef 0.5 --out runs/ppo
    biglm align --method grpo --init runs/chat --reward py:my_rewards:exact --prompts prompts.jsonl --out runs/grpo
    biglm align --method dpo --init runs/chat --preferences prefs.jsonl --valid-preferences dev.jsonl --out runs/dpo
    biglm align --config configs/align/ppo.yaml --init runs/chat --reward runs/rm --out runs/ppo [--train.lr 1e-5 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from biglm.align.methods import METHODS
from biglm.config_cli import add_config_options, config_from_args, sections_of

SHORTCUTS = {
    "method": "method", "init": "init", "reward": "reward", "prompts": "data.prompts",
    "valid_prompts": "data.valid_prompts", "pretrain": "data.pretrain", "pretrain_valid": "data.pretrain_valid",
    "preferences": "data.preferences", "valid_preferences": "data.valid_preferences", "steps": "train.steps",
}


def register(subparsers: Any) -> None:
    """Add ``align`` to the ``biglm`` command line."""
    p = subparsers.add_parser(
        "align", help="align a policy: PPO (KL + λ_PT), GRPO, DPO",
        description="Optimise a policy checkpoint against a reward (PPO, GRPO) or on judged pairs (DPO), starting "
                    "from --init, which also stays the frozen reference policy. Any config field can be overridden "
                    "with --section.field VALUE (e.g. --ppo.kl_coef 0.1 --ptx.coef 0.5).",
        allow_abbrev=False, add_help=False)
    p.add_argument("--config", type=Path, help="alignment config YAML (e.g. configs/align/ppo.yaml)")
    p.add_argument("--method", choices=tuple(METHODS), help="the optimisation method")
    p.add_argument("--init", help="the policy checkpoint (instruction-tuned) to start from; also the reference")
    p.add_argument("--reward", help="reward-model checkpoint or py:module:function")
    p.add_argument("--prompts", help="training prompts (records with a prompt field)")
    p.add_argument("--valid-prompts", dest="valid_prompts", help="held-out prompts (reward and KL at each evaluation)")
    p.add_argument("--pretrain", help="pretraining text of the λ_PT term (records with a text field)")
    p.add_argument("--pretrain-valid", dest="pretrain_valid", help="held-out pretraining text (its loss is tracked)")
    p.add_argument("--preferences", help="dpo: judged pairs")
    p.add_argument("--valid-preferences", dest="valid_preferences", help="dpo: held-out judged pairs")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--out", type=Path, help="run folder (checkpoints, best/, metrics.jsonl, metrics.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    add_config_options(p, align_sections, align_extra)
    p.set_defaults(func=align_command, accepts_overrides=True)


def align_sections() -> dict[str, type]:
    """The sections of an alignment config, for ``--help``."""
    from biglm.align.config import AlignConfig

    return sections_of(AlignConfig, AlignConfig.sections)


def align_extra() -> dict[str, tuple[str, str, str]]:
    """Top-level keys (no section) and the model overrides."""
    return {"method": ("{" + ",".join(METHODS) + "}", "ppo", "The optimisation method (--method)."),
            "init": ("PATH", "none", "The policy to start from; also the frozen reference (--init)."),
            "reward": ("PATH|py:module:function", "none", "Reward-model checkpoint or rule (--reward)."),
            "model.FIELD": ("", "from init", "Override a field of the policy's model config (e.g. model.dropout).")}


def resolve_config(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> Any:
    """defaults < ``saved`` (a resumed run's config) < ``--config`` < flags and overrides."""
    from biglm.align.config import AlignConfig

    # a run's saved model section is resolved; overrides come from the flags
    saved = {k: v for k, v in (saved or {}).items() if k != "model"}
    return config_from_args(AlignConfig, args, SHORTCUTS, saved)


def align_command(args: argparse.Namespace) -> int:
    from biglm.config_cli import run_config

    cfg = run_config(args, resolve_config)
    if cfg is None:
        return 0
    from biglm.align.setup import log_start, setup_align
    from biglm.train.plot import plot_run
    from biglm.train.setup import fit_to_end

    trainer, metrics = fit_to_end(lambda: setup_align(cfg, args.out, resume=args.resume), start=log_start,
                                  run_dir=args.out, inputs=cfg.inputs())
    if not trainer.env.is_main:
        return 0
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("train_reward", "val_reward", "val_kl", "val_pretrain_loss",
                                                          "val_accuracy") if k in metrics)
    print(f"done: step {trainer.step}{'; ' + summary if summary else ''}; run folder {args.out}")
    print(f"plot: {plot_run(args.out)}", file=sys.stderr)
    return 0
