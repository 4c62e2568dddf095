"""The causal family: a left-to-right decoder (the baseline the paper compares against)."""

from biglm.families.base import Family

CAUSAL = Family(
    name="causal",
    summary="left-to-right causal LM: the autoregressive loop, exact chain-rule scoring",
    objectives=("causal",),
    layout="causal",
    decoder="autoregressive",
    scoring="chain-rule",
    directions=("l2r",),
    refused_tasks={"cloze-classification": "a left-to-right model cannot fill a blank with the text after it "
                                           "in view; use a masked or glm model"},
    export="causal-lm",
    eval_variants=(("l2r", {"direction": "l2r"}),),
)
