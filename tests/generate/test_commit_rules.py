"""Commit rules (threshold, factor, margin) inside ``threshold`` and ``blocks``, and the EOS exit."""

import math

import pytest
import torch

from biglm import BiGLM, BiglmError
from biglm.generate import generate_ids
from biglm.generate.commit import Predictions, select_commits
from biglm.generate.strategies import DecodeState, run_strategy, start_strategy
from test_generate import sharp_micro

BOS, EOS, MASK = 1, 2, 3
IDS = dict(bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK)


def preds(probs: list[float], margins: list[float] | None = None) -> Predictions:
    p = torch.tensor([probs])
    return Predictions(torch.arange(len(probs))[None] + 10, p.log(),
                       None if margins is None else torch.tensor([margins]))


def chosen(rule: str, value: float, p: Predictions, passes_left: int = 100) -> list[int]:
    where = torch.ones_like(p.ids, dtype=torch.bool)
    keep = select_commits(rule, value, p, where, where.sum(dim=1), passes_left)
    return keep[0].nonzero().flatten().tolist()


def test_threshold_rule():
    assert chosen("threshold", 0.9, preds([0.5, 0.95, 0.91, 0.2])) == [1, 2]
    assert chosen("threshold", 0.99, preds([0.5, 0.95, 0.91, 0.2])) == [1]  # at least the most confident


def test_factor_rule_keeps_the_leading_run_of_nearly_certain_tokens():
    # sorted: 0.99, 0.95, 0.9, 0.5; f=1 needs p_i >= 1 - 1/(i+1): 0.5, 0.667, 0.75, 0.8 -> the first three
    p = preds([0.9, 0.5, 0.99, 0.95])
    assert chosen("factor", 1.0, p) == [0, 2, 3]
    # f=0.2: 0.9, 0.933, 0.95 -> 0.99 and 0.95 pass, 0.9 breaks the run
    assert chosen("factor", 0.2, p) == [2, 3]
    # a run, not a count: a later rank passing does not count once one failed
    assert chosen("factor", 1.0, preds([0.99, 0.6, 0.59])) == [0]


def test_margin_rule_uses_the_runner_up_not_the_probability():
    p = preds([0.4, 0.9, 0.45], margins=[0.35, 0.1, 0.3])
    assert chosen("margin", 0.3, p) == [0, 2]  # the 0.9 token's runner-up is close: kept back
    assert chosen("margin", 0.5, p) == [0]  # nothing passes: the largest margin, not the largest probability


def test_every_rule_commits_enough_to_finish_in_time():
    p = preds([0.1, 0.2, 0.3, 0.4, 0.5], margins=[0.01, 0.02, 0.03, 0.04, 0.05])
    for rule, value in (("threshold", 0.99), ("factor", 0.01), ("margin", 0.9)):
        assert chosen(rule, value, p, passes_left=2) == [2, 3, 4]  # ceil(5 / 2) most confident


class Scripted:
    """A predictor that always proposes ``target`` with ``confidence`` (per position), counting passes."""

    def __init__(self, target: list[int], confidence: list[float]) -> None:
        self.ids = torch.tensor([target])
        self.logprobs = torch.tensor([confidence]).log()
        self.passes = 0

    def __call__(self, tokens, where, span=None, margins=False):
        self.passes += 1
        m = self.logprobs.exp() - 0.01 if margins else None
        return Predictions(torch.where(where, self.ids, tokens), torch.where(where, self.logprobs, 0.0), m)


TARGET = [5, 6, EOS, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("strategy,options,passes", [
    ("threshold", dict(threshold=0.9), 1),  # pass 1 commits 5, 6, EOS: the text is final
    ("threshold", dict(commit="factor", factor=1.0), 1),
    ("threshold", dict(commit="margin", margin=0.5), 1),
    ("blocks", dict(block_size=4), 4),  # block 1 (Mask-Predict, 4 passes) ends with an EOS after final tokens
    ("blocks", dict(block_size=4, commit="threshold", threshold=0.9), 1),
])
def test_eos_exit_stops_when_the_text_is_final(strategy, options, passes):
    confidence = [0.99, 0.97, 0.95, 0.3, 0.3, 0.3, 0.3, 0.3]

    def decode(eos_exit: bool):
        state = DecodeState.all_masked(torch.ones(1, 8, dtype=torch.bool), MASK, EOS)
        predictor = Scripted(TARGET, confidence)
        run_strategy(start_strategy(strategy, state, 8, eos_exit=eos_exit, **options), state, predictor)
        return state.tokens[0].tolist(), predictor.passes

    tokens, n = decode(True)
    full, n_full = decode(False)
    assert tokens[:3] == [5, 6, EOS] and tokens[4:] == [EOS] * 4  # the undecided rest filled with EOS
    assert tokens[3] in (MASK, 7, EOS) and (tokens[3] != MASK)
    assert full == TARGET and n_full > n == passes


def test_eos_exit_waits_for_the_tokens_before_the_eos():
    state = DecodeState.all_masked(torch.ones(1, 8, dtype=torch.bool), MASK, EOS)
    predictor = Scripted(TARGET, [0.5, 0.99, 0.99, 0.3, 0.3, 0.3, 0.3, 0.3])  # EOS first, position 0 later
    rule = start_strategy("threshold", state, 8, threshold=0.9, eos_exit=True)
    rule.commit(rule.plan(), predictor(state.tokens, state.masked))
    assert state.tokens[0].tolist() == [MASK, 6, EOS] + [MASK] * 5  # not settled: position 0 is open
    run_strategy(rule, state, predictor)
    assert state.tokens[0].tolist()[:3] == [5, 6, EOS] and predictor.passes == 2


@pytest.fixture(scope="module")
def model() -> BiGLM:
    return sharp_micro()


@pytest.mark.parametrize("options", [dict(strategy="threshold", threshold=0.5),
                                     dict(strategy="threshold", commit="margin", margin=0.2),
                                     dict(strategy="blocks", block_size=4),
                                     dict(strategy="blocks", block_size=4, commit="factor", factor=1.0, cache="dual")])
def test_eos_exit_keeps_every_text_of_a_real_model(model, options):
    """With 'EOS' set to a token the model often writes, the texts (cut at EOS) are unchanged and fewer passes
    run."""
    prompts = [[5, 6, 7, 8], [9, 10], [30, 31, 32, 33, 34, 35]]
    common = dict(bos_token_id=BOS, mask_token_id=MASK, max_new_tokens=16, steps=16, **options)
    free = generate_ids(model, prompts, eos_token_id=None, **common)
    counts = torch.bincount(torch.tensor([t for row in free.full_token_ids for t in row]), minlength=64)
    eos = int(counts.argmax())  # the most written token plays EOS
    plain = generate_ids(model, prompts, eos_token_id=eos, **common)
    fast = generate_ids(model, prompts, eos_token_id=eos, eos_exit=True, **common)
    assert fast.token_ids == plain.token_ids
    assert fast.forward_passes < plain.forward_passes


@pytest.mark.parametrize("options,message", [
    (dict(strategy="threshold", commit="factor", threshold=0.5),
     "option 'threshold' is the parameter of commit rule 'threshold' (this decoding commits by 'factor')"),
    (dict(strategy="threshold", commit="fastest"), "unknown commit rule 'fastest'"),
    (dict(strategy="threshold", commit="margin", margin=1.5), r"margin=1.5: must be in \[0, 1\]"),
    (dict(strategy="threshold", commit="factor", factor=math.inf), r"factor=inf: must be in \(0, inf\]"),
    (dict(strategy="threshold", threshold=0.0), r"threshold=0.0: must be in \(0, 1\]"),
    (dict(strategy="blocks", threshold=0.5), "option 'threshold' needs a commit rule"),
    (dict(strategy="blocks", eos_exit="yes"), "eos_exit=yes: must be true or false"),
    (dict(strategy="mask-predict", commit="threshold"), "strategy 'mask-predict' has no option 'commit'"),
])
def test_commit_options_are_checked_in_one_line(model, options, message):
    with pytest.raises(BiglmError, match=message.replace("(this", r"\(this").replace("')", r"'\)")):
        generate_ids(model, [[5, 6]], **IDS, max_new_tokens=8, steps=8, **options)
