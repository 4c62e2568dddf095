"""End to end: a micro BiGLM trained for a few hundred steps on templated stories beats chance on the
continuation and next-sentence tasks built (by make_tasks, from held-out stories) and run through lm-eval."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from biglm import BiGLM, ModelConfig, ObjectiveConfig, build_objective
from biglm.data.shards import val_mask
from biglm.data.tokenizer import padded_vocab_size, train_tokenizer
from biglm.evaluate import validation_loss
from biglm.evaluate.make_tasks import held_out_documents, synthetic_documents, write_jsonl, write_tasks
from biglm.objectives import masked_lm_loss

STEPS, BATCH, ROW = 500, 8, 128


def _pack(tokenizer, docs: list[str], row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS doc EOS`` documents packed into rows (a document may continue on the next row)."""
    ids, doc_ids = [], []
    for k, d in enumerate(docs):
        toks = [tokenizer.bos_token_id, *tokenizer.encode(d, add_special_tokens=False), tokenizer.eos_token_id]
        ids += toks
        doc_ids += [k] * len(toks)
    n = len(ids) // row
    return (torch.tensor(ids[:n * row]).view(n, row), torch.tensor(doc_ids[:n * row], dtype=torch.int32).view(n, row))


@pytest.mark.slow
def test_trained_micro_model_beats_chance_on_continuation_task(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from biglm.evaluate.lm_eval_model import BiGLMEvalModel

    torch.set_num_threads(1)
    docs = synthetic_documents(1500, seed=0)
    corpus = write_jsonl(tmp_path / "stories.jsonl", docs)
    held = val_mask(np.arange(len(docs)), 0, 0.1)  # the data pipeline's held-out rule (val_seed 0)
    train_docs = [d for d, h in zip(docs, held) if not h]
    tok = train_tokenizer([write_jsonl(tmp_path / "train.jsonl", train_docs)], 768, tmp_path / "tok")  # ~1 token a word
    write_tasks(tmp_path / "tasks", held_out_documents([str(corpus)], 0.1, 0), prefix="syn", max_items=150)

    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", vocab_size=padded_vocab_size(tok)))
    objective = build_objective(ObjectiveConfig(), tok.mask_token_id, model.config.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.01)
    rows, row_docs = _pack(tok, train_docs, ROW)
    val_rows, val_docs = _pack(tok, [d for d, h in zip(docs, held) if h], ROW)
    val_batches = [{"input_ids": val_rows[i:i + 16], "document_ids": val_docs[i:i + 16]} for i in range(0, 64, 16)]
    before = validation_loss(model, val_batches, tok.mask_token_id).loss
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for _ in range(STEPS):
        pick = torch.randint(0, rows.shape[0], (BATCH,), generator=g)
        b = objective(rows[pick], row_docs[pick], g)
        out = model(b.input_ids, b.layout, b.position_ids, logits_mask=b.loss_mask)
        loss = masked_lm_loss(out.logits, b.labels[b.loss_mask], b.layout.regions[b.loss_mask]).loss_sum
        opt.zero_grad()
        (loss / b.num_targets).backward()
        opt.step()
    train_seconds = time.time() - start
    after = validation_loss(model, val_batches, tok.mask_token_id).loss
    assert after < before - 1.0, (before, after)

    lm = BiGLMEvalModel(model=model, tokenizer=tok, scoring="greedy-order")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    choice_tasks = ["syn_continuation", "syn_next_sentence"]
    results = simple_evaluate(model=lm, tasks=[*choice_tasks, "syn_cloze"], task_manager=tm,
                              log_samples=False, bootstrap_iters=0)["results"]
    accs = {f"{t} {m}": results[t][f"{m},none"] for t in choice_tasks for m in ("acc", "acc_mutual_info")}
    print(f"trained {STEPS} steps in {train_seconds:.1f}s; val loss {before:.2f} -> {after:.2f}; acc {accs}; "
          f"cloze acc {results['syn_cloze']['acc,none']:.3f}")
    for task, acc in accs.items():  # chance is 0.25 (distractors of the same length); P(acc > 0.5 | chance) < 1e-10
        assert acc > 0.5, (task, acc)
