"""``biglm align`` on the synthetic task (``biglm.align.synthetic``): DPO against GRPO on Mask-Predict policies (each
with the ``chain`` and ``elbo`` sequence scores), and PPO (λ_PT off and on), GRPO and DPO on a causal policy.

Every run starts from the same pre-trained micro policy of its family (2 layers, width 64; answers yes/no at random,
held-out reward about 0.6), takes the same number of optimizer steps and is judged the same way: responses to 64
held-out prompts sampled (temperature 1, fixed seed) with the family's engine (Mask-Predict, 2 tokens, 2 passes;
or KV-cached sampling), scored by the rule reward; the KL to the start policy as the mean log π(y|x) - log π_ref(y|x)
of those responses (exact for causal policies; the ``chain`` score for masked ones, whatever score trained them);
and the held-out pretraining loss (causal; the masked objective takes no loss on these short documents).
DPO trains on 256 pairs built from the rule (the right answer against the wrong one, for the training prompts),
GRPO and PPO on the rule reward of their own samples for the same prompts.

    python bench/align.py            # about 4 minutes on 2 shared CPU cores
    python bench/align.py --quick    # fewer steps

Prints a Markdown table and writes ``bench/results/align.json`` (``align_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from biglm.align import held_out_metrics, load_align_config, setup_align, synthetic
from biglm.align.methods import get_method
from biglm.align.setup import log_start
from biglm.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info

DPO_LR = "3e-4"


def preference_pairs(path: Path) -> str:
    """The rule as judged pairs on the training prompts: the right answer preferred to the wrong one."""
    r = random.Random(0)
    rows = []
    for i, p in enumerate(synthetic.prompts(256, 1)):
        right = synthetic.right_answer(p["prompt"])
        wrong = "no" if right == "yes" else "yes"
        a_right = r.random() < 0.5
        rows.append({"id": i, "prompt": p["prompt"], "response_a": right if a_right else wrong,
                     "response_b": wrong if a_right else right, "choice": "A" if a_right else "B"})
    return synthetic.write_jsonl(path, rows)


def common_args(tmp: Path, init: Path, files: dict[str, str], steps: int) -> list[str]:
    return ["--init", str(init), "--reward", synthetic.REWARD, "--data.prompts", files["prompts"],
            "--data.valid_prompts", files["valid"], "--data.pretrain_valid", files["pretrain_valid"],
            "--rollout.max_new_tokens", "2", "--train.steps", str(steps), "--train.eval_every", str(steps),
            "--train.progress", "false", "--train.tensorboard", "false", "--train.device", "cpu",
            "--method", "grpo", "--grpo.score", "chain"]  # judged as a GRPO run would be (any family)


def judge(args: list[str], model: torch.nn.Module) -> dict[str, float]:
    return held_out_metrics(load_align_config(None, args), model)


def run(name: str, tmp: Path, args: list[str], extra: list[str]) -> dict[str, Any]:
    """One alignment run; its held-out metrics before and after (judged with ``args``, the chain score)."""
    out = tmp / name
    cfg = load_align_config(None, args + extra)
    start = time.perf_counter()
    trainer = setup_align(cfg, out)
    before = {k[4:]: v for k, v in log_start(trainer).items()} if get_method(cfg.method).rollout else {}
    trainer.fit()
    trainer.close()
    seconds = time.perf_counter() - start
    after = judge(args, trainer.model)
    row = {"run": name, "method": cfg.method, "steps": cfg.train.steps, "seconds": round(seconds, 1),
           **{f"{k}_after": round(v, 4) for k, v in after.items()}}
    if before:
        row["reward_train_metric"] = round(before["reward"], 4)
    print(f"{name}: {row}", file=sys.stderr)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    steps = 32 if args.quick else 96
    rows: list[dict[str, Any]] = []
    starts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        files = synthetic.write_task(tmp)
        prefs = preference_pairs(tmp / "prefs.jsonl")
        for family in ("masked", "causal"):
            init = synthetic.pretrain_policy(tmp, family)
            base = common_args(tmp, init, files, steps)
            starts[family] = judge(base, load_model(init).model)
            grpo = ["--method", "grpo", "--grpo.group_size", "8", "--rollout.prompts_per_rollout", "8",
                    "--train.global_batch_size", "32", "--train.lr", "3e-3"]
            dpo = ["--method", "dpo", "--data.preferences", prefs, "--train.global_batch_size", "32",
                   "--train.lr", DPO_LR, "--dpo.beta", "0.5", "--dpo.pad_to", "2" if family == "masked" else "0"]
            if family == "masked":
                plan = {f"masked grpo β=0.1 ({s})": [*grpo, "--grpo.beta", "0.1", "--grpo.score", s]
                        for s in ("chain", "elbo")}
                plan |= {f"masked dpo β=0.5 ({s})": [*dpo, "--dpo.score", s] for s in ("chain", "elbo")}
            else:
                ppo = ["--method", "ppo", "--rollout.prompts_per_rollout", "32", "--train.global_batch_size", "32",
                       "--train.lr", "2e-3", "--data.pretrain", files["pretrain"]]
                plan = {"causal ppo λ_PT=0": ppo, "causal ppo λ_PT=0.1": [*ppo, "--ptx.coef", "0.1"],
                        "causal grpo β=0": grpo, "causal dpo β=0.5": dpo}
            for name, extra in plan.items():
                rows.append({"family": family, **run(name, tmp, base, extra)})
    header = ("run", "steps", "reward before", "reward after", "KL after", "pretrain loss before / after", "seconds")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        s = starts[r["family"]]
        pre = (f"{s['pretrain_loss']:.3f} / {r['pretrain_loss_after']:.3f}"
               if r["family"] == "causal" else "n/a")
        print(f"| {r['run']} | {r['steps']} | {s['reward']:.3f} | {r['reward_after']:.3f} | {r['kl_after']:.3f} | "
              f"{pre} | {r['seconds']} |")
    result = {"machine": machine_info(), "steps": steps, "start": starts, "runs": rows}
    out = Path(__file__).parent / "results" / ("align_quick.json" if args.quick else "align.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
