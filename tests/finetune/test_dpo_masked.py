"""DPO of masked (Mask-Predict) policies through a sequence score: the reference scores the policy's own masks
(margin exactly 0 at the start, for every score), the length head's term, and a micro policy that learns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from biglm.checkpoint import load_model
from biglm.finetune import load_finetune_config, setup_finetune
from biglm.finetune.setup import prepare, read_split
from biglm.train.batches import RowSeeds
from biglm.train.setup import fit_to_end
from test_dpo import dpo_args, policy
from test_reward import LETTERS, write_jsonl
from test_train_distributed import free_port, rank_env


def two_letter_pairs(n: int, seed: int) -> list[dict]:
    """Prompt: 3-6 distinct letters and '?'; preferred: its last two letters, last first; rejected: its first two
    letters, first first (A and B in random order)."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        p = r.sample(LETTERS, r.randint(3, 6))
        good, bad = f"{p[-1]} {p[-2]}", f"{p[0]} {p[1]}"
        a_good = r.random() < 0.5
        rows.append({"id": i, "prompt": " ".join(p) + " ?", "response_a": good if a_good else bad,
                     "response_b": bad if a_good else good, "choice": "A" if a_good else "B"})
    return rows


def masked_args(tmp_path: Path, init: Path, n_train: int, epochs: int, *extra: str) -> list[str]:
    args = dpo_args(tmp_path, init, n_train, epochs, *extra)
    write_jsonl(tmp_path / "train.jsonl", two_letter_pairs(n_train, 0))
    write_jsonl(tmp_path / "valid.jsonl", two_letter_pairs(200, 1))
    return args


@pytest.mark.parametrize("score", ["chain", "elbo", "one-step"])
def test_margin_is_exactly_zero_at_the_reference(tmp_path, score):
    init = policy(tmp_path, "masked", length_head=True, max_target_length=8)
    cfg = load_finetune_config(None, masked_args(tmp_path, init, 16, 1, "--task.dpo.score", score))
    task = prepare(cfg).task
    examples = read_split(cfg, "train", task)
    model = load_model(init).model
    task.set_reference(load_model(init).model.requires_grad_(False), examples)
    assert (task.reference is not None) == (score != "chain")  # Monte-Carlo scores keep the reference
    scores = task.score(examples, task.predict(model, examples))
    assert scores["margin"] == 0.0 and scores["chosen_shift"] == 0.0
    batch = task.batcher()(examples, RowSeeds(5, 0))  # a training step: fresh masks from the row seeds
    loss = float(task.criterion()(model, batch).terms["dpo"].detach())
    assert loss == pytest.approx(16 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    if score != "chain":  # why the reference must score the same masks: other masks give a noisy margin
        other = task.batcher()(examples, RowSeeds(6, 0))
        crit = task.criterion()
        rows = [ex.chosen for ex in examples] + [ex.rejected for ex in examples]
        with torch.no_grad():
            a = crit.scores(model, rows, batch.extras["mask_seeds"].tolist())
            b = crit.scores(model, rows, other.extras["mask_seeds"].tolist())
        assert (a - b).abs().max() > 1e-3


def test_validation_masks_do_not_depend_on_where_the_file_lies(tmp_path):
    init = policy(tmp_path, "masked")
    seeds = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cfg = load_finetune_config(None, masked_args(tmp_path / folder, init, 8, 1, "--task.dpo.score", "elbo"))
        seeds.append([ex.seed for ex in read_split(cfg, "valid", prepare(cfg).task)])
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == len(seeds[0])


def test_the_length_term_and_responses_cut_to_the_length_head(tmp_path):
    init = policy(tmp_path, "masked", length_head=True, max_target_length=2)  # lengths 0..1: one-token replies
    cfg = load_finetune_config(None, masked_args(tmp_path, init, 4, 1))
    task = prepare(cfg).task
    examples = read_split(cfg, "train", task)
    assert all(len(ex.chosen[1]) == 1 and len(ex.rejected[1]) == 1 for ex in examples)
    model = load_model(init).model.eval()
    with_len = task.predict(model, examples)
    no_len = prepare(load_finetune_config(None, masked_args(tmp_path, init, 4, 1, "--task.dpo.length_term",
                                                            "false"))).task.predict(model, examples)
    assert all(a["logp_chosen"] < b["logp_chosen"] for a, b in zip(with_len, no_len))


@pytest.mark.slow  # learns: hundreds of steps
def test_masked_dpo_raises_the_held_out_margin(tmp_path):
    """300 pairs of two-letter answers, 10 epochs, β = 0.5, lr 1e-2, the ELBO score with 4 masks, from a random
    masked policy: the held-out margin (0 at the reference) becomes positive and most held-out pairs are ranked
    right (measured: margin 1.38, accuracy 0.78)."""
    init = policy(tmp_path, "masked")
    args = masked_args(tmp_path, init, 300, 10, "--task.dpo.beta", "0.5", "--task.dpo.score", "elbo", "--train.lr",
                       "1e-2")
    trainer = setup_finetune(load_finetune_config(None, args), tmp_path / "run")
    trainer.fit()
    trainer.close()
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "val_margin" in e]
    assert len(evals) == 10 and abs(evals[0]["val_margin"]) < 0.2
    assert evals[-1]["val_margin"] > 0.5 and evals[-1]["val_accuracy"] > 0.65


def dpo_worker(rank: int, world: int, port: int, args: list[str], run: str) -> None:
    rank_env(rank, world, port)
    cfg = load_finetune_config(None, args)
    fit_to_end(lambda: setup_finetune(cfg, run), run_dir=run, inputs=cfg.inputs())


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Masked DPO with the ELBO under DDP (gloo, CPU): the policy's two passes (prompts, then responses) and the
    reference's masks give the loss, gradient norm and held-out margin of one process with the same batch."""
    init = policy(tmp_path, "masked", length_head=True, max_target_length=8)
    args = masked_args(tmp_path, init, 64, 2, "--task.dpo.score", "elbo", "--train.micro_batch_size", "8")
    mp.spawn(dpo_worker, args=(2, free_port(), args, str(tmp_path / "two")), nprocs=2, join=True)
    trainer = setup_finetune(load_finetune_config(None, args), tmp_path / "one")
    trainer.fit()
    trainer.close()
    rows = {r: [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("one", "two")}
    assert len(rows["one"]) == len(rows["two"]) == 2
    for key in ("loss", "loss_margin", "grad_norm", "val_margin", "val_accuracy"):
        assert [r[key] for r in rows["two"]] == pytest.approx([r[key] for r in rows["one"]], rel=1e-5, abs=1e-6), key


def test_rows_are_the_instruction_kinds_rows(tmp_path):
    """A chat preference pair is scored on the prompt X and reply Y the instruction kind trains the policy on."""
    init = policy(tmp_path, "masked")
    conv = [{"role": "user", "content": "a b c ?"}]
    pair = {"prompt": conv, "response_a": "c b", "response_b": "a b", "choice": "A"}
    sft = {"messages": [*conv, {"role": "assistant", "content": "c b"}]}
    dpo_cfg = load_finetune_config(None, ["--init", str(init), "--task.kind", "dpo",
                                          "--data.train", write_jsonl(tmp_path / "p.jsonl", [pair])])
    inst_cfg = load_finetune_config(None, ["--init", str(init), "--task.kind", "instruction",
                                           "--data.train", write_jsonl(tmp_path / "i.jsonl", [sft]),
                                           "--task.instruction.max_target_length", "8"])
    [dpo_ex] = read_split(dpo_cfg, "train", prepare(dpo_cfg).task)
    [inst_ex] = read_split(inst_cfg, "train", prepare(inst_cfg).task)
    assert len(inst_ex.source) > 4 and dpo_ex.chosen == (inst_ex.source, inst_ex.target)


def test_resume_equals_uninterrupted(tmp_path):
    """ELBO masks come from the trainer's row seeds and the reference is reloaded from init: a run stopped after
    step 2 and resumed logs what the uninterrupted run logs."""
    init = policy(tmp_path, "masked", length_head=True, max_target_length=8)
    args = masked_args(tmp_path, init, 64, 2, "--task.dpo.score", "elbo", "--train.eval_every", "1")
    rows = {}
    for run, stops in (("straight", [None]), ("split", [2, None])):
        for i, until in enumerate(stops):
            trainer = setup_finetune(load_finetune_config(None, args), tmp_path / run, resume=i > 0)
            trainer.fit(until)
            trainer.close()
        rows[run] = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows["split"]] == [r["step"] for r in rows["straight"]] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "val_margin"):
        assert [r[key] for r in rows["split"]] == pytest.approx([r[key] for r in rows["straight"]], abs=1e-6), key
