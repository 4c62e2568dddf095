"""biglm: bidirectional general language models (BiGLM, with GLM and BatGPT objectives)."""

from biglm.attention import AttentionLayout
from biglm.config import ModelConfig
from biglm.errors import BiglmError, ConfigError
from biglm.model import BiGLM, BiGLMOutput, BiGLMStack, KVCache
from biglm.objectives import Batch, ObjectiveConfig, build_objective

__version__ = "0.1.0"

__all__ = [
    "AttentionLayout",
    "Batch",
    "BiGLM",
    "BiGLMOutput",
    "BiGLMStack",
    "BiglmError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "ObjectiveConfig",
    "build_objective",
]
