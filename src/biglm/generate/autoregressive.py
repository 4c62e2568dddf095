"""Autoregressive decoding with the KV cache: greedy, sampling and beam search, token by token.

The loop works on an ``ARState``: the tokens fed so far for N rows (ids, positions, document ids,
regions: the attention layout's metadata), the model's KV cache of them (or none: every step then
re-encodes the whole sequence, which gives the same logits, for checking) and the logits of each
row's next token. ``ARState.extend`` feeds tokens and refreshes those logits; ``decode`` chooses
tokens, feeds them and stops. Where a new token sits is asked of a ``TokenFeed`` (default: the next
position after the row's last token, in the same document and region), so a caller with its own
layout — GLM's part B, whose tokens carry their span's position and a position inside the span, and
which fills several blanks one after the other by extending the same state — reuses this loop.

Rows that stop early keep being fed (so the batch stays rectangular) under document id -1: no later
token attends them, so a finished state can be extended again.

Strategies (``AR_STRATEGIES``): ``greedy`` (arg-max), ``sample`` (temperature / top-k / top-p, seeded)
and ``beam`` (``num_beams`` hypotheses per row, with transformers' rules: the k best of 2k candidates
continue, a candidate ending in a stop token among the k best is kept with score
``sum log p / (generated tokens) ** length_penalty`` (its stop token counted), search ends when no
running beam can beat the k finished ones (``early_stopping=False``: judged at the current length) or
at ``max_new_tokens``). ``no_repeat_ngram_size`` bans a token that would repeat an n-gram of the row
(prompt included, invisible tokens skipped); ``min_new_tokens`` bans the stop tokens before that many tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from biglm.attention import AttentionLayout, LayoutKind
from biglm.devices import model_device
from biglm.errors import BiglmError, check
from biglm.families import check_direction, family_names, get_family
from biglm.generate.sampling import SamplingConfig, choose_tokens, seeded_generator
from biglm.model import KVCache

PAD_DOCUMENT = -1
NEG = -1.0e9
AR_STRATEGIES: tuple[str, ...] = ("greedy", "sample", "beam")
"""``greedy`` and ``sample`` run one loop (``AROptions.sampling``), ``beam`` another (``num_beams > 1``)."""


@dataclass
class AROptions:
    """What to generate and how. ``stop_token_ids`` end a row (EOS, or BOS when reading right to left)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    no_repeat_ngram_size: int = 0
    stop_token_ids: tuple[int, ...] = ()
    banned_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, f"max_new_tokens={self.max_new_tokens}: must be > 0", BiglmError)
        check(0 <= self.min_new_tokens <= self.max_new_tokens,
              f"min_new_tokens={self.min_new_tokens}: must be in 0..max_new_tokens={self.max_new_tokens}",
              BiglmError)
        check(self.num_beams >= 1, f"num_beams={self.num_beams}: must be >= 1", BiglmError)
        check(self.no_repeat_ngram_size >= 0,
              f"no_repeat_ngram_size={self.no_repeat_ngram_size}: must be >= 0 (0 = off)", BiglmError)


@dataclass
class ARState:
    """N rows being decoded: everything fed so far and the logits of each row's next token."""

    input_ids: Tensor  # (N, T)
    position_ids: Tensor  # (N, T) or (N, T, ...) for multi-id positions
    document_ids: Tensor  # (N, T) int32, -1 = padding / invisible
    regions: Tensor  # (N, T) int8
    kind: LayoutKind = "causal"
    cache: KVCache | None = None
    use_cache: bool = True
    logits: Tensor | None = None  # (N, V) float32
    forward_passes: int = 0

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def index_select(self, index: Tensor) -> ARState:
        """Rows ``index`` (beam reordering, one row per beam)."""
        pick = lambda t: None if t is None else t.index_select(0, index.to(t.device))
        cache = self.cache.index_select(index) if self.cache is not None else None
        return replace(self, input_ids=pick(self.input_ids), position_ids=pick(self.position_ids),
                       document_ids=pick(self.document_ids), regions=pick(self.regions), cache=cache,
                       logits=pick(self.logits))

    @staticmethod
    def concat(states: Sequence[ARState], pad_token_id: int = 0) -> ARState:
        """The rows of ``states`` in one state (continuous batching: rows that join a running batch). Each
        state is padded on the left to the widest with invisible tokens (document id -1, position 0, zero keys
        and values in the cache), so every row's last column stays its own last token; ``forward_passes`` is
        the most of any. The states share the layout kind and either all have a cache or none does."""
        first = states[0]
        if any(s.kind != first.kind or (s.cache is None) != (first.cache is None) for s in states):
            raise BiglmError("ARState.concat: the states differ in layout kind or in having a cache")
        width = max(s.input_ids.shape[1] for s in states)
        cat = lambda get, value, dim=1: torch.cat([_pad_left(get(s), width, value, dim) for s in states])
        cache = None
        if first.cache is not None:
            layers = range(len(first.cache.keys))
            caches = [s.cache for s in states]
            kv = lambda name, i: torch.cat([_pad_left(getattr(c, name)[i], width, 0.0, 2) for c in caches])
            meta = lambda name, value: torch.cat([_pad_left(_layout_meta(c, name), width, value) for c in caches])
            cache = KVCache([kv("keys", i) for i in layers], [kv("values", i) for i in layers],
                            AttentionLayout(first.cache.layout.kind, meta("document_ids", PAD_DOCUMENT),
                                            meta("regions", 0)))
        logits = None if any(s.logits is None for s in states) else torch.cat([s.logits for s in states])
        return replace(first, input_ids=cat(lambda s: s.input_ids, pad_token_id),
                       position_ids=cat(lambda s: s.position_ids, 0),
                       document_ids=cat(lambda s: s.document_ids, PAD_DOCUMENT), regions=cat(lambda s: s.regions, 0),
                       cache=cache, logits=logits, forward_passes=max(s.forward_passes for s in states))

    def trim(self) -> ARState:
        """The state without its leading columns that no row sees (document id -1 in every row: the padding of
        rows that have left), so a batch that rows keep joining and leaving does not grow without end."""
        seen = (self.document_ids >= 0).any(0)
        start = int(seen.to(torch.int8).argmax()) if bool(seen.any()) else self.input_ids.shape[1]
        if start == 0:
            return self
        cut = lambda t, dim=1: None if t is None else t.narrow(dim, start, t.shape[dim] - start)
        cache = self.cache
        if cache is not None:
            layout = AttentionLayout(cache.layout.kind, cut(cache.layout.document_ids), cut(cache.layout.regions))
            cache = KVCache([cut(k, 2) for k in cache.keys], [cut(v, 2) for v in cache.values], layout)
        return replace(self, input_ids=cut(self.input_ids), position_ids=cut(self.position_ids),
                       document_ids=cut(self.document_ids), regions=cut(self.regions), cache=cache)

    @torch.inference_mode()
    def extend(self, model: nn.Module, ids: Tensor, position_ids: Tensor, document_ids: Tensor,
               regions: Tensor) -> None:
        """Feed ``ids`` (N, k) at the given positions and layout metadata; ``logits`` become those after
        the last of them. With the cache only the new tokens run; without it the whole sequence does."""
        cat = lambda a, b: torch.cat([a, b.to(a.dtype)], dim=1)
        self.input_ids, self.position_ids = cat(self.input_ids, ids), cat(self.position_ids, position_ids)
        self.document_ids, self.regions = cat(self.document_ids, document_ids), cat(self.regions, regions)
        if self.use_cache:
            run_ids, pos, docs, regs, past = ids, position_ids, document_ids, regions, self.cache
        else:
            run_ids, pos, docs, regs, past = (self.input_ids, self.position_ids, self.document_ids,
                                              self.regions, None)
        want = torch.zeros(run_ids.shape, dtype=torch.bool, device=run_ids.device)
        want[:, -1] = True
        out = model(run_ids, AttentionLayout(self.kind, docs.to(torch.int32), regs.to(torch.int8)), pos,
                    logits_mask=want, past=past, use_cache=self.use_cache)
        self.cache = out.cache if self.use_cache else None
        self.logits = out.logits.float()
        self.forward_passes += 1


def _pad_left(t: Tensor, width: int, value: float, dim: int = 1) -> Tensor:
    """``t`` widened to ``width`` along ``dim`` by ``value`` on the left."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.full(shape, value, dtype=t.dtype, device=t.device), t], dim=dim)


def _layout_meta(cache: KVCache, name: str) -> Tensor:
    """A cache's document ids or regions, zeros where the layout has none (one document, the prefix region)."""
    value = getattr(cache.layout, name)
    if value is not None:
        return value
    rows = cache.keys[0].shape[0]
    return torch.zeros(rows, cache.length, dtype=torch.int32 if name == "document_ids" else torch.int8,
                       device=cache.keys[0].device)


def start_state(model: nn.Module, prompts: Sequence[Sequence[int]], *, pad_token_id: int = 0,
                use_cache: bool = True, kind: LayoutKind = "causal") -> ARState:
    """Left-pad ``prompts`` (full token ids, start marker included) and encode them: pads get document id
    -1 and position 0, every row's positions count from its own first token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BiglmError("autoregressive decoding: every prompt needs at least one token")
    device = model_device(model)
    lengths = torch.tensor([len(p) for p in prompts])
    width = int(lengths.max())
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    pad = torch.arange(width)[None, :] < (width - lengths)[:, None]
    docs = torch.where(pad, PAD_DOCUMENT, 0).to(torch.int32)
    positions = (torch.arange(width)[None, :] - (width - lengths)[:, None]).clamp_min(0)
    empty = lambda dtype: torch.zeros(len(prompts), 0, dtype=dtype, device=device)
    state = ARState(empty(torch.long), empty(torch.long), empty(torch.int32), empty(torch.int8), kind,
                    use_cache=use_cache)
    state.extend(model, ids.to(device), positions.to(device), docs.to(device),
                 torch.zeros(ids.shape, dtype=torch.int8, device=device))
    return state


TokenFeed = Callable[[ARState], tuple[Tensor, Tensor, Tensor]]
"""``feed(state) -> (position_ids, document_ids, regions)``, each (N, 1[, ...]): where the next token goes."""


def next_position(state: ARState) -> tuple[Tensor, Tensor, Tensor]:
    """The default feed: one position after the row's last token, in its document and region."""
    return state.position_ids[:, -1:] + 1, state.document_ids[:, -1:], state.regions[:, -1:]


@dataclass
class ARResult:
    token_ids: list[list[int]]
    """Per input row: the generated ids, without the stop token."""
    finished: list[bool]
    """Whether the row ended with a stop token (else it reached ``max_new_tokens``)."""
    scores: list[float]
    """Sum of the model's log-probabilities of the generated ids (the stop token included); for beam
    search the length-normalised beam score."""
    forward_passes: int
    state: ARState | None = None
    """Greedy / sampling: the rows' state after decoding (finished rows' later inputs are invisible)."""


def _banned_mask(state: ARState, ids_so_far: int, opts: AROptions, vocab: int, banned: Tensor) -> Tensor:
    """(N, V) True where a token may not be chosen now."""
    n = state.rows
    mask = torch.zeros(n, vocab, dtype=torch.bool, device=state.input_ids.device)
    if banned.numel():
        mask[:, banned] = True
    if ids_so_far < opts.min_new_tokens and opts.stop_token_ids:
        mask[:, list(opts.stop_token_ids)] = True
    size = opts.no_repeat_ngram_size
    if size and state.input_ids.shape[1] >= size:
        # N-grams of each row's visible tokens as one sequence: invisible ones (left padding, GLM's pads
        # between a fill and the next [sop]) are moved to the left, so none splits an n-gram.
        real = state.document_ids >= 0
        order = torch.argsort(real.to(torch.int8), dim=1, stable=True)
        hist, real = state.input_ids.gather(1, order), real.gather(1, order)
        windows = hist.unfold(1, size, 1)  # (N, W, size): every n-gram already in the row
        valid = real.unfold(1, size, 1).all(-1)
        if size == 1:
            hit = valid
        else:
            tail = hist[:, -(size - 1):]
            hit = valid & (windows[:, :, :-1] == tail[:, None, :]).all(-1) & real[:, -(size - 1):].all(-1, True)
        rows = torch.arange(n, device=hist.device)[:, None].expand_as(hit)
        mask[rows[hit], windows[:, :, -1][hit]] = True
    return mask


def _sample_loop(model: nn.Module, state: ARState, opts: AROptions, feed: TokenFeed,
                 generator: torch.Generator | None, banned: Tensor,
                 on_token: Callable[[int, Tensor], None] | None = None) -> ARResult:
    """Greedy (temperature 0) or sampled decoding, one token per row per step."""
    n = state.rows
    device = state.input_ids.device
    stops = torch.tensor(list(opts.stop_token_ids), dtype=torch.long, device=device)
    out = torch.zeros(n, opts.max_new_tokens, dtype=torch.long, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    score = torch.zeros(n, dtype=torch.float64, device=device)
    passes0 = state.forward_passes
    for t in range(opts.max_new_tokens):
        logits = state.logits
        mask = _banned_mask(state, t, opts, logits.shape[-1], banned)
        ids, _ = choose_tokens(logits.masked_fill(mask, float("-inf")), opts.sampling, generator)
        logp = logits.log_softmax(-1).gather(1, ids[:, None])[:, 0]
        live = ~done
        out[:, t] = ids
        score += torch.where(live, logp.double(), 0.0)
        length += live.long()
        hit = torch.isin(ids, stops) & live if stops.numel() else torch.zeros_like(live)
        done |= hit
        if on_token is not None:
            on_token(t, torch.where(live, ids, -1).cpu())  # -1: the row had already stopped
        if bool(done.all()) or t == opts.max_new_tokens - 1:
            break
        pos, docs, regs = feed(state)
        docs = torch.where(done[:, None], PAD_DOCUMENT, docs)  # finished rows: invisible filler from now on
        state.extend(model, ids[:, None], pos, docs, regs)
    tokens = [out[i, :length[i]].tolist() for i in range(n)]
    finished = done.tolist()
    tokens = [t[:-1] if f else t for t, f in zip(tokens, finished)]
    return ARResult(tokens, finished, score.tolist(), state.forward_passes - passes0, state)


def _beam_loop(model: nn.Module, state: ARState, opts: AROptions, feed: TokenFeed, banned: Tensor) -> ARResult:
    """Beam search over ``num_beams`` hypotheses per row (transformers' rules, see the module docstring)."""
    B, K = state.rows, opts.num_beams
    device = state.input_ids.device
    state = state.index_select(torch.arange(B, device=device).repeat_interleave(K))
    stops = torch.tensor(list(opts.stop_token_ids), dtype=torch.long, device=device)
    keep = max(2, 1 + stops.numel()) * K
    L = opts.max_new_tokens
    run_seq = torch.zeros(B, K, L, dtype=torch.long, device=device)
    run_score = torch.full((B, K), NEG, device=device)
    run_score[:, 0] = 0.0
    fin_seq = torch.zeros(B, K, L, dtype=torch.long, device=device)
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)
    fin_score = torch.full((B, K), NEG, device=device)
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    fin_stop = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    passes0 = state.forward_passes
    top_k_mask = torch.arange(keep, device=device) < K
    for t in range(L):
        logits = state.logits
        logp = logits.log_softmax(-1).masked_fill(_banned_mask(state, t, opts, logits.shape[-1], banned),
                                                  float("-inf"))
        V = logp.shape[-1]
        acc = (logp.view(B, K, V) + run_score[:, :, None]).view(B, K * V)
        cand_score, cand = acc.topk(keep, dim=1)
        beam, token = cand // V, cand % V
        cand_seq = run_seq.gather(1, beam[:, :, None].expand(B, keep, L)).clone()
        cand_seq[:, :, t] = token
        is_stop = torch.isin(token, stops) if stops.numel() else torch.zeros_like(token, dtype=torch.bool)
        ends = is_stop | (t == L - 1)
        # Running beams for the next step: the K best candidates that did not end.
        nxt = (cand_score + ends.float() * NEG).topk(K, dim=1).indices
        run_seq = cand_seq.gather(1, nxt[:, :, None].expand(B, K, L))
        run_score = cand_score.gather(1, nxt)
        src_beam = beam.gather(1, nxt)
        # Finished hypotheses: candidates among the K best that ended, length-normalised.
        norm = cand_score / float(t + 1) ** opts.length_penalty
        full = fin_done.all(1, keepdim=True) & opts.early_stopping
        new_ok = ends & top_k_mask[None, :] & improvable & ~full
        norm = torch.where(new_ok, norm, NEG)
        merged_score = torch.cat([fin_score, norm], 1)
        best = merged_score.topk(K, dim=1).indices
        fin_score = merged_score.gather(1, best)
        fin_seq = torch.cat([fin_seq, cand_seq], 1).gather(1, best[:, :, None].expand(B, K, L))
        fin_len = torch.cat([fin_len, torch.full_like(cand, t + 1)], 1).gather(1, best)
        fin_done = torch.cat([fin_done, new_ok], 1).gather(1, best)
        fin_stop = torch.cat([fin_stop, is_stop], 1).gather(1, best)
        # Can a running beam still beat the worst finished one (judged at the current length)?
        worst = torch.where(fin_done, fin_score.min(1, keepdim=True).values, NEG)
        best_run = run_score[:, :1] / float(t + 1) ** opts.length_penalty
        improvable = improvable & (best_run > worst).any(1, keepdim=True)
        if t == L - 1 or not bool(improvable.any()) or (opts.early_stopping and bool(fin_done.all())):
            break
        rows = (torch.arange(B, device=device)[:, None] * K + src_beam).flatten()
        state = state.index_select(rows)
        pos, docs, regs = feed(state)
        state.extend(model, run_seq[:, :, t].reshape(-1, 1), pos, docs, regs)
    lengths, stopped = fin_len[:, 0].tolist(), fin_stop[:, 0].tolist()
    tokens = [fin_seq[b, 0, :lengths[b] - int(stopped[b])].tolist() for b in range(B)]
    return ARResult(tokens, stopped, fin_score[:, 0].tolist(), state.forward_passes - passes0, None)


def decode(model: nn.Module, state: ARState, options: AROptions | None = None, *,
           feed: TokenFeed = next_position, generator: torch.Generator | None = None,
           on_token: Callable[[int, Tensor], None] | None = None) -> ARResult:
    """Generate up to ``options.max_new_tokens`` tokens after ``state`` (see the module docstring);
    beam search when ``options.num_beams > 1``, else greedy or sampled by ``options.sampling``.
    ``on_token(t, ids)`` (greedy / sampling) sees each step's chosen ids (N,) as they are chosen (-1 for a
    row that had stopped), for streaming."""
    opts = options or AROptions()
    if state.logits is None:
        raise BiglmError("decode: the state has no next-token logits (extend it with at least one token)")
    banned = torch.tensor(sorted(set(opts.banned_token_ids)), dtype=torch.long, device=state.input_ids.device)
    with torch.inference_mode():
        if opts.num_beams > 1:
            return _beam_loop(model, state, opts, feed, banned)
        return _sample_loop(model, state, opts, feed, generator, banned, on_token)


DIRECTIONS = ("l2r", "r2l")


def direction_markers(direction: str, bos_token_id: int, eos_token_id: int) -> tuple[int, int]:
    """(start marker, stop token) of a reading direction: L2R reads ``BOS text`` and stops at EOS; R2L
    reads ``EOS reversed(text)`` and stops at BOS (see ``biglm.objectives.autoregressive``)."""
    if direction not in DIRECTIONS:
        raise BiglmError(f"direction={direction!r}: expected 'l2r' or 'r2l'")
    return (bos_token_id, eos_token_id) if direction == "l2r" else (eos_token_id, bos_token_id)


def ar_rows(model: nn.Module, prompts: Sequence[Sequence[int]], *, bos_token_id: int, eos_token_id: int,
            direction: str = "l2r", options: AROptions | None = None) -> tuple[list[list[int]], AROptions]:
    """The rows ``generate_ar_ids`` encodes (start marker, each prompt cut to fit, see there) and its options
    with the direction's stop token added."""
    family = get_family(model)
    if family.decoder != "autoregressive":
        raise BiglmError(f"autoregressive generation needs a {family_names(lambda f: f.decoder == 'autoregressive')} "
                         f"model, not family {family.name!r}")
    start, stop = direction_markers(direction, bos_token_id, eos_token_id)
    check_direction(family, direction)
    opts = options or AROptions()
    opts = replace(opts, stop_token_ids=tuple(sorted({*opts.stop_token_ids, stop})))
    budget = model.config.max_seq_len - opts.max_new_tokens - 1
    if budget < 1:
        raise BiglmError(f"max_new_tokens={opts.max_new_tokens} leaves no room for a prompt in the model's "
                         f"max_seq_len={model.config.max_seq_len}")
    rows = []
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise BiglmError(f"prompt {i} is empty")
        p = list(p) if direction == "l2r" else list(reversed(p))
        rows.append([start, *p[-budget:]])
    return rows, opts


def generate_ar_ids(model: nn.Module, prompts: Sequence[Sequence[int]], *, bos_token_id: int, eos_token_id: int,
                    pad_token_id: int = 0, direction: str = "l2r", options: AROptions | None = None,
                    use_cache: bool = True, seed: int | None = None,
                    on_token: Callable[[int, Tensor], None] | None = None) -> ARResult:
    """Continue each prompt (ids without special tokens) to the right (``l2r``) or write the text that
    comes before it (``r2l``: the prompt is the ending; the result is returned in reading order).

    The start marker is added; a prompt too long for ``max_seq_len - max_new_tokens`` keeps the tokens
    nearest to the generation (its end for L2R, its beginning for R2L). The stop token is EOS for L2R
    and BOS for R2L, added to ``options.stop_token_ids``."""
    rows, opts = ar_rows(model, prompts, bos_token_id=bos_token_id, eos_token_id=eos_token_id, direction=direction,
                         options=options)
    generator = None
    if seed is not None or not opts.sampling.greedy:
        generator = seeded_generator(model_device(model), 0 if seed is None else seed)
    state = start_state(model, rows, pad_token_id=pad_token_id, use_cache=use_cache)
    result = decode(model, state, opts, generator=generator, on_token=on_token)
    result.forward_passes += 1  # the prompt pass
    if direction == "r2l":
        result.token_ids = [list(reversed(t)) for t in result.token_ids]
    return result


decode_ar = decode  # the name ``biglm.generate`` exports (``decode`` there is the Mask-Predict engine's)

__all__ = ["AR_STRATEGIES", "DIRECTIONS", "AROptions", "ARResult", "ARState", "TokenFeed", "ar_rows", "decode",
           "decode_ar", "direction_markers", "generate_ar_ids", "next_position", "start_state"]
