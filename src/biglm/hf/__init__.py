"""The transformers integration: ``BiGLMConfig``, ``BiGLMModel``, ``BiGLMForMaskedLM``, conversion.

Importing ``biglm.hf`` registers the classes with ``AutoConfig``, ``AutoModel``, ``AutoModelForMaskedLM``
and ``AutoModelForQuestionAnswering`` under the model type ``"biglm"``. ``configuration_biglm.py`` and
``modeling_biglm.py`` import only torch and transformers: ``biglm export-hf`` ships them with the
weights, so exported folders load with ``trust_remote_code=True`` without biglm installed.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering

from biglm.hf.configuration_biglm import BiGLMConfig
from biglm.hf.modeling_biglm import (
    BiGLMForMaskedLM,
    BiGLMForQuestionAnswering,
    BiGLMMaskedLMOutput,
    BiGLMModel,
    BiGLMPreTrainedModel,
)

AutoConfig.register("biglm", BiGLMConfig, exist_ok=True)
AutoModel.register(BiGLMConfig, BiGLMModel, exist_ok=True)
AutoModelForMaskedLM.register(BiGLMConfig, BiGLMForMaskedLM, exist_ok=True)
AutoModelForQuestionAnswering.register(BiGLMConfig, BiGLMForQuestionAnswering, exist_ok=True)

__all__ = [
    "BiGLMConfig",
    "BiGLMForMaskedLM",
    "BiGLMForQuestionAnswering",
    "BiGLMMaskedLMOutput",
    "BiGLMModel",
    "BiGLMPreTrainedModel",
]
