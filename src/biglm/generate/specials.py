"""Special token ids every decoder needs, the ids generation never emits, and partly decoded text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from biglm.errors import BiglmError

MASK_SYMBOL = "▢"


def special_ids(tokenizer: Any) -> dict[str, int]:
    """BOS, EOS, [MASK] and PAD ids of ``tokenizer``; one clear error when one is missing."""
    ids = {}
    for name in ("bos", "eos", "mask"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise BiglmError(f"tokenizer has no {name} token; generation needs BOS, EOS and [MASK] "
                             "(load it with biglm.data.tokenizer.load_tokenizer)")
        ids[name] = int(value)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids["pad"] = int(pad) if pad is not None else ids["eos"]
    return ids


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
