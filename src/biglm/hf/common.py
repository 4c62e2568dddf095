"""What every exported transformers folder shares: its file names, the remote code's auto map, and the
``BiGLMConfig`` of a biglm ``ModelConfig``."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from biglm.checkpoint import MODEL_FORMAT_VERSION
from biglm.config import ModelConfig
from biglm.families import get_family
from biglm.hf.configuration_biglm import BiGLMConfig

WEIGHTS = "model.safetensors"
REMOTE_CODE = ("configuration_biglm.py", "modeling_biglm.py", "decoding_biglm.py")
"""The remote code copied into every folder exported with it (``modeling_biglm.py`` imports the other two)."""
AUTO_MAP = {
    "AutoConfig": "configuration_biglm.BiGLMConfig",
    "AutoModel": "modeling_biglm.BiGLMModel",
    "AutoModelForMaskedLM": "modeling_biglm.BiGLMForMaskedLM",
}
_V5 = int(transformers.__version__.split(".")[0]) >= 5


def hf_config(config: ModelConfig, tokenizer: Any = None, dtype: torch.dtype = torch.float32,
              step: int = 0) -> BiGLMConfig:
    """The ``BiGLMConfig`` of ``config`` (same fields), with the tokenizer's special ids and ``auto_map``."""
    ids = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id", None) for t in ("pad", "bos", "eos", "mask")}
    cfg = BiGLMConfig(**config.to_dict(), **ids, attention_layout=get_family(config).layout,
                      biglm_format_version=MODEL_FORMAT_VERSION, biglm_step=step)
    cfg.auto_map = dict(AUTO_MAP)
    cfg.architectures = ["BiGLMForMaskedLM"]
    if config.span_head:  # a model fine-tuned for extractive QA loads as a question-answering model too
        cfg.auto_map["AutoModelForQuestionAnswering"] = "modeling_biglm.BiGLMForQuestionAnswering"
        cfg.architectures = ["BiGLMForQuestionAnswering"]
    setattr(cfg, "dtype" if _V5 else "torch_dtype", dtype)
    return cfg
