"""One prompt's decoding advanced a pass at a time, and forward passes shared by prompts at different passes.

A ``DecodeJob`` is ``generate_ids`` for one prompt, split at its passes: its prefix encoded once (the exact
prefix cache, the length head's candidates), its strategy's ``StepRule``, its own sampling settings and its own
seeded generator. ``run_pass(model, jobs)`` runs one forward pass for every job given, whatever its pass,
prompt length, target length, strategy or sampling: the prefixes are left-padded into one batch (pads get
document id -1, caches included), the suffixes right-padded, and each job draws its tokens from its own
positions' logits with its own generator. So a job's output does not depend on the jobs it shares passes with:
it equals ``generate_ids`` of that prompt alone (to the float rounding of the batched matmuls, as batched
``generate_ids`` equals one prompt at a time). ``PassBatch`` keeps a set of jobs and their joined prefix
between passes (a server's continuous batching: jobs join and leave between passes).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.attention import PREFIX, AttentionLayout
from biglm.generate.engine import (
    PAD_DOCUMENT,
    DecodeResult,
    EncodedPrefix,
    GenerationOutput,
    banned_tensor,
    candidate_rows,
    check_decoding,
    collect_output,
    encode_prefix,
    fill_predictions,
    prepare_prefixes,
    start_decoding,
    suffix_logits,
    target_mask,
)
from biglm.generate.sampling import SamplingConfig, seeded_generator
from biglm.generate.strategies import DecodeState
from biglm.model import KVCache


class DecodeJob:
    """``generate_ids`` (same arguments, one prompt) as a job that ``run_pass`` advances one pass at a time."""

    @torch.inference_mode()
    def __init__(self, model: nn.Module, prompt: Sequence[int], *, bos_token_id: int, eos_token_id: int | None,
                 mask_token_id: int, pad_token_id: int = 0, max_new_tokens: int = 32, steps: int = 10,
                 strategy: str = "mask-predict", sampling: SamplingConfig | None = None, seed: int | None = None,
                 prefix_cache: bool = True, length: str = "fixed", length_candidates_k: int = 3,
                 length_rule: str = "joint", banned_token_ids: Sequence[int] = (), **strategy_options: Any) -> None:
        check_decoding(strategy, steps, max_new_tokens, length)
        self.prefixes = prepare_prefixes([prompt], bos_token_id, max_new_tokens, model.config.max_seq_len)
        prefix = encode_prefix(model, self.prefixes, pad_token_id=pad_token_id, use_cache=prefix_cache,
                               length_logits=length == "predict")
        self.prefix_passes = int(prefix_cache or length == "predict")
        self.prefix, self.row_lengths, self.cands = candidate_rows(prefix, length, length_candidates_k, max_new_tokens)
        self.active = target_mask(self.row_lengths)
        device = self.active.device
        self.sampling = sampling or SamplingConfig()
        self.generator = None if self.sampling.greedy else seeded_generator(device, seed)
        self.banned = banned_tensor(banned_token_ids, mask_token_id, device)
        self.pad_token_id, self.eos_token_id, self.length_rule = pad_token_id, eos_token_id, length_rule
        self.state = DecodeState.all_masked(self.active, mask_token_id, eos_token_id)
        self.rule, self.runner = start_decoding(strategy, self.state, steps, prefix_cache, strategy_options)
        self.passes = 0
        """Passes run so far (the prefix pass not counted): the index of the next one."""
        self.where = self.rule.plan()

    @property
    def done(self) -> bool:
        return self.where is None

    @property
    def width(self) -> int:
        return self.active.shape[1]

    def fed(self) -> list[int]:
        """The suffix the next pass is fed, of the top-ranked candidate ([MASK] id where undecided): what
        ``generate_ids``' ``on_pass`` shows for this prompt."""
        return self.state.tokens[0, :int(self.row_lengths[0])].tolist()

    def predicted(self) -> Tensor:
        """The positions the next pass predicts, (rows, width) bool."""
        assert self.where is not None, "the job is done"
        return self.where & self.active

    def take(self, logits: Tensor) -> None:
        """This job's logits of the pass (one row per position of ``predicted()``, row-major): choose its tokens
        and plan the next pass."""
        assert self.where is not None, "the job is done"
        predictions = fill_predictions(logits, self.state.tokens, self.predicted(), self.sampling, self.generator,
                                       self.banned, self.rule.needs_margins)
        self.rule.commit(self.where, predictions)
        self.passes += 1
        self.where = self.rule.plan()

    @property
    def shares_passes(self) -> bool:
        """False for a job with an approximate suffix cache: its passes run its own blocks, alone."""
        return not self.runner.approximate

    def step_alone(self, model: nn.Module) -> None:
        """This job's next pass by itself (through its suffix cache)."""
        self.take(self.runner(model, self.prefix, self.state.tokens, self.active, self.predicted(), self.rule.span))

    def output(self) -> GenerationOutput:
        """The result, as ``generate_ids`` of this prompt alone returns it (no trajectories)."""
        result = DecodeResult(self.state.tokens, self.state.scores, self.active, self.passes)
        return collect_output(result, self.prefix, self.row_lengths, self.cands, self.length_rule, self.eos_token_id,
                              self.prefixes, self.prefix_passes)


def _left_pad(t: Tensor | None, width: int, value: float, dim: int) -> Tensor | None:
    """``t`` padded with ``value`` at the start of ``dim`` (counted from the end) to ``width``."""
    if t is None or t.shape[dim] == width:
        return t
    pad = [0, 0] * (-dim - 1) + [width - t.shape[dim], 0]
    return F.pad(t, pad, value=value)


def join_prefixes(prefixes: Sequence[EncodedPrefix], pad_token_id: int = 0) -> EncodedPrefix:
    """Several ``EncodedPrefix`` batches as one, left-padded to the widest (pads: document id -1, position 0,
    a zero cache entry), as ``encode_prefix`` pads prompts of different lengths; caches joined when all have one."""
    if len(prefixes) == 1:
        return prefixes[0]
    width = max(p.width for p in prefixes)

    def cat(get: Any, value: float, dim: int = -1) -> Tensor:
        return torch.cat([_left_pad(get(p), width, value, dim) for p in prefixes])

    joined = EncodedPrefix(cat(lambda p: p.input_ids, pad_token_id), cat(lambda p: p.document_ids, PAD_DOCUMENT),
                           cat(lambda p: p.position_ids, 0), torch.cat([p.lengths for p in prefixes]))
    if all(p.cache is not None for p in prefixes):
        caches = [p.cache for p in prefixes]
        keys = [cat(lambda p, i=i: p.cache.keys[i], 0.0, -2) for i in range(len(caches[0].keys))]
        values = [cat(lambda p, i=i: p.cache.values[i], 0.0, -2) for i in range(len(caches[0].values))]
        layout = caches[0].layout
        docs = cat(lambda p: p.cache.layout.document_ids, PAD_DOCUMENT) if layout.document_ids is not None else None
        regions = cat(lambda p: p.cache.layout.regions, PREFIX) if layout.regions is not None else None
        joined.cache = KVCache(keys, values, AttentionLayout(layout.kind, docs, regions))
    return joined


@torch.inference_mode()
def run_pass(model: nn.Module, jobs: Sequence[DecodeJob], prefix: EncodedPrefix | None = None) -> None:
    """One forward pass for ``jobs`` (none done) together; ``prefix``: their prefixes already joined
    (``join_prefixes``, in this order). Jobs with an approximate suffix cache (``shares_passes`` False) each run
    their own pass instead (``prefix`` then joins the others only)."""
    for job in jobs:
        if not job.shares_passes:
            job.step_alone(model)
    jobs = [j for j in jobs if j.shares_passes]
    if not jobs:
        return
    if prefix is None:
        prefix = join_prefixes([j.prefix for j in jobs], jobs[0].pad_token_id)
    width = max(j.width for j in jobs)
    right = lambda t, value: t if t.shape[1] == width else F.pad(t, (0, width - t.shape[1]), value=value)
    tokens = torch.cat([right(j.state.tokens, j.state.mask_token_id) for j in jobs])
    active = torch.cat([right(j.active, False) for j in jobs])
    where = [j.predicted() for j in jobs]
    logits = suffix_logits(model, prefix, tokens, active, logits_mask=torch.cat([right(w, False) for w in where]))
    start = 0
    for job, w in zip(jobs, where):
        n = int(w.sum())
        job.take(logits[start:start + n])
        start += n


class PassBatch:
    """Jobs that share passes, joining and leaving between them; the joined prefix is kept while they stay."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.jobs: dict[Hashable, DecodeJob] = {}
        self._joined: tuple[tuple[Hashable, ...], EncodedPrefix] | None = None

    def add(self, key: Hashable, job: DecodeJob) -> None:
        self.jobs[key] = job
        self._joined = None

    def remove(self, key: Hashable) -> DecodeJob | None:
        self._joined = None
        return self.jobs.pop(key, None)

    def step(self) -> None:
        """One pass for every job not done."""
        running = [(k, j) for k, j in self.jobs.items() if not j.done]
        if not running:
            return
        shared = [(k, j) for k, j in running if j.shares_passes]
        joined = None
        if shared:
            keys = tuple(k for k, _ in shared)
            if self._joined is None or self._joined[0] != keys:
                self._joined = keys, join_prefixes([j.prefix for _, j in shared], shared[0][1].pad_token_id)
            joined = self._joined[1]
        run_pass(self.model, [j for _, j in running], joined)
