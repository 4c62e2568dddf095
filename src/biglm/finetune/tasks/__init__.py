"""Fine-tuning task kinds by name: each is data + loss + metric on the shared trainer."""

from __future__ import annotations

from typing import Any

from biglm.config import MODEL_FAMILIES
from biglm.errors import ConfigError
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
FAMILY_TASKS: dict[str, dict[str, type[TaskBase] | None]] = {
    # A left-to-right model cannot fill a blank with the text after it in view: no cloze (as yet).
    "causal": {"cloze-classification": None},
    "bidirectional-ar": {"cloze-classification": None},
    "glm": {"cloze-classification": GLMClozeTask, "seq2seq": GLMSeq2SeqTask, "instruction": GLMInstructionTask,
            "dpo": None},
}
"""Task kinds a model family does its own way (GLM fills blanks in part B), or not at all (None: refused
in one line); the others use ``TASKS``."""


def task_class(kind: str, family: str) -> type[TaskBase] | None:
    """The class of task ``kind`` for a ``family`` model (None: the family cannot be fine-tuned for it)."""
    return FAMILY_TASKS.get(family, {}).get(kind, TASKS[kind])


def build_task(cfg: FinetuneConfig, tokenizer: Any, max_seq_len: int, family: str = "masked") -> FinetuneTask:
    """The task of ``cfg.task.kind`` for a ``family`` model of ``max_seq_len`` tokens with ``tokenizer``."""
    kind = cfg.task.kind
    cls = task_class(kind, family)
    if cls is None:
        takes = [f for f in MODEL_FAMILIES if task_class(kind, f) is not None]
        fits = [k for k in TASKS if task_class(k, family) is not None]
        raise ConfigError(f"task.kind={kind}: needs a {', '.join(takes[:-1])} or {takes[-1]} model, the checkpoint "
                          f"is {family} (a {family} model fine-tunes with: {', '.join(fits)})")
    if kind in ("reward", "dpo"):  # these read the family (pooling and attention; dpo needs an AR policy)
        return cls(cfg, tokenizer, max_seq_len, family=family)  # type: ignore
    return cls(cfg, tokenizer, max_seq_len)  # type: ignore


__all__ = ["FAMILY_TASKS", "TASKS", "ClozeTask", "DPOTask", "FinetuneTask", "GLMClozeTask", "GLMInstructionTask",
           "GLMSeq2SeqTask", "InstructionTask", "QATask", "RewardTask", "Seq2SeqTask", "TokenIds", "build_task",
           "task_class"]
