"""Fine-tuning task kinds by name: each is data + loss + metric on the shared trainer."""

from __future__ import annotations

from typing import Any

from biglm.data.tokenizer import TokenIds
from biglm.errors import ConfigError
from biglm.families import FAMILIES, get_family
from biglm.finetune.config import TASK_KINDS, FinetuneConfig
from biglm.finetune.tasks.base import FinetuneTask, TaskBase
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
LAYOUT_TASKS: dict[str, dict[str, type[TaskBase]]] = {
    # part A read whole, the blank written in part B: GLM's cloze, seq2seq and instruction rows and decoding
    "prefix_lm": {"cloze-classification": GLMClozeTask, "seq2seq": GLMSeq2SeqTask, "instruction": GLMInstructionTask},
}
"""Task kinds done their own way for a model family's attention layout (``Family.layout``); the others use
``TASKS``. The kinds a family cannot take at all are its ``Family.refused_tasks``."""


def task_class(kind: str, family: str) -> type[TaskBase] | None:
    """The class of task ``kind`` for a ``family`` model (None: the family cannot be fine-tuned for it)."""
    fam = get_family(family)
    if kind in fam.refused_tasks:
        return None
    return LAYOUT_TASKS.get(fam.layout, {}).get(kind, TASKS[kind])


def build_task(cfg: FinetuneConfig, tokenizer: Any, max_seq_len: int, family: str = "masked") -> FinetuneTask:
    """The task of ``cfg.task.kind`` for a ``family`` model of ``max_seq_len`` tokens with ``tokenizer``."""
    kind = cfg.task.kind
    cls = task_class(kind, family)
    if cls is None:
        takes = [f for f in FAMILIES if task_class(kind, f) is not None]
        fits = [k for k in TASKS if task_class(k, family) is not None]
        raise ConfigError(f"task.kind={kind}: needs a {', '.join(takes[:-1])} or {takes[-1]} model, the checkpoint "
                          f"is {family} (a {family} model fine-tunes with: {', '.join(fits)})")
    parallel = getattr(cfg.task.options, "parallel", None)
    if parallel is not None and parallel.as_strategy_options() and get_family(family).autoregressive:
        name, value = next(iter(parallel.as_strategy_options().items()))  # said before training, not ignored later
        raise ConfigError(f"{cfg.task.options.section}.parallel.{name}={value!r}: an option of the masked models' "
                          f"parallel strategies; a {family} model decodes token by token")
    if kind in ("reward", "dpo"):  # these read the family (pooling and attention; dpo needs an AR policy)
        return cls(cfg, tokenizer, max_seq_len, family=family)  # type: ignore
    return cls(cfg, tokenizer, max_seq_len)  # type: ignore


__all__ = ["LAYOUT_TASKS", "TASKS", "ClozeTask", "DPOTask", "FinetuneTask", "GLMClozeTask", "GLMInstructionTask",
           "GLMSeq2SeqTask", "InstructionTask", "QATask", "RewardTask", "Seq2SeqTask", "TokenIds", "build_task",
           "task_class"]
