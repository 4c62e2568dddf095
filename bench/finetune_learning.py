"""Fine-tuning that learns on real text: demo-size masked, GLM and causal models on the same real-word tasks.

Every run goes through ``biglm.finetune`` (the shared trainer, the task kinds, the engine), from models
pre-trained by the demo recipe (``--masked``, ``--glm``, ``--causal``; ``--pretrain`` makes missing ones with
``configs/demo.yaml`` and the family's objective preset). Data from the bundled corpus
(``python -m biglm.data.builders.make_wordtasks``, ``make_titles``, ``make_instructions``); every score is on held-out
examples.

Parts (``--parts``):

- ``copy`` / ``reverse``: 3-6 real words (multi-token), 3,000 training pairs; validation exact match and
  ROUGE-L after every epoch until 90% exact match or ``--max-steps``; the table gives steps to 90%. The
  masked model also runs the diagnosis's ablations (one change each from the recipe: the target positions
  continuing after the source, the source tokenised at a text's start, a lower learning rate, no rows
  masked whole; ``--ablation-steps`` each); reversal is decoded with Mask-Predict, threshold and blocks of
  one token (T = L).
- ``titles``: the main job's task (an article's name from its first sentence) as seq2seq, against lead-k.
- ``cloze``: "does this sentence contain a number?" (500 training sentences) as a verbalizer cloze with
  yes/no (" yes" is two tokens, " no" one) and Yes/No (one token each), against a linear probe on the
  frozen encoder (mean-pooled X; logistic regression, L2 picked on validation).
- ``instruct``: the demo instruction set (``configs/finetune/demo-instruct.yaml``), exact match / ROUGE-L.

    python bench/finetune_learning.py --pretrain          # everything (about 90 minutes on 2 CPU cores)
    python bench/finetune_learning.py --quick             # masked copy + cloze, 1,000 steps at most (5 minutes)

Prints Markdown tables; writes ``bench/results/finetune_learning[_quick].json`` (runs of other parts or
``--families`` add up there: a run replaces only what it ran).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from biglm.finetune import load_finetune_config, setup_finetune
from common import machine_info

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
WORD_TASK = ["--task.kind", "seq2seq", "--task.seq2seq.max_target_length", "16", "--task.seq2seq.metrics",
             "[rouge, exact_match]", "--train.global_batch_size", "32", "--train.lr", "3e-3",
             "--train.warmup_steps", "30"]
# The diagnosis: one change each from the recipe (masked model, copy).
ABLATIONS = {
    "targets continue after the source": ["--task.seq2seq.target_positions", "continue"],
    "source at a text's start (first word tokenised apart)": ["--task.seq2seq.source_space", "false"],
    "the recipe before the fix (all three changes undone)": [
        "--task.seq2seq.target_positions", "continue", "--task.seq2seq.source_space", "false",
        "--task.seq2seq.full_mask_fraction", "0"],
    "lr 1e-3": ["--train.lr", "1e-3"],
    "no rows masked whole (all ~U(0,1))": ["--task.seq2seq.full_mask_fraction", "0"],
}
CLOZE = ["--task.kind", "cloze-classification", "--task.cloze_classification.template",
         "{text} Does it contain a number? {blank}", "--train.global_batch_size", "32", "--train.lr", "3e-3",
         "--train.warmup_steps", "10", "--train.epochs", "10"]


def sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def pretrain_missing(args: argparse.Namespace) -> None:
    """The demo recipe (configs/demo.yaml) for each family whose run folder is missing."""
    for family, preset in (("masked", "biglm"), ("causal", "causal"), ("glm", "glm")):
        run = Path(getattr(args, family))
        if not (run / "checkpoints").is_dir():
            sh("-m", "biglm.cli", "pretrain", "--config", "configs/demo.yaml", "--objective.preset", preset,
               "--out", str(run), "--train.progress", "false")


def finetune(name: str, out: Path, init: str, overrides: list[str], max_steps: int, target: float | None,
             metric: str = "exact_match") -> dict[str, Any]:
    """Fine-tune ``init`` with ``overrides``, evaluating after every epoch; stop once val ``metric`` ≥ ``target``
    (the schedule stays that of ``max_steps`` steps). Returns the validation curve and when the target was met."""
    run = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("'", "")
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_finetune_config(None, ["--init", init, "--train.progress", "false", "--train.tensorboard", "false",
                                      "--train.keep_last", "1", *overrides, "--train.steps", str(max_steps)])
    tic = time.perf_counter()
    trainer = setup_finetune(cfg, run)
    spe, curve, reached = trainer.tcfg.eval_every, [], None
    while trainer.step < max_steps:
        row = trainer.fit(until=min(trainer.step + spe, max_steps))
        curve.append({"step": trainer.step, **{k[4:]: round(v, 2) for k, v in row.items() if k.startswith("val_")}})
        if target is not None and curve[-1].get(metric, 0) >= target:
            reached = trainer.step
            break
    trainer.close()
    last = curve[-1]
    print(f"  {name}: {last} after {trainer.step} steps ({time.perf_counter() - tic:.0f} s)", flush=True)
    return {"name": name, "curve": curve, "reached": reached, "last": last, "run": str(run),
            "seconds": round(time.perf_counter() - tic, 1)}


def eval_with(run: str, split_file: str, **options: Any) -> dict[str, Any]:
    """Scores of the fine-tuned ``run`` on ``split_file`` decoded with other ``task.seq2seq`` options."""
    from biglm.finetune.predict import evaluate_split, load_predictor

    predictor = load_predictor(run)
    for key, value in options.items():
        setattr(predictor.task.options, key, value)
    predictor.cfg.data.valid = split_file
    scores, _, _ = evaluate_split(predictor, "valid")
    return {k: round(v, 2) for k, v in scores.items() if isinstance(v, float)}


def words_part(args: argparse.Namespace, task: str, data: Path, out: Path) -> dict[str, Any]:
    files = ["--data.train", str(data / f"{task}_train.jsonl"), "--data.valid", str(data / f"{task}_valid.jsonl")]
    res: dict[str, Any] = {"families": {}, "ablations": {}}
    inits = {"masked": args.masked, "glm": args.glm, "causal": args.causal}
    for family, init in ((f, inits[f]) for f in args.families.split(",")):
        res["families"][family] = finetune(f"{task} {family}", out, init, [*WORD_TASK, *files], args.max_steps, 90.0)
    if task == "copy" and "masked" in args.families:
        for name, extra in ({} if args.quick else ABLATIONS).items():
            res["ablations"][name] = finetune(f"copy masked, {name}", out, args.masked, [*WORD_TASK, *files, *extra],
                                              args.ablation_steps, 90.0)
    if task == "reverse" and "masked" in args.families:
        run = res["families"]["masked"]["run"]
        valid = str(data / "reverse_valid.jsonl")
        res["strategies"] = {
            "mask-predict T=10": eval_with(run, valid),
            "threshold 0.9": eval_with(run, valid, strategy="threshold", steps=16),
            "blocks of 1 (T = L)": eval_with(run, valid, strategy="blocks", steps=16, block_size=1),
        }
    return res


def titles_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    titles = out / "titles"
    sh("-m", "biglm.data.builders.make_titles", args.corpus, "--run", args.masked, "--out", str(titles))
    files = [x for s in ("train", "valid", "test") for x in (f"--data.{s}", str(titles / f"{s}.jsonl"))]
    run = finetune("titles masked", out, args.masked, [
        "--task.kind", "seq2seq", "--task.seq2seq.max_source_length", "64", "--task.seq2seq.max_target_length",
        "16", "--task.seq2seq.truncate_targets", "true", "--task.seq2seq.metrics", "[rouge, exact_match]",
        "--train.global_batch_size", "32", "--train.lr", "3e-3", "--train.warmup_steps", "30", *files],
        args.title_steps, None)
    test = eval_with(run["run"], str(titles / "test.jsonl"))
    return {"run": run, "test": test, "baseline": json.loads((titles / "baseline.json").read_text())}


def probe(init: str, data: Path) -> dict[str, float]:
    """Logistic regression on the frozen encoder's mean-pooled X ("contains a number"), L2 picked on valid."""
    from biglm.checkpoint import load_model
    from biglm.finetune.tasks.base import one_row
    from biglm.train.batches import concat_batches

    loaded = load_model(init)
    model, tok = loaded.model.eval(), loaded.tokenizer

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [json.loads(line) for line in (data / f"number_{split}.jsonl").read_text().splitlines()]
        feats = []
        for i in range(0, len(rows), 64):
            batch = concat_batches([one_row(x, [-100] * len(x), [0] * len(x)) for x in (
                [tok.bos_token_id, *tok(r["text"], add_special_tokens=False)["input_ids"]] for r in rows[i:i + 64])])
            with torch.no_grad():
                h = model(batch.input_ids, batch.layout, batch.position_ids).hidden_states
            real = (batch.layout.document_ids >= 0)[..., None]
            feats.append((h * real).sum(1) / real.sum(1))
        return torch.cat(feats), torch.tensor([r["label"] == "yes" for r in rows], dtype=torch.float)

    (xt, yt), (xv, yv), (xs, ys) = features("train"), features("valid"), features("test")
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv, xs = (xt - mu) / sd, (xv - mu) / sd, (xs - mu) / sd
    best: dict[str, float] = {}
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        w, b = fit_logistic(xt, yt, l2)
        acc = [100.0 * float(((x @ w + b > 0).float() == y).float().mean()) for x, y in ((xt, yt), (xv, yv), (xs, ys))]
        if acc[1] > best.get("valid", -1):
            best = {"l2": l2, "train": acc[0], "valid": acc[1], "test": acc[2]}
    return {k: round(v, 2) for k, v in best.items()}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression (L-BFGS)."""
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cloze_part(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    files = ["--data.train", str(data / "number_train.jsonl"), "--data.valid", str(data / "number_valid.jsonl")]
    res: dict[str, Any] = {"probe": probe(args.masked, data)}
    for name, words in (("yes/no", '{"yes": "yes", "no": "no"}'), ("Yes/No", '{"yes": "Yes", "no": "No"}')):
        run = finetune(f"cloze {name}", out, args.masked,
                       [*CLOZE, *files, "--task.cloze_classification.verbalizer", words], 160, None, "accuracy")
        from biglm.finetune.predict import evaluate_split, load_predictor

        predictor = load_predictor(run["run"])
        predictor.cfg.data.test = str(data / "number_test.jsonl")
        run["test"] = round(evaluate_split(predictor, "test")[0]["accuracy"], 2)
        res[name] = run
    return res


def instruct_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = out / "instruct"
    sh("-m", "biglm.data.builders.make_instructions", args.corpus, "--run", args.masked, "--out", str(data))
    files = [x for s in ("train", "valid", "test") for x in (f"--data.{s}", str(data / f"{s}.jsonl"))]
    res = {}
    for name, extra in (("aligned", []), ("continue", ["--task.instruction.target_positions", "continue"])):
        cfg = ["--task.kind", "instruction", "--task.instruction.max_target_length", "48",
               "--task.instruction.metrics", "[rouge, exact_match]", "--train.global_batch_size", "32",
               "--train.lr", "3e-3", "--train.warmup_steps", "30", *files, *extra]
        run = finetune(f"instruct {name}", out, args.masked, cfg, args.instruct_steps, None)
        run["test"] = eval_with(run["run"], str(data / "test.jsonl"))
        res[name] = run
    return res


def report(results: dict[str, Any]) -> None:
    for task in ("copy", "reverse"):
        if task not in results:
            continue
        r = results[task]
        print(f"\n| {task}: 3-6 real words, held-out | steps to 90% EM | last EM | last ROUGE-L | steps run |")
        print("|---|---:|---:|---:|---:|")
        for name, run in [*r["families"].items(), *r.get("ablations", {}).items()]:
            last = run["last"]
            print(f"| {name} | {run['reached'] or '—'} | {last.get('exact_match', 0):.1f} | "
                  f"{last.get('rougeL', 0):.1f} | {last['step']} |")
        for name, s in r.get("strategies", {}).items():
            print(f"| masked, decoded with {name} | | {s.get('exact_match', 0):.1f} | {s.get('rougeL', 0):.1f} | |")
    if "titles" in results:
        t = results["titles"]
        print(f"\n| titles, test | ROUGE-L | EM |\n|---|---:|---:|\n| masked seq2seq | {t['test']['rougeL']:.1f} | "
              f"{t['test']['exact_match']:.1f} |\n| {t['baseline']['baseline']} | {t['baseline']['rougeL']:.1f} | "
              f"{t['baseline']['exact_match']:.1f} |")
    if "cloze" in results:
        c = results["cloze"]
        print("\n| contains a number (500 train) | best valid | test |\n|---|---:|---:|")
        print(f"| linear probe, frozen encoder | {c['probe']['valid']:.1f} | {c['probe']['test']:.1f} |")
        for name in ("yes/no", "Yes/No"):
            best = max(p["accuracy"] for p in c[name]["curve"])
            print(f"| verbalizer cloze {name} | {best:.1f} | {c[name]['test']:.1f} |")
    if "instruct" in results:
        print("\n| instruction demo, test | ROUGE-L | EM |\n|---|---:|---:|")
        for name, run in results["instruct"].items():
            print(f"| targets {name} | {run['test']['rougeL']:.1f} | {run['test']['exact_match']:.1f} |")


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` updated with ``new``, mapping by mapping (a part's families and ablations one by one)."""
    out = dict(old)
    for key, value in new.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--masked", default="runs/demo")
    p.add_argument("--causal", default="runs/demo-causal")
    p.add_argument("--glm", default="runs/demo-glm")
    p.add_argument("--pretrain", action="store_true", help="pre-train missing models with the demo recipe")
    p.add_argument("--corpus", default="data/demo/wiki.jsonl")
    p.add_argument("--out", default="runs/bench-finetune-learning")
    p.add_argument("--parts", default="copy,reverse,titles,cloze,instruct")
    p.add_argument("--max-steps", type=int, default=5000)
    p.add_argument("--ablation-steps", type=int, default=1000, help="copy: steps of each ablation run at most")
    p.add_argument("--title-steps", type=int, default=3000)
    p.add_argument("--instruct-steps", type=int, default=600)
    p.add_argument("--families", default="masked,glm,causal", help="copy / reverse: the families to fine-tune")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.quick:
        args.parts, args.families, args.max_steps = "copy,cloze", "masked", min(args.max_steps, 1000)
    if args.pretrain:
        pretrain_missing(args)
    out, data = Path(args.out), Path(args.out) / "wordtasks"
    sh("-m", "biglm.data.builders.make_wordtasks", args.corpus, "--out", str(data))
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    parts = args.parts.split(",")
    for task in ("copy", "reverse"):
        if task in parts:
            results[task] = words_part(args, task, data, out)
    if "titles" in parts:
        results["titles"] = titles_part(args, out)
    if "cloze" in parts:
        results["cloze"] = cloze_part(args, data, out)
    if "instruct" in parts:
        results["instruct"] = instruct_part(args, out)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"finetune_learning{'_quick' if args.quick else ''}.json"
    if path.is_file():  # runs of other parts or families add up: this run replaces only what it ran
        results = merged(json.loads(path.read_text()), results)
    report(results)
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
