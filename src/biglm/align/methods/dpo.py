"""DPO: no rollout and no reward; the judged pairs of ``data.preferences`` train the fine-tuning task kind
``dpo`` on the same trainer (settings: the ``dpo`` section, that task's ``DPOConfig``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from biglm.align.methods.base import Method, Need
from biglm.configurable import to_dict
from biglm.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from biglm.align.config import AlignConfig


class DPOMethod(Method):
    """Runs as the fine-tuning task kind of its name; the reference is ``init`` (that task loads it)."""

    def finetune_config(self, cfg: AlignConfig) -> Any:
        return FinetuneConfig.from_dict({
            "init": cfg.init, "task": {"kind": self.name, self.section: to_dict(self.settings(cfg))},
            "data": {"train": cfg.data.preferences, "valid": cfg.data.valid_preferences,
                     "max_examples": cfg.data.max_examples},
            "train": to_dict(cfg.train), "model": dict(cfg.model_overrides)})


DPO = DPOMethod(
    name="dpo",
    summary="DPO on judged pairs (the fine-tuning task kind dpo): no rollout, no reward",
    section="dpo",
    needs=(Need("data.preferences", "method dpo needs judged pairs (--preferences FILE)"),),
    rollout=False,
)
