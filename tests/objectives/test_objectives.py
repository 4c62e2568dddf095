"""The objectives as data transforms: statistics over many documents, exact counts, layouts, errors."""

import math

import pytest
import torch

from biglm import ConfigError, ObjectiveConfig, build_objective
from biglm.attention import PREFIX, SUFFIX
from biglm.objectives import IGNORE_INDEX, OBJECTIVE_PRESETS, BiGLMObjectiveConfig, MLMObjectiveConfig
from biglm.objectives.masking import chunk_segments, span_length_probs

MASK = 1


def packed_rows(rows: int, docs_per_row: int, doc_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (rows, docs_per_row * doc_len), generator=g)
    docs = torch.arange(docs_per_row).repeat_interleave(doc_len).expand(rows, -1).to(torch.int32)
    return ids, docs


def per_document(batch, docs, doc_len):
    """Per document: prefix length, masked counts in X and Y."""
    regions = batch.layout.regions.view(-1, doc_len)
    masked = batch.loss_mask.view(-1, doc_len)
    n_x = (regions == PREFIX).sum(1)
    k_x = (masked & (regions == PREFIX)).sum(1)
    k_y = (masked & (regions == SUFFIX)).sum(1)
    return n_x, k_x, k_y


def test_biglm_masking_statistics_match_the_configuration():
    doc_len, n_docs = 200, 10_000
    ids, docs = packed_rows(n_docs // 10, 10, doc_len)
    objective = build_objective(ObjectiveConfig(), MASK, 512)
    batch = objective(ids, docs, torch.Generator().manual_seed(0))
    n_x, k_x, k_y = per_document(batch, docs, doc_len)
    n_y = doc_len - n_x
    # Split point uniform over [0.2·len, 0.8·len]: range, mean and variance.
    frac = n_x.double() / doc_len
    assert frac.min() >= 0.2 and frac.max() <= 0.8
    assert abs(frac.mean() - 0.5) < 4 * math.sqrt(0.03 / n_docs)
    assert abs(frac.var() - 0.6**2 / 12) < 0.003
    # beta_Y ~ U(0, 1): the realised suffix ratio (count = max(1, round(n·beta))) has mean 1/2.
    ratio_y = k_y.double() / n_y
    assert abs(ratio_y.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n_docs) + 0.005
    assert abs(ratio_y.var() - 1 / 12) < 0.005
    # beta_X = 0.3 - 0.2·beta_Y, so the prefix ratio stays in [0.1, 0.3] up to rounding and tracks beta_Y.
    ratio_x = k_x.double() / n_x
    slack = 0.5 / n_x + 0.5 / n_y
    assert (ratio_x >= 0.1 - slack - 1e-9).all() and (ratio_x <= 0.3 + slack + 1e-9).all()
    assert ((ratio_x - (0.3 - 0.2 * ratio_y)).abs() <= slack * 1.2 + 1e-9).all()
    # Every chosen token became [MASK]; labels hold the originals there.
    assert (batch.input_ids[batch.loss_mask] == MASK).all()
    assert torch.equal(batch.labels[batch.loss_mask], ids[batch.loss_mask])
    assert torch.equal(batch.input_ids[~batch.loss_mask], ids[~batch.loss_mask])


def test_span_lengths_follow_one_over_n():
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((2000,), 100)
    chunk_len, chunk_seg = chunk_segments(lengths, 3, g)
    assert torch.equal(torch.bincount(chunk_seg, weights=chunk_len.double()).long(), lengths)
    # Chunks that end a segment are truncated; the others are drawn from P(n) ∝ 1/n.
    interior = torch.ones_like(chunk_seg, dtype=torch.bool)
    interior[:-1] = chunk_seg[1:] == chunk_seg[:-1]
    interior[-1] = False
    observed = torch.bincount(chunk_len[interior], minlength=4)[1:].double()
    expected = span_length_probs(3) * observed.sum()
    assert ((observed - expected).abs() <= 4 * expected.sqrt()).all(), (observed, expected)


def test_masked_spans_are_ngrams_up_to_max_span_when_sparse():
    # Long segments: only the last span of each segment is cut to make the count exact.
    ids, docs = packed_rows(50, 2, 4000)
    cfg = ObjectiveConfig("biglm", biglm=BiGLMObjectiveConfig(beta_y_range=(0.05, 0.05), beta_x_mode="none"))
    batch = build_objective(cfg, MASK, 512)(ids, docs, torch.Generator().manual_seed(1))
    m = batch.loss_mask.view(-1).int()
    starts = torch.nonzero(torch.diff(m, prepend=m.new_zeros(1)) == 1).squeeze(1)
    ends = torch.nonzero(torch.diff(m, append=m.new_zeros(1)) == -1).squeeze(1)
    runs = ends - starts + 1
    share = torch.bincount(runs, minlength=7)[1:4].double() / runs.numel()
    # At 5% masking adjacent spans rarely merge, so runs are close to P(n) = 6/11, 3/11, 2/11.
    assert torch.allclose(share, span_length_probs(3), atol=0.03), share


def test_exact_counts_and_short_pieces():
    ids = torch.randint(5, 500, (2, 60))
    docs = torch.tensor([[0] * 40 + [1] * 8 + [2] * 12, [0] * 50 + [-1] * 10], dtype=torch.int32)
    for name in ("biglm", "mlm"):
        batch = build_objective(ObjectiveConfig(name), MASK, 512)(ids, docs, torch.Generator().manual_seed(3))
        assert not batch.loss_mask[0, 40:48].any(), "pieces shorter than min_loss_tokens carry no loss"
        assert not batch.loss_mask[1, 50:].any(), "padding carries no loss"
        assert batch.loss_mask[0, :40].any() and batch.loss_mask[0, 48:].any()
    mlm = build_objective(ObjectiveConfig("mlm"), MASK, 512)(ids, docs, torch.Generator().manual_seed(3))
    assert int(mlm.loss_mask[0, :40].sum()) == max(1, round(40 * 0.15))
    assert mlm.layout.kind == "bidirectional"


def test_regions_are_a_contiguous_prefix_then_suffix_per_document():
    ids, docs = packed_rows(8, 3, 50)
    batch = build_objective(ObjectiveConfig(), MASK, 512)(ids, docs, torch.Generator().manual_seed(0))
    regions = batch.layout.regions.view(-1, 50).int()
    assert (regions[:, 0] == PREFIX).all() and (regions[:, -1] == SUFFIX).all()
    assert ((regions[:, 1:] - regions[:, :-1]) >= 0).all(), "X then Y, one switch per document"
    assert batch.layout.kind == "prefix_blind"


def test_deterministic_for_a_seed():
    ids, docs = packed_rows(4, 2, 100)
    objective = build_objective(ObjectiveConfig(), MASK, 512)
    a = objective(ids, docs, torch.Generator().manual_seed(7))
    b = objective(ids, docs, torch.Generator().manual_seed(7))
    c = objective(ids, docs, torch.Generator().manual_seed(8))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.layout.regions, b.layout.regions)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_token_masking_and_reset_positions():
    ids, docs = packed_rows(2, 2, 100)
    cfg = ObjectiveConfig("biglm", biglm=BiGLMObjectiveConfig(masking_unit="token", reset_position_ids=True))
    batch = build_objective(cfg, MASK, 512)(ids, docs, torch.Generator().manual_seed(0))
    assert torch.equal(batch.position_ids[0], torch.arange(100).repeat(2))


def test_ablation_presets():
    assert set(OBJECTIVE_PRESETS) >= {"biglm", "biglm-no-attn", "mlm-15", "biglm-alpha-0.4", "biglm-betay-0.3-0.7"}
    ids, docs = packed_rows(2, 2, 100)
    g = torch.Generator().manual_seed(0)
    no_attn = build_objective(ObjectiveConfig.from_preset("biglm-no-attn"), MASK, 512)(ids, docs, g)
    assert no_attn.layout.kind == "bidirectional" and (no_attn.layout.regions == SUFFIX).any()
    assert ObjectiveConfig.from_preset("biglm-betax-0.1-0.5").biglm.beta_x_range == pytest.approx((0.1, 0.5))
    assert ObjectiveConfig.from_preset("biglm-betax-0.3-0.5").biglm.beta_x_range == pytest.approx((0.3, 0.5))
    assert ObjectiveConfig.from_preset("biglm-betax-0.2-0.4").biglm.beta_x_range == pytest.approx((0.2, 0.4))
    assert ObjectiveConfig.from_preset("mlm-15").name == "mlm"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: BiGLMObjectiveConfig(alpha=0.5), "alpha"),
        (lambda: BiGLMObjectiveConfig(alpha=0.0), "alpha"),
        (lambda: BiGLMObjectiveConfig(lambda1=0.1, lambda2=0.2), "lambda1"),
        (lambda: BiGLMObjectiveConfig(lambda1=1.2, lambda2=0.1), "lambda1"),
        (lambda: BiGLMObjectiveConfig(beta_y_range=(0.8, 0.2)), "beta_y_range"),
        (lambda: MLMObjectiveConfig(mask_ratio=0.0), "mask_ratio"),
        (lambda: ObjectiveConfig("bert"), "objective.name"),
        (lambda: ObjectiveConfig.from_preset("biglm-alpha-0.9"), "biglm-alpha-0.9"),
    ],
)
def test_invalid_objective_config_is_one_line(make, field):
    with pytest.raises(ConfigError) as err:
        make()
    assert field in str(err.value) and "\n" not in str(err.value)


def test_ignore_index_outside_targets():
    ids, docs = packed_rows(2, 1, 64)
    batch = build_objective(ObjectiveConfig(), MASK, 512)(ids, docs, torch.Generator().manual_seed(0))
    assert ((batch.labels == IGNORE_INDEX) == ~batch.loss_mask).all()
