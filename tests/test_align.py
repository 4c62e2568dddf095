"""``biglm align``: PPO (KL penalty, value head, GAE, λ_PT) and GRPO on the shared trainer — the exact pieces,
micro policies that learn a synthetic preference, the pretraining anchor, and bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from biglm.finetune.data import ExampleStream
from biglm.train.config import RunConfig
from biglm.train.setup import setup
from biglm.train.streams import DataBundle
from conftest import word_tokenizer
from test_reward import LETTERS, write_jsonl

RULE = "py:align_rewards:contains_a"


def letter_prompt(r: random.Random) -> list[str]:
    """3-6 distinct letters of a..p, half of the prompts with the letter a."""
    letters = r.sample(LETTERS[1:], r.randint(3, 6))
    if r.random() < 0.5:
        letters[r.randrange(len(letters))] = "a"
    return letters


def prompts_file(path: Path, n: int, seed: int) -> str:
    r = random.Random(seed)
    return write_jsonl(path, [{"prompt": " ".join(letter_prompt(r)) + " ?"} for _ in range(n)])


def corpus(n: int, seed: int) -> list[str]:
    """Pretraining documents: a prompt, '?', and "yes" or "no" at random (an 'instruction-tuned' start that answers
    in the right form, right half of the time)."""
    r = random.Random(seed)
    return [" ".join(letter_prompt(r)) + " ? " + r.choice(["yes", "no"]) for _ in range(n)]


class RowsStream:
    """Packed rows as a pre-training row stream (for the fixture's pre-training run)."""

    def __init__(self, rows: list) -> None:
        self.examples = ExampleStream(rows, None, 0)

    def batches(self, batch_size: int | None = None):
        for part in self.examples.batches(batch_size):
            yield {"input_ids": torch.stack([r[0] for r in part]), "document_ids": torch.stack([r[1] for r in part])}

    def state_dict(self):
        return self.examples.state_dict()

    def load_state_dict(self, state):
        self.examples.load_state_dict(state)

    def set_phase(self, phase):
        pass


def pretrained_policy(tmp: Path, family: str = "causal", steps: int = 100, lr: float = 1e-2) -> Path:
    """A micro policy pre-trained on ``corpus`` with its family's objective (a few seconds)."""
    from biglm.align.pretrain import pack
    from biglm.finetune.tasks.base import TokenIds

    tok = word_tokenizer()
    ids = TokenIds.of(tok)
    rows = pack(tok(corpus(2000, 0), add_special_tokens=False)["input_ids"], 32, ids.bos, ids.eos, ids.pad)
    objective = {"causal": "causal", "bidirectional-ar": "bidirectional-ar", "masked": "biglm"}[family]
    model = {"name": "test", "vocab_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "intermediate_size": 128, "max_seq_len": 32, "family": family}
    train = {"steps": steps, "global_batch_size": 16, "lr": lr, "min_lr": 1e-3, "warmup_steps": 10,
             "log_every": 50, "save_every": 0, "eval_batches": 1, "progress": False, "tensorboard": False,
             "prefetch": 0, "schedule": "cosine", "device": "cpu"}
    cfg = RunConfig.from_dict({"model": model, "objective": {"name": objective}, "data": {"seq_len": 32},
                               "train": train})
    data = lambda c, env, micro: DataBundle(RowsStream(rows), None, mask_token_id=ids.mask, vocab_size=64,
                                            n_tokens=len(tok), tokenizer=tok,
                                            special_ids={"bos": ids.bos, "eos": ids.eos, "pad": ids.pad, "mask": ids.mask})
    trainer = setup(cfg, tmp / "pretrain", data=data)
    trainer.fit()
    trainer.close()
    return tmp / "pretrain"


def align_args(tmp: Path, init: Path, *extra: str) -> list[str]:
    return ["--init", str(init), "--reward", RULE,
            "--data.prompts", prompts_file(tmp / "prompts.jsonl", 256, 1),
            "--data.valid_prompts", prompts_file(tmp / "valid.jsonl", 64, 2),
            "--rollout.max_new_tokens", "2", "--train.progress", "false", "--train.tensorboard", "false",
            "--train.device", "cpu", *extra]
