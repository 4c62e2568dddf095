"""GLM blank infilling on the autoregressive loop: fill every ``[MASK]`` / ``[sMASK]`` / ``[gMASK]`` of a
prompt, left to right.

Part A (``BOS prompt``, plus ``EOS`` unless it ends in ``[gMASK]``, as documents are framed in training)
is encoded once into the KV cache under the ``prefix_lm`` layout; every blank is then written in part B,
autoregressively: ``[sop]`` is fed at the 2D position (blank's position in A, 1), each new token one
place further inside the span, until ``[eop]`` or EOS (or ``max_new_tokens``), with the shared loop of
``biglm.generate.autoregressive`` (greedy, sampling, beam search with no-repeat-n-gram and a length
penalty). The next blank's part B sees part A and the blanks already filled: after a blank, the chosen
tokens are fed in one pass with the next ``[sop]`` (rows ragged → the shorter ones padded on the left with
invisible tokens, so every row's last column is its own ``[sop]``). A prompt without a blank gets
``[gMASK]`` appended: its fill is the continuation.

Without the cache every step re-encodes the whole sequence under the same layout (same tokens, same
logits up to float rounding: the test of the cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from biglm.data.tokenizer import glm_token_ids
from biglm.devices import model_device
from biglm.errors import BiglmError
from biglm.families import family_names, get_family
from biglm.generate.autoregressive import PAD_DOCUMENT, AROptions, ARState, decode
from biglm.generate.sampling import seeded_generator
from biglm.generate.specials import special_ids


@dataclass(frozen=True)
class GLMTokens:
    """The special ids GLM generation needs."""

    bos: int
    eos: int
    pad: int
    mask: int
    smask: int
    gmask: int
    sop: int
    eop: int

    @property
    def blanks(self) -> tuple[int, int, int]:
        return (self.mask, self.smask, self.gmask)

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> GLMTokens:
        return cls(**special_ids(tokenizer), **glm_token_ids(tokenizer))


@dataclass
class InfillResult:
    fills: list[list[list[int]]]
    """Per prompt, the ids written into each of its blanks (left to right), without ``[eop]``."""
    part_a: list[list[int]]
    """Per prompt, part A as encoded (``BOS``, the prompt, ``[gMASK]`` / ``EOS`` added as described)."""
    finished: list[list[bool]]
    """Per prompt and blank: ended with ``[eop]`` (else it reached ``max_new_tokens``)."""
    scores: list[list[float]]
    """Per prompt and blank: the decoding score (sum of log-probs; beam search: the normalised score)."""
    forward_passes: int

    def filled(self, tokens: GLMTokens, row: int) -> list[int]:
        """Prompt ``row``'s part A with each blank replaced by its fill (BOS and EOS dropped)."""
        out, fills = [], iter(self.fills[row])
        for t in self.part_a[row]:
            if t in tokens.blanks:
                out += next(fills)
            elif t not in (tokens.bos, tokens.eos):
                out.append(t)
        return out


def part_a(prompt: Sequence[int], tokens: GLMTokens) -> list[int]:
    """``BOS prompt [EOS]``, with ``[gMASK]`` appended to a prompt without a blank."""
    ids = [tokens.bos, *prompt]
    if not any(t in tokens.blanks for t in prompt):
        ids.append(tokens.gmask)
    if ids[-1] != tokens.gmask:
        ids.append(tokens.eos)
    return ids


def span_feed(state: ARState) -> tuple[Tensor, Tensor, Tensor]:
    """The next token of a span: same blank position, one place further inside the span, part B."""
    pos = state.position_ids[:, -1:].clone()
    pos[..., 1] += 1
    return pos, state.document_ids[:, -1:], state.regions[:, -1:]


def feed_rows(model: nn.Module, state: ARState, rows: list[list[int]], positions: list[list[tuple[int, int]]],
               visible: list[list[bool]]) -> None:
    """Extend every row by its tokens at their 2D positions. Ragged rows are padded on the LEFT with
    invisible tokens: the state's next-token logits, position and document are read from each row's last
    column, which must be the row's own last token (the next blank's ``[sop]``), never a pad."""
    width = max(len(r) for r in rows)
    device = state.input_ids.device
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, 2, dtype=torch.long)
    docs = torch.full((len(rows), width), PAD_DOCUMENT, dtype=torch.int32)
    for i, (r, p, v) in enumerate(zip(rows, positions, visible)):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            pos[i, width - len(r):] = torch.tensor(p)
            docs[i, width - len(r):] = torch.tensor([0 if x else PAD_DOCUMENT for x in v], dtype=torch.int32)
    regions = torch.ones(len(rows), width, dtype=torch.int8)
    state.extend(model, ids.to(device), pos.to(device), docs.to(device), regions.to(device))


def infill_options(options: AROptions | None, tokens: GLMTokens) -> AROptions:
    """``options`` for writing a blank: ``[eop]`` and EOS stop it; the blanks, ``[sop]``, BOS and PAD are banned."""
    opts = options or AROptions()
    banned = {*opts.banned_token_ids, *tokens.blanks, tokens.sop, tokens.bos} | ({tokens.pad} - {tokens.eos})
    stops = {*opts.stop_token_ids, tokens.eop, tokens.eos}  # EOS: the document ends inside a [gMASK] span
    return replace(opts, stop_token_ids=tuple(sorted(stops)), banned_token_ids=tuple(sorted(banned - stops)))


def check_fits(model: nn.Module, part_a_length: int, options: AROptions) -> None:
    """A ``learned-2d`` model refuses a part A too long for its position table with ``max_new_tokens`` more."""
    if part_a_length + options.max_new_tokens + 1 > model.config.max_seq_len and \
            model.config.position_encoding == "learned-2d":
        raise BiglmError(f"a prompt of {part_a_length} tokens and max_new_tokens={options.max_new_tokens} exceed "
                         f"the model's max_seq_len={model.config.max_seq_len}")


def encode_part_a(model: nn.Module, rows: Sequence[Sequence[int]], tokens: GLMTokens,
                  use_cache: bool = True) -> ARState:
    """The state of part A of each row (``part_a``'s ids), left-padded, under the ``prefix_lm`` layout."""
    longest = max(len(r) for r in rows)
    device = model_device(model)
    n = len(rows)
    ids = torch.full((n, longest), tokens.pad, dtype=torch.long)
    pos = torch.zeros(n, longest, 2, dtype=torch.long)
    docs = torch.full((n, longest), PAD_DOCUMENT, dtype=torch.int32)
    for i, r in enumerate(rows):  # left padding: every row's positions count from its own BOS
        ids[i, longest - len(r):] = torch.tensor(list(r))
        pos[i, longest - len(r):, 0] = torch.arange(len(r))
        docs[i, longest - len(r):] = 0
    empty = lambda *shape, dtype: torch.zeros(n, 0, *shape, dtype=dtype, device=device)
    state = ARState(empty(dtype=torch.long), empty(2, dtype=torch.long), empty(dtype=torch.int32),
                    empty(dtype=torch.int8), "prefix_lm", use_cache=use_cache)
    state.extend(model, ids.to(device), pos.to(device), docs.to(device), torch.zeros(n, longest, dtype=torch.int8,
                                                                                      device=device))
    return state


def infill_ids(model: nn.Module, prompts: Sequence[Sequence[int]], tokens: GLMTokens, *,
               options: AROptions | None = None, use_cache: bool = True, seed: int | None = None,
               on_token: Callable[[int, Tensor], None] | None = None) -> InfillResult:
    """Fill the blanks of each prompt (token ids without BOS/EOS; see the module docstring).

    ``options.max_new_tokens`` bounds each blank; ``[eop]`` and EOS are added to the stop tokens; the
    blank, ``[sop]``, BOS and PAD tokens are never generated. ``on_token`` (greedy / sampling) sees each
    step's chosen ids as ``decode`` gives them, blank after blank.
    """
    family = get_family(model)
    if family.decoder != "blank-infilling":
        raise BiglmError(f"blank infilling needs a {family_names(lambda f: f.decoder == 'blank-infilling')} model, "
                         f"not family {family.name!r}")
    if not prompts:
        raise BiglmError("no prompts given")
    opts = infill_options(options, tokens)
    rows = [part_a(p, tokens) for p in prompts]
    check_fits(model, max(len(r) for r in rows), opts)
    state = encode_part_a(model, rows, tokens, use_cache)
    device, n = state.input_ids.device, len(rows)
    blanks = [[j for j, t in enumerate(r) if t in tokens.blanks] for r in rows]
    fills: list[list[list[int]]] = [[] for _ in rows]
    finished: list[list[bool]] = [[] for _ in rows]
    scores: list[list[float]] = [[] for _ in rows]
    generator = None
    if seed is not None or not opts.sampling.greedy:
        generator = seeded_generator(device, 0 if seed is None else seed)
    pending: list[list[int]] = [[] for _ in rows]  # the previous blank's tokens, not yet fed
    pending_pos: list[list[tuple[int, int]]] = [[] for _ in rows]
    for k in range(max(len(b) for b in blanks)):
        active = [k < len(b) for b in blanks]
        feed_ids = [pending[i] + [tokens.sop] for i in range(n)]
        feed_pos = [pending_pos[i] + [(blanks[i][k] if active[i] else 0, 1)] for i in range(n)]
        feed_vis = [[True] * len(pending[i]) + [active[i]] for i in range(n)]
        feed_rows(model, state, feed_ids, feed_pos, feed_vis)
        # Beam search reorders a copy; sampling extends its state in place, so it decodes on a copy too
        # and the chosen tokens are fed to ``state`` with the next blank's [sop].
        work = state if opts.num_beams > 1 else state.index_select(torch.arange(n, device=device))
        result = decode(model, work, opts, feed=span_feed, generator=generator, on_token=on_token)
        state.forward_passes = work.forward_passes if opts.num_beams == 1 else state.forward_passes + \
            result.forward_passes
        for i in range(n):
            if active[i]:
                fill = result.token_ids[i]
                fills[i].append(fill)
                finished[i].append(result.finished[i])
                scores[i].append(result.scores[i])
                pending[i] = fill
                pending_pos[i] = [(blanks[i][k], j + 2) for j in range(len(fill))]
            else:
                pending[i], pending_pos[i] = [], []
    return InfillResult(fills, rows, finished, scores, state.forward_passes)


__all__ = ["GLMTokens", "InfillResult", "check_fits", "encode_part_a", "feed_rows", "infill_ids", "infill_options",
           "part_a", "span_feed"]
