"""Small models that really learn each fine-tuning task through the shared trainer, and exact resume.

Each test starts from a randomly initialised checkpoint (a word-level tokenizer over a..z) and fine-tunes
it with ``biglm.finetune`` on a synthetic task whose answer is recoverable from the input.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from biglm.finetune import evaluate_split, load_finetune_config, load_predictor, setup_finetune
from conftest import make_checkpoint

LETTERS = [chr(c) for c in range(ord("a"), ord("p") + 1)]  # 16 symbols


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    yield


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def finetune(tmp_path: Path, init: Path, train: list[dict], valid: list[dict], *overrides: str, until=None,
             run: str = "run", resume: bool = False):
    args = ["--init", str(init), "--data.train", write_jsonl(tmp_path / "train.jsonl", train),
            "--data.valid", write_jsonl(tmp_path / "valid.jsonl", valid), "--train.progress", "false",
            "--train.tensorboard", "false", *overrides]
    trainer = setup_finetune(load_finetune_config(None, args), tmp_path / run, resume=resume)
    trainer.fit(until)
    trainer.close()
    return trainer


def copy_rows(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        s = [r.choice(LETTERS) for _ in range(r.randint(3, 8))]
        rows.append({"id": f"{seed}-{i}", "source": " ".join(s), "target": " ".join(s)})
    return rows


SEQ2SEQ = ["--task.kind", "seq2seq", "--task.seq2seq.max_target_length", "10", "--task.seq2seq.metrics",
           "[exact_match]", "--train.global_batch_size", "32", "--train.lr", "3e-3", "--train.warmup_steps", "20"]


@pytest.mark.slow  # learns: hundreds of steps
def test_seq2seq_copies_variable_length_sequences_with_predicted_lengths(tmp_path):
    init = make_checkpoint(tmp_path / "init", layers=2, hidden=128)
    trainer = finetune(tmp_path, init, copy_rows(4000, 0), copy_rows(200, 1), *SEQ2SEQ, "--train.steps", "500",
                       "--train.eval_every", "500")
    row = trainer.last_metrics
    assert row["val_exact_match"] > 80, row  # lengths 3..8 from the length head, 10 Mask-Predict passes
    assert row["val_length_accuracy"] > 90, row
    predictor = load_predictor(tmp_path / "run")
    scores, _, cached = evaluate_split(predictor, "valid")
    assert scores["exact_match"] == pytest.approx(row["val_exact_match"])
    # The same predictions without the prefix cache (the source re-encoded in every pass).
    predictor.task.options.prefix_cache = False
    _, _, plain = evaluate_split(predictor, "valid")
    assert [p["prediction"] for p in plain] == [p["prediction"] for p in cached]
    # The reference code's rule (best average log-probability) on the same model, reported for comparison.
    predictor.task.options.prefix_cache, predictor.task.options.length_rule = True, "average"
    average, _, _ = evaluate_split(predictor, "valid")
    print(f"copy: exact match {scores['exact_match']:.1f} (joint rule), {average['exact_match']:.1f} (average rule); "
          f"length head accuracy {scores['length_accuracy']:.1f}")


@pytest.mark.slow  # learns: hundreds of steps
def test_seq2seq_with_eos_padding_learns_the_length_too(tmp_path):
    init = make_checkpoint(tmp_path / "init", layers=2, hidden=128)
    trainer = finetune(tmp_path, init, copy_rows(4000, 0), copy_rows(200, 1), *SEQ2SEQ, "--train.steps", "500",
                       "--train.eval_every", "500", "--task.seq2seq.length", "eos")
    row = trainer.last_metrics
    assert row["val_exact_match"] > 80, row  # the output is cut at the first EOS
    assert "val_length_accuracy" not in row and "loss_length" not in row  # no length head in this mode


def cloze_rows(n: int, seed: int) -> list[dict]:
    """The label is the group of the first symbol: a-e -> p, f-j -> q, k-p -> r."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        s = [r.choice(LETTERS) for _ in range(5)]
        label = "p" if s[0] <= "e" else ("q" if s[0] <= "j" else "r")
        rows.append({"text": " ".join(s), "label": label})
    return rows


@pytest.mark.slow  # learns: hundreds of steps
def test_cloze_classification_with_multi_token_verbalizers(tmp_path):
    init = make_checkpoint(tmp_path / "init")
    trainer = finetune(tmp_path, init, cloze_rows(2000, 0), cloze_rows(200, 1),
                       "--task.kind", "cloze-classification",
                       "--task.cloze_classification.template", '"{text} ? {blank} @"',
                       "--task.cloze_classification.verbalizer", '{"p": "yes", "q": "no way", "r": "maybe so"}',
                       "--train.global_batch_size", "32", "--train.lr", "5e-3", "--train.steps", "600",
                       "--train.eval_every", "600", "--train.warmup_steps", "20")
    row = trainer.last_metrics
    assert row["val_accuracy"] > 90 and row["val_majority_baseline"] < 45, row


KEYS = [chr(c) for c in range(ord("q"), ord("z") + 1)]  # 10 symbols never used as filler


def qa_rows(n: int, seed: int) -> list[dict]:
    """A context of 40 filler symbols (a..p) holding three entries ``key x y`` with distinct keys (q..z);
    the question is one key, the answer its entry. Contexts are longer than one window (32 tokens with a
    one-token question: 27 context tokens per window, stride 8), so answers fall in one or two windows."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        words = [r.choice(LETTERS) for _ in range(40)]
        keys = r.sample(KEYS, 3)
        slots = sorted(r.sample(range(0, 37, 4), 3))
        for k, at in zip(keys, slots):
            words[at] = k
        key = r.choice(keys)
        at = slots[keys.index(key)]
        start = len(" ".join(words[:at])) + (1 if at else 0)
        rows.append({"id": f"q{seed}-{i}", "question": key, "context": " ".join(words),
                     "answers": {"text": [" ".join(words[at:at + 3])], "answer_start": [start]}})
    return rows


@pytest.mark.slow  # learns: hundreds of steps
def test_extractive_qa_finds_the_span_across_windows(tmp_path):
    init = make_checkpoint(tmp_path / "init", layers=2, hidden=128)
    train, valid = qa_rows(2000, 0), qa_rows(150, 1)
    assert all(r["context"][a:a + len(t)] == t for r in train for a, t in zip(r["answers"]["answer_start"],
                                                                              r["answers"]["text"]))
    trainer = finetune(tmp_path, init, train, valid, "--task.kind", "extractive-qa",
                       "--task.extractive_qa.max_length", "32", "--task.extractive_qa.doc_stride", "8",
                       "--train.global_batch_size", "32", "--train.lr", "3e-3", "--train.steps", "400",
                       "--train.eval_every", "400", "--train.warmup_steps", "20")
    row = trainer.last_metrics
    assert row["val_exact_match"] > 80 and row["val_f1"] >= row["val_exact_match"], row


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    init = make_checkpoint(tmp_path / "init")
    args = [*SEQ2SEQ, "--train.epochs", "2", "--train.global_batch_size", "8", "--train.log_every", "1",
            "--task.seq2seq.source_mask_ratio", "0.2", "--model.dropout", "0.1"]
    train, valid = copy_rows(60, 0), copy_rows(12, 1)  # 8 steps per epoch: the break falls inside epoch 1
    full = finetune(tmp_path, init, train, valid, *args, run="full")
    finetune(tmp_path, init, train, valid, *args, run="split", until=11)
    shutil.rmtree(init)  # a resumed run needs only its own checkpoints
    torch.manual_seed(999)  # disturb the process RNG: the checkpoint must restore it
    resumed = finetune(tmp_path, init, train, valid, *args, run="split", resume=True)
    assert resumed.step == full.step == 16
    read = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    a, b = read("full"), read("split")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    for key in ("val_loss", "val_exact_match"):
        assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], abs=1e-6)
    best_a = json.loads((tmp_path / "full" / "best" / "meta.json").read_text())
    best_b = json.loads((tmp_path / "split" / "best" / "meta.json").read_text())
    assert best_a["step"] == best_b["step"] and best_a["best"]["metric"] == best_b["best"]["metric"]
    assert best_a["best"]["value"] == pytest.approx(best_b["best"]["value"])
