"""GLM's family: autoregressive blank infilling. Part A (the prompt with blanks) is read bidirectionally,
each blank is written left to right in part B after ``[sop]``, with 2D positions."""

from __future__ import annotations

import re
from typing import Any

from biglm.families.base import Family

BLANK_TEXT = re.compile(r"(\[MASK\]|\[sMASK\]|\[gMASK\])")
"""How a prompt writes GLM's blanks."""


class GLMFamily(Family):
    """GLM reads blank tokens in a prompt; everything else is the record's fields."""

    def encode_prompt(self, tokenizer: Any, text: str) -> list[int]:
        """Token ids of a prompt with blanks written as ``[MASK]`` / ``[sMASK]`` / ``[gMASK]``. Whitespace right
        before a blank belongs to the span (as in training, where a span's first token carries its leading
        space), so it is dropped from part A: ``"The [MASK] sat"`` reads ``The [MASK] ␣sat``, not
        ``The ␣ [MASK] ␣sat``."""
        pieces = BLANK_TEXT.split(text)
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # a blank
                ids.append(int(tokenizer.convert_tokens_to_ids(piece)))
                continue
            if i + 1 < len(pieces):
                piece = piece.rstrip()
            if piece:
                ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids


GLM = GLMFamily(
    name="glm",
    summary="GLM's autoregressive blank infilling: part A bidirectional, blanks written in part B",
    objectives=("glm",),
    layout="prefix_lm",
    decoder="blank-infilling",
    scoring="blank-infilling",
    directions=("l2r",),  # part B is written left to right
    positions_2d=True,
    special_tokens={"smask": "[sMASK]", "gmask": "[gMASK]", "sop": "[sop]", "eop": "[eop]"},
    prompt_overhead=2,  # [gMASK] closes part A, [sop] opens the reply's span
    refused_tasks={"dpo": "DPO's sequence scores are written for masked and left-to-right models, not part B"},
    export="blank-infilling",
    # the chain rule over part B after [gMASK], and after [MASK] (what a short-blank-only model was trained on)
    eval_variants=(("gMASK", {"glm_blank": "gmask"}), ("MASK", {"glm_blank": "mask"})),
)
