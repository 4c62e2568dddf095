"""A loaded chat model and one reply at a time, with a live view of the reply forming.

``ChatModel.load(ckpt)`` reads a checkpoint (a fine-tuning run folder resolves to its ``best/``); its
tokenizer's chat template renders the conversation (biglm's template is set, with a note, when the
tokenizer has none), and an ``instruction`` fine-tune's settings (reply length, passes, system prompt) are
the defaults. ``ChatModel.reply(messages, settings, on_update)`` generates one assistant reply with the shared
engine: Mask-Predict over the length head's candidates (or ``max_new_tokens`` cut at EOS) for masked models,
KV-cached decoding for causal / bidirectional-ar ones. ``on_update`` receives ``ReplyUpdate`` events as they
happen: one per refinement pass (the text fed to that pass, [MASK] shown as ``▢``) or one per new token.

History within context: the prompt keeps the latest turns that fit ``max_seq_len - 1 - max_new_tokens``
tokens (``biglm.data.chat.fit_history``: oldest turns dropped first, a system message kept).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biglm.checkpoint import load_model
from biglm.data.chat import Message, check_messages, fit_history, set_chat_template
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.finetune.config import WRITING_KINDS
from biglm.finetune.predict import finetune_config_of, resolve_finetuned
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.generate.engine import GenerationOutput, generate_ids
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.generate.options import ParallelOptions
from biglm.generate.sampling import SamplingConfig, check_seed
from biglm.generate.specials import MASK_SYMBOL, banned_ids, special_ids


@dataclass
class ChatSettings:
    """How a reply is generated (``/settings`` in ``biglm chat``, the request fields of ``biglm serve``)."""

    max_new_tokens: int = 32
    """Longest reply (tokens); with the length head, the largest length candidate."""
    steps: int = 10
    """Mask-Predict passes (masked models)."""
    strategy: str = ""
    """Empty: mask-predict (masked) or greedy / sample (autoregressive, by temperature)."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    length: str = "predict"
    """Masked models: ``predict`` (the length head's candidates; falls back to ``fixed`` without a head) or
    ``fixed`` (max_new_tokens, cut at the first EOS)."""
    length_candidates: int = 3
    system_prompt: str = ""
    # The parallel strategies' options (``biglm.generate.options.ParallelOptions``, whose docstrings say what
    # each does); None: the strategy's default. Masked models only.
    block_size: int | None = None
    commit: str | None = None
    threshold: float | None = None
    factor: float | None = None
    margin: float | None = None
    cache: str | None = None
    refresh: int | None = None
    eos_exit: bool | None = None

    @property
    def parallel(self) -> ParallelOptions:
        """The parallel strategies' options these settings carry."""
        return ParallelOptions.of(self)

    def updated(self, **changes: Any) -> ChatSettings:
        """A copy with ``changes`` (strings converted to the field's type; one-line errors)."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in types:
                raise BiglmError(f"unknown setting '{key}' (settings: {', '.join(types)})")
            clean[key] = _convert(key, value, str(types[key]))
        new = dataclasses.replace(self, **clean)
        new.check()
        return new

    def check(self) -> None:
        """One-line ``BiglmError`` for a value no reply can be generated with (the model's context aside:
        ``ChatModel.check_settings``)."""
        for name in ("max_new_tokens", "steps", "length_candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BiglmError(f"{name}={str(value)[:40]}: must be an integer > 0")
        SamplingConfig(self.temperature, self.top_k, self.top_p)  # its checks: finite, in range
        check_seed(self.seed)
        if self.length not in ("predict", "fixed"):
            raise BiglmError(f"length={str(self.length)[:40]!r}: expected predict or fixed")
        for name in ("strategy", "system_prompt"):
            if not isinstance(getattr(self, name), str):
                raise BiglmError(f"{name}: must be a string")
        self.parallel.check_types()  # the values against the strategy: ChatModel.check_settings


BOOLEANS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def _convert(key: str, value: Any, kind: str) -> Any:
    """A setting typed as a string (``/settings key=value``) as the field's type ``kind`` (``int | None`` ...)."""
    if not isinstance(value, str):
        return value
    base = kind.removesuffix(" | None")
    if base != kind and value.lower() in ("none", ""):
        return None
    try:
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
        if base == "bool":
            return BOOLEANS[value.lower()]
    except (ValueError, KeyError):  # also an integer of more digits than Python converts
        raise BiglmError(f"setting {key}={value[:40]!r}: expected {kind}") from None
    return value


@dataclass
class ReplyUpdate:
    """One step of a reply forming: ``kind`` ``pass`` (Mask-Predict: ``index`` = pass, ``segments`` = [text,
    is_masked] pieces of the suffix fed to it) or ``token`` (autoregressive: ``index`` = token number,
    ``text`` = the reply so far)."""

    kind: str
    index: int
    text: str
    segments: list[tuple[str, bool]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "text": self.text, "segments": self.segments}


@dataclass
class Reply:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    forward_passes: int
    dropped_turns: int
    finished: bool
    """True when the reply ended (EOS or its predicted length) rather than at max_new_tokens."""


class ChatModel:
    """A model, its tokenizer (with a chat template) and default settings; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, settings: ChatSettings | None = None) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        if not getattr(tokenizer, "chat_template", None):
            print("note: the checkpoint's tokenizer has no chat template; using biglm's (System:/User:/Assistant:)",
                  file=sys.stderr)
            set_chat_template(tokenizer)
        self.ids = special_ids(tokenizer)
        self.banned = banned_ids(tokenizer, model.config.vocab_size)
        self.settings = settings or ChatSettings()
        if not getattr(model.config, "length_head", False) and self.settings.length == "predict":
            self.settings = dataclasses.replace(self.settings, length="fixed")
        if self.settings.max_new_tokens > model.config.max_seq_len // 2:  # leave the history room by default
            self.settings = dataclasses.replace(self.settings, max_new_tokens=model.config.max_seq_len // 2)

    @property
    def family(self) -> str:
        """The model family's name (``biglm.families``)."""
        return get_family(self.model).name

    @classmethod
    def load(cls, ckpt: str | Path, device: str = "cpu") -> ChatModel:
        """The model of ``ckpt`` (run folder: its best, else newest checkpoint) with its fine-tuning settings."""

        folder = resolve_finetuned(ckpt)
        loaded = load_model(folder, device=device)
        if loaded.tokenizer is None:
            raise BiglmError(f"{folder}: the checkpoint has no tokenizer")
        settings = ChatSettings()
        cfg = finetune_config_of(folder)
        if cfg is not None and cfg.task.kind not in WRITING_KINDS:
            print(f"warning: {folder} is a {cfg.task.kind} fine-tune, not trained to write replies (its replies come "
                  f"from a language model tuned for another job); chat with a {', '.join(WRITING_KINDS)} fine-tune",
                  file=sys.stderr)
        if cfg is not None and cfg.task.kind in ("instruction", "seq2seq"):
            o = cfg.task.options
            settings = dataclasses.replace(settings, max_new_tokens=o.max_target_length, steps=min(o.steps,
                                           o.max_target_length), length="predict" if o.length == "head" else "fixed",
                                           length_candidates=o.length_candidates,
                                           system_prompt=getattr(o, "system_prompt", ""))
        return cls(loaded.model, loaded.tokenizer, settings)

    @property
    def decoder(self) -> str:
        """Which decoder writes a reply (the family's): ``autoregressive``, ``blank-infilling`` (GLM's part B) or
        ``mask-predict`` (the engine)."""
        return get_family(self.model).decoder

    def prompt_budget(self, settings: ChatSettings) -> int:
        """Prompt tokens that fit beside BOS and the reply (a GLM reply also needs [gMASK] and [sop])."""
        extra = get_family(self.model).prompt_overhead
        return self.model.config.max_seq_len - 1 - extra - settings.max_new_tokens

    def prompt_ids(self, messages: Sequence[Message], settings: ChatSettings) -> tuple[list[int], int]:
        """Prompt ids (no BOS) of a reply after ``messages`` that fit the context, and turns dropped."""
        budget = self.prompt_budget(settings)
        if budget < 1:
            raise BiglmError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in the model's "
                             f"max_seq_len={self.model.config.max_seq_len}")
        messages = list(messages)
        if settings.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": settings.system_prompt}, *messages]
        ids, dropped, _ = fit_history(self.tokenizer, messages, budget)
        return ids, dropped

    def segments(self, ids: Sequence[int]) -> list[tuple[str, bool]]:
        """``ids`` as [text, is_masked] pieces (a run of [MASK] ids is one masked piece per token)."""
        out: list[tuple[str, bool]] = []
        run: list[int] = []
        for i in ids:
            if i == self.ids["mask"]:
                if run:
                    out.append((self.tokenizer.decode(run, skip_special_tokens=True), False))
                    run = []
                out.append((MASK_SYMBOL, True))
            else:
                run.append(i)
        if run:
            out.append((self.tokenizer.decode(run, skip_special_tokens=True), False))
        return out

    def reply(self, messages: Sequence[Message], settings: ChatSettings | None = None,
              on_update: Callable[[ReplyUpdate], None] | None = None) -> Reply:
        """The assistant's reply to ``messages`` (checked: known roles, non-empty content, a user turn last)."""
        return self.replies([messages], settings, on_update)[0]

    def check_settings(self, settings: ChatSettings) -> None:
        """``settings`` checked, against this model too (its context, its family's decoding strategies)."""
        settings.check()
        if self.prompt_budget(settings) < 1:
            raise BiglmError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in the model's "
                             f"max_seq_len={self.model.config.max_seq_len}")
        if self.decoder != "mask-predict":
            self.ar_options(settings, SamplingConfig(settings.temperature, settings.top_k, settings.top_p))
        else:  # the engine's own checks of the strategy and its options
            settings.parallel.check(settings.strategy or "mask-predict")

    def check_request(self, messages: Any, settings: ChatSettings) -> list[Message]:
        """``messages`` checked (known roles, non-empty content, a user turn last) and ``settings`` against the
        model (``check_settings``), without the tokenizer (so request threads can call it while the worker
        decodes)."""
        self.check_settings(settings)
        messages = check_messages(messages, "messages", need_reply=False)
        if messages[-1]["role"] != "user":
            raise BiglmError(f"messages: the last message is {messages[-1]['role']!r}; a reply answers a user message")
        return messages

    def prompt_of(self, messages: Sequence[Message], settings: ChatSettings) -> tuple[list[int], int]:
        """Checked ``messages`` (a user turn last) -> prompt ids within the context and turns dropped."""
        return self.prompt_ids(self.check_request(list(messages), settings), settings)

    def replies(self, conversations: Sequence[Sequence[Message]], settings: ChatSettings | None = None,
                on_update: Callable[[ReplyUpdate], None] | None = None) -> list[Reply]:
        """Replies to several conversations decoded together (``on_update`` follows the first one)."""
        s = settings or self.settings
        s.check()
        prompts = [self.prompt_of(m, s) for m in conversations]
        return self.complete_ids(prompts, s, on_update)

    def complete(self, texts: Sequence[str], settings: ChatSettings | None = None,
                 on_update: Callable[[ReplyUpdate], None] | None = None) -> list[Reply]:
        """Plain continuations of ``texts`` (no chat template; ``/v1/completions``), left-truncated to fit."""
        s = settings or self.settings
        s.check()
        prompts = [self.text_prompt(text, s, i) for i, text in enumerate(texts)]
        return self.complete_ids(prompts, s, on_update)

    def text_prompt(self, text: str, settings: ChatSettings, index: int = 0) -> tuple[list[int], int]:
        """Prompt ids of a plain continuation of ``text`` (no chat template), left-truncated to fit."""
        if not isinstance(text, str) or not text.strip():
            raise BiglmError(f"prompt {index} is empty")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[max(0, len(ids) - self.prompt_budget(settings)):], 0

    @torch.inference_mode()
    def complete_ids(self, prompts: Sequence[tuple[list[int], int]], s: ChatSettings,
                     on_update: Callable[[ReplyUpdate], None] | None = None) -> list[Reply]:
        """Replies after prompt ids (without BOS; with the turns dropped to fit), decoded in one batch."""
        sampling = SamplingConfig(s.temperature, s.top_k, s.top_p)
        reply = {"autoregressive": self._reply_ar, "blank-infilling": self._reply_glm,
                 "mask-predict": self._reply_masked}[self.decoder]
        return reply(prompts, s, sampling, on_update)

    def masked_decoding(self, s: ChatSettings, sampling: SamplingConfig | None = None) -> dict[str, Any]:
        """The engine's keyword arguments (``generate_ids``, ``DecodeJob``) for a Mask-Predict reply with ``s``: the
        length mode the model has (``fixed`` without a length head), max_new_tokens within the length head's
        range, at most max_new_tokens passes."""
        length = s.length if getattr(self.model.config, "length_head", False) else "fixed"
        max_new = s.max_new_tokens
        if length == "predict":
            max_new = min(max_new, self.model.config.max_target_length - 1)
        return dict(bos_token_id=self.ids["bos"], eos_token_id=self.ids["eos"], mask_token_id=self.ids["mask"],
                    pad_token_id=self.ids["pad"], max_new_tokens=max_new, steps=min(s.steps, max_new),
                    strategy=s.strategy or "mask-predict",
                    sampling=sampling or SamplingConfig(s.temperature, s.top_k, s.top_p), seed=s.seed, length=length,
                    length_candidates_k=s.length_candidates, banned_token_ids=self.banned,
                    **s.parallel.as_strategy_options())

    def pass_update(self, t: int, ids: Sequence[int]) -> ReplyUpdate:
        """The live view of Mask-Predict pass ``t``, fed the suffix ``ids`` ([MASK] where undecided)."""
        segs = self.segments(ids)
        return ReplyUpdate("pass", t, "".join(text for text, _ in segs).strip(), segs)

    def masked_replies(self, out: GenerationOutput, prompts: Sequence[tuple[list[int], int]],
                       length: str) -> list[Reply]:
        """Replies from the engine's output for ``prompts`` (ids, turns dropped), decoded with ``length``."""
        return [Reply(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids, len(p) + 1,
                      out.forward_passes, dropped, length == "predict" or len(ids) < n)
                for ids, n, (p, dropped) in zip(out.token_ids, out.lengths, prompts)]

    def _reply_masked(self, prompts: Sequence[tuple[list[int], int]], s: ChatSettings, sampling: SamplingConfig,
                      on_update: Callable[[ReplyUpdate], None] | None) -> list[Reply]:
        """Mask-Predict (or the chosen parallel strategy): the reply's passes are shown as they refine it."""
        options = self.masked_decoding(s, sampling)
        shown = None
        if on_update is not None:
            shown = lambda t, rows: on_update(self.pass_update(t, rows[0]))
        out = generate_ids(self.model, [p for p, _ in prompts], on_pass=shown, **options)
        return self.masked_replies(out, prompts, options["length"])

    def token_stream(self, stops: set[int], on_update: Callable[[ReplyUpdate], None] | None
                     ) -> Callable[[int, torch.Tensor], None]:
        """An ``on_token`` hook that shows the first reply's text as its tokens are chosen (also the hook of each
        streamed row of ``biglm.serve``'s token steppers)."""
        produced: list[int] = []

        def on_token(t: int, ids: torch.Tensor) -> None:
            if int(ids[0]) < 0 or int(ids[0]) in stops:
                return
            produced.append(int(ids[0]))
            if on_update is not None:
                on_update(ReplyUpdate("token", t, self.tokenizer.decode(produced, skip_special_tokens=True).strip()))

        return on_token

    def ar_options(self, s: ChatSettings, sampling: SamplingConfig) -> AROptions:
        """How a reply is decoded token by token (greedy or sample: chat's strategies; reply length; banned ids)."""
        if s.strategy not in ("", "greedy", "sample"):
            raise BiglmError(f"strategy {s.strategy!r}: chat decodes {self.family} models with greedy or sample")
        parallel = s.parallel.as_strategy_options()
        if parallel:
            name = next(iter(parallel))
            raise BiglmError(f"{name}={parallel[name]!r}: an option of the masked models' parallel strategies; "
                             f"{self.family} models decode token by token (set it to none)")
        return AROptions(max_new_tokens=s.max_new_tokens, sampling=sampling, banned_token_ids=tuple(self.banned))

    def _reply_ar(self, prompts: Sequence[tuple[list[int], int]], s: ChatSettings, sampling: SamplingConfig,
                  on_update: Callable[[ReplyUpdate], None] | None) -> list[Reply]:
        result = generate_ar_ids(self.model, [p for p, _ in prompts], bos_token_id=self.ids["bos"],
                                 eos_token_id=self.ids["eos"], pad_token_id=self.ids["pad"],
                                 options=self.ar_options(s, sampling), seed=s.seed,
                                 on_token=self.token_stream({self.ids["eos"]}, on_update))
        return [Reply(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids, len(p) + 1,
                      result.forward_passes, dropped, done)
                for ids, (p, dropped), done in zip(result.token_ids, prompts, result.finished)]

    def _reply_glm(self, prompts: Sequence[tuple[list[int], int]], s: ChatSettings, sampling: SamplingConfig,
                   on_update: Callable[[ReplyUpdate], None] | None) -> list[Reply]:
        """GLM: the conversation in part A before ``[gMASK]``, the reply written into it in part B."""
        g = GLMTokens.from_tokenizer(self.tokenizer)
        result = infill_ids(self.model, [[*p, g.gmask] for p, _ in prompts], g, options=self.ar_options(s, sampling),
                            seed=s.seed, on_token=self.token_stream({g.eop, g.eos}, on_update))
        return [Reply(self.tokenizer.decode(fills[0], skip_special_tokens=True).strip(), fills[0], len(p) + 1,
                      result.forward_passes, dropped, done[0])
                for fills, (p, dropped), done in zip(result.fills, prompts, result.finished)]


__all__ = ["ChatModel", "ChatSettings", "Reply", "ReplyUpdate"]
