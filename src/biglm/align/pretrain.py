"""The pretraining side of J_RL: packed rows of a text file, the policy's pretraining objective on them (the λ_PT
term), and the held-out pretraining loss that shows how far alignment moved the policy from it.

Documents become ``BOS text EOS`` and are packed into rows of ``seq_len`` tokens as the pre-training data
pipeline packs them (a document continues in the next row; the last row is padded with document id -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from biglm.data.packing import pack_documents
from biglm.data.records import read_records
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.objectives import Criterion, ObjectiveConfig, build_criterion, build_objective
from biglm.objectives.heldout import heldout_sums, mean_loss
from biglm.train.batches import VAL_SALT, ObjectiveBatcher, RowSeeds


def read_rows(spec: str, field: str, tokenizer: Any, seq_len: int, ids: Any,
              limit: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Packed rows of the records' ``field`` in ``spec`` (one-line errors naming the file and field)."""
    records = read_records(spec, limit=limit)
    texts = []
    for r in records:
        value = r.fields.get(field)
        if not isinstance(value, str):
            raise BiglmError(f"{r.where}: no text field {field!r} (data.text_field)")
        texts.append(value)
    if not texts:
        raise BiglmError(f"{spec}: no pretraining text")
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return pack_documents(docs, seq_len, ids.bos, ids.eos, ids.pad)


class PretrainObjective:
    """The policy's pretraining objective (batcher + criterion + layout kind), and its held-out loss."""

    def __init__(self, name: str, family: str, ids: Any, vocab_size: int) -> None:
        name = get_family(family).objectives[0] if name == "auto" else name  # the family's pre-training objective
        config = ObjectiveConfig(name=name)
        specials = {"bos": ids.bos, "eos": ids.eos, "pad": ids.pad, "mask": ids.mask}
        objective = build_objective(config, ids.mask, vocab_size, specials)
        self.name = name
        self.batcher = ObjectiveBatcher(objective)
        self.criterion: Criterion = build_criterion(config)
        probe = objective(torch.full((1, 4), ids.pad), torch.zeros(1, 4, dtype=torch.int32), torch.Generator())
        self.kind = probe.layout.kind

    def loss(self, model: nn.Module, rows: Sequence[tuple[Tensor, Tensor]], batch_size: int = 8) -> float:
        """Mean per-target loss of ``rows`` (masked with fixed seeds: the same targets at every evaluation); NaN
        when the objective takes no loss on them (e.g. documents shorter than its ``min_loss_tokens``)."""
        batches = (self.batcher({"input_ids": torch.stack([r[0] for r in rows[i:i + batch_size]]),
                                 "document_ids": torch.stack([r[1] for r in rows[i:i + batch_size]])},
                                RowSeeds(VAL_SALT, i))
                   for i in range(0, len(rows), batch_size))
        return mean_loss(heldout_sums(model, self.criterion, batches), self.criterion.weights)
