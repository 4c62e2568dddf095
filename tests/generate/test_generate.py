"""Generation engine: exact prefix cache, strategies on a mock model, length candidates, sampling, errors."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from biglm import BiGLM, BiglmError, KVCache, ModelConfig
from biglm.generate import (
    STRATEGIES,
    SamplingConfig,
    choose_tokens,
    decode,
    encode_prefix,
    generate_ids,
    length_candidates,
    suffix_logits,
)
from biglm.generate.engine import cut_at_eos
from biglm.generate.sampling import choose_row_tokens
from biglm.model import BiGLMOutput

BOS, EOS, MASK = 1, 2, 3
IDS = dict(bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15], [20, 21, 22, 23, 24]]  # ragged on purpose
OPTIONS = {"mask-predict": {}, "threshold": {"threshold": 0.02}, "blocks": {"block_size": 3}}


def sharp_micro(**config) -> BiGLM:
    """A micro masked model, seed 0, its embeddings sharper than init so that greedy choices are not near-ties."""
    torch.manual_seed(0)
    m = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, **config)).eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(20)
    return m


@pytest.fixture(scope="module")
def model() -> BiGLM:
    return sharp_micro(length_head=True, max_target_length=12)


# --- the exact prefix cache -------------------------------------------------------------------------

def test_cached_suffix_logits_equal_uncached_and_unpadded(model):
    prefixes = [[BOS, *p] for p in PROMPTS]
    g = torch.Generator().manual_seed(1)
    y = torch.randint(5, 60, (3, 7), generator=g)
    y[torch.rand(3, 7, generator=g) < 0.5] = MASK
    active = torch.ones(3, 7, dtype=torch.bool)
    active[1, 4:] = False  # a shorter length candidate, right-padded
    with torch.inference_mode():
        cached = suffix_logits(model, encode_prefix(model, prefixes, use_cache=True), y, active)
        uncached = suffix_logits(model, encode_prefix(model, prefixes, use_cache=False), y, active)
        other_pad = suffix_logits(model, encode_prefix(model, prefixes, pad_token_id=37), y, active)
        assert (cached - uncached)[active].abs().max() <= 1e-5
        assert torch.equal(cached[active], other_pad[active])  # pad tokens are never attended
        for i, p in enumerate(prefixes):  # ground truth: the row alone, no padding anywhere
            n = int(active[i].sum())
            alone = suffix_logits(model, encode_prefix(model, [p], use_cache=False), y[i:i + 1, :n],
                                  active[i:i + 1, :n])
            assert (cached[i, :n] - alone[0]).abs().max() <= 1e-5


def test_cache_is_encoded_once_with_prefix_positions(model):
    prefix = encode_prefix(model, [[BOS, *p] for p in PROMPTS])
    assert prefix.lengths.tolist() == [10, 3, 6]
    assert prefix.cache.length == 10
    assert prefix.document_ids[1].tolist() == [-1] * 7 + [0] * 3
    assert prefix.position_ids[1, -3:].tolist() == [0, 1, 2]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("length", ["fixed", "predict"])
def test_cached_decoding_equals_uncached(model, strategy, length):
    runs = [generate_ids(model, PROMPTS, **IDS, max_new_tokens=8, steps=4, strategy=strategy, length=length,
                         prefix_cache=cache, record_trajectory=True, **OPTIONS[strategy])
            for cache in (True, False)]
    assert runs[0].full_token_ids == runs[1].full_token_ids
    assert runs[0].trajectories == runs[1].trajectories
    assert runs[0].scores == pytest.approx(runs[1].scores, abs=1e-5)
    # The cache costs one prefix pass and saves the prompt in every other pass.
    assert runs[0].forward_passes == runs[1].forward_passes + (length == "fixed")


# --- a mock model with controlled logits ----------------------------------------------------------

class MockModel(nn.Module):
    """Suffix position j of a row with target length l gets ``token(l, j)`` with log-probability
    ``logprob(l, j)`` (all other tokens equally likely); the length head scores ``length_scores``."""

    vocab = 16

    def __init__(self, token, logprob, length_scores=None, max_seq_len=64) -> None:
        super().__init__()
        self.token, self.logprob = token, logprob
        self.length_scores = length_scores
        self.config = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=self.vocab, suffix_positions="continue")
        self.passes: list[tuple[int, int]] = []  # (rows, tokens) per call

    def forward(self, input_ids, layout=None, position_ids=None, *, logits_mask=None, length_mask=None,
                past=None, use_cache=False):
        B, T = input_ids.shape
        self.passes.append((B, T))
        suffix = (layout.regions == 1) & (layout.document_ids == 0)
        lengths = suffix.sum(1)
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            cols = suffix[b].nonzero().flatten().tolist()
            for j, c in enumerate(cols):
                n = int(lengths[b])
                p = math.exp(self.logprob(n, j))
                logits[b, c, self.token(n, j)] = math.log(p * (self.vocab - 1) / (1 - p))
        cache = None
        if use_cache:
            cache = KVCache([torch.zeros(B, 1, T, 1)], [torch.zeros(B, 1, T, 1)], layout)
        length_logits = None
        if length_mask is not None and self.length_scores is not None:
            length_logits = torch.tensor(self.length_scores, dtype=torch.float32).expand(B, -1)
        return BiGLMOutput(logits[logits_mask] if logits_mask is not None else logits, length_logits, None, cache)


def test_mask_predict_remasks_the_least_confident_tokens():
    # Confidence grows with the position: each iteration must re-mask the leftmost n = L(T-t)/T tokens.
    mock = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: -1.0 + 0.1 * j)
    out = generate_ids(mock, [[7, 8]], **IDS, max_new_tokens=8, steps=4, record_trajectory=True)
    assert out.token_ids == [[5, 6, 7, 8, 9, 10, 11, 12]]
    traj = out.trajectories[0]
    assert len(traj) == 5 and out.forward_passes == 1 + 4
    for t, expected_masked in enumerate([8, 6, 4, 2]):  # L·(T−t)/T re-masked at t ≥ 1
        assert traj[t] == [MASK] * expected_masked + list(range(5 + expected_masked, 13))
    assert out.scores[0] == pytest.approx(sum(-1.0 + 0.1 * j for j in range(8)) / 8, abs=1e-5)
    assert [b for b, _ in mock.passes] == [1] * 5 and [t for _, t in mock.passes[1:]] == [8] * 4


def test_threshold_commits_confident_tokens_and_finishes_within_steps():
    mock = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: math.log(0.95 if j % 2 else 0.5))
    out = generate_ids(mock, [[7]], **IDS, max_new_tokens=8, steps=4, strategy="threshold",
                       threshold=0.9, record_trajectory=True)
    traj = out.trajectories[0]
    assert traj[1] == [MASK, 6, MASK, 8, MASK, 10, MASK, 12]  # the four sure tokens in one pass
    assert traj[-1] == list(range(5, 13)) and out.forward_passes == 1 + 4
    # Nothing confident: at least ceil(remaining / passes left) per pass, so still done in T passes.
    flat = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: math.log(0.2))
    out = generate_ids(flat, [[7]], **IDS, max_new_tokens=8, steps=3, strategy="threshold", record_trajectory=True)
    assert [s.count(MASK) for s in out.trajectories[0]] == [8, 5, 2, 0]


def test_blocks_decode_left_to_right():
    mock = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: -0.5)
    out = generate_ids(mock, [[7]], **IDS, max_new_tokens=8, steps=4, strategy="blocks", block_size=4,
                       record_trajectory=True)
    traj = out.trajectories[0]
    assert out.token_ids == [list(range(5, 13))] and out.forward_passes == 1 + 4
    assert traj[2][4:] == [MASK] * 4 and MASK not in traj[2][:2]  # second block untouched while on the first
    assert all(MASK not in s[:4] for s in traj[2:])


def test_eos_cuts_the_output():
    mock = MockModel(token=lambda n, j: EOS if j == 3 else 5 + j, logprob=lambda n, j: -0.1)
    out = generate_ids(mock, [[7], [8, 9]], **IDS, max_new_tokens=6, steps=2)
    assert out.token_ids == [[5, 6, 7]] * 2
    assert out.full_token_ids[0] == [5, 6, 7, EOS, 9, 10]
    assert cut_at_eos([4, 4], EOS) == [4, 4] and cut_at_eos([EOS], EOS) == []


def test_length_candidates_chosen_by_average_or_joint_score():
    # Head ranks 5 > 3 > 7. Per-token log-probs: l=3: -0.2 (sum -0.6), l=5: -0.5, l=7: -0.1 (sum -0.7).
    # The average rule picks 7 (the sum rule would pick 3, the head alone 5); the joint rule adds the head's
    # log-probability to the sums: 2 - 0.6 = 1.4 (l=3) > 3 - 2.5 = 0.5 (l=5) > 1 - 0.7 = 0.3 (l=7), so 3.
    per_token = {3: -0.2, 5: -0.5, 7: -0.1}
    scores = [0.0] * 12
    scores[5], scores[3], scores[7] = 3.0, 2.0, 1.0
    mock = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: per_token.get(n, -3.0), length_scores=scores)
    joint = generate_ids(mock, [[7, 8], [9]], **IDS, max_new_tokens=10, steps=2, length="predict",
                         length_candidates_k=3)
    assert joint.lengths == [3, 3] and joint.token_ids[0] == [5, 6, 7]
    mock = MockModel(token=lambda n, j: 5 + j, logprob=lambda n, j: per_token.get(n, -3.0), length_scores=scores)
    out = generate_ids(mock, [[7, 8], [9]], **IDS, max_new_tokens=10, steps=2, length="predict",
                       length_candidates_k=3, length_rule="average")
    assert out.candidates == [[5, 3, 7], [5, 3, 7]]
    assert out.lengths == [7, 7] and out.token_ids[0] == list(range(5, 12))
    assert out.scores[0] == pytest.approx(-0.1, abs=1e-5)
    assert mock.passes[1][0] == 6  # 2 prompts × 3 candidates decoded together
    # Candidates longer than max_new_tokens (or length 0) are never proposed; ties go to the head's rank.
    assert length_candidates(torch.tensor([[9.0, 1, 5, 4, 3]]), 3, 3).tolist() == [[2, 3, 1]]
    tied = MockModel(token=lambda n, j: 5, logprob=lambda n, j: -0.3, length_scores=scores)
    assert generate_ids(tied, [[7]], **IDS, max_new_tokens=10, steps=2, length="predict").lengths == [5]


def test_length_predict_needs_a_length_head():
    with pytest.raises(BiglmError, match="length head"):
        generate_ids(MockModel(lambda n, j: 5, lambda n, j: -1.0), [[7]], **IDS, length="predict",
                     max_new_tokens=4, steps=2)


# --- sampling ----------------------------------------------------------------------------------------

def test_sampling_is_seeded_and_filters_work(model):
    def run(seed):
        return generate_ids(model, PROMPTS, **IDS, max_new_tokens=8, steps=4, seed=seed,
                            sampling=SamplingConfig(temperature=1.5, top_k=20, top_p=0.95)).full_token_ids
    assert run(7) == run(7)
    assert run(7) != run(8)
    logits = torch.randn(50, 30, generator=torch.Generator().manual_seed(0))
    greedy, lp = choose_tokens(logits, SamplingConfig())
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.allclose(lp, logits.log_softmax(-1).max(-1).values)
    for cfg in (SamplingConfig(1.0, top_k=1), SamplingConfig(1.0, top_p=1e-6)):
        ids, _ = choose_tokens(logits, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(ids, greedy)
    ids, _ = choose_tokens(logits, SamplingConfig(1.0, top_k=3), torch.Generator().manual_seed(0))
    assert bool((logits.gather(1, ids[:, None]) >= logits.topk(3).values[:, -1:]).all())
    banned = greedy.unique()
    ids, _ = choose_tokens(logits, SamplingConfig(), banned=banned)
    assert not bool(torch.isin(ids, banned).any())


def test_each_row_chooses_as_it_would_alone():
    # Rows of a continuous batch: each its own settings and generator, each row's pick the one it gets alone.
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    configs = [SamplingConfig(), SamplingConfig(1.0), SamplingConfig(0.7, top_k=5), SamplingConfig(),
               SamplingConfig(1.3, top_p=0.8)]
    seeds = [None, 1, 2, None, 1]
    gen = lambda seed: None if seed is None else torch.Generator().manual_seed(seed)
    alone = [int(choose_tokens(logits[i:i + 1], c, gen(s))[0]) for i, (c, s) in enumerate(zip(configs, seeds))]
    for _ in range(2):  # the same generators go on drawing as they would alone
        generators = [gen(s) for s in seeds]
        assert choose_row_tokens(logits, configs, generators).tolist() == alone


# --- bad input: one clear line each ------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(prompts=[[5], []]), "prompt 1 is empty"),
    (dict(max_new_tokens=0, steps=1), "max_new_tokens=0"),
    (dict(steps=0), "steps=0"),
    (dict(steps=9), "steps=9: must be in 1..max_new_tokens=8"),
    (dict(strategy="beam"), "unknown strategy 'beam'"),
    (dict(strategy="threshold", block_size=2), "strategy 'threshold' has no option 'block_size'"),
    (dict(length="guess"), "length='guess'"),
    (dict(max_new_tokens=255, steps=4), "leaves no room for a prompt"),
])
def test_bad_input_is_one_clear_line(model, kwargs, message):
    args = dict(prompts=PROMPTS, max_new_tokens=8, steps=4) | kwargs
    with pytest.raises(BiglmError, match=message) as err:
        generate_ids(model, args.pop("prompts"), **IDS, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(temperature=-1.0), "temperature=-1.0"), (dict(top_k=-2), "top_k=-2"), (dict(top_p=0.0), "top_p=0.0"),
])
def test_bad_sampling_settings(kwargs, message):
    with pytest.raises(BiglmError, match=message):
        SamplingConfig(**kwargs)


def test_long_prompt_is_left_truncated_with_a_warning(model, caplog):
    long = list(range(5, 60)) * 5  # 275 tokens; micro max_seq_len is 256
    with caplog.at_level(logging.WARNING, logger="biglm.generate"):
        out = generate_ids(model, [long, [5, 6]], **IDS, max_new_tokens=8, steps=2)
    assert out.prompt_lengths == [256 - 8, 3]
    assert "prompt 0" in caplog.text and "keeping its last 247 tokens" in caplog.text


def test_decode_rejects_bad_steps(model):
    prefix = encode_prefix(model, [[BOS, 5]])
    with pytest.raises(BiglmError, match="steps=0"):
        decode(model, prefix, torch.ones(1, 4, dtype=torch.bool), steps=0, mask_token_id=MASK)
