"""Non-autoregressive generation for BiGLM: Mask-Predict, confidence-threshold and semi-autoregressive
decoding over an exact prefix cache.

- ``generate(model_or_ckpt, prompts, ...)``: text in, text out (``biglm.generate.api``).
- ``encode_prefix`` / ``decode`` / ``generate_ids``: the token-id engine (``biglm.generate.engine``).
- ``STRATEGIES``: the decoding strategies by name (``biglm.generate.strategies``).
"""

from biglm.generate.api import GenerationResult, generate, render_step
from biglm.generate.engine import (
    DecodeResult,
    EncodedPrefix,
    GenerationOutput,
    decode,
    encode_prefix,
    generate_ids,
    suffix_logits,
)
from biglm.generate.length import length_candidates, pick_best
from biglm.generate.sampling import SamplingConfig, choose_tokens
from biglm.generate.strategies import STRATEGIES, DecodeState

__all__ = [
    "STRATEGIES",
    "DecodeResult",
    "DecodeState",
    "EncodedPrefix",
    "GenerationOutput",
    "GenerationResult",
    "SamplingConfig",
    "choose_tokens",
    "decode",
    "encode_prefix",
    "generate",
    "generate_ids",
    "length_candidates",
    "pick_best",
    "render_step",
    "suffix_logits",
]
