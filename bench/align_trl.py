"""GRPO of a causal policy: ``biglm align --method grpo`` against trl's ``GRPOTrainer`` on the same policy exported
as a Llama (``biglm export-hf``), on the synthetic task (``biglm.align.synthetic``), in the same process.

Both start from the same pre-trained micro policy (2 layers, width 64), take the same optimizer steps of 32
responses (groups of 8 samples per prompt, β = 0, one iteration per batch, constant lr, ε = 0.2, at most 2 new
tokens, temperature 1, AdamW β2 0.95, weight decay 0.01, gradient clipping 1) on the same 256 training prompts and
the same rule reward; lr 3e-3 for biglm, 1e-3 for trl (``TRL_LR``: at 3e-3 trl's policy collapsed to one
answer). trl's loss is its default (``dapo``: token losses summed over the batch and divided by its token count,
which is what biglm's trainer does). Both trained policies are judged by biglm the same way: 64 held-out prompts,
responses sampled with a fixed seed, the rule reward, and the KL to the start policy. trl's prompts are given as
``[BOS] prompt`` (the rows the policy was trained on start with BOS; the word-level tokenizer adds none).

    python bench/align_trl.py            # under a minute on 2 shared CPU cores

Prints a Markdown table and writes ``bench/results/align_trl.json``.
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
from biglm.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info

TRL_LR = 1e-3
"""trl at biglm's 3e-3 collapsed to one answer for every prompt (held-out reward 0.44-0.56 after 96-192 steps)."""


def judge_args(init: Path, files: dict[str, str]) -> list[str]:
    return ["--method", "grpo", "--init", str(init), "--reward", synthetic.REWARD, "--data.prompts", files["prompts"],
            "--data.valid_prompts", files["valid"], "--rollout.max_new_tokens", "2", "--train.device", "cpu"]


def run_biglm(tmp: Path, init: Path, files: dict[str, str], steps: int) -> tuple[torch.nn.Module, float]:
    args = [*judge_args(init, files), "--grpo.group_size", "8", "--rollout.prompts_per_rollout", "8",
            "--train.global_batch_size", "32", "--train.lr", "3e-3", "--train.steps", str(steps),
            "--train.eval_every", str(steps), "--train.progress", "false", "--train.tensorboard", "false"]
    start = time.perf_counter()
    trainer = setup_align(load_align_config(None, args), tmp / "biglm")
    trainer.fit()
    trainer.close()
    return trainer.model, time.perf_counter() - start


def run_trl(tmp: Path, init: Path, files: dict[str, str], steps: int) -> tuple[torch.nn.Module, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from biglm.cli import main as biglm
    from biglm.hf.convert import from_hf_state_dict

    hf = tmp / "hf"
    biglm(["export-hf", "--ckpt", str(init), "--out", str(hf)])
    prompts = [json.loads(x)["prompt"] for x in Path(files["prompts"]).read_text().splitlines()]
    data = Dataset.from_list([{"prompt": "[BOS] " + p} for p in prompts])

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return synthetic.contains_a([p.removeprefix("[BOS] ") for p in prompts], completions)

    config = GRPOConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=32, num_generations=8,
                        max_completion_length=2, beta=0.0, epsilon=0.2, num_iterations=1, learning_rate=TRL_LR,
                        lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, temperature=1.0,
                        use_cpu=True, report_to=[], save_strategy="no", logging_steps=max(steps // 6, 1), bf16=False,
                        seed=0, disable_tqdm=True, weight_decay=0.01, max_grad_norm=1.0, adam_beta2=0.95)
    model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    start = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=data,
                          processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    policy = load_model(init).model  # the same architecture in biglm, with trl's trained weights
    state = {k: v for k, v in trainer.model.state_dict().items()}
    policy.load_state_dict(from_hf_state_dict(state, policy.config), strict=False)
    return policy, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=192)
    p.add_argument("--trl-lr", type=float, default=TRL_LR, help="trl's learning rate (default: biglm's)")
    args = p.parse_args()
    globals()["TRL_LR"] = args.trl_lr
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        files = synthetic.write_task(tmp)
        init = synthetic.pretrain_policy(tmp, "causal")
        judge = load_align_config(None, judge_args(init, files))
        start = held_out_metrics(judge, load_model(init).model)
        rows = []
        for name, fn in (("biglm align --method grpo", run_biglm), ("trl GRPOTrainer (exported Llama)", run_trl)):
            model, seconds = fn(tmp, init, files, args.steps)
            after = held_out_metrics(judge, model)
            rows.append({"run": name, "steps": args.steps, "seconds": round(seconds, 1),
                         **{f"{k}_after": round(v, 4) for k, v in after.items()}})
            print(rows[-1], file=sys.stderr)
    print("| run | steps | reward before | reward after | KL after | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['steps']} | {start['reward']:.3f} | {r['reward_after']:.3f} | {r['kl_after']:.3f} "
              f"| {r['seconds']} |")
    out = Path(__file__).parent / "results" / "align_trl.json"
    out.write_text(json.dumps({"machine": machine_info(), "biglm_lr": 3e-3, "trl_lr": TRL_LR, "start": start,
                               "runs": rows}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
