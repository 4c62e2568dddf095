"""GLM scoring: the chain rule over part B in one pass equals a token-by-token computation; batched =
unbatched; the lm-eval model and windows for long texts."""

from __future__ import annotations

import math

import pytest
import torch

from biglm import AttentionLayout
from biglm.evaluate.glm_scoring import document_rows, score_glm_continuations, score_glm_documents
from test_glm_generate import TOK, micro


def token_by_token(model, a: list[int], targets: list[int], sop: int = TOK.sop) -> float:
    """Σ_j log p(target_j | A, [sop], targets_<j), one full forward pass per token."""
    total = 0.0
    blank = len(a) - 1
    for j, t in enumerate(targets):
        ids = [*a, sop, *targets[:j]]
        pos = [(i, 0) for i in range(len(a))] + [(blank, k + 1) for k in range(j + 1)]
        reg = [0] * len(a) + [1] * (j + 1)
        with torch.no_grad():
            layout = AttentionLayout("prefix_lm", None, torch.tensor([reg], dtype=torch.int8))
            logits = model(torch.tensor([ids]), layout, torch.tensor([pos])).logits[0, -1]
        total += float(logits.log_softmax(-1)[t])
    return total


def test_continuations_are_exact_and_batch_independent():
    model = micro()
    reqs = [([20, 21, 22], [23, 24]), ([30], [31, 32, 33, 34]), ([40, 41, 42, 43, 44, 45], [46])]
    batched = score_glm_continuations(model, reqs, TOK)
    for (x, y), s in zip(reqs, batched):
        ref = token_by_token(model, [TOK.bos, *x, TOK.gmask], y)
        assert math.isclose(s.logprob, ref, abs_tol=1e-4), (s.logprob, ref)
        alone = score_glm_continuations(model, [(x, y)], TOK)[0]
        assert math.isclose(alone.logprob, s.logprob, abs_tol=1e-5)
    docs = [[20, 21, 22, 23], [30, 31]]
    for d, s in zip(docs, score_glm_documents(model, docs, TOK)):
        assert math.isclose(s.logprob, token_by_token(model, [TOK.bos, TOK.gmask], [*d, TOK.eos]), abs_tol=1e-4)


def test_long_documents_are_scored_in_windows():
    rows = document_rows(list(range(10, 40)), TOK, max_len=16)
    targets = [t for r, start, _ in rows for t in r[start:]]
    assert targets == [*range(10, 40), TOK.eos]  # every token scored once
    for r, start, a in rows:
        assert len(r) <= 16 and r[a - 1] == TOK.gmask and r[a] == TOK.sop and start == a + 1
    model = micro()
    model.config.max_seq_len = 16  # windows in the model too
    s = score_glm_documents(model, [list(range(10, 40))], TOK)[0]
    ref = sum(token_by_token(model, r[:a], r[start:]) for r, start, a in rows)
    assert math.isclose(s.logprob, ref, abs_tol=1e-3)


def test_lm_eval_model_scores_glm(tmp_path):
    from lm_eval.api.instance import Instance

    from biglm.data.tokenizer import ensure_glm_tokens
    from biglm.evaluate.lm_eval_model import BiGLMEvalModel
    from biglm.generate.glm import GLMTokens
    from test_hf import make_tokenizer

    tok = make_tokenizer()
    ensure_glm_tokens(tok)
    model = micro()
    lm = BiGLMEvalModel(model=model, tokenizer=tok)
    req = Instance("loglikelihood", {}, ("the cat", " sat on"), 0)
    (lp, _), = lm.loglikelihood([req], disable_tqdm=True)
    x, y = tok.encode("the cat", add_special_tokens=False), tok.encode("sat on", add_special_tokens=False)
    tokens = GLMTokens.from_tokenizer(tok)
    assert math.isclose(lp, score_glm_continuations(model, [(x, y)], tokens)[0].logprob, abs_tol=1e-5)
    roll = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("the cat sat",), 0)], disable_tqdm=True)
    assert roll[0] < 0


def test_the_blank_token_of_scoring_is_a_choice():
    from lm_eval.api.instance import Instance

    from biglm.data.tokenizer import ensure_glm_tokens
    from biglm.errors import BiglmError
    from biglm.evaluate.lm_eval_model import BiGLMEvalModel
    from biglm.generate.glm import GLMTokens
    from test_hf import make_tokenizer

    tok = make_tokenizer()
    ensure_glm_tokens(tok)
    tokens = GLMTokens.from_tokenizer(tok)
    model = micro()
    x, y = tok.encode("the cat", add_special_tokens=False), tok.encode("sat on", add_special_tokens=False)
    req = Instance("loglikelihood", {}, ("the cat", " sat on"), 0)
    (lp, _), = BiGLMEvalModel(model=model, tokenizer=tok, glm_blank="mask").loglikelihood([req], disable_tqdm=True)
    with_mask = score_glm_continuations(model, [(x, y)], tokens, blank=tokens.mask)[0].logprob
    assert math.isclose(lp, with_mask, abs_tol=1e-5)
    assert not math.isclose(with_mask, score_glm_continuations(model, [(x, y)], tokens)[0].logprob, abs_tol=1e-3)
    assert math.isclose(token_by_token(model, [tokens.bos, *x, tokens.mask], y, tokens.sop), with_mask, abs_tol=1e-4)
    with pytest.raises(BiglmError, match="glm_blank"):
        BiGLMEvalModel(model=model, tokenizer=tok, glm_blank="smask")
