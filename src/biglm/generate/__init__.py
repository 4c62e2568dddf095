"""Generation: non-autoregressive for masked models (Mask-Predict, confidence-threshold and
semi-autoregressive decoding over an exact prefix cache), autoregressive with the KV cache for causal and
bidirectional-ar models (greedy, sampling, beam search; right to left too).

- ``generate(model_or_ckpt, prompts, ...)``: text in, text out, dispatched on the model's family
  (``biglm.generate.api``).
- ``ARState`` / ``start_state`` / ``decode`` / ``generate_ar_ids``: the autoregressive loop on token ids
  (``biglm.generate.autoregressive``).
- ``encode_prefix`` / ``decode`` / ``generate_ids``: the token-id engine (``biglm.generate.engine``).
- ``STRATEGIES``: the decoding strategies by name, each a pass-by-pass ``StepRule`` (``biglm.generate.strategies``);
  ``COMMIT_RULES``: what a parallel pass keeps (``biglm.generate.commit``); ``SUFFIX_CACHES``: how much of the
  suffix a pass recomputes (``biglm.generate.suffix_cache``); ``ParallelOptions``: their options as one value.
- ``DecodeJob`` / ``PassBatch``: one prompt's decoding a pass at a time, prompts at different passes sharing
  forward passes (``biglm.generate.stepwise``: a server's continuous batching).
"""

from biglm.generate.api import GenerationResult, generate, render_step
from biglm.generate.autoregressive import AROptions, ARResult, ARState, decode_ar, generate_ar_ids, start_state
from biglm.generate.commit import COMMIT_RULES
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
from biglm.generate.options import ParallelOptions
from biglm.generate.sampling import SamplingConfig, choose_tokens
from biglm.generate.stepwise import DecodeJob, PassBatch
from biglm.generate.strategies import STRATEGIES, DecodeState
from biglm.generate.suffix_cache import SUFFIX_CACHES

__all__ = [
    "COMMIT_RULES",
    "STRATEGIES",
    "SUFFIX_CACHES",
    "AROptions",
    "ARResult",
    "ARState",
    "DecodeJob",
    "DecodeResult",
    "DecodeState",
    "EncodedPrefix",
    "GenerationOutput",
    "GenerationResult",
    "ParallelOptions",
    "PassBatch",
    "SamplingConfig",
    "choose_tokens",
    "decode",
    "decode_ar",
    "encode_prefix",
    "generate",
    "generate_ar_ids",
    "generate_ids",
    "length_candidates",
    "pick_best",
    "render_step",
    "start_state",
    "suffix_logits",
]
