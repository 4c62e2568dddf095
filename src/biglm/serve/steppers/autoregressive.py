"""Continuous batching for the decoders that write a reply token by token: ``autoregressive`` (causal and
bidirectional-ar models, left to right) and ``blank-infilling`` (GLM: the reply written into the ``[gMASK]``
after the conversation, in part B).

Every row of a stepper decodes in one ``ARState`` (one KV cache). A request that joins is encoded at the start of
the next ``step`` (its prompt's cache; GLM: part A, then the blank's ``[sop]``), several joiners together, and
concatenated into the batch (``ARState.concat``: left-padded with invisible tokens, so every row's last column
is its own last token). Each step then chooses one token per row, by the row's own settings and seeded
generator (``choose_row_tokens``), and feeds the rows still writing their token in one pass. A row that ends (a
stop token or ``max_new_tokens``) or is dropped leaves by ``index_select``, and the columns no row sees any more
are cut (``ARState.trim``). So a request gets the reply it gets decoding alone (``ChatModel.complete_ids``),
whenever it joins and whoever it decodes beside. Greedy and sampled decoding only (chat's strategies).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from biglm.chat.session import ChatModel, ChatSettings, Reply
from biglm.devices import model_device
from biglm.generate.autoregressive import AROptions, ARState, ar_rows, next_position, start_state
from biglm.generate.glm import GLMTokens, check_fits, encode_part_a, feed_rows, infill_options, part_a, span_feed
from biglm.generate.sampling import SamplingConfig, choose_row_tokens, seeded_generator
from biglm.serve.rows import Row, RowEvent, as_error


def one_batch(settings: ChatSettings, stream: bool, key: int) -> Hashable:
    """Every row shares one batch (each keeps its own settings and generator)."""
    return "tokens"


@dataclass
class _Live:
    """A row in the batch: its options, generator and streaming hook, the ids it wrote and its forward passes."""

    row: Row
    options: AROptions
    generator: torch.Generator | None
    on_token: Callable[[int, Tensor], None] | None
    passes: int
    produced: list[int] = field(default_factory=list)


class TokenStepper:
    """The shared loop (module docstring); a subclass says what a row's prompt is (``prepare``), how joiners are
    encoded (``encode``), where the next token goes (``feed``) and how many passes joining took."""

    batch_key = staticmethod(one_batch)
    feed = staticmethod(next_position)
    join_passes = 1

    def __init__(self, chat: ChatModel) -> None:
        self.chat, self.model = chat, chat.model
        self.device = model_device(chat.model)
        self.state: ARState | None = None
        self.live: list[_Live] = []
        """The rows of ``state``, in its order."""
        self.waiting: list[Row] = []
        """Admitted, encoded at the next step."""
        self._banned: Tensor | None = None
        self._events: list[RowEvent] = []

    # ---- what a subclass says ----------------------------------------------------------------------------
    def prepare(self, row: Row) -> tuple[list[int], AROptions]:
        """The ids encoded for ``row`` and how its reply is decoded (one-line ``BiglmError`` when it cannot be)."""
        raise NotImplementedError

    def encode(self, rows: list[list[int]]) -> ARState:
        """The state of the joining rows, with the logits of each one's first reply token."""
        raise NotImplementedError

    def chat_options(self, settings: ChatSettings) -> AROptions:
        return self.chat.ar_options(settings, SamplingConfig(settings.temperature, settings.top_k, settings.top_p))

    # ---- the Stepper protocol ----------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self.live) + len(self.waiting)

    def keys(self) -> list[int]:
        return [live.row.key for live in self.live] + [row.key for row in self.waiting]

    def admit(self, rows: Sequence[Row]) -> None:
        self.waiting.extend(rows)

    def drop(self, key: int) -> None:
        self.waiting = [row for row in self.waiting if row.key != key]
        self._keep([i for i, live in enumerate(self.live) if live.row.key != key])

    @torch.inference_mode()
    def step(self) -> list[RowEvent]:
        """Encode the rows that joined, then one token for every row (see the module docstring)."""
        events: list[RowEvent] = []
        self._events = events  # the streaming hooks' updates go here, in order
        try:
            self._join(events)
            if self.state is None or self.state.logits is None:
                return events
            logits = self.state.logits.masked_fill(self._banned, float("-inf"))
            ids = choose_row_tokens(logits, [live.options.sampling for live in self.live],
                                    [live.generator for live in self.live]).tolist()
            keep = []
            for i, (live, token) in enumerate(zip(self.live, ids)):
                if live.on_token is not None:
                    live.on_token(len(live.produced), torch.tensor([token]))
                stop = token in live.options.stop_token_ids
                if not stop:
                    live.produced.append(token)
                if stop or len(live.produced) == live.options.max_new_tokens:
                    events.append(RowEvent(live.row.key, reply=self._reply(live, finished=stop)))
                else:
                    keep.append(i)
            self._keep(keep)
            if self.state is not None:
                fed = torch.tensor([ids[i] for i in keep], device=self.device)[:, None]
                self.state.extend(self.model, fed, *self.feed(self.state))
                for live in self.live:
                    live.passes += 1
        except BaseException:
            self.state, self.live, self.waiting = None, [], []  # the scheduler fails every row it held
            raise
        return events

    # ---- inside --------------------------------------------------------------------------------------------
    def _join(self, events: list[RowEvent]) -> None:
        rows, self.waiting = self.waiting, []
        joined: list[_Live] = []
        encoded: list[list[int]] = []
        for row in rows:
            try:  # a row that cannot be decoded fails alone
                ids, options = self.prepare(row)
            except Exception as e:
                events.append(RowEvent(row.key, error=str(as_error(e))))
                continue
            seed = row.settings.seed
            generator = None  # as generate_ar_ids / infill_ids make theirs
            if seed is not None or not options.sampling.greedy:
                generator = seeded_generator(self.device, 0 if seed is None else seed)
            on_token = None
            if row.stream:
                on_token = self.chat.token_stream(set(options.stop_token_ids),
                                                  lambda u, k=row.key: self._events.append(RowEvent(k, update=u)))
            joined.append(_Live(row, options, generator, on_token, self.join_passes))
            encoded.append(ids)
        if not joined:
            return
        try:
            state = self.encode(encoded)
        except Exception as e:  # the joiners fail, the running rows go on
            events.extend(RowEvent(live.row.key, error=str(as_error(e))) for live in joined)
            return
        self.state = state if self.state is None else ARState.concat([self.state, state], self.chat.ids["pad"])
        self.live.extend(joined)
        self._banned_rows()

    def _keep(self, index: list[int]) -> None:
        """Only the rows ``index`` stay (the others finished or were dropped)."""
        if len(index) == len(self.live):
            return
        self.live = [self.live[i] for i in index]
        if not self.live:
            self.state = None
            return
        assert self.state is not None
        self.state = self.state.index_select(torch.tensor(index, device=self.device)).trim()
        self._banned_rows()

    def _banned_rows(self) -> None:
        """(N, V) True where row i may not choose a token (as ``decode`` masks them)."""
        assert self.state is not None and self.state.logits is not None
        banned = torch.zeros(self.state.logits.shape, dtype=torch.bool, device=self.device)
        for i, live in enumerate(self.live):
            if live.options.banned_token_ids:
                banned[i, list(live.options.banned_token_ids)] = True
        self._banned = banned

    def _reply(self, live: _Live, finished: bool) -> Reply:
        text = self.chat.tokenizer.decode(live.produced, skip_special_tokens=True).strip()
        return Reply(text, list(live.produced), len(live.row.prompt) + 1, live.passes, live.row.dropped, finished)


class ARStepper(TokenStepper):
    """Causal and bidirectional-ar models: ``BOS prompt``, then token after token, each at the next position."""

    def prepare(self, row: Row) -> tuple[list[int], AROptions]:
        rows, options = ar_rows(self.model, [row.prompt], bos_token_id=self.chat.ids["bos"],
                                eos_token_id=self.chat.ids["eos"], options=self.chat_options(row.settings))
        return rows[0], options

    def encode(self, rows: list[list[int]]) -> ARState:
        return start_state(self.model, rows, pad_token_id=self.chat.ids["pad"])


class GLMStepper(TokenStepper):
    """GLM: the conversation in part A before ``[gMASK]``, the reply written into it in part B (2D positions)."""

    feed = staticmethod(span_feed)
    join_passes = 2  # part A, then [sop]

    def __init__(self, chat: ChatModel) -> None:
        super().__init__(chat)
        self.tokens = GLMTokens.from_tokenizer(chat.tokenizer)

    def prepare(self, row: Row) -> tuple[list[int], AROptions]:
        options = infill_options(self.chat_options(row.settings), self.tokens)
        ids = part_a([*row.prompt, self.tokens.gmask], self.tokens)
        check_fits(self.model, len(ids), options)
        return ids, options

    def encode(self, rows: list[list[int]]) -> ARState:
        state = encode_part_a(self.model, rows, self.tokens)
        n = len(rows)  # each row's [sop] at (its [gMASK]'s position, 1): the last token of part A
        feed_rows(self.model, state, [[self.tokens.sop]] * n, [[(len(r) - 1, 1)] for r in rows], [[True]] * n)
        return state



__all__ = ["ARStepper", "GLMStepper", "TokenStepper", "one_batch"]
