"""The reward model task: the paper's hinge loss, Bradley–Terry, ties, pooling by family, the head in the
checkpoint, ``biglm reward``, and a micro reward model that learns a synthetic preference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.cli import main
from biglm.data.records import read_records
from biglm.finetune import load_finetune_config, load_predictor, setup_finetune
from biglm.finetune.tasks.reward import RewardCriterion, pairwise_scores, rewards, rows_batch
from conftest import make_checkpoint, word_tokenizer

LETTERS = [chr(c) for c in range(ord("a"), ord("p") + 1)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def last_letter_pairs(n: int, seed: int) -> list[dict]:
    """Prompt: 3-6 distinct letters and '?'; the right answer is the prompt's last letter, the wrong one another
    letter of the same prompt (so "does the letter occur" is no shortcut). A and B in random order."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        p = r.sample(LETTERS, r.randint(3, 6))
        good, bad = p[-1], r.choice(p[:-1])
        a_good = r.random() < 0.5
        rows.append({"id": i, "prompt": " ".join(p) + " ?", "response_a": good if a_good else bad,
                     "response_b": bad if a_good else good, "choice": "A" if a_good else "B"})
    return rows


def tiny_model(family: str = "masked") -> BiGLM:
    torch.manual_seed(0)
    extra = {"position_encoding": "rope-2d"} if family == "glm" else {}
    return BiGLM(ModelConfig("t", 64, 32, 2, 4, 2, 64, max_seq_len=32, reward_head=True, family=family,
                             **extra)).eval()


def test_hinge_and_bradley_terry_match_the_formulas():
    d = torch.tensor([-1.0, 1.0, 1.0, 0.0])
    delta = torch.tensor([0.5, 0.25, 3.0, 2.0])  # r(y') - r(y)
    pref, tie = RewardCriterion("hinge").pair_losses(d, delta)
    assert torch.allclose(pref, torch.tensor([1.5, 0.75, 0.0, 0.0])) and not tie.any()
    pref, _ = RewardCriterion("bradley-terry").pair_losses(d, delta)
    assert torch.allclose(pref[:3], -torch.nn.functional.logsigmoid(d[:3] * delta[:3])) and pref[3] == 0
    _, tie = RewardCriterion("hinge", ties="pull", tie_weight=0.5).pair_losses(d, delta)
    assert torch.allclose(tie, torch.tensor([0.0, 0.0, 0.0, 2.0]))


@pytest.mark.parametrize("ties", ["drop", "pull"])
def test_ties_are_dropped_or_pulled_together(ties):
    model = tiny_model()
    crit = RewardCriterion("hinge", ties=ties, pooling="mean")
    rows = [[1, 10, 11, 2, 12, 2], [1, 13, 2, 14, 15, 16, 2]]
    batch = rows_batch(rows, "bidirectional")
    batch.extras["d"] = torch.tensor([0.0])  # one pair: rows[0] vs rows[1], judged a tie
    assert crit.counts(batch) == {"reward": 0.0 if ties == "drop" else 1.0}
    parts = crit(model, batch)
    def gap() -> float:
        with torch.no_grad():
            r = rewards(model, batch, "mean")
        return float((r[1] - r[0]).abs())

    if ties == "drop":
        assert float(parts.terms["reward"].detach()) == 0.0
        return
    before = gap()
    parts.terms["reward"].backward()
    with torch.no_grad():  # one small gradient step on the tie loss brings the two rewards closer
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert before > 0 and gap() < before


@pytest.mark.parametrize("family, pooling", [("masked", "mean"), ("causal", "last"), ("bidirectional-ar", "last"),
                                             ("glm", "last")])
def test_a_rows_reward_does_not_depend_on_its_batch(family, pooling):
    """Pooling ignores padding: a row scored alone = the same row right-padded beside a longer one; and a causal
    model's last-token reward ignores nothing before it (changing the first prompt token changes it)."""
    model = tiny_model(family)
    kind = "bidirectional" if family in ("masked", "glm") else "causal"
    short, long = [1, 10, 11, 2, 12, 2], [1, 13, 14, 15, 2, 16, 17, 18, 2]
    alone = rewards(model, rows_batch([short], kind), pooling)
    together = rewards(model, rows_batch([short, long], kind), pooling)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-6)
    changed = rewards(model, rows_batch([[1, 19, 11, 2, 12, 2]], kind), pooling)
    assert not torch.isclose(alone[0], changed[0])


def test_pairwise_scores():
    s = pairwise_scores([-1, 1, 1, 0], [-2.0, 1.0, -1.0, 0.5])
    assert s == {"pairs": 3.0, "accuracy": 2 / 3, "margin": (2.0 + 1.0 - 1.0) / 3, "tie_gap": 0.5}


def train_reward_model(tmp_path: Path, init: Path, n_train: int, epochs: int, *extra: str):
    args = ["--init", str(init), "--task.kind", "reward",
            "--data.train", write_jsonl(tmp_path / "train.jsonl", last_letter_pairs(n_train, 0)),
            "--data.valid", write_jsonl(tmp_path / "valid.jsonl", last_letter_pairs(200, 1)),
            "--train.progress", "false", "--train.tensorboard", "false", "--train.global_batch_size", "32",
            "--train.lr", "3e-3", "--train.warmup_steps", "10", "--train.epochs", str(epochs), *extra]
    trainer = setup_finetune(load_finetune_config(None, args), tmp_path / "rm")
    trainer.fit()
    trainer.close()
    return trainer


@pytest.mark.slow  # learns: hundreds of steps
def test_micro_reward_model_learns_a_synthetic_preference(tmp_path):
    """600 pairs, 30 epochs (hinge loss): held-out pairwise accuracy > 0.9 (measured 0.98), and the checkpoint
    (reward head included) reloads to the same held-out scores; ``biglm reward`` scores single responses."""
    init = make_checkpoint(tmp_path / "init", layers=2, hidden=64)
    trainer = train_reward_model(tmp_path, init, 600, 30)
    assert trainer.best.value > 0.9
    predictor = load_predictor(tmp_path / "rm")
    assert predictor.loaded.config.reward_head
    valid = predictor.task.encode(read_records(str(tmp_path / "valid.jsonl")))
    scores = predictor.task.score(valid, predictor.task.predict(predictor.loaded.model, valid))
    assert scores["accuracy"] == pytest.approx(trainer.best.value)

    singles = [{"prompt": row["prompt"], "response": row[k]} for row in last_letter_pairs(40, 2)
               for k in ("response_a", "response_b")]
    src = write_jsonl(tmp_path / "singles.jsonl", singles)
    out = tmp_path / "rewards.jsonl"
    assert main(["reward", "--ckpt", str(tmp_path / "rm"), "--input", src, "--out", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["response"] for g in got] == [s["response"] for s in singles]
    right = sum((g["reward"] > h["reward"]) == (g["response"] == g["prompt"].split()[-2])
                for g, h in zip(got[::2], got[1::2]))
    assert right / 40 > 0.85


def test_reward_cli_refuses_a_model_of_another_task_and_bad_files(tmp_path, capsys):
    init = make_checkpoint(tmp_path / "init", layers=1, hidden=32)
    trainer = train_reward_model(tmp_path, init, 40, 1)
    assert trainer.step > 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a ?", "response_a": "a", "choice": "A"}])
    capsys.readouterr()
    assert main(["reward", "--ckpt", str(tmp_path / "rm"), "--input", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: missing response field 'response_b'" in err and len(err.strip().splitlines()) == 1
    assert main(["reward", "--ckpt", str(init), "--input", bad]) == 2
    assert "not a fine-tuned checkpoint" in capsys.readouterr().err


def test_causal_reward_model_trains_on_the_shared_trainer(tmp_path):
    """A causal backbone: last-token pooling under the causal layout; the loss falls over a few epochs."""
    torch.manual_seed(0)
    cfg = ModelConfig("test", 64, 64, 2, 4, 2, 128, max_seq_len=64, family="causal")
    init = write_checkpoint(tmp_path / "init", model_state_dict(BiGLM(cfg)), cfg, word_tokenizer())
    trainer = train_reward_model(tmp_path, init, 200, 4)
    lines = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x and "val_accuracy" not in x]
    assert trainer.model.config.reward_head and losses[-1] < losses[0]


def test_expand_grows_the_reward_head_and_keeps_the_rewards():
    from biglm.grow import ExpandSpec, expand_model

    model = tiny_model("masked")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    grown, plan = expand_model(model, ExpandSpec(hidden_size=64, num_layers=3, depth_init="zero"))
    assert plan.exact and grown.config.reward_head and grown.reward_head.weight.shape == (1, 64)
    batch = rows_batch([[1, 10, 11, 2, 12, 2], [1, 13, 2, 14, 15, 16, 2]], "bidirectional")
    with torch.no_grad():
        torch.testing.assert_close(rewards(grown, batch, "mean"), rewards(model, batch, "mean"), atol=1e-4, rtol=1e-4)
