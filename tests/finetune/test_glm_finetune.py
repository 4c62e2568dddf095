"""GLM fine-tuning kinds: cloze classification (eq. 5 over verbalizers written in part B) and seq2seq
(A = source + [gMASK], B = target), learned by micro models through the shared trainer."""

from __future__ import annotations

import math

import pytest
import torch

from biglm.finetune import evaluate_split, load_predictor
from biglm.finetune.tasks.glm import glm_row
from conftest import word_tokenizer
from test_finetune_learning import cloze_rows, copy_rows, finetune


def glm_checkpoint(folder, layers: int = 2, hidden: int = 64, seed: int = 0):
    from biglm import BiGLM, ModelConfig
    from biglm.checkpoint import model_state_dict, write_checkpoint
    from biglm.data.tokenizer import ensure_glm_tokens

    tok = word_tokenizer()
    ensure_glm_tokens(tok)
    torch.manual_seed(seed)
    cfg = ModelConfig("test", 64, hidden, layers, 4, 2, 2 * hidden, max_seq_len=64, family="glm",
                      position_encoding="rope-2d")
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, tok)


CLOZE = ["--task.kind", "cloze-classification", "--task.cloze_classification.template", '"{text} ? {blank} @"',
         "--task.cloze_classification.verbalizer", '{"p": "yes", "q": "no way", "r": "maybe so"}']


@pytest.mark.slow  # learns: hundreds of steps
def test_glm_cloze_classification_learns_with_eq5(tmp_path):
    init = glm_checkpoint(tmp_path / "init")
    trainer = finetune(tmp_path, init, cloze_rows(2000, 0), cloze_rows(200, 1), *CLOZE,
                       "--train.global_batch_size", "32", "--train.lr", "5e-3", "--train.steps", "150",
                       "--train.eval_every", "150", "--train.warmup_steps", "20")
    row = trainer.last_metrics
    print("glm cloze", row)
    assert row["val_accuracy"] > 90 and row["val_majority_baseline"] < 45, row
    assert "loss_cloze" in row
    # The label probabilities are eq. 5 of the verbalizers' chain-rule log-probabilities in part B.
    predictor = load_predictor(tmp_path / "run")
    task, model = predictor.task, predictor.loaded.model.eval()
    _, examples, predictions = evaluate_split(predictor, "valid")
    ex, pred = examples[0], predictions[0]
    a, blank = task.part_a(ex)
    logps = []
    for v in ex.verbalizers:
        total = 0.0
        for j, t in enumerate(v):  # token by token, full forward passes
            b = [task.glm.sop, *v[:j]]
            batch = glm_row(a, blank, b, b)
            with torch.no_grad():
                logits = model(batch.input_ids, batch.layout, batch.position_ids).logits[0, -1]
            total += float(logits.log_softmax(-1)[t])
        logps.append(total)
    expected = torch.tensor(logps).softmax(0)
    for lab, p in zip(task.labels, expected):
        assert math.isclose(pred["probs"][lab], float(p), abs_tol=1e-4)


@pytest.mark.slow  # learns: hundreds of steps
def test_glm_seq2seq_copies_with_eop_and_beam(tmp_path):
    init = glm_checkpoint(tmp_path / "init", hidden=128)
    trainer = finetune(tmp_path, init, copy_rows(4000, 0), copy_rows(100, 1), "--task.kind", "seq2seq",
                       "--task.seq2seq.max_target_length", "10", "--task.seq2seq.metrics", "[exact_match]",
                       "--train.global_batch_size", "32", "--train.lr", "3e-3", "--train.warmup_steps", "20",
                       "--train.steps", "200", "--train.eval_every", "200")
    row = trainer.last_metrics
    print("glm seq2seq", row)
    assert row["val_exact_match"] > 80, row
    predictor = load_predictor(tmp_path / "run")
    greedy, _, cached = evaluate_split(predictor, "valid")
    predictor.task.options.prefix_cache = False
    _, _, plain = evaluate_split(predictor, "valid")
    assert [p["prediction"] for p in plain] == [p["prediction"] for p in cached]
    predictor.task.options.prefix_cache, predictor.task.options.num_beams = True, 3
    predictor.task.options.no_repeat_ngram_size = 0
    beam, _, _ = evaluate_split(predictor, "valid")
    assert beam["exact_match"] >= greedy["exact_match"] - 5
