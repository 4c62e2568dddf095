"""The ids generation never emits and partly decoded text; ``special_ids`` (BOS, EOS, [MASK], PAD) comes
from ``biglm.data.tokenizer``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from biglm.data.tokenizer import special_ids

MASK_SYMBOL = "▢"


def banned_ids(tokenizer: Any, vocab_size: int, allow: Sequence[int] = ()) -> list[int]:
    """Ids generation never emits: [MASK], BOS, PAD (unless it is EOS) and the vocabulary's padding rows;
    ``allow`` keeps some (R2L decoding ends at BOS)."""
    ids = special_ids(tokenizer)
    banned = ({ids["mask"], ids["bos"]} | ({ids["pad"]} - {ids["eos"]})) - set(allow)
    banned |= set(range(len(tokenizer), vocab_size))
    return sorted(i for i in banned if 0 <= i < vocab_size)


def render_step(tokenizer: Any, ids: Sequence[int], mask_token_id: int, mask_symbol: str = MASK_SYMBOL) -> str:
    """Text of a partly decoded suffix with ``mask_symbol`` at every [MASK]."""
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
        if i == mask_token_id:
            if run:
                parts.append(tokenizer.decode(run, skip_special_tokens=True))
                run = []
            parts.append(mask_symbol)
        else:
            run.append(i)
    if run:
        parts.append(tokenizer.decode(run, skip_special_tokens=True))
    return "".join(parts)


__all__ = ["MASK_SYMBOL", "banned_ids", "render_step", "special_ids"]
