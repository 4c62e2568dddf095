"""GLM blank infilling: every blank filled left to right on the KV-cached loop; cached = uncached, batched =
unbatched, and each greedy token the arg-max of a plain full forward pass over A and the B written so far."""

from __future__ import annotations

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.generate.autoregressive import AROptions
from biglm.generate.glm import GLMTokens, infill_ids, part_a
from biglm.generate.sampling import SamplingConfig
from biglm.train.streams import SYNTHETIC_SPECIALS

TOK = GLMTokens(**SYNTHETIC_SPECIALS)
M, G = TOK.mask, TOK.gmask
PROMPTS = [[20, 21, M, 23, 24, M, 26], [30, 31, 32, 33], [40, M, 42, 43, 44, 45, 46, 47, M, 49, M]]


def micro(encoding: str = "rope-2d") -> BiGLM:
    torch.manual_seed(0)
    return BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="glm", position_encoding=encoding)).eval()


def reference_greedy(model, prompt, max_new):
    """Token by token with full forward passes (no cache, no batching): the definition of greedy infilling."""
    a = part_a(prompt, TOK)
    ids, pos, reg = list(a), [(i, 0) for i in range(len(a))], [0] * len(a)
    fills = []
    banned = [*TOK.blanks, TOK.sop, TOK.bos, TOK.pad, *range(64, 64)]
    for blank in [i for i, t in enumerate(a) if t in TOK.blanks]:
        ids.append(TOK.sop)
        pos.append((blank, 1))
        reg.append(1)
        fill = []
        for _ in range(max_new):
            layout = AttentionLayout("prefix_lm", None, torch.tensor([reg], dtype=torch.int8))
            logits = model(torch.tensor([ids]), layout, torch.tensor([pos])).logits[0, -1]
            logits[banned] = float("-inf")
            t = int(logits.argmax())
            if t in (TOK.eop, TOK.eos):
                break
            fill.append(t)
            ids.append(t)
            pos.append((blank, len(fill) + 1))
            reg.append(1)
        fills.append(fill)
    return fills


@pytest.mark.parametrize("encoding", ["rope-2d", "learned-2d"])
def test_greedy_infilling_is_exact(encoding):
    model = micro(encoding)
    opts = AROptions(max_new_tokens=6)
    batched = infill_ids(model, PROMPTS, TOK, options=opts)
    uncached = infill_ids(model, PROMPTS, TOK, options=opts, use_cache=False)
    assert batched.fills == uncached.fills
    for i, p in enumerate(PROMPTS):
        assert infill_ids(model, [p], TOK, options=opts).fills[0] == batched.fills[i]  # batched = unbatched
        assert batched.fills[i] == reference_greedy(model, p, 6)
    assert [len(f) for f in batched.fills] == [2, 1, 3]  # every blank; [gMASK] appended to the blank-less prompt
    assert batched.part_a[1] == [TOK.bos, 30, 31, 32, 33, G]
    assert batched.part_a[0][-1] == TOK.eos


def test_sampling_and_beam_cached_equal_uncached():
    model = micro()
    sample = AROptions(max_new_tokens=5, sampling=SamplingConfig(temperature=1.0, top_k=20))
    a = infill_ids(model, PROMPTS, TOK, options=sample, seed=3)
    b = infill_ids(model, PROMPTS, TOK, options=sample, seed=3, use_cache=False)
    assert a.fills == b.fills
    assert a.fills != infill_ids(model, PROMPTS, TOK, options=sample, seed=4).fills
    beam = AROptions(max_new_tokens=5, num_beams=3, no_repeat_ngram_size=2, length_penalty=0.6)
    c = infill_ids(model, PROMPTS, TOK, options=beam)
    d = infill_ids(model, PROMPTS, TOK, options=beam, use_cache=False)
    assert c.fills == d.fills
    for s, t in zip(c.scores, d.scores):
        assert s == pytest.approx(t, abs=1e-4)
    for fills, a_ids in zip(c.fills, c.part_a):  # no bigram of A or earlier fills repeated
        seen = [tuple(a_ids[j:j + 2]) for j in range(len(a_ids) - 1)]
        for f in fills:
            grams = [tuple(f[j:j + 2]) for j in range(len(f) - 1)]
            assert not set(grams) & set(seen)
            assert len(set(grams)) == len(grams)
            seen += grams


def test_text_api_and_cli(tmp_path):
    from biglm.checkpoint import model_state_dict, write_checkpoint
    from biglm.cli import main as cli_main
    from biglm.data.tokenizer import ensure_glm_tokens
    from biglm.errors import BiglmError
    from biglm.generate import generate
    from test_hf import make_tokenizer

    tok = make_tokenizer()
    ensure_glm_tokens(tok)
    model = micro()
    ckpt = write_checkpoint(tmp_path / "ckpt", model_state_dict(model), model.config, tok)
    filled = generate(ckpt, "the cat [MASK] on the [MASK]", max_new_tokens=4)
    assert isinstance(filled, str) and filled.startswith("the cat")
    result = generate(ckpt, ["the cat sat", "a [sMASK] dog"], max_new_tokens=4, num_beams=2,
                      no_repeat_ngram_size=2, length_penalty=0.8, return_trajectory=True)
    assert len(result.texts) == 2
    assert result.output.prompt_lengths[0] == 5  # BOS the cat sat [gMASK]
    assert generate(ckpt, "the cat [MASK]", max_new_tokens=4, prefix_cache=False) == \
        generate(ckpt, "the cat [MASK]", max_new_tokens=4)
    assert cli_main(["generate", "--ckpt", str(ckpt), "--prompt", "the [MASK] sat", "--max-new-tokens", "4",
                     "--num-beams", "2"]) == 0
    with pytest.raises(BiglmError, match="r2l"):
        generate(ckpt, "the cat", direction="r2l")


def test_prompt_blanks_are_single_tokens_and_keep_no_space(tmp_path):
    from biglm.data.tokenizer import ensure_glm_tokens, train_tokenizer
    from biglm.families import get_family

    encode_prompt = get_family("glm").encode_prompt

    (tmp_path / "t.txt").write_text("The cat sat on the mat. A dog ran in the park.\n" * 50)
    tok = train_tokenizer([tmp_path / "t.txt"], 300, tmp_path / "tok")
    ensure_glm_tokens(tok)
    ids = encode_prompt(tok, "The [MASK] sat on the [sMASK] A [gMASK]")
    pieces = tok.convert_tokens_to_ids(["[MASK]", "[sMASK]", "[gMASK]"])
    assert [i for i in ids if i in pieces] == pieces
    assert "Ġ" not in tok.convert_ids_to_tokens(ids)  # no lone space token before a blank
    # the text after a blank keeps its leading space, as the words after a span do in training
    assert tok.decode(ids[ids.index(pieces[0]) + 1:ids.index(pieces[1])]) == " sat on the"
