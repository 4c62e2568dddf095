"""BatGPT's bidirectional-autoregressive family: one causal decoder trained left to right and right to left."""

from biglm.families.base import Family

BIDIRECTIONAL_AR = Family(
    name="bidirectional-ar",
    summary="causal LM trained in both directions (BatGPT): writes forwards, or backwards before an ending",
    objectives=("bidirectional-ar", "causal"),
    layout="causal",
    decoder="autoregressive",
    scoring="chain-rule",
    directions=("l2r", "r2l"),
    refused_tasks={"cloze-classification": "a left-to-right model cannot fill a blank with the text after it "
                                           "in view; use a masked or glm model"},
    export="causal-lm",
    eval_variants=tuple((d, {"direction": d}) for d in ("l2r", "r2l", "mean")),
)
