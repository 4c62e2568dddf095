"""A micro model trained through the BiGLM objective really learns: a copy task's suffix loss collapses."""

import pytest
import torch
import torch.nn.functional as F

from biglm import AttentionLayout, BiGLM, ModelConfig, ObjectiveConfig, build_objective
from biglm.objectives import masked_lm_loss

BOS, EOS, SEP, MASK = 1, 2, 3, 4
N = 8  # symbols per copy


def copy_documents(count: int, g: torch.Generator) -> torch.Tensor:
    """Documents `BOS s1..sN SEP s1..sN EOS` over 48 symbols."""
    s = torch.randint(16, 64, (count, N), generator=g)
    col = lambda v: torch.full((count, 1), v)
    return torch.cat([col(BOS), s, col(SEP), s, col(EOS)], dim=1)


def suffix_loss(model: BiGLM, g: torch.Generator) -> float:
    """Cross-entropy of the second copy when it is entirely masked (X = BOS s SEP, Y = all [MASK])."""
    docs = copy_documents(256, g)
    ids = docs.clone()
    ids[:, N + 2 : 2 * N + 2] = MASK
    regions = torch.zeros_like(ids, dtype=torch.int8)
    regions[:, N + 2 :] = 1
    with torch.no_grad():
        logits = model(ids, AttentionLayout("prefix_blind", None, regions)).logits[:, N + 2 : 2 * N + 2]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), docs[:, N + 2 : 2 * N + 2].reshape(-1)).item()


@pytest.mark.slow  # learns: hundreds of steps
def test_micro_model_learns_to_copy_the_prefix_into_a_masked_suffix():
    torch.manual_seed(0)
    config = ModelConfig.from_preset("micro", vocab_size=64, num_layers=2, hidden_size=64)
    model = BiGLM(config)
    objective = build_objective(ObjectiveConfig("biglm"), MASK, config.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    eval_g = lambda: torch.Generator().manual_seed(123)
    start = suffix_loss(model, eval_g())
    doc_len = 2 * N + 3
    for _ in range(250):
        rows = copy_documents(32 * 4, g).view(32, 4 * doc_len)  # four documents packed per row
        doc_ids = torch.arange(4).repeat_interleave(doc_len).expand(32, -1)
        batch = objective(rows, doc_ids, g)
        out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=batch.loss_mask)
        parts = masked_lm_loss(out.logits, batch.labels[batch.loss_mask], batch.layout.regions[batch.loss_mask])
        opt.zero_grad()
        (parts.terms["mlm"] / batch.num_targets).backward()
        opt.step()
    end = suffix_loss(model, eval_g())
    assert start > 3.5  # about ln(64): chance
    assert end < 0.1 * start, (start, end)
