"""Autoregressive decoding: cached = uncached, batched = one by one, greedy = a naive loop, R2L reads the
reversed text, n-gram and length rules, states that can be extended again, and the text API / CLI."""

from __future__ import annotations

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.cli import main as cli_main
from biglm.errors import BiglmError
from biglm.generate import generate
from biglm.generate.autoregressive import AROptions, ARState, decode, generate_ar_ids, start_state
from biglm.generate.sampling import SamplingConfig

PAD, BOS, EOS, MASK = 0, 1, 2, 4
PROMPTS = [[10, 11, 12, 13, 14, 15, 16], [20, 21], [30, 31, 32, 33]]


@pytest.fixture(scope="module")
def model() -> BiGLM:
    torch.manual_seed(0)
    m = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="bidirectional-ar")).eval()
    with torch.no_grad():  # larger weights than the init: peaked, input-dependent distributions
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    return m


def run(model, prompts=PROMPTS, cache=True, direction="l2r", seed=3, **opts) -> list[list[int]]:
    return generate_ar_ids(model, prompts, bos_token_id=BOS, eos_token_id=EOS, direction=direction,
                           options=AROptions(**{"max_new_tokens": 12, **opts}), use_cache=cache,
                           seed=seed).token_ids


@pytest.mark.parametrize("opts", [{}, {"num_beams": 3}, {"num_beams": 3, "length_penalty": 0.5,
                                                         "no_repeat_ngram_size": 2},
                                  {"sampling": SamplingConfig(1.0, 20, 0.9)}], ids=["greedy", "beam", "beam-ngram",
                                                                                     "sample"])
def test_cached_equals_uncached(model, opts):
    assert run(model, cache=True, **opts) == run(model, cache=False, **opts)


@pytest.mark.parametrize("opts", [{}, {"num_beams": 3}], ids=["greedy", "beam"])
def test_batched_equals_one_by_one(model, opts):
    batched = run(model, **opts)
    assert batched == [run(model, [p], **opts)[0] for p in PROMPTS]


def test_greedy_equals_a_naive_loop(model):
    got = run(model, [PROMPTS[0]])[0]
    seq = [BOS, *PROMPTS[0]]
    out = []
    with torch.no_grad():
        for _ in range(12):
            token = int(model(torch.tensor([seq]), AttentionLayout("causal")).logits[0, -1].argmax())
            seq.append(token)
            if token == EOS:
                break
            out.append(token)
    assert got == out


def test_r2l_reads_the_reversed_text(model):
    got = run(model, [PROMPTS[0]], direction="r2l")[0]
    seq = [EOS, *reversed(PROMPTS[0])]
    out = []
    with torch.no_grad():
        for _ in range(12):
            token = int(model(torch.tensor([seq]), AttentionLayout("causal")).logits[0, -1].argmax())
            seq.append(token)
            if token == BOS:
                break
            out.append(token)
    assert got == out[::-1]  # returned in reading order
    causal = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="causal"))
    with pytest.raises(BiglmError, match=r"r2l.*bidirectional-ar"):
        run(causal, direction="r2l")


def test_no_repeat_ngram_and_min_new_tokens(model):
    plain = run(model, max_new_tokens=24)
    repeats = lambda seq, n: len({tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}) < len(seq) - n + 1
    assert any(repeats([BOS, *p, *g], 2) for p, g in zip(PROMPTS, plain))  # the model does repeat itself
    for opts in ({}, {"num_beams": 3}):
        for p, g in zip(PROMPTS, run(model, max_new_tokens=24, no_repeat_ngram_size=2, **opts)):
            assert not repeats([BOS, *p, *g], 2), (p, g)
    stops_early = run(model, stop_token_ids=(plain[0][0],), max_new_tokens=8)[0]
    assert stops_early == []
    assert len(run(model, stop_token_ids=(plain[0][0],), max_new_tokens=8, min_new_tokens=5)[0]) >= 5


def test_states_joined_and_cut_decode_as_each_row_alone(model):
    # Continuous batching: rows encoded apart join one state (left-padded to the widest), rows leave
    # (index_select) and the columns only they used are cut (trim); every row decodes as it does alone.
    opts = AROptions(max_new_tokens=8, stop_token_ids=(EOS,))
    alone = run(model, max_new_tokens=8)  # = each prompt alone (test_batched_equals_one_by_one)
    states = [start_state(model, [[BOS, *p]]) for p in PROMPTS]
    joined = ARState.concat(states)
    width = len(PROMPTS[0]) + 1
    assert joined.input_ids.shape[1] == joined.cache.length == width
    assert joined.document_ids[1].tolist() == [-1] * (width - 3) + [0] * 3  # the padding is invisible
    assert decode(model, joined, opts).token_ids == alone
    rest = ARState.concat(states).index_select(torch.tensor([1, 2])).trim()  # the widest row left
    assert rest.input_ids.shape[1] == rest.cache.length == len(PROMPTS[2]) + 1
    assert rest.cache.layout.document_ids.shape == rest.document_ids.shape
    assert decode(model, rest, opts).token_ids == alone[1:]
    with pytest.raises(BiglmError, match="layout kind"):
        ARState.concat([states[0], start_state(model, [[BOS, 5]], kind="prefix_lm")])


def test_a_decoded_state_can_be_extended(model):
    # Rows that finished early keep being fed invisible filler (document id -1): extending the state
    # afterwards gives the logits of a fresh encoding of its visible tokens (GLM fills its next blank so).
    state = start_state(model, [[BOS, *p] for p in PROMPTS])
    result = decode(model, state, AROptions(max_new_tokens=6, stop_token_ids=(run(model)[1][0],)))
    assert result.finished[1] and not result.finished[0]
    st = result.state
    visible = [st.input_ids[i][st.document_ids[i] >= 0].tolist() for i in range(3)]
    assert visible[1] == [BOS, *PROMPTS[1]]  # its stop token and the filler after it are invisible
    extra = torch.tensor([[40], [41], [42]])
    st.extend(model, extra, torch.tensor([[len(v)] for v in visible]), torch.zeros(3, 1, dtype=torch.int32),
              torch.zeros(3, 1, dtype=torch.int8))
    for i, v in enumerate(visible):
        with torch.no_grad():
            fresh = model(torch.tensor([[*v, 40 + i]]), AttentionLayout("causal")).logits[0, -1]
        torch.testing.assert_close(st.logits[i], fresh, atol=2e-4, rtol=1e-4)


def test_text_api_and_cli(tmp_path, model):
    from test_hf import make_tokenizer

    tok = make_tokenizer()
    config = ModelConfig.from_preset("micro", vocab_size=64, family="bidirectional-ar")
    ckpt = write_checkpoint(tmp_path / "ckpt", model_state_dict(model), config, tok)
    text = generate(ckpt, "the cat sat", max_new_tokens=6)
    assert isinstance(text, str)
    beams = generate(ckpt, ["the cat sat", "a dog"], max_new_tokens=6, num_beams=3, no_repeat_ngram_size=2)
    assert len(beams) == 2
    before = generate(ckpt, "on the mat", max_new_tokens=6, direction="r2l")
    assert isinstance(before, str)
    assert cli_main(["generate", "--ckpt", str(ckpt), "--prompt", "on the mat", "--direction", "r2l",
                     "--max-new-tokens", "6", "--num-beams", "2"]) == 0
    assert cli_main(["generate", "--ckpt", str(ckpt), "--prompt", "the", "--strategy", "mask-predict"]) == 2
    with pytest.raises(BiglmError, match="strategy 'greedy' takes no temperature"):
        generate(ckpt, "the cat", strategy="greedy", temperature=0.7)
