"""BatGPT's alignment loop end to end on the synthetic task (``biglm.align.synthetic``), every stage through biglm:

1. pairs: each training prompt answered twice by the start policy (one checkpoint sampled with two seeds);
2. AI feedback: the pairs judged through ``biglm.annotate``'s judge loop and answers store (the judge is an
   oracle that reads the task's rule and writes the template's three lines; a judge model would stand here);
3. a reward model fine-tuned on those judgements (task kind ``reward``, hinge loss, ties dropped) from the
   start policy's weights, with its held-out pairwise accuracy on pairs judged the same way;
4. PPO of the start policy against that reward model (``biglm align --method ppo --reward RM``), with λ_PT 0
   and 0.1, three training seeds each;

and the policy judged by the rule on held-out prompts before and after (responses sampled with a fixed seed),
with the reward model's own mean reward and the KL to the start policy.

    python bench/rlhf.py          # about a minute on 2 CPU cores

Prints a Markdown table and writes ``bench/results/rlhf.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from biglm.align import held_out_metrics, load_align_config, setup_align, synthetic
from biglm.annotate.judge import judge_pairs
from biglm.annotate.pairs import Pair
from biglm.annotate.store import AnswerStore
from biglm.checkpoint import load_model
from biglm.finetune import load_finetune_config, setup_finetune

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info


def judged(init: Path, prompts_file: str, seeds: tuple[int, int], out: Path) -> dict[str, Any]:
    """Pairs sampled from ``init`` for ``prompts_file``, judged by the rule judge into ``out``; their counts."""
    pairs = [Pair(p, a, b, "start-1", "start-2") for p, a, b in synthetic.sample_pairs(init, prompts_file, seeds)]
    store = AnswerStore(out)
    try:
        report = judge_pairs(pairs, synthetic.RuleJudge(), store, synthetic.JUDGE_TEMPLATE)
    finally:
        store.close()
    choices = [json.loads(line)["choice"] for line in out.read_text().splitlines()]
    return {"pairs": len(pairs), "saved": report.saved, "unreadable": report.unreadable,
            "decisive": sum(c in ("A", "B") for c in choices)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--ptx", type=float, nargs="+", default=[0.0, 0.1], help="λ_PT values to run")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per λ_PT")
    p.add_argument("--kl-coef", type=float, default=0.05, help="ppo.kl_coef (λ_KL)")
    args = p.parse_args()
    torch.set_num_threads(1)
    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        files = synthetic.write_task(tmp)
        init = synthetic.pretrain_policy(tmp, "causal")
        tic = time.perf_counter()
        result["train_pairs"] = judged(init, files["prompts"], (1, 2), tmp / "ai.jsonl")
        result["valid_pairs"] = judged(init, files["valid"], (3, 4), tmp / "ai-valid.jsonl")
        rm_args = ["--init", str(init), "--task.kind", "reward", "--data.train", str(tmp / "ai.jsonl"),
                   "--data.valid", str(tmp / "ai-valid.jsonl"), "--train.progress", "false",
                   "--train.tensorboard", "false", "--train.global_batch_size", "16", "--train.lr", "3e-3",
                   "--train.warmup_steps", "5", "--train.epochs", "10"]
        trainer = setup_finetune(load_finetune_config(None, rm_args), tmp / "rm")
        trainer.fit()
        trainer.close()
        result["reward_model_valid_accuracy"] = trainer.best.value
        common = ["--init", str(init), "--data.prompts", files["prompts"], "--data.valid_prompts", files["valid"],
                  "--data.pretrain_valid", files["pretrain_valid"], "--rollout.max_new_tokens", "2",
                  "--train.progress", "false", "--train.tensorboard", "false"]
        by_rule = load_align_config(None, [*common, "--reward", synthetic.REWARD])
        by_rm = load_align_config(None, [*common, "--reward", str(tmp / "rm")])
        start = load_model(init).model
        result["before"] = {"rule": held_out_metrics(by_rule, start), "reward_model": held_out_metrics(by_rm, start)}
        runs = []
        for coef in args.ptx:
            for seed in range(args.seeds):
                ppo = [*common, "--method", "ppo", "--reward", str(tmp / "rm"), "--data.pretrain", files["pretrain"],
                       "--ptx.coef", str(coef), "--ppo.kl_coef", str(args.kl_coef),
                       "--rollout.prompts_per_rollout", "32", "--train.global_batch_size", "32", "--train.lr", "2e-3",
                       "--train.steps", str(args.steps), "--train.eval_every", str(args.steps),
                       "--train.seed", str(seed)]
                trainer = setup_align(load_align_config(None, ppo), tmp / f"ppo-{coef}-{seed}")
                trainer.fit()
                trainer.close()
                runs.append({"ptx_coef": coef, "seed": seed, "rule": held_out_metrics(by_rule, trainer.model),
                             "reward_model": held_out_metrics(by_rm, trainer.model)})
        result["runs"] = runs
        result["seconds"] = round(time.perf_counter() - tic, 1)
    b = result["before"]
    print(f"pairs judged: {result['train_pairs']} (train), {result['valid_pairs']} (held out); reward model "
          f"held-out pairwise accuracy {result['reward_model_valid_accuracy']:.3f}\n")
    print("| policy | rule reward (held out) | reward model's reward | KL to start | pretraining loss |\n"
          "|---|---:|---:|---:|---:|")
    rows = [("start", b), *((f"PPO on the reward model, λ_PT {r['ptx_coef']}, seed {r['seed']}", r)
                            for r in result["runs"])]
    for name, m in rows:
        print(f"| {name} | {m['rule']['reward']:.3f} | {m['reward_model']['reward']:.3f} | {m['rule']['kl']:.3f} | "
              f"{m['rule']['pretrain_loss']:.3f} |")
    out = Path(__file__).parent / "results" / "rlhf.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
