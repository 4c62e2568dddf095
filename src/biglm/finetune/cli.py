"""``biglm finetune`` and ``biglm predict``.

    biglm finetune --task seq2seq --init runs/demo --train train.jsonl --valid valid.jsonl \\
        --source-field document --target-field summary --out runs/ft [--epochs 5] [--train.lr 1e-4 ...]
    biglm finetune --task cloze-classification --init runs/demo --train mnli.jsonl --valid dev.jsonl \\
        --template "{premise} Question: {hypothesis}? Answer: {blank}" \\
        --verbalizer entailment=Yes --verbalizer neutral=Maybe --verbalizer contradiction=No --out runs/mnli
    biglm finetune --task extractive-qa --init runs/demo --train squad-train.json --valid squad-dev.json --out runs/qa
    biglm finetune --config configs/finetune/xsum.yaml --init runs/136m --out runs/xsum
    biglm finetune --eval-only --ckpt runs/ft [--split test]          # score a fine-tuned checkpoint
    biglm predict --ckpt runs/ft --input new.jsonl --out predictions.jsonl [--strategy blocks --block-size 8 ...]
    biglm finetune --task reward --init runs/demo --train prefs.jsonl --valid prefs-dev.jsonl --out runs/rm
    biglm reward --ckpt runs/rm --input responses.jsonl [--out rewards.jsonl]   # prompt/response records
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from biglm.config_cli import add_config_options, config_from_args, sections_of
from biglm.errors import BiglmError
from biglm.generate.options import ParallelOptions, add_parallel_args

# flag -> config key it sets (values are passed as JSON strings so that YAML keeps them verbatim)
SHORTCUTS = {
    "task": "task.kind", "init": "init", "train": "data.train", "valid": "data.valid", "test": "data.test",
    "epochs": "train.epochs", "id_field": "data.id_field", "text_field": "data.text_field",
    "label_field": "data.label_field", "source_field": "data.source_field", "target_field": "data.target_field",
    "question_field": "data.question_field", "context_field": "data.context_field",
    "answers_field": "data.answers_field", "template": "task.cloze_classification.template",
}


def register(subparsers: Any) -> None:
    """Add ``finetune`` and ``predict`` to the ``biglm`` command line."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune: cloze, extractive QA, seq2seq, instruction, reward, dpo",
        description="Fine-tune a pretrained checkpoint on a task (or score one with --eval-only). Any config "
                    "field can be overridden with --section.field VALUE (e.g. --train.lr 1e-4 "
                    "--task.seq2seq.label_smoothing 0.1).", allow_abbrev=False, add_help=False)
    p.add_argument("--config", type=Path, help="fine-tuning config YAML (e.g. configs/finetune/xsum.yaml)")
    p.add_argument("--task", choices=("cloze-classification", "extractive-qa", "seq2seq", "instruction", "reward",
                                          "dpo"),
                   help="task kind")
    p.add_argument("--init", help="pretrained checkpoint or run folder to start from")
    p.add_argument("--train", help="training examples (.jsonl/.json/.csv/.tsv/.parquet, or hf:NAME)")
    p.add_argument("--valid", help="validation examples, scored after every epoch")
    p.add_argument("--test", help="test examples, scored with the best checkpoint at the end")
    p.add_argument("--out", type=Path, help="run folder (checkpoints, best/, metrics.jsonl)")
    p.add_argument("--epochs", type=int, help="passes over the training examples")
    for name in ("id", "text", "label", "source", "target", "question", "context", "answers"):
        p.add_argument(f"--{name}-field", dest=f"{name}_field", metavar="FIELD", help=f"field holding the {name}")
    p.add_argument("--template", help="cloze template over the fields with one {blank}")
    p.add_argument("--verbalizer", action="append", default=[], metavar="LABEL=WORDS",
                   help="cloze: the words a label fills the blank with (repeat per label)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--eval-only", action="store_true",
                   help="score --ckpt (or --init, zero-shot cloze) on --split instead of training")
    p.add_argument("--ckpt", help="--eval-only: fine-tuned run folder (its best/) or checkpoint")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"), help="--eval-only: which split")
    p.add_argument("--device", default="cpu", help="--eval-only: torch device (training: --train.device)")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print N examples with their predictions after scoring (--eval-only, or the test split)")
    add_config_options(p, finetune_sections, finetune_extra)
    p.set_defaults(func=finetune_command, accepts_overrides=True)

    q = subparsers.add_parser("predict", help="predict with a fine-tuned checkpoint",
                              description="Write predictions of a fine-tuned checkpoint for every example of a "
                                          "file (targets/labels not needed).")
    q.add_argument("--ckpt", required=True, help="fine-tuned run folder (its best/ checkpoint) or checkpoint")
    q.add_argument("--input", required=True, help="examples (.jsonl/.json/.csv/.tsv/.parquet)")
    q.add_argument("--out", required=True, type=Path,
                   help="JSONL, one object per input example (extractive QA: a .json path gets {id: answer})")
    q.add_argument("--batch-size", type=int, default=None, help="examples predicted together")
    q.add_argument("--device", default="cpu", help="torch device")
    d = q.add_argument_group("decoding of seq2seq and instruction fine-tunes (default: the fine-tune's "
                             "task.KIND.steps, strategy and parallel settings)")
    d.add_argument("--steps", type=int, default=None, help="refinement passes T")
    d.add_argument("--strategy", default=None,
                   help="mask-predict, threshold or blocks (a new strategy starts from its own option defaults)")
    add_parallel_args(q, "parallel strategies (threshold, blocks); unset: the fine-tune's setting")
    q.set_defaults(func=predict_command)

    r = subparsers.add_parser("reward", help="score responses with a reward model",
                              description="Score every record of a file with a reward model fine-tuned with "
                                          "--task reward: prompt/response records get one reward each, preference "
                                          "records (response_a/response_b or chosen/rejected) both rewards.")
    r.add_argument("--ckpt", required=True, help="reward model run folder (its best/ checkpoint) or checkpoint")
    r.add_argument("--input", required=True, help="records (.jsonl/.json/.csv/.tsv/.parquet, or hf:NAME)")
    r.add_argument("--out", type=Path, help="JSONL to write (default: standard output)")
    r.add_argument("--batch-size", type=int, default=None, help="rows scored together")
    r.add_argument("--device", default="cpu", help="torch device")
    r.set_defaults(func=reward_command)


def finetune_sections() -> dict[str, type]:
    """The sections of a fine-tuning config, for ``--help``."""
    from biglm.finetune.config import FinetuneConfig

    return sections_of(FinetuneConfig, ("task", "data", "train"))


def finetune_extra() -> dict[str, tuple[str, str, str]]:
    """Fine-tuning keys that are no dataclass field of the sections."""
    return {"init": ("PATH", "none", "The pretrained checkpoint or run folder to start from (--init)."),
            "model.FIELD": ("", "from init", "Override a field of the pretrained model's config (e.g. "
                                             "model.dropout); the task adds the heads it needs.")}


def verbalizer_overrides(args: argparse.Namespace) -> list[str]:
    """``--verbalizer LABEL=WORDS`` flags as the override of ``task.cloze_classification.verbalizer``."""
    if not args.verbalizer:
        return []
    mapping = {}
    for item in args.verbalizer:
        label, sep, words = item.partition("=")
        if not sep or not label or not words.strip():
            raise BiglmError(f"--verbalizer {item!r}: expected LABEL=WORDS, e.g. entailment=Yes")
        mapping[label] = words
    return ["--task.cloze_classification.verbalizer", json.dumps(mapping)]


def resolve_config(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> Any:
    """defaults < ``saved`` (a run's or checkpoint's config) < ``--config`` < flags and overrides."""
    from biglm.finetune.config import FinetuneConfig

    return config_from_args(FinetuneConfig, args, SHORTCUTS, saved, verbalizer_overrides(args))


def finetune_command(args: argparse.Namespace) -> int:
    if args.eval_only:
        return eval_only(args)
    from biglm.config_cli import run_config

    cfg = run_config(args, resolve_config)
    if cfg is None:
        return 0
    return train_and_test(cfg, args.out, args.resume, args.show)


def train_and_test(cfg: Any, out: Path, resume: bool, show: int = 0) -> int:
    """Fine-tune, then score the best checkpoint on the test split when there is one."""
    from biglm.finetune.predict import evaluate_split, load_predictor
    from biglm.finetune.setup import setup_finetune
    from biglm.train.setup import fit_to_end

    trainer, metrics = fit_to_end(lambda: setup_finetune(cfg, out, resume=resume), run_dir=out, inputs=cfg.inputs())
    if not trainer.env.is_main:
        return 0
    best = trainer.best
    best_text = f"; best {trainer.tcfg.best_metric} {best.value:.4g} at step {best.step} ({out / 'best'})" \
        if trainer.tcfg.best_metric and best.step >= 0 else ""
    loss = f"loss {metrics['loss']:.4f}" if metrics else "no new steps"
    print(f"done: step {trainer.step}, {loss}{best_text}; run folder {out}")
    if trainer.cfg.data.spec("test")[0]:
        predictor = load_predictor(out)
        scores, examples, predictions = evaluate_split(predictor, "test")
        write_outputs(out / "eval", "test", scores, predictor, examples, predictions, show)
    return 0


def write_outputs(folder: Path, split: str, scores: dict[str, Any], predictor: Any, examples: list[Any],
                  predictions: list[dict], show: int = 0) -> None:
    """``finetune_<split>.json`` / ``.md`` (scores) and the predictions in ``folder``; the table and ``show``
    examples are printed."""
    from biglm.files import atomic_write_text
    from biglm.finetune.predict import report, write_predictions

    folder.mkdir(parents=True, exist_ok=True)
    path = predictor.loaded.path
    result = {"checkpoint": str(path), "task": predictor.cfg.task.kind, "split": split, "scores": scores}
    atomic_write_text(folder / f"finetune_{split}.json", json.dumps(result, indent=2))
    table = report(scores, f"{path} — {predictor.cfg.task.kind}, {split}")
    atomic_write_text(folder / f"finetune_{split}.md", table)
    suffix = ".json" if predictor.task.kind == "extractive-qa" else ".jsonl"
    write_predictions(predictor.task, examples, predictions, folder / f"predictions_{split}{suffix}")
    print(table)
    for example, prediction in list(zip(examples, predictions))[:show]:
        print(predictor.task.show(example, prediction))
    print(f"wrote {folder / f'finetune_{split}'}.json / .md and predictions_{split}{suffix}", file=sys.stderr)


def eval_only(args: argparse.Namespace) -> int:
    from biglm.finetune.predict import evaluate_split, finetune_config_of, load_predictor, resolve_finetuned, zero_shot
    from biglm.outputs import RESULTS, check_output

    if args.ckpt:
        folder = resolve_finetuned(args.ckpt)
        saved = finetune_config_of(folder)
        cfg = resolve_config(args, saved.to_dict() if saved else None)
        predictor = load_predictor(folder, cfg, device=args.device)
    elif args.init:
        cfg = resolve_config(args)
        predictor = zero_shot(args.init, cfg, device=args.device)
    else:
        raise BiglmError("--eval-only needs --ckpt (a fine-tuned checkpoint) or --init (zero-shot cloze)")
    out = check_output(args.out or predictor.loaded.path / "eval", RESULTS,
                       [args.ckpt or args.init, predictor.loaded.path, predictor.cfg.data.spec(args.split)[0]])
    scores, examples, predictions = evaluate_split(predictor, args.split)
    write_outputs(out, args.split, scores, predictor, examples, predictions, args.show)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from biglm.finetune.predict import (
        finetune_config_of,
        load_predictor,
        predict_file,
        resolve_finetuned,
        with_decoding,
    )
    from biglm.outputs import FILE, check_output

    check_output(args.out, FILE, [args.ckpt, args.input])  # before the model loads; predict_file checks again
    folder = resolve_finetuned(args.ckpt)
    saved = finetune_config_of(folder)
    cfg = with_decoding(saved, args.strategy, args.steps, ParallelOptions.of(args)) if saved is not None else None
    predictor = load_predictor(folder, cfg, device=args.device)  # the default hint: fine-tune it first
    if args.batch_size is not None:
        if args.batch_size <= 0:
            raise BiglmError(f"--batch-size {args.batch_size}: must be > 0")
        predictor.task.batch_size = args.batch_size
    n = predict_file(predictor, args.input, args.out)
    print(f"biglm predict: {n} predictions from {predictor.loaded.path} -> {args.out}", file=sys.stderr)
    return 0


def reward_command(args: argparse.Namespace) -> int:
    from biglm.finetune.predict import load_predictor, write_predictions
    from biglm.outputs import FILE, check_output

    if args.out is not None:
        check_output(args.out, FILE, [args.ckpt, args.input])
    predictor = load_predictor(args.ckpt, device=args.device,
                               hint="fine-tune a reward model from it first (biglm finetune --task reward ...)")
    if args.out is not None:
        check_output(args.out, FILE, [predictor.loaded.path])
    if predictor.task.kind != "reward":
        raise BiglmError(f"{predictor.loaded.path}: a {predictor.task.kind} model, not a reward model "
                         "(fine-tune one with --task reward)")
    if args.batch_size is not None:
        if args.batch_size <= 0:
            raise BiglmError(f"--batch-size {args.batch_size}: must be > 0")
        predictor.task.batch_size = args.batch_size
    from biglm.data.records import read_records

    examples = predictor.task.encode(read_records(args.input), labelled=False)
    predictions = predictor.task.predict(predictor.loaded.model, examples)
    if args.out is None:
        for ex, p in zip(examples, predictions):
            print(json.dumps(predictor.task.output(ex, p), ensure_ascii=False))
    else:
        write_predictions(predictor.task, examples, predictions, args.out)
    print(f"biglm reward: {len(examples)} records scored with {predictor.loaded.path}"
          + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 0
