"""Evaluation, fine-tuning and compare ask the model family, never its name: a family registered from outside
(a renamed copy of ``causal`` that also refuses extractive QA) is scored, refused, pooled and fine-tuned as its
record says (compare reads ``Family.eval_settings`` the same way), with nothing in those packages naming it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.families import FAMILIES, get_family, register_family
from biglm.train.batches import RowSeeds
from conftest import word_tokenizer

REASON = "a toy model reads no contexts"


@pytest.fixture()
def toy():
    family = register_family(dataclasses.replace(
        get_family("causal"), name="toy", summary="a causal model by another name", objectives=(),
        refused_tasks={**get_family("causal").refused_tasks, "extractive-qa": REASON},
        eval_variants=(("forwards", {"direction": "l2r"}),)))
    try:
        yield family
    finally:
        FAMILIES.pop("toy")


def models(family: str) -> tuple[BiGLM, BiGLM]:
    """A causal model and the same weights as a ``family`` model."""
    torch.manual_seed(0)
    causal = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="causal", max_seq_len=32)).eval()
    other = BiGLM(dataclasses.replace(causal.config, family=family)).eval()
    other.load_state_dict(causal.state_dict())
    return causal, other


def test_the_lm_eval_model_scores_by_the_familys_scoring(toy):
    from types import SimpleNamespace

    from biglm.errors import BiglmError
    from biglm.evaluate.lm_eval_model import BiGLMEvalModel

    causal, other = models("toy")
    tok = word_tokenizer()
    requests = [SimpleNamespace(args=("a b c", " d e")), SimpleNamespace(args=("", "f g"))]
    with pytest.raises(BiglmError, match=r"direction='r2l' needs a bidirectional-ar model \(this one is toy\)"):
        BiGLMEvalModel(model=other, tokenizer=tok, direction="r2l")
    with pytest.raises(BiglmError, match="is a masked-model method; a toy model"):
        BiGLMEvalModel(model=other, tokenizer=tok, scoring="greedy-order")
    lm = BiGLMEvalModel(model=other, tokenizer=tok, batch_size=4)
    want = BiGLMEvalModel(model=causal, tokenizer=tok, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    assert lm.loglikelihood(requests, disable_tqdm=True) == want
    assert lm.direction == "l2r" and lm.scored_by == "l2r" and lm.get_model_info()["biglm_family"] == "toy"


def test_fine_tuning_refuses_builds_rows_and_pools_as_the_family_says(toy):
    from biglm.errors import ConfigError
    from biglm.finetune import build_task, load_finetune_config
    from biglm.finetune.tasks import task_class
    from biglm.finetune.tasks.seq2seq import causal_row

    tok = word_tokenizer()
    with pytest.raises(ConfigError, match=r"task\.kind=extractive-qa: needs a masked, causal, bidirectional-ar or "
                                          r"glm model, the checkpoint is toy \(a toy model fine-tunes with: seq2seq, "
                                          r"instruction, reward, dpo\)"):
        build_task(load_finetune_config(None, ["--task.kind", "extractive-qa"]), tok, 32, "toy")
    assert task_class("cloze-classification", "toy") is None
    seq2seq = build_task(load_finetune_config(None, ["--task.kind", "seq2seq", "--task.seq2seq.max_target_length",
                                                   "8"]), tok, 32, "toy")
    _, model = models("toy")
    assert seq2seq.model_config(model.config) == model.config  # no length head, no suffix positions
    from biglm.data.records import Record

    (ex,) = seq2seq.encode([Record({"source": "a b", "target": "c"}, "x:1")])
    batch = seq2seq.batcher()([ex], RowSeeds(0, 0))
    want = causal_row(seq2seq, ex, torch.Generator())
    assert batch.layout.kind == "causal" and torch.equal(batch.input_ids, want.input_ids)
    assert torch.equal(batch.labels, want.labels)
    reward = build_task(load_finetune_config(None, ["--task.kind", "reward"]), tok, 32, "toy")
    assert (reward.pooling, reward.layout_kind) == ("last", "causal")
    dpo = build_task(load_finetune_config(None, ["--task.kind", "dpo"]), tok, 32, "toy")
    assert not dpo.masked  # scored by the exact chain rule

