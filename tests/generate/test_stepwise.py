"""Pass-by-pass decoding (``DecodeJob``, ``PassBatch``): a prompt decoded as a job, alone or sharing passes with
jobs that joined before or after it (other prompt lengths, target lengths, strategies, sampling settings),
gives exactly what ``generate_ids`` gives for it alone (greedy and seeded sampling, with and without the prefix
cache)."""

from __future__ import annotations

import re

import pytest
import torch

from biglm.errors import BiglmError
from biglm.generate import STRATEGIES, DecodeJob, PassBatch, SamplingConfig, generate_ids
from biglm.generate.engine import encode_prefix
from biglm.generate.stepwise import join_prefixes
from test_generate_batched import TOK, peaked

IDS = {"bos_token_id": TOK.bos, "eos_token_id": TOK.eos, "mask_token_id": TOK.mask, "pad_token_id": TOK.pad}
PROMPTS = [[20, 21, 22, 23, 24, 25, 26, 27, 28], [30, 31], [40, 41, 42, 43, 44], [50] * 14, [9, 10, 11]]
SETTINGS = [
    {"strategy": "mask-predict", "length": "fixed", "max_new_tokens": 7, "steps": 5},
    {"strategy": "threshold", "length": "predict", "max_new_tokens": 7, "steps": 6, "threshold": 0.3,
     "sampling": SamplingConfig(0.9), "seed": 3},
    {"strategy": "blocks", "length": "predict", "max_new_tokens": 6, "steps": 4, "block_size": 3},
    {"strategy": "mask-predict", "length": "predict", "max_new_tokens": 7, "steps": 7,
     "sampling": SamplingConfig(1.0, 10, 0.9), "seed": 11, "length_candidates_k": 4},
    {"strategy": "mask-predict", "length": "fixed", "max_new_tokens": 3, "steps": 2, "sampling": SamplingConfig(0.7),
     "seed": 1},
]
JOINS = {0: [0, 1], 2: [2], 3: [3, 4]}
"""Pass number -> the jobs that join the batch before it."""


@pytest.fixture(scope="module")
def model():
    return peaked("masked", length_head=True, max_target_length=8)


def run_staggered(model, cache: bool, joins: dict[int, list[int]]) -> tuple[dict, list[list[int]]]:
    """Outputs of the jobs joining a ``PassBatch`` as ``joins`` says, and each pass's jobs' pass counters."""
    batch, outputs, shared = PassBatch(model), {}, []
    t = 0
    while len(outputs) < len(PROMPTS):
        for i in joins.get(t, []):
            batch.add(i, DecodeJob(model, PROMPTS[i], **IDS, prefix_cache=cache, **SETTINGS[i]))
        shared.append([j.passes for j in batch.jobs.values() if not j.done])
        batch.step()
        for i, job in list(batch.jobs.items()):
            if job.done:
                outputs[i] = job.output()
                batch.remove(i)
        t += 1
    return outputs, shared


@pytest.mark.parametrize("cache", [True, False], ids=["prefix-cache", "re-encoded"])
def test_a_job_decodes_the_same_alone_or_joining_mid_flight(model, cache):
    outputs, shared = run_staggered(model, cache, JOINS)
    assert any(len(set(passes)) >= 3 for passes in shared)  # jobs at three different passes shared one
    for i, (prompt, settings) in enumerate(zip(PROMPTS, SETTINGS)):
        alone = generate_ids(model, [prompt], **IDS, prefix_cache=cache, **settings)
        got = outputs[i]
        assert (got.full_token_ids, got.token_ids, got.lengths, got.candidates, got.forward_passes) == \
            (alone.full_token_ids, alone.token_ids, alone.lengths, alone.candidates, alone.forward_passes), i
        assert got.scores == pytest.approx(alone.scores, abs=1e-5)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("length", ["fixed", "predict"])
def test_a_job_alone_is_generate_ids(model, strategy, length):
    """One job alone runs the very same passes as ``generate_ids`` (scores bit-identical too)."""
    options = {"threshold": {"threshold": 0.05}, "blocks": {"block_size": 3}}.get(strategy, {})
    settings = {"max_new_tokens": 7, "steps": 4, "strategy": strategy, "length": length,
                "sampling": SamplingConfig(0.8), "seed": 5, **options}
    job = DecodeJob(model, PROMPTS[0], **IDS, **settings)
    fed = []
    batch = PassBatch(model)
    batch.add(0, job)
    while not job.done:
        fed.append(job.fed())
        batch.step()
    shown = []
    alone = generate_ids(model, [PROMPTS[0]], **IDS, on_pass=lambda t, rows: shown.append(rows[0]), **settings)
    assert job.output() == alone and fed == shown


def test_joined_prefixes_are_left_padded_with_document_minus_one(model):
    a, b = (encode_prefix(model, [[TOK.bos, *p]]) for p in (PROMPTS[0], PROMPTS[1]))
    joined = join_prefixes([a, b], pad_token_id=TOK.pad)
    together = encode_prefix(model, [[TOK.bos, *PROMPTS[0]], [TOK.bos, *PROMPTS[1]]], pad_token_id=TOK.pad)
    for name in ("input_ids", "document_ids", "position_ids", "lengths"):
        assert torch.equal(getattr(joined, name), getattr(together, name)), name
    assert torch.equal(joined.cache.layout.document_ids, together.cache.layout.document_ids)
    assert joined.cache.keys[0].shape == together.cache.keys[0].shape
    assert torch.allclose(joined.cache.keys[0][1, :, -3:], together.cache.keys[0][1, :, -3:], atol=1e-5)


def test_bad_options_are_one_line_like_generate_ids(model):
    with pytest.raises(BiglmError, match="has no option 'block_size'"):
        DecodeJob(model, PROMPTS[0], **IDS, max_new_tokens=4, steps=2, block_size=3)
    with pytest.raises(BiglmError, match=re.escape("steps=9: must be in 1..max_new_tokens=4")):
        DecodeJob(model, PROMPTS[0], **IDS, max_new_tokens=4, steps=9)
