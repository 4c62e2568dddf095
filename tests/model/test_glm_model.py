"""GLM's 2D positions in the model: the RoPE form and the paper's learned embeddings; other models unchanged."""

from __future__ import annotations

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.errors import ConfigError
from biglm.train.config import RunConfig


def model(encoding: str, **kw) -> BiGLM:
    torch.manual_seed(0)
    return BiGLM(ModelConfig.from_preset("micro", family="glm", position_encoding=encoding, **kw)).eval()


def positions(T: int, shift_a: int = 0, shift_b: int = 0) -> torch.Tensor:
    """Part A of 10 tokens (second id 0) and a span of T - 10 tokens at blank position 4."""
    first = torch.cat([torch.arange(10), torch.full((T - 10,), 4)]) + shift_a
    second = torch.cat([torch.zeros(10, dtype=torch.long), torch.arange(1, T - 9)]) + shift_b
    return torch.stack([first, second], -1)[None]


LAYOUT = AttentionLayout("prefix_lm", None, torch.tensor([[0] * 10 + [1] * 6], dtype=torch.int8))


def test_rope_2d_is_relative_in_both_ids_and_uses_both():
    m = model("rope-2d")
    ids = torch.randint(10, 500, (1, 16))
    out = m(ids, LAYOUT, positions(16)).logits
    # RoPE sees only differences: shifting every first (or every second) id changes nothing ...
    torch.testing.assert_close(m(ids, LAYOUT, positions(16, shift_a=7)).logits, out, atol=2e-5, rtol=0)
    torch.testing.assert_close(m(ids, LAYOUT, positions(16, shift_b=5)).logits, out, atol=2e-5, rtol=0)
    # ... while the second id of part B (the place inside the span) matters
    moved = positions(16)
    moved[0, 12, 1] += 3
    assert (m(ids, LAYOUT, moved).logits[0, 12:] - out[0, 12:]).abs().max() > 1e-4
    # (B, T) ids mean second id 0
    p1 = torch.arange(16)[None]
    torch.testing.assert_close(m(ids, None, p1).logits, m(ids, None, torch.stack([p1, 0 * p1], -1)).logits)


def test_learned_2d_is_the_papers_two_tables():
    m = model("learned-2d")
    names = dict(m.named_parameters())
    assert names["model.position_embeddings.weight"].shape == (256, 64)
    assert names["model.block_position_embeddings.weight"].shape == (256, 64)
    assert m.num_parameters() == m.config.num_parameters()
    ids = torch.randint(10, 500, (1, 16))
    out = m(ids, LAYOUT, positions(16)).logits
    shifted = m(ids, LAYOUT, positions(16, shift_a=1)).logits
    assert (shifted - out).abs().max() > 1e-4  # absolute positions: a shift changes the outputs
    # by hand: embeddings plus both position tables, then the blocks
    pos = positions(16)
    x = m.model.embed_tokens(ids) + m.model.position_embeddings(pos[..., 0]) \
        + m.model.block_position_embeddings(pos[..., 1])
    from biglm.attention import attention_mask

    mask = attention_mask(LAYOUT, 1, 16)
    add = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
    for layer in m.model.layers:
        x, _ = layer(x, None, add)
    torch.testing.assert_close(m.lm_head(m.model.norm(x)), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoding", ["rope-2d", "learned-2d"])
def test_cached_part_a_gives_the_same_part_b(encoding):
    m = model(encoding)
    ids = torch.randint(10, 500, (2, 16))
    pos = positions(16).expand(2, -1, -1)
    regions = LAYOUT.regions.expand(2, -1)
    full = m(ids, AttentionLayout("prefix_lm", None, regions), pos).logits
    a = m(ids[:, :10], AttentionLayout("prefix_lm", None, regions[:, :10]), pos[:, :10], use_cache=True)
    b = m(ids[:, 10:], AttentionLayout("prefix_lm", None, regions[:, 10:]), pos[:, 10:], past=a.cache)
    torch.testing.assert_close(b.logits, full[:, 10:], atol=2e-5, rtol=0)


def test_models_without_glm_are_unchanged():
    cfg = ModelConfig.from_preset("micro")
    assert cfg.position_encoding == "rope" and not cfg.positions_2d
    torch.manual_seed(0)
    plain = BiGLM(cfg)
    assert not any("position_embeddings" in k for k in plain.state_dict())
    assert plain.model.rotary.parts == 1
    with pytest.raises(ConfigError, match="2D positions"):
        ModelConfig.from_preset("micro", family="glm")
    assert RunConfig.from_dict({"objective": {"preset": "glm"}}).model.position_encoding == "rope-2d"
    assert RunConfig.from_dict({"model": {"position_encoding": "learned-2d"},
                                "objective": {"preset": "glm-gen"}}).model.family == "glm"
    for name in ("glm-base", "glm-large", "glm-410m", "glm-515m"):
        c = ModelConfig.from_preset(name)
        assert c.family == "glm" and c.max_seq_len == 512
    with torch.device("meta"):
        assert 405e6 < BiGLM(ModelConfig.from_preset("glm-410m")).num_parameters() < 420e6


@pytest.mark.parametrize("encoding", ["rope-2d", "learned-2d"])
def test_glm_models_grow_exactly(encoding):
    from biglm.grow import ExpandSpec, expand_model, max_logit_change

    m = model(encoding, vocab_size=64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rows = torch.randint(0, 64, (4, 40), generator=torch.Generator().manual_seed(1))
    grown, plan = expand_model(m, ExpandSpec(hidden_size=128, num_layers=4, depth_init="zero"))
    assert plan.exact and grown.config.position_encoding == encoding
    assert max_logit_change(m, grown, rows)["max_abs_dlogits"] < 1e-4


def test_rope_2d_rotates_each_half_by_its_own_id():
    from biglm.model import RotaryEmbedding, apply_rotary

    cfg = ModelConfig.from_preset("micro", family="glm", position_encoding="rope-2d", rotary_fraction=0.5)
    plain = ModelConfig.from_preset("micro", rotary_fraction=0.25)  # one half's dimensions, one id
    pos = torch.randint(0, 50, (2, 7, 2))
    x = torch.randn(2, 4, 7, cfg.head_dim)
    both = apply_rotary(x, *RotaryEmbedding(cfg)(pos), parts=2)
    q = plain.rotary_dim
    assert 2 * q == cfg.rotary_dim
    first = apply_rotary(x[..., :q], *RotaryEmbedding(plain)(pos[..., 0]))
    second = apply_rotary(x[..., q:2 * q], *RotaryEmbedding(plain)(pos[..., 1]))
    torch.testing.assert_close(both, torch.cat([first, second, x[..., 2 * q:]], -1))
