"""The FlexAttention backend equals the SDPA reference: block classification is conservative, and the model's
forward (compiled flex on CPU), backward (torch's reference flex with autograd) and cached decoding
(Mask-Predict and autoregressive) match the dense-mask path for every layout."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.attention import LAYOUT_KINDS, attention_mask
from biglm.attention_flex import _pad_to, classify_blocks, layout_block_mask, skipped_share
from biglm.errors import ConfigError
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.generate.engine import encode_prefix, generate_ids, suffix_logits

B, T, BLOCK = 2, 48, 16


def packed_layout(kind: str, batch: int = B, length: int = T, seed: int = 0, pad: bool = True) -> AttentionLayout:
    """Rows of 2-4 packed documents (padding at the end of row 0), each split into X then Y."""
    g = torch.Generator().manual_seed(seed)
    docs = torch.zeros(batch, length, dtype=torch.int32)
    regions = torch.zeros(batch, length, dtype=torch.int8)
    for b in range(batch):
        cuts = sorted(torch.randperm(length - 2, generator=g)[: 1 + b].add(1).tolist())
        bounds = [0, *cuts, length]
        for d, (s, e) in enumerate(itertools.pairwise(bounds)):
            docs[b, s:e] = d
            split = s + int(torch.randint(0, e - s + 1, (1,), generator=g))
            regions[b, split:e] = 1
    if pad:
        docs[0, -5:] = -1
    return AttentionLayout(kind, docs, regions)


@pytest.mark.parametrize("kind", LAYOUT_KINDS)
@pytest.mark.parametrize("past_len", [0, 21])
def test_block_classification_is_conservative(kind, past_len):
    """Full blocks are all True in the dense mask, skipped ones all False; the shares are not trivial."""
    layout = packed_layout(kind, length=past_len + T, seed=past_len)
    past = AttentionLayout(kind, layout.document_ids[:, :past_len], layout.regions[:, :past_len])
    now = AttentionLayout(kind, layout.document_ids[:, past_len:], layout.regions[:, past_len:])
    dense = attention_mask(now, B, T, past if past_len else None, past_len)[:, 0]  # (B, Tq, Tk)
    bm = layout_block_mask(now, B, T, past if past_len else None, past_len, block_size=8)
    k_len = past_len + T
    pad = lambda m, r, c: torch.nn.functional.pad(m, (0, c - m.shape[-1], 0, r - m.shape[-2]))
    nq, nk = -(-T // 8), -(-k_len // 8)
    blocks = pad(dense, nq * 8, nk * 8).view(B, nq, 8, nk, 8)
    valid = pad(torch.ones(B, T, k_len, dtype=torch.bool), nq * 8, nk * 8).view(B, nq, 8, nk, 8)
    any_true = blocks.any(-1).any(-2)
    all_true = (blocks | ~valid).all(-1).all(-2)
    q_docs = layout.document_ids[:, past_len:]
    k_docs, q_regs, k_regs = layout.document_ids, layout.regions[:, past_len:], layout.regions
    full, partial = classify_blocks(kind, _pad_to(q_docs, nq * 8), _pad_to(q_regs, nq * 8), _pad_to(k_docs, nk * 8),
                                    _pad_to(k_regs, nk * 8), past_len, T, 8)
    assert bool(all_true[full].all()), "a block classified full has a masked pair"
    assert not bool(any_true[~(full | partial)].any()), "a skipped block has an allowed pair"
    assert bool(bm.to_dense()[:, 0].bool().eq(full | partial).all())
    assert full.any() and (~(full | partial)).any()  # the test sees both kinds of decision
    assert 0.0 < skipped_share(bm) < 1.0


@pytest.fixture(scope="module")
def models() -> tuple[BiGLM, BiGLM]:
    torch.manual_seed(0)
    ref = BiGLM(ModelConfig.from_preset("micro", vocab_size=64))
    with torch.no_grad():  # larger weights than the init: attention patterns that depend on the mask
        for name, p in ref.named_parameters():
            if "norm" not in name:
                p.mul_(4.0)
    flex = BiGLM(dataclasses.replace(ref.config, attn_backend="flex", attn_block_size=BLOCK))
    flex.load_state_dict(ref.state_dict())
    return ref.eval(), flex.eval()


@pytest.mark.parametrize("kind", LAYOUT_KINDS)
def test_forward_equals_reference(models, kind):
    ref, flex = models
    layout = packed_layout(kind, seed=1)
    ids = torch.randint(5, 64, (B, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = ref(ids, layout).logits, flex(ids, layout).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", LAYOUT_KINDS)
def test_backward_equals_reference(models, kind):
    """Training: equal loss and equal gradients of every parameter."""
    ref, flex = models
    layout = packed_layout(kind, seed=3)
    ids = torch.randint(5, 64, (B, T), generator=torch.Generator().manual_seed(4))
    grads = []
    for model in (ref, flex):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(ids, layout).logits.flatten(0, 1), ids.flatten())
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-4, atol=1e-5, msg=name)


# With BOS a (2, 17) left-padded prefix, and 8-token suffixes: the shapes of `bench/gpu_check.py --dry-run`,
# so that test shares these compiled kernels through inductor's cache.
PROMPTS = [list(range(7, 23)), list(range(30, 40))]


def test_mask_predict_passes_equal_reference(models):
    """Mask-Predict's passes: the prefix encoding (left padding) and suffix passes over its cache (ragged
    rows), logits first, then whole generations (same shapes, so no new compilation)."""
    ref, flex = models
    tokens = torch.randint(5, 64, (2, 8), generator=torch.Generator().manual_seed(5))
    active = torch.arange(8)[None] < torch.tensor([[8], [5]])
    out = []
    for model in (ref, flex):
        prefix = encode_prefix(model, [[1, *p] for p in PROMPTS])
        with torch.no_grad():
            out.append(suffix_logits(model, prefix, tokens, active))
    torch.testing.assert_close(out[1], out[0], rtol=1e-4, atol=1e-4)
    ids = dict(bos_token_id=1, eos_token_id=None, mask_token_id=4)
    mp = [generate_ids(m, PROMPTS, **ids, max_new_tokens=8, steps=3).token_ids for m in (ref, flex)]
    assert mp[0] == mp[1]


def test_autoregressive_decoding_equals_reference(models):
    """KV-cached greedy decoding: the prompt pass runs on flex, the one-token steps on SDPA's mask row."""
    ref, flex = models
    runs = []
    for model in (ref, flex):
        causal = BiGLM(dataclasses.replace(model.config, family="causal")).eval()
        causal.load_state_dict(ref.state_dict())
        runs.append(generate_ar_ids(causal, PROMPTS, bos_token_id=1, eos_token_id=2,
                                    options=AROptions(max_new_tokens=6)).token_ids)
    assert runs[0] == runs[1]


def test_flex_with_compile_on_cpu_is_a_one_line_error():
    from biglm.train.config import TrainConfig
    from biglm.train.parallel import DistEnv, parallelize

    model = BiGLM(ModelConfig.from_preset("micro", attn_backend="flex"))
    with pytest.raises(ConfigError, match="no compiled FlexAttention backward for CPU"):
        parallelize(model, TrainConfig(compile=True), DistEnv())


def test_flex_rejects_dropout():
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig.from_preset("micro", attn_backend="flex", dropout=0.1)
    with pytest.raises(ConfigError, match="attn_backend"):
        ModelConfig.from_preset("micro", attn_backend="flash")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", LAYOUT_KINDS)
def test_compiled_flex_kernel_on_cuda_equals_the_reference(kind):
    """On CUDA the flex backend runs the fused kernel (forward and backward); it must compute what SDPA's dense
    mask computes, for every layout, in float32."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset("micro", vocab_size=64, attn_block_size=BLOCK)
    ref = BiGLM(config).cuda()
    flex = BiGLM(dataclasses.replace(config, attn_backend="flex")).cuda()
    flex.load_state_dict(ref.state_dict())
    ids = torch.randint(4, 64, (B, T), device="cuda")
    layout = packed_layout(kind).to("cuda")
    out_ref, out_flex = ref(ids, layout), flex(ids, layout)
    assert torch.allclose(out_ref.logits, out_flex.logits, atol=2e-4, rtol=2e-3)
    out_ref.logits.float().square().mean().backward()
    out_flex.logits.float().square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), flex.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=2e-4, rtol=2e-3), name
