"""Chain-rule scoring of autoregressive models: exact against a naive loop in each direction, batched =
one by one, windows cover every target once, and the lm-eval model dispatches on the family."""

from __future__ import annotations

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.errors import BiglmError
from biglm.evaluate import TASKS_DIR
from biglm.evaluate.ar_scoring import agreement, document_rows, score_continuations, score_documents

PAD, BOS, EOS = 0, 1, 2
REQUESTS = [([10, 11, 12], [13, 14]), ([20], [21, 22, 23]), ([], [30, 31]), ([10, 11, 12], [40])]


@pytest.fixture(scope="module")
def model() -> BiGLM:
    torch.manual_seed(0)
    return BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="bidirectional-ar", max_seq_len=16)).eval()


def naive(model: BiGLM, seq: list[int], start: int = 1) -> float:
    with torch.no_grad():
        logp = model(torch.tensor([seq]), AttentionLayout("causal")).logits[0].float().log_softmax(-1)
    return float(sum(logp[j - 1, seq[j]] for j in range(start, len(seq))))


def test_l2r_and_r2l_continuations_are_the_exact_chain_rule(model):
    l2r = score_continuations(model, REQUESTS, bos_token_id=BOS, eos_token_id=EOS, direction="l2r")
    r2l = score_continuations(model, REQUESTS, bos_token_id=BOS, eos_token_id=EOS, direction="r2l")
    mean = score_continuations(model, REQUESTS, bos_token_id=BOS, eos_token_id=EOS, direction="mean")
    for (x, y), a, b, m in zip(REQUESTS, l2r, r2l, mean):
        assert a.logprob == pytest.approx(naive(model, [BOS, *x, *y], 1 + len(x)), abs=1e-4)
        doc = lambda t: naive(model, [EOS, *reversed(t), BOS])
        assert b.logprob == pytest.approx(doc([*x, *y]) - doc(x), abs=1e-4)
        assert m.logprob == pytest.approx((a.logprob + b.logprob) / 2, abs=1e-6)
        assert (m.l2r, m.r2l) == pytest.approx((a.logprob, b.logprob), abs=1e-6)
    one_by_one = [score_continuations(model, [r], bos_token_id=BOS, eos_token_id=EOS, direction="mean")[0]
                  for r in REQUESTS]
    small_batches = score_continuations(model, REQUESTS, bos_token_id=BOS, eos_token_id=EOS, direction="mean",
                                        batch_tokens=8)
    for a, b, c in zip(mean, one_by_one, small_batches):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) == c.logprob


def test_is_greedy_follows_the_arg_max(model):
    x = [10, 11, 12]
    with torch.no_grad():
        best = int(model(torch.tensor([[BOS, *x]]), AttentionLayout("causal")).logits[0, -1].argmax())
    other = (best + 1) % 60 + 3
    got = score_continuations(model, [(x, [best]), (x, [other])], bos_token_id=BOS, eos_token_id=EOS)
    assert [g.is_greedy for g in got] == [True, False]


def test_documents_in_both_directions_and_in_windows(model):
    doc = [10, 11, 12, 13]
    s = score_documents(model, [doc], bos_token_id=BOS, eos_token_id=EOS, direction="mean")[0]
    assert s.l2r == pytest.approx(naive(model, [BOS, *doc, EOS]), abs=1e-4)
    assert s.r2l == pytest.approx(naive(model, [EOS, *reversed(doc), BOS]), abs=1e-4)
    stats = agreement([s, s])
    assert stats["mean_abs_diff"] == pytest.approx(abs(s.l2r - s.r2l), abs=1e-9)
    # A 40-token document under a 16-token maximum: windows whose targets cover every token once.
    long_doc = list(range(10, 50))
    rows = document_rows(long_doc, BOS, EOS, 16)
    targets = [t for seq, start in rows for t in seq[start:]]
    assert targets == [*long_doc, EOS] and all(len(seq) <= 16 for seq, _ in rows)
    w = score_documents(model, [long_doc], bos_token_id=BOS, eos_token_id=EOS)[0]
    assert w.logprob == pytest.approx(sum(naive(model, seq, start) for seq, start in rows), abs=1e-3)


def test_lm_eval_model_dispatches_on_the_family(model):
    from lm_eval import simple_evaluate

    from biglm.evaluate.cli import task_manager
    from biglm.evaluate.lm_eval_model import BiGLMEvalModel
    from test_hf import make_tokenizer

    tok = make_tokenizer()
    big = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="bidirectional-ar")).eval()
    lm = BiGLMEvalModel(model=big, tokenizer=tok, direction="mean", batch_size=8)
    res = simple_evaluate(model=lm, tasks=["biglm_continuation", "biglm_perplexity"],
                          task_manager=task_manager(["biglm_continuation"], []), limit=6, log_samples=False)
    assert "acc,none" in res["results"]["biglm_continuation"]
    assert res["results"]["biglm_perplexity"]["bits_per_byte,none"] > 0
    info = res["config"]["biglm_direction_agreement"]
    assert info["loglikelihood"]["n"] > 0 and info["loglikelihood_rolling"]["n"] == 6
    # generate_until decodes autoregressively (greedy, the KV cache) and cuts at the stop strings
    from types import SimpleNamespace

    from biglm.generate import generate

    req = SimpleNamespace(args=("the cat", {"until": ["\n\n"], "max_gen_toks": 5}))
    assert lm.generate_until([req]) == [generate(big, "the cat", tokenizer=tok, max_new_tokens=5)]
    with pytest.raises(BiglmError, match="masked-model method"):
        BiGLMEvalModel(model=big, tokenizer=tok, scoring="greedy-order")
    causal = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="causal"))
    with pytest.raises(BiglmError, match="needs a bidirectional-ar model"):
        BiGLMEvalModel(model=causal, tokenizer=tok, direction="r2l")
    masked = BiGLM(ModelConfig.from_preset("micro", vocab_size=64))
    with pytest.raises(BiglmError, match="applies to causal and bidirectional-ar"):
        BiGLMEvalModel(model=masked, tokenizer=tok, direction="l2r")
    assert TASKS_DIR.is_dir()
