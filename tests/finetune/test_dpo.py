"""DPO of an autoregressive policy on judged pairs, on the shared trainer: the reference log-probs, the
loss, the held-out margin rising, and refusal of GLM policies (masked ones: test_dpo_masked.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.errors import ConfigError
from biglm.finetune import load_finetune_config, setup_finetune
from biglm.finetune.setup import prepare, read_split
from biglm.finetune.tasks.dpo import DPOCriterion
from conftest import word_tokenizer
from test_reward import last_letter_pairs, write_jsonl


def policy(tmp_path: Path, family: str = "causal", **extra) -> Path:
    torch.manual_seed(0)
    if family == "glm":
        extra["position_encoding"] = "rope-2d"
    cfg = ModelConfig("test", 64, 64, 2, 4, 2, 128, max_seq_len=64, family=family, **extra)
    return write_checkpoint(tmp_path / "init", model_state_dict(BiGLM(cfg)), cfg, word_tokenizer())


def dpo_args(tmp_path: Path, init: Path, n_train: int, epochs: int, *extra: str) -> list[str]:
    return ["--init", str(init), "--task.kind", "dpo",
            "--data.train", write_jsonl(tmp_path / "train.jsonl", last_letter_pairs(n_train, 0)),
            "--data.valid", write_jsonl(tmp_path / "valid.jsonl", last_letter_pairs(200, 1)),
            "--train.progress", "false", "--train.tensorboard", "false", "--train.global_batch_size", "32",
            "--train.lr", "3e-3", "--train.warmup_steps", "10", "--train.epochs", str(epochs), *extra]


def test_dpo_loss_is_the_formula_and_zero_margin_at_the_reference(tmp_path):
    init = policy(tmp_path)
    cfg = load_finetune_config(None, dpo_args(tmp_path, init, 8, 1, "--task.dpo.beta", "0.5"))
    task = prepare(cfg).task
    examples = read_split(cfg, "train", task)
    model = load_model(init).model
    task.set_reference(model, examples)
    # the policy is the reference: every margin is exactly 0 and the loss is log 2 per pair
    scores = task.score(examples, task.predict(model, examples))
    assert scores["margin"] == 0.0 and scores["chosen_shift"] == 0.0
    batch = task.batcher()(examples, None)
    parts = DPOCriterion(0.5)(model, batch)
    assert float(parts.terms["dpo"].detach()) == pytest.approx(8 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    # a shifted reference gives -log σ(β·Δ) exactly
    for ex in examples:
        ex.ref_chosen -= 1.0
    parts = DPOCriterion(0.5)(model, task.batcher()(examples, None))
    expected = 8 * torch.nn.functional.softplus(torch.tensor(-0.5)).item()
    assert float(parts.terms["dpo"].detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # learns: hundreds of steps
def test_dpo_raises_the_held_out_margin(tmp_path):
    """300 pairs, 10 epochs, β = 0.5 from a random causal policy: the held-out implicit reward margin, 0 at the
    reference, becomes positive, and most held-out pairs are ranked right (measured: margin 0.92, accuracy 0.705)."""
    trainer = setup_finetune(load_finetune_config(None, dpo_args(tmp_path, policy(tmp_path), 300, 10,
                                                                  "--task.dpo.beta", "0.5")), tmp_path / "run")
    trainer.fit()
    trainer.close()
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "val_margin" in e]
    assert len(evals) == 10
    assert evals[-1]["val_margin"] > 0.5 and evals[-1]["val_margin"] > evals[0]["val_margin"]
    assert evals[-1]["val_accuracy"] > 0.6


def test_dpo_takes_bidirectional_ar_and_refuses_glm_policies(tmp_path):
    trainer = setup_finetune(load_finetune_config(None, dpo_args(tmp_path, policy(tmp_path, "bidirectional-ar"),
                                                                  32, 1)), tmp_path / "run")
    trainer.fit()
    trainer.close()
    assert trainer.step == 1
    with pytest.raises(ConfigError, match=r"task\.kind=dpo: needs a masked, causal or bidirectional-ar model, the "
                                          r"checkpoint is glm \(a glm model fine-tunes with: cloze-classification, "):
        prepare(load_finetune_config(None, dpo_args(tmp_path / "g", policy(tmp_path / "g", "glm"), 8, 1)))
