"""The one held-out loss loop (``biglm.objectives.heldout``) that the trainer, alignment and evaluation share."""

from __future__ import annotations

import math

import pytest
import torch

from biglm.config import ModelConfig
from biglm.model import BiGLM
from biglm.objectives import ObjectiveConfig, build_criterion, build_objective
from biglm.objectives.heldout import heldout_sums, mean_loss, term_means


def test_mean_loss_weights_the_terms_that_have_items():
    sums = {"term:a": 6.0, "count:a": 3.0, "term:b": 10.0, "count:b": 4.0, "term:c": 0.0, "count:c": 0.0}
    assert term_means(sums)["a"] == 2.0 and term_means(sums)["b"] == 2.5 and math.isnan(term_means(sums)["c"])
    assert mean_loss(sums, {"a": 1.0, "b": 0.5}) == 2.0 + 0.5 * 2.5  # c has no items: left out
    assert math.isnan(mean_loss({"term:a": 0.0, "count:a": 0.0}, {}))


def test_heldout_sums_add_the_criterions_parts_over_batches_without_gradients():
    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", max_seq_len=32)).eval()
    config = ObjectiveConfig(name="biglm")
    objective, criterion = build_objective(config, 3, 512), build_criterion(config)
    g = torch.Generator().manual_seed(1)
    batches = [objective(torch.randint(5, 500, (2, 32), generator=g), torch.zeros(2, 32, dtype=torch.int32),
                         torch.Generator().manual_seed(i)) for i in range(3)]
    sums = heldout_sums(model, criterion, batches)
    assert not any(v.requires_grad for v in sums.values() if isinstance(v, torch.Tensor))
    assert sums["count:mlm"] == sum(b.num_targets for b in batches)
    with torch.no_grad():
        by_hand = sum(float(criterion(model, b).terms["mlm"]) for b in batches)
    assert float(sums["term:mlm"]) == pytest.approx(by_hand, rel=1e-6)
    assert mean_loss(sums, criterion.weights) == pytest.approx(by_hand / sums["count:mlm"], rel=1e-6)
