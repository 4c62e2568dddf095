"""GLM's blank-infilling objective: the paper's Figure 2, targets, span statistics, task mixture, attention."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.objectives import IGNORE_INDEX, ObjectiveConfig, build_criterion, build_objective
from biglm.objectives.config import GLMObjectiveConfig
from biglm.objectives.glm import GLMObjective, truncated_poisson
from biglm.train.streams import SYNTHETIC_SPECIALS

S = SYNTHETIC_SPECIALS
MASK, SMASK, GMASK, SOP, EOP, BOS, EOS = S["mask"], S["smask"], S["gmask"], S["sop"], S["eop"], S["bos"], S["eos"]


def objective(preset: str = "glm", **overrides) -> GLMObjective:
    cfg = ObjectiveConfig.from_preset(preset)
    for k, v in overrides.items():
        setattr(cfg.glm, k, v)
    return build_objective(cfg, S["mask"], 512, {**S, "sentence_ends": (9,)})


class FixedSpans(GLMObjective):
    def spans(self, tokens, task, generator):
        return [(2, 1), (4, 2)]


def test_figure_2_positions_and_targets():
    """x0..x5 with spans [x2] and [x4 x5] (the paper's Figure 2, 0-based)."""
    cfg = GLMObjectiveConfig(min_loss_tokens=2)
    obj = FixedSpans(cfg, MASK, 512, S)
    x = [100, 101, 102, 103, 104, 105]
    seen = set()
    for seed in range(20):
        b = obj(torch.tensor([x]), torch.zeros(1, 6, dtype=torch.int32), torch.Generator().manual_seed(seed))
        ids, labels, pos = b.input_ids[0].tolist(), b.labels[0].tolist(), b.position_ids[0].tolist()
        assert ids[:5] == [100, 101, MASK, 103, MASK]
        assert pos[:5] == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]
        assert b.layout.regions[0].tolist() == [0] * 5 + [1] * 5
        assert b.layout.kind == "prefix_lm"
        if ids[5:] == [SOP, 104, 105, SOP, 102]:  # the figure's order: span 2 first
            assert pos[5:] == [[4, 1], [4, 2], [4, 3], [2, 1], [2, 2]]
            assert labels == [IGNORE_INDEX] * 5 + [104, 105, EOP, 102, EOP]
        else:
            assert ids[5:] == [SOP, 102, SOP, 104, 105]
            assert pos[5:] == [[2, 1], [2, 2], [4, 1], [4, 2], [4, 3]]
            assert labels == [IGNORE_INDEX] * 5 + [102, EOP, 104, 105, EOP]
        seen.add(ids[6])
    assert seen == {102, 104}  # both orders occur: the spans are shuffled


def reconstruct(batch, row: int = 0) -> dict[int, list[int]]:
    """Each document's original tokens, rebuilt from part A and the spans of part B."""
    ids, pos = batch.input_ids[row].tolist(), batch.position_ids[row].tolist()
    docs, regs, labels = batch.layout.document_ids[row].tolist(), batch.layout.regions[row].tolist(), \
        batch.labels[row].tolist()
    out: dict[int, list[int]] = {}
    for d in sorted(set(docs) - {-1}):
        idx = [i for i in range(len(ids)) if docs[i] == d]
        a = [i for i in idx if regs[i] == 0]
        spans: dict[int, list[int]] = {}
        for i in idx:
            if regs[i] == 1:
                assert labels[i] != IGNORE_INDEX
                if pos[i][1] == 1:
                    assert ids[i] == SOP
                spans.setdefault(pos[i][0], []).append(labels[i])
        text = []
        for i in a:
            if ids[i] in (MASK, SMASK, GMASK):
                span = spans.pop(pos[i][0])
                assert span[-1] == EOP and EOP not in span[:-1]
                text += span[:-1]
            else:
                text.append(ids[i])
        assert not spans
        out[d] = text
    return out


def random_rows(n_rows: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (n_rows, T), generator=g)
    docs = torch.zeros(n_rows, T, dtype=torch.int32)
    for r in range(n_rows):
        cuts = sorted(torch.randint(1, T, (3,), generator=g).tolist())
        for c in cuts:
            docs[r, c:] += 1
            ids[r, c] = BOS
            if c > 0:
                ids[r, c - 1] = EOS
    docs[:, -5:] = -1  # padding at the end of every row
    return ids, docs


@pytest.mark.parametrize("preset", ["glm", "glm-sent", "glm-gen", "glm-mixture"])
def test_targets_rebuild_the_documents_and_b_sees_only_earlier_b(preset):
    ids, docs = random_rows(24, 160)
    obj = objective(preset)
    for r in range(ids.shape[0]):
        b = obj(ids[r:r + 1], docs[r:r + 1], torch.Generator().manual_seed(r))
        rebuilt = reconstruct(b)
        for d, text in rebuilt.items():
            assert text == ids[r][docs[r] == d].tolist()
        # B tokens: the next input inside a span is the previous target
        inp, lab, reg = b.input_ids[0], b.labels[0], b.layout.regions[0]
        for i in range(len(inp) - 1):
            if reg[i] == 1 and reg[i + 1] == 1 and inp[i + 1] != SOP:
                assert lab[i] == inp[i + 1]
        assert b.input_ids.shape[1] == 160 + 2 * int((inp == SOP).sum())  # a blank and a [sop] per span


def test_blank_span_statistics():
    """Spans ~ Poisson(3) truncated to 1..39, coverage >= 15% of every document's interior."""
    obj = objective("glm")
    gen = torch.Generator().manual_seed(0)
    lengths, coverage = [], []
    for _ in range(3000):
        n = int(torch.randint(40, 400, (1,), generator=gen))
        tokens = [BOS] + [20] * (n - 2) + [EOS]
        spans = obj.spans(tokens, 0, gen)
        assert all(s >= 1 and s + ln <= n - 1 for s, ln in spans)  # BOS and EOS never inside a span
        assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(spans))  # a kept token between spans
        lengths += [ln for _, ln in spans]
        coverage.append(sum(ln for _, ln in spans) / (n - 2))
    assert min(coverage) >= 0.15
    assert min(lengths) >= 1 and max(lengths) <= 39
    p = truncated_poisson(3.0, 39)
    expected = float((torch.arange(1, 40) * p).sum())  # 3 / (1 - e^-3) ≈ 3.157
    assert abs(expected - 3 / (1 - math.exp(-3))) < 1e-6
    # Spans are drawn until coverage is reached, so they are a length-biased-at-the-end sample: compare
    # the mean of all but the last span of each document to the truncated Poisson mean.
    mean = sum(lengths) / len(lengths)
    assert abs(mean - expected) < 0.25, mean


def test_generation_and_sentence_spans():
    gen = torch.Generator().manual_seed(1)
    g = objective("glm-gen")
    shares = []
    for _ in range(500):
        n = int(torch.randint(20, 200, (1,), generator=gen))
        tokens = [BOS] + [20] * (n - 1)
        [(start, length)] = g.spans(tokens, 2, gen)
        assert start + length == n  # the long span runs to the document's end
        shares.append(length / (n - 1))
    assert min(shares) >= 0.5 and max(shares) <= 1.0
    assert abs(sum(shares) / len(shares) - 0.75) < 0.03  # uniform over [0.5, 1]
    s = objective("glm-sent")
    tokens = [BOS] + [20, 21, 9] * 20 + [EOS]  # 20 sentences of 3 tokens ending in the sentence-end id 9
    for _ in range(50):
        spans = s.spans(tokens, 1, gen)
        assert all((st - 1) % 3 == 0 and ln == 3 for st, ln in spans)  # whole sentences
        assert sum(ln for _, ln in spans) >= 0.15 * 60


def test_mixture_rates():
    obj = objective("glm-mixture")
    counts = [0, 0, 0]
    gen = torch.Generator()
    for seed in range(4000):
        gen.manual_seed(seed)
        counts[obj.row_task(gen)] += 1
    rates = [c / 4000 for c in counts]
    for r, p in zip(rates, (0.5, 0.3, 0.2)):
        assert abs(r - p) < 4 * math.sqrt(p * (1 - p) / 4000)
    ids, docs = random_rows(200, 120, seed=3)
    blank_kinds = set()
    for r in range(200):
        b = obj(ids[r:r + 1], docs[r:r + 1], torch.Generator().manual_seed(r))
        kinds = {int(t) for t in b.input_ids[0] if int(t) in (MASK, SMASK, GMASK)}
        assert len(kinds) <= 1  # one task per row
        blank_kinds |= kinds
    assert blank_kinds == {MASK, SMASK, GMASK}


def test_attention_rule_in_the_model():
    """Part A's outputs do not change when part B changes; a B token does not see later B tokens."""
    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", family="glm", position_encoding="rope-2d")).eval()
    ids, docs = random_rows(2, 100, seed=5)
    batch = objective("glm")(ids, docs, torch.Generator().manual_seed(0))
    out = model(batch.input_ids, batch.layout, batch.position_ids).logits
    in_b = batch.layout.regions == 1
    changed = batch.input_ids.clone()
    changed[in_b] = torch.randint(10, 500, (int(in_b.sum()),))
    out2 = model(changed, batch.layout, batch.position_ids).logits
    torch.testing.assert_close(out[~in_b], out2[~in_b], rtol=0, atol=1e-6)
    assert (out[in_b] - out2[in_b]).abs().max() > 1e-3
    # change only the B tokens from position j on: outputs before j are unchanged
    j = int(in_b[0].nonzero()[len(in_b[0].nonzero()) // 2])
    later = batch.input_ids.clone()
    later[0, j:] = torch.where(in_b[0, j:], torch.randint(10, 500, later[0, j:].shape), later[0, j:])
    out3 = model(later, batch.layout, batch.position_ids).logits
    torch.testing.assert_close(out[0, :j], out3[0, :j], rtol=0, atol=1e-6)


def test_criterion_and_bad_specials():
    crit = build_criterion(ObjectiveConfig.from_preset("glm"))
    assert crit.weights == {"blank_infilling": 1.0}
    with pytest.raises(Exception, match="sop"):
        build_objective(ObjectiveConfig.from_preset("glm"), 1, 512, {"bos": 2, "eos": 3, "pad": 0})
    with pytest.raises(Exception, match="sum to 1"):
        GLMObjectiveConfig(blank_prob=0.5)
