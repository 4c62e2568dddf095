"""End to end: a micro BiGLM pretrained by the trainer (``biglm.train``, the real data pipeline) for a few
hundred steps on templated stories beats chance on the continuation and next-sentence tasks built (by
make_tasks, from the stories the run held out) and run through lm-eval."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from biglm.data.shards import val_mask
from biglm.data.tokenizer import train_tokenizer
from biglm.evaluate.make_tasks import held_out_documents, synthetic_documents, write_jsonl, write_tasks
from biglm.train.config import RunConfig
from biglm.train.setup import setup

STEPS, BATCH, ROW, VAL_FRACTION = 500, 8, 128, 0.1


@pytest.mark.slow
def test_trained_micro_model_beats_chance_on_continuation_task(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from biglm.evaluate.lm_eval_model import BiGLMEvalModel

    torch.set_num_threads(1)
    docs = synthetic_documents(1500, seed=0)
    corpus = write_jsonl(tmp_path / "stories.jsonl", docs)
    held = val_mask(np.arange(len(docs)), 0, VAL_FRACTION)  # the data pipeline's held-out rule (val_seed 0)
    train_docs = [d for d, h in zip(docs, held) if not h]
    tok = train_tokenizer([write_jsonl(tmp_path / "train.jsonl", train_docs)], 768, tmp_path / "tok")  # ~1 token a word
    write_tasks(tmp_path / "tasks", held_out_documents([str(corpus)], VAL_FRACTION, 0), prefix="syn", max_items=150)

    cfg = RunConfig.from_dict({
        "model": {"preset": "micro", "vocab_size": "auto"},
        "data": {"tokenizer": str(tmp_path / "tok"), "sources": [{"path": str(corpus)}], "seq_len": ROW,
                 "min_doc_tokens": 1, "val_fraction": VAL_FRACTION, "val_seed": 0,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"steps": STEPS, "global_batch_size": BATCH, "lr": 5e-3, "schedule": "constant", "warmup_steps": 0,
                  "eval_batches": 4, "save_every": 0, "log_every": 100, "prefetch": 0, "progress": False,
                  "tensorboard": False, "peak_flops": 1e11}})
    trainer = setup(cfg, tmp_path / "run")
    before = trainer.evaluate()["val_loss"]
    start = time.time()
    trainer.fit()
    train_seconds = time.time() - start
    after = trainer.evaluate()["val_loss"]
    trainer.close()
    assert after < before - 1.0, (before, after)

    lm = BiGLMEvalModel(model=trainer.model, tokenizer=tok, scoring="greedy-order")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    choice_tasks = ["syn_continuation", "syn_next_sentence"]
    results = simple_evaluate(model=lm, tasks=[*choice_tasks, "syn_cloze"], task_manager=tm,
                              log_samples=False, bootstrap_iters=0)["results"]
    accs = {f"{t} {m}": results[t][f"{m},none"] for t in choice_tasks for m in ("acc", "acc_mutual_info")}
    print(f"trained {STEPS} steps in {train_seconds:.1f}s; val loss {before:.2f} -> {after:.2f}; acc {accs}; "
          f"cloze acc {results['syn_cloze']['acc,none']:.3f}")
    for task, acc in accs.items():  # chance is 0.25 (distractors of the same length); P(acc > 0.5 | chance) < 1e-10
        assert acc > 0.5, (task, acc)
