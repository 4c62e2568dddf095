"""lm-evaluation-harness model ``biglm``: zero-shot scoring and generation with a biglm checkpoint.

The checkpoint's family decides the scorer (``Family.scoring``, a scorer of ``biglm.evaluate.lm_scorers``).
``causal`` and ``bidirectional-ar`` models are scored by
the exact chain rule (``biglm.evaluate.ar_scoring``) in the direction given by ``direction`` (``l2r``,
the default; ``r2l`` and ``mean`` for bidirectional-ar models), generate autoregressively, and with
``direction=mean`` record how far their two estimates agree (``direction_agreement``, also in the
results' config). ``glm`` models are scored by the same chain rule over part B after ``[gMASK]``
(``biglm.evaluate.glm_scoring``: continuation ``BOS x [gMASK] | [sop] y``, whole text
``BOS [gMASK] | [sop] x EOS``; ``glm_blank=mask`` uses ``[MASK]``, for models pretrained on short blanks
only) and generate by blank infilling. ``masked`` models are scored as follows.

    lm_eval --model biglm --model_args pretrained=RUN_OR_CKPT,scoring=greedy-order --tasks arc_easy \
            --batch_size 32

(``lm_eval --model biglm`` needs the registration hook, see ``biglm.evaluate.plugin``; ``biglm
evaluate`` and ``simple_evaluate(model=BiGLMEvalModel(...))`` need nothing. The ``lm_eval`` command
passes ``--batch_size`` (default 1: slow) and ``--device`` (default cuda:0; the CPU is used when CUDA
is missing) to the model.)

* ``loglikelihood(context, continuation)``: X = ``BOS context``, Y = the continuation's tokens (the
  text is tokenised whole and split, trailing context spaces moved to the continuation, as lm-eval's
  causal models do); scored by ``biglm.evaluate.scoring`` with the chosen method. X + Y longer than
  the model's maximum length: the oldest context tokens are dropped (BOS kept).
* ``loglikelihood_rolling(text)``: the text is cut into disjoint chunks of ``rolling_chunk`` tokens
  (default 64); each chunk is Y with X = ``BOS`` + as many preceding tokens as fit; the chunk scores
  are summed. They use ``rolling_scoring`` (default ``left-to-right``, whatever ``scoring`` is): a
  fixed-order chain rule is a normalised distribution over texts, so perplexities are proper;
  greedy-order chooses its order from the gold tokens and would understate them.
* ``generate_until(context, gen_kwargs)``: ``biglm.generate.generate`` (strategy ``gen_strategy``,
  default Mask-Predict; ``gen_steps`` passes, default 10, at most ``max_gen_toks``) with
  ``max_new_tokens = max_gen_toks`` (default 256); the text is cut at the first ``until`` string.
  Other generation kwargs (temperature, do_sample) are ignored: decoding is greedy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import lm_eval.models  # noqa: F401  (the built-in models' lazy entries; see plugin.register)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

import biglm.generate as generation  # looked up per call: tests stand a fake generate() in
from biglm.checkpoint import load_model
from biglm.errors import BiglmError
from biglm.evaluate.lm_scorers import scorer_for
from biglm.evaluate.scoring import ScoringConfig
from biglm.families import get_family
from biglm.model import BiGLM

log = logging.getLogger("biglm.evaluate")

# Keys lm-eval may pass to every model; they mean nothing here.
_IGNORED_ARGS = {"trust_remote_code", "max_batch_size", "parallelize", "revision", "max_length"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        # the lm_eval command line passes cuda:0 unless told otherwise
        log.warning("device=%s: CUDA is not available here; using the CPU", device)
        return torch.device("cpu")
    return torch.device(str(device))


@register_model("biglm")
class BiGLMEvalModel(TemplateLM):
    """A BiGLM for lm-eval, from a run/checkpoint folder (``pretrained``) or an in-memory ``model`` and
    ``tokenizer``. Scoring options: see ``ScoringConfig``; all can be given in ``--model_args``."""

    def __init__(self, pretrained: str | None = None, *, model: BiGLM | None = None, tokenizer: Any = None,
                 scoring: str | None = None, direction: str | None = None, beam: int = 1, samples: int = 16,
                 seed: int = 0,
                 batch_size: int | str = 32, max_rows: int = 512, use_cache: bool = True,
                 device: str | None = None, dtype: str | None = None, rolling_chunk: int = 64,
                 rolling_scoring: str = "left-to-right",
                 gen_steps: int | None = None, gen_strategy: str | None = None, glm_blank: str = "gmask",
                 **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - _IGNORED_ARGS)
        if unknown:
            raise BiglmError(f"biglm model_args: unknown argument '{unknown[0]}' (known: pretrained, scoring, "
                             "direction, beam, samples, seed, batch_size, max_rows, use_cache, device, dtype, "
                             "rolling_chunk, rolling_scoring, gen_steps, gen_strategy, glm_blank)")
        if dtype not in (None, "auto") and dtype not in _DTYPES:
            raise BiglmError(f"biglm model_args: dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 32
        method = str(scoring if scoring not in (None, "chain-rule") else "greedy-order")
        self.scoring = ScoringConfig(method=method, beam=int(beam), samples=int(samples), seed=int(seed),
                                     batch_size=int(batch_size), max_rows=int(max_rows), use_cache=bool(use_cache))
        self._device = _device(device)
        torch_dtype = _DTYPES.get(str(dtype)) if dtype not in (None, "auto") else None
        if model is None:
            if pretrained is None:
                raise BiglmError("biglm model_args: give pretrained=RUN_OR_CHECKPOINT_FOLDER")

            loaded = load_model(pretrained, self._device, torch_dtype)
            model, tokenizer = loaded.model, tokenizer or loaded.tokenizer
            if tokenizer is None:
                raise BiglmError(f"{loaded.path}: checkpoint has no tokenizer/ folder; pass a tokenizer")
        elif tokenizer is None:
            raise BiglmError("BiGLMEvalModel(model=...) also needs tokenizer=...")
        self.model = model.to(self._device, torch_dtype).eval() if torch_dtype else model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.family = get_family(model)
        self.scorer = scorer_for(self.family)
        self.autoregressive = self.family.autoregressive
        """Writes token by token (no Mask-Predict passes to set for ``generate_until``)."""
        self.direction = self.scorer.check(self.family, scoring, direction)
        self.direction_agreement: dict[str, dict[str, float]] = {}
        """With ``direction=mean``: L2R/R2L agreement of the last ``loglikelihood`` and rolling calls."""
        for attr in ("bos_token_id", "mask_token_id"):
            if getattr(tokenizer, attr, None) is None:
                raise BiglmError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no {attr[:-3]}; "
                                 "load it with biglm.data.load_tokenizer")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else tokenizer.eos_token_id or 0)
        self.rolling_chunk = int(rolling_chunk)
        self.rolling = dataclasses.replace(self.scoring, method=str(rolling_scoring))
        self.gen_steps, self.gen_strategy = gen_steps, gen_strategy
        if glm_blank not in ("gmask", "mask"):
            raise BiglmError(f"biglm model_args: glm_blank={glm_blank!r}: expected gmask or mask")
        self.glm_blank = glm_blank
        """GLM models: the blank after the context, ``[gMASK]`` (default) or ``[MASK]`` (short-blank models)."""
        self.stderrs: list[float] = []
        """mc-elbo: standard errors of the estimates of the last ``loglikelihood`` call."""

    # ---- lm-eval plumbing ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def max_length(self) -> int:
        return int(self.model.config.max_seq_len)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "biglm")).replace("/", "__")

    @property
    def scored_by(self) -> str:
        """How requests are scored: the masked method or the reading direction (results files are named by it)."""
        return self.scorer.label(self)

    def get_model_info(self) -> dict[str, Any]:
        return {**self.scorer.info(self), "biglm_max_seq_len": self.max_length,
                "biglm_params": self.model.num_parameters()}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` without special tokens (BOS is added by the scoring layout)."""
        return list(self.tokenizer.encode(string, add_special_tokens=False))

    # ---- scoring (by the family's scorer) ------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request, under the chosen scoring method."""
        pairs = []
        for context, continuation in (r.args for r in requests):
            if not continuation:
                raise BiglmError(f"empty continuation for context {context[-40:]!r}: there is nothing to score")
            ctx, cont = self._encode_pair(context, continuation) if context else ([], self.tok_encode(continuation))
            if not cont:  # the split merged the continuation into the context's last token
                ctx, cont = self.tok_encode(context), self.tok_encode(continuation)
            pairs.append((ctx, cont))
        out = []
        for r, s in zip(requests, self.scorer.continuations(self, pairs, disable_tqdm)):
            self.cache_hook.add_partial("loglikelihood", r.args, (s.logprob, s.is_greedy))
            out.append((s.logprob, s.is_greedy))
        return out

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """TemplateLM's token-level entry point: contexts without BOS (the scorer adds what it needs)."""
        scores = self.scorer.continuations(self, [(list(c), list(y)) for _, c, y in requests], disable_tqdm)
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Sum of chunk scores over each whole text (see module doc); autoregressive models: the document
        likelihood in the chosen direction (``biglm.evaluate.ar_scoring``)."""
        docs = [self.tok_encode(text) for (text,) in (r.args for r in requests)]
        totals = self.scorer.documents(self, docs, disable_tqdm)
        for r, t in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, t)
        return totals

    # ---- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate with ``biglm.generate.generate``; cut each text at its first ``until`` string."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="biglm generate", disable=disable_tqdm)
        for key, idx in groups.items():
            kw = json.loads(key)
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", 256))
            extra: dict[str, Any] = {} if self.autoregressive else {"steps": min(int(self.gen_steps or 10), max_new)}
            if self.gen_strategy:
                extra["strategy"] = self.gen_strategy
            for lo in range(0, len(idx), self.scoring.batch_size):
                part = idx[lo:lo + self.scoring.batch_size]
                prompts = [requests[i].args[0] for i in part]  # generate() left-truncates long prompts
                texts = generation.generate(self.model, prompts, tokenizer=self.tokenizer, max_new_tokens=max_new,
                                            **extra)
                for i, text in zip(part, texts):
                    out[i] = cut_at_stop(text, until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(part))
        bar.close()
        return out  # type: ignore[return-value]


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = min((p for p in (text.find(s) for s in until if s) if p >= 0), default=len(text))
    return text[:cut]
