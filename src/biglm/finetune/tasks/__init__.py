"""Fine-tuning task kinds by name: each is data + loss + metric on the shared trainer."""

from __future__ import annotations

from typing import Any

from biglm.finetune.config import TASK_KINDS, FinetuneConfig
from biglm.finetune.tasks.base import FinetuneTask, TaskBase, TokenIds
from biglm.finetune.tasks.cloze import ClozeTask
from biglm.finetune.tasks.dpo import DPOTask
from biglm.finetune.tasks.glm import GLMClozeTask, GLMInstructionTask, GLMSeq2SeqTask
from biglm.finetune.tasks.instruction import InstructionTask
from biglm.finetune.tasks.qa import QATask
from biglm.finetune.tasks.reward import RewardTask
from biglm.finetune.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, type[TaskBase]] = {
    "cloze-classification": ClozeTask,
    "extractive-qa": QATask,
    "seq2seq": Seq2SeqTask,
    "instruction": InstructionTask,
    "reward": RewardTask,
    "dpo": DPOTask,
}
assert set(TASKS) == set(TASK_KINDS), "every task kind needs a config section and a registry entry"
FAMILY_TASKS: dict[str, dict[str, type[TaskBase]]] = {
    "glm": {"cloze-classification": GLMClozeTask, "seq2seq": GLMSeq2SeqTask, "instruction": GLMInstructionTask},
}
"""Task kinds a model family does its own way (GLM fills blanks in part B); the others use ``TASKS``."""


def build_task(cfg: FinetuneConfig, tokenizer: Any, max_seq_len: int, family: str = "masked") -> FinetuneTask:
    """The task of ``cfg.task.kind`` for a ``family`` model of ``max_seq_len`` tokens with ``tokenizer``."""
    kind = cfg.task.kind
    cls = FAMILY_TASKS.get(family, {}).get(kind, TASKS[kind])
    if kind in ("reward", "dpo"):  # these read the family (pooling and attention; dpo needs an AR policy)
        return cls(cfg, tokenizer, max_seq_len, family=family)  # type: ignore
    return cls(cfg, tokenizer, max_seq_len)  # type: ignore


__all__ = ["FAMILY_TASKS", "TASKS", "ClozeTask", "DPOTask", "FinetuneTask", "GLMClozeTask", "GLMInstructionTask",
           "GLMSeq2SeqTask", "InstructionTask", "QATask", "RewardTask", "Seq2SeqTask", "TokenIds", "build_task"]
