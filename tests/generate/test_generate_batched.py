"""Batched generation equals one prompt at a time, for every model family: prompts of different lengths
and, for GLM, blanks of different counts and fills of different lengths (greedy and beam decoding on small
random-weight models with peaked distributions, so that greedy choices are not near-ties)."""

from __future__ import annotations

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.generate import STRATEGIES, generate_ids
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.train.streams import SYNTHETIC_SPECIALS

TOK = GLMTokens(**SYNTHETIC_SPECIALS)
M, S = TOK.mask, TOK.smask
PROMPTS = [[20, 21, 22, 23, 24, 25, 26, 27, 28], [30, 31], [40, 41, 42, 43, 44]]
GLM_PROMPTS = [[20, M, 23, 24, M, 26], [30, 31, 32, 33, 34, 35, 36, M, 38], [40, M, 42, 43, 44, 45, 46, 47, M, 49, S],
               [50, 51]]  # 2, 1, 3 and no blank ([gMASK] appended)
EARLY_STOPS = tuple(range(50, 61))  # extra stop tokens: fills end after different numbers of tokens


def peaked(family: str, **extra) -> BiGLM:
    torch.manual_seed(0)
    m = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family=family, **extra)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    return m


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("length", ["fixed", "predict"])
def test_masked_batched_equals_one_by_one(strategy, length):
    model = peaked("masked", length_head=True, max_target_length=8)
    options = {"threshold": {"threshold": 0.05}, "blocks": {"block_size": 3}}.get(strategy, {})
    run = lambda prompts: generate_ids(model, prompts, bos_token_id=TOK.bos, eos_token_id=TOK.eos,
                                       mask_token_id=TOK.mask, max_new_tokens=8, steps=4, strategy=strategy,
                                       length=length, **options).full_token_ids
    assert run(PROMPTS) == [run([p])[0] for p in PROMPTS]


@pytest.mark.parametrize("family", ["causal", "bidirectional-ar"])
@pytest.mark.parametrize("opts", [{}, {"stop_token_ids": EARLY_STOPS}, {"num_beams": 3, "no_repeat_ngram_size": 2}],
                         ids=["greedy", "greedy-early-stops", "beam-ngram"])
def test_autoregressive_batched_equals_one_by_one(family, opts):
    model = peaked(family)
    run = lambda prompts: generate_ar_ids(model, prompts, bos_token_id=TOK.bos, eos_token_id=TOK.eos,
                                          pad_token_id=TOK.pad,
                                          options=AROptions(max_new_tokens=8, **opts)).token_ids
    assert run(PROMPTS) == [run([p])[0] for p in PROMPTS]


@pytest.mark.parametrize("encoding", ["rope-2d", "learned-2d"])
@pytest.mark.parametrize("opts", [{}, {"stop_token_ids": EARLY_STOPS}, {"no_repeat_ngram_size": 2},
                                  {"num_beams": 3, "no_repeat_ngram_size": 2, "stop_token_ids": EARLY_STOPS}],
                         ids=["greedy", "greedy-early-stops", "greedy-ngram", "beam-ngram-early-stops"])
def test_glm_batched_equals_one_by_one(encoding, opts):
    model = peaked("glm", position_encoding=encoding)
    options = AROptions(max_new_tokens=6, **opts)
    batched = infill_ids(model, GLM_PROMPTS, TOK, options=options)
    for i, p in enumerate(GLM_PROMPTS):
        alone = infill_ids(model, [p], TOK, options=options)
        assert batched.fills[i] == alone.fills[0], f"prompt {i}"
        assert batched.finished[i] == alone.finished[0]
        assert batched.scores[i] == pytest.approx(alone.scores[0], abs=1e-4)


def test_glm_fills_of_different_lengths_are_exercised():
    """The case of the defect: after a blank, one row's fill is shorter than another's (its next [sop] used
    to follow right padding, so it continued from a pad's logits and position)."""
    model = peaked("glm", position_encoding="rope-2d")
    fills = infill_ids(model, GLM_PROMPTS, TOK, options=AROptions(max_new_tokens=6, stop_token_ids=EARLY_STOPS)).fills
    first = [len(f[0]) for f in fills if len(f) > 1]
    assert len(set(first)) > 1 and [len(f) for f in fills] == [2, 1, 3, 1]
