"""Fine-tuning task kinds by name: each is data + loss + metric on the shared trainer."""

from __future__ import annotations

from typing import Any

from biglm.finetune.config import TASK_KINDS, FinetuneConfig
from biglm.finetune.tasks.base import FinetuneTask, TaskBase, TokenIds
from biglm.finetune.tasks.cloze import ClozeTask
from biglm.finetune.tasks.instruction import InstructionTask
from biglm.finetune.tasks.qa import QATask
from biglm.finetune.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, type[TaskBase]] = {
    "cloze-classification": ClozeTask,
    "extractive-qa": QATask,
    "seq2seq": Seq2SeqTask,
    "instruction": InstructionTask,
}
assert set(TASKS) == set(TASK_KINDS), "every task kind needs a config section and a registry entry"


def build_task(cfg: FinetuneConfig, tokenizer: Any, max_seq_len: int) -> FinetuneTask:
    """The task of ``cfg.task.kind`` for a model of ``max_seq_len`` tokens with ``tokenizer``."""
    return TASKS[cfg.task.kind](cfg, tokenizer, max_seq_len)  # type: ignore[return-value]


__all__ = ["TASKS", "ClozeTask", "FinetuneTask", "InstructionTask", "QATask", "Seq2SeqTask", "TokenIds", "build_task"]
