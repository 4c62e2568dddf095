"""Quality of a decoding setting, measured against something other than the model's own confidence.

- **copy exact match**: the fine-tuned seq2seq model's outputs on the held-out copy test set, cut at the first
  EOS, against the references (``biglm.metrics.generation_metrics``' exact match, in %).
- **open continuation** of held-out Wikipedia prompts (the first ``prompt`` tokens of the summaries the masked
  run held out: ``biglm.data.held_out``), ``new`` tokens with EOS banned (every output has exactly ``new``
  tokens, as the timed peers), greedy:

  - *generative perplexity*: ``exp(-Σ log p / Σ n)`` of the continuation tokens given the prompt under the
    separately trained causal model (``biglm.evaluate.ar_scoring.score_continuations``), pooled over prompts;
  - *distinct-2*: distinct token bigrams over all bigrams of the continuations, pooled;
  - *repetition rate*: the share of each continuation's token 4-grams that already occurred earlier in the
    same continuation, pooled (0 for text that never repeats a 4-gram; 1 - 1/n for one token repeated).

Each setting's quality delta is taken against the reference setting on the same prompts: exact match minus the
reference's (points) and the relative change of generative perplexity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biglm.data.held_out import held_out_documents, run_held_out
from biglm.errors import BiglmError
from biglm.evaluate.ar_scoring import score_continuations
from biglm.generate import AROptions, SamplingConfig, generate_ar_ids, generate_ids
from biglm.generate.specials import banned_ids
from biglm.metrics import generation_metrics


def held_out_prompts(run: Path, corpus: Path, tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """The first ``length`` tokens of the first ``count`` held-out summaries (those at least that long) of the
    masked run ``run`` (its ``data.val_fraction`` / ``val_seed``), the article's title line left out."""
    fraction, seed = run_held_out(str(run))
    out = []
    for doc in held_out_documents([str(corpus)], fraction, seed):
        ids = tokenizer(doc.partition("\n")[2] or doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == count:
            return out
    raise BiglmError(f"{corpus}: only {len(out)} held-out summaries of {length}+ tokens; need {count}")


def distinct_2(outputs: Sequence[Sequence[int]]) -> float:
    """Distinct token bigrams over all bigrams of ``outputs``, pooled."""
    grams = [tuple(o[i:i + 2]) for o in outputs for i in range(len(o) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def repetition_rate(outputs: Sequence[Sequence[int]], n: int = 4) -> float:
    """The share of each output's ``n``-grams seen earlier in the same output, pooled over ``outputs``."""
    repeated = total = 0
    for o in outputs:
        seen: set[tuple[int, ...]] = set()
        for i in range(len(o) - n + 1):
            g = tuple(o[i:i + n])
            repeated += g in seen
            seen.add(g)
            total += 1
    return repeated / max(total, 1)


class Continuation:
    """Open continuation of held-out prompts by the masked model, judged by the causal one."""

    def __init__(self, masked: Any, causal: Any, prompts: list[list[int]], new: int) -> None:
        self.masked, self.causal, self.prompts, self.new = masked, causal, prompts, new
        tok = masked.tokenizer
        self.ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        self.banned = sorted({*banned_ids(tok, masked.config.vocab_size), tok.eos_token_id})
        self.ar_banned = tuple(sorted({*banned_ids(causal.tokenizer, causal.config.vocab_size),
                                       causal.tokenizer.eos_token_id}))

    def generate(self, kwargs: dict[str, Any], prompts: list[list[int]] | None = None) -> Any:
        """The masked model's continuations of ``prompts`` (default: all) with ``kwargs``."""
        tok = self.masked.tokenizer
        return generate_ids(self.masked.model, prompts or self.prompts, **self.ids, mask_token_id=tok.mask_token_id,
                            pad_token_id=tok.pad_token_id, max_new_tokens=self.new, banned_token_ids=self.banned,
                            **kwargs)

    def autoregressive(self, sample: bool, prompts: list[list[int]] | None = None) -> Any:
        """The causal model's own continuations: greedy, or sampled at temperature 1 (seed 0)."""
        opts = AROptions(max_new_tokens=self.new, min_new_tokens=self.new, banned_token_ids=self.ar_banned,
                         sampling=SamplingConfig(temperature=1.0 if sample else 0.0))
        return generate_ar_ids(self.causal.model, prompts or self.prompts, **self.ids,
                               pad_token_id=self.causal.tokenizer.pad_token_id, options=opts,
                               seed=0 if sample else None)

    def judge(self, outputs: list[list[int]]) -> dict[str, float]:
        """Generative perplexity under the causal model, distinct-2 and repetition rate of ``outputs``."""
        scores = score_continuations(self.causal.model, list(zip(self.prompts, outputs)), **self.ids,
                                     pad_token_id=self.causal.tokenizer.pad_token_id)
        logp, n = sum(s.logprob for s in scores), sum(len(o) for o in outputs)
        return {"gen_ppl": math.exp(-logp / max(n, 1)), "distinct_2": distinct_2(outputs),
                "repetition_4": repetition_rate(outputs), "tokens": n}

    def measure(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A setting's continuations (all prompts in one batch) and their quality."""
        tic = time.perf_counter()
        out = self.generate(kwargs)
        row = {**self.judge(out.token_ids), "passes_all": out.forward_passes,
               "seconds_all": round(time.perf_counter() - tic, 3)}
        row["sample"] = self.masked.tokenizer.decode(out.token_ids[0])
        return row

    def measure_autoregressive(self, sample: bool) -> dict[str, Any]:
        out = self.autoregressive(sample)
        return {**self.judge(out.token_ids), "passes_all": out.forward_passes,
                "sample": self.causal.tokenizer.decode(out.token_ids[0])}


class CopyTask:
    """Exact match of the fine-tuned seq2seq model on the held-out copy test set."""

    def __init__(self, predictor: Any, examples: list[Any], length: int) -> None:
        self.model, self.tok, self.examples, self.length = predictor.loaded.model, predictor.loaded.tokenizer, \
            examples, length
        self.refs = [ex.target_text for ex in examples]
        self.banned = banned_ids(self.tok, self.model.config.vocab_size)

    def generate(self, kwargs: dict[str, Any], examples: Sequence[Any] | None = None) -> Any:
        t = self.tok
        return generate_ids(self.model, [ex.source for ex in (examples or self.examples)], bos_token_id=t.bos_token_id,
                            eos_token_id=t.eos_token_id, mask_token_id=t.mask_token_id, pad_token_id=t.pad_token_id,
                            max_new_tokens=self.length, banned_token_ids=self.banned, **kwargs)

    def measure(self, kwargs: dict[str, Any], batch1: int) -> dict[str, Any]:
        """Exact match over the test set (one batch), and passes and seconds per example decoding the first
        ``batch1`` examples one at a time (where EOS early exit saves passes)."""
        out = self.generate(kwargs)
        texts = [x.strip() for x in self.tok.batch_decode(out.token_ids, skip_special_tokens=True)]
        em = generation_metrics(["exact_match"], texts, self.refs)["exact_match"]
        passes, tic = 0, time.perf_counter()
        for ex in self.examples[:batch1]:
            passes += self.generate(kwargs, [ex]).forward_passes
        seconds = time.perf_counter() - tic
        return {"exact_match": em, "passes_per_example_b1": passes / max(batch1, 1),
                "ms_per_example_b1": 1000 * seconds / max(batch1, 1),
                "output_tokens": sum(len(t) for t in out.token_ids) / len(out.token_ids)}
