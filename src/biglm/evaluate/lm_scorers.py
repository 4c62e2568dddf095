"""How the lm-eval model ``biglm`` scores requests: one scorer per ``Family.scoring``, in ``SCORERS``.

A scorer checks the options it is given (a masked scoring method, or a reading direction), scores
``(context ids, continuation ids)`` pairs (no BOS) and whole documents (token ids), and says how it scored
(``label``, ``info``):

* ``masked`` — the masked scoring methods of ``biglm.evaluate.scoring`` (X = ``BOS context``; documents in
  disjoint chunks of ``rolling_chunk`` tokens scored with ``rolling_scoring``);
* ``chain-rule`` — the exact chain rule of ``biglm.evaluate.ar_scoring`` in the chosen direction (``mean``
  also records how far L2R and R2L agree, ``direction_agreement``);
* ``blank-infilling`` — the same chain rule over GLM's part B after ``[gMASK]`` (or ``[MASK]``,
  ``glm_blank``), ``biglm.evaluate.glm_scoring``.

A family picks its scorer by name (``Family.scoring``); a new way of scoring is a class and a line here.
The scorers read the ``BiGLMEvalModel`` they serve (``lm``: model, tokenizer, options, lm-eval's hooks).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tqdm.auto import tqdm

from biglm.errors import BiglmError
from biglm.evaluate.ar_scoring import AR_DIRECTIONS, agreement, score_continuations, score_documents
from biglm.evaluate.glm_scoring import score_glm_continuations, score_glm_documents
from biglm.evaluate.scoring import ScoringConfig, rolling_requests, score_requests
from biglm.families import FAMILIES, Family
from biglm.generate.glm import GLMTokens

log = logging.getLogger("biglm.evaluate")

Pairs = list[tuple[list[int], list[int]]]


class LMScorer(Protocol):
    """What ``BiGLMEvalModel`` asks of a scorer."""

    def check(self, family: Family, scoring: str | None, direction: str | None) -> str | None: ...
    def label(self, lm: Any) -> str: ...
    def info(self, lm: Any) -> dict[str, Any]: ...
    def continuations(self, lm: Any, pairs: Pairs, disable_tqdm: bool) -> list[Any]: ...
    def documents(self, lm: Any, docs: list[list[int]], disable_tqdm: bool) -> list[float]: ...


def _names(names: list[str], word: str) -> str:
    return f" {word} ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} {word} {names[-1]}"


class MaskedScorer:
    """Masked-model scoring methods (``scoring=``): greedy-order, left-to-right, single-pass, mc-elbo, pll."""

    def check(self, family: Family, scoring: str | None, direction: str | None) -> str | None:
        """The direction to score in: none (a masked model is scored by a method, not a direction)."""
        if direction is not None:
            readers = [f.name for f in FAMILIES.values() if f.scoring == "chain-rule"]
            raise BiglmError(f"direction={direction!r} applies to {_names(readers, 'and')} models; this one is "
                             f"{family.name!r} (choose a scoring method)")
        return None

    def label(self, lm: Any) -> str:
        return str(lm.scoring.method)

    def info(self, lm: Any) -> dict[str, Any]:
        s = lm.scoring
        return {"biglm_scoring": s.method, "biglm_beam": s.beam, "biglm_samples": s.samples,
                "biglm_rolling_scoring": lm.rolling.method, "biglm_rolling_chunk": lm.rolling_chunk}

    def _score(self, lm: Any, pairs: Pairs, disable_tqdm: bool, desc: str, config: ScoringConfig) -> list[Any]:
        bar = tqdm(total=len(pairs), desc=desc, disable=disable_tqdm)
        try:
            return score_requests(lm.model, pairs, mask_token_id=int(lm.tokenizer.mask_token_id),
                                  pad_token_id=lm.pad_token_id, config=config, progress=bar.update)
        finally:
            bar.close()

    def continuations(self, lm: Any, pairs: Pairs, disable_tqdm: bool) -> list[Any]:
        scores = self._score(lm, [([lm.prefix_token_id, *x], y) for x, y in pairs], disable_tqdm,
                             f"biglm {lm.scoring.method}", lm.scoring)
        lm.stderrs = [s.stderr for s in scores if s.stderr is not None]
        if lm.stderrs:
            log.info("mc-elbo: mean standard error of the %d estimates %.4f nats", len(lm.stderrs),
                     sum(lm.stderrs) / len(lm.stderrs))
        return scores

    def documents(self, lm: Any, docs: list[list[int]], disable_tqdm: bool) -> list[float]:
        pairs, owner = [], []
        for i, doc in enumerate(docs):
            chunks = rolling_requests(doc, lm.prefix_token_id, lm.max_length, lm.rolling_chunk)
            pairs += chunks
            owner += [i] * len(chunks)
        totals = [0.0] * len(docs)
        for i, s in zip(owner, self._score(lm, pairs, disable_tqdm, f"biglm rolling {lm.rolling.method}",
                                           lm.rolling)):
            totals[i] += s.logprob
        return totals


class ChainRuleScorer:
    """The exact chain rule in a reading direction (``direction=``: ``l2r``, ``r2l``, ``mean``)."""

    def check(self, family: Family, scoring: str | None, direction: str | None) -> str | None:
        """The direction to score in (the family's first by default), one that ``family`` reads in."""
        if scoring not in (None, "chain-rule"):
            raise BiglmError(f"scoring={scoring!r} is a masked-model method; a {family.name} model is scored by the "
                             "exact chain rule (choose direction=l2r, r2l or mean)")
        direction = direction or family.directions[0]
        if direction not in AR_DIRECTIONS:
            raise BiglmError(f"direction={direction!r}: expected one of {', '.join(AR_DIRECTIONS)}")
        if direction not in family.scoring_directions:
            readers = [f.name for f in FAMILIES.values() if direction in f.scoring_directions]
            raise BiglmError(f"direction={direction!r} needs a {_names(readers, 'or')} model (this one is "
                             f"{family.name})")
        return direction

    def label(self, lm: Any) -> str:
        return str(lm.direction)

    def info(self, lm: Any) -> dict[str, Any]:
        return {"biglm_family": lm.family.name, "biglm_direction": lm.direction,
                "biglm_direction_agreement": lm.direction_agreement}

    def _continuations(self, lm: Any, pairs: Pairs, progress: Any) -> list[Any]:
        return score_continuations(lm.model, pairs, bos_token_id=lm.prefix_token_id, eos_token_id=lm.eot_token_id,
                                   pad_token_id=lm.pad_token_id, direction=lm.direction, progress=progress)

    def _documents(self, lm: Any, docs: list[list[int]], progress: Any) -> list[Any]:
        return score_documents(lm.model, docs, bos_token_id=lm.prefix_token_id, eos_token_id=lm.eot_token_id,
                               pad_token_id=lm.pad_token_id, direction=lm.direction, progress=progress)

    def continuations(self, lm: Any, pairs: Pairs, disable_tqdm: bool) -> list[Any]:
        return self._scored(lm, "chain rule", "loglikelihood", lambda bar: self._continuations(lm, pairs, bar),
                            disable_tqdm)

    def documents(self, lm: Any, docs: list[list[int]], disable_tqdm: bool) -> list[float]:
        scores = self._scored(lm, "rolling", "loglikelihood_rolling", lambda bar: self._documents(lm, docs, bar),
                              disable_tqdm)
        return [s.logprob for s in scores]

    @staticmethod
    def _scored(lm: Any, what: str, request: str, run: Any, disable_tqdm: bool) -> list[Any]:
        """``run(progress)`` under a progress bar; with ``direction=mean`` the L2R/R2L agreement of ``request``."""
        bar = tqdm(total=None, desc=f"biglm {what} {lm.direction}", disable=disable_tqdm)
        try:
            scores = run(bar.update)
        finally:
            bar.close()
        if lm.direction == "mean":
            lm.direction_agreement[request] = agreement(scores)
        return scores


class BlankInfillingScorer(ChainRuleScorer):
    """The chain rule over GLM's part B: continuation ``BOS x [gMASK] | [sop] y``, document
    ``BOS [gMASK] | [sop] x EOS`` (``glm_blank=mask``: ``[MASK]`` instead, for short-blank models)."""

    def _blank(self, lm: Any) -> tuple[GLMTokens, int]:
        tokens = GLMTokens.from_tokenizer(lm.tokenizer)
        return tokens, tokens.gmask if lm.glm_blank == "gmask" else tokens.mask

    def _continuations(self, lm: Any, pairs: Pairs, progress: Any) -> list[Any]:
        tokens, blank = self._blank(lm)
        return score_glm_continuations(lm.model, pairs, tokens, blank=blank, progress=progress)

    def _documents(self, lm: Any, docs: list[list[int]], progress: Any) -> list[Any]:
        tokens, blank = self._blank(lm)
        return score_glm_documents(lm.model, docs, tokens, blank=blank, progress=progress)


SCORERS: dict[str, LMScorer] = {
    "masked": MaskedScorer(),
    "chain-rule": ChainRuleScorer(),
    "blank-infilling": BlankInfillingScorer(),
}
"""``Family.scoring`` -> the scorer of that family's models."""


def scorer_for(family: Family) -> LMScorer:
    """The scorer of ``family``'s models (one line when its ``scoring`` has none)."""
    if family.scoring not in SCORERS:
        raise BiglmError(f"model family {family.name!r} is scored by {family.scoring!r}, which lm-eval has no scorer "
                         f"for (known: {', '.join(SCORERS)})")
    return SCORERS[family.scoring]


__all__ = ["SCORERS", "BlankInfillingScorer", "ChainRuleScorer", "LMScorer", "MaskedScorer", "scorer_for"]
