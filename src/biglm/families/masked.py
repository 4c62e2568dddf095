"""BiGLM's masked family: a prefix-blind model that writes a whole suffix in parallel (Mask-Predict)."""

from biglm.families.base import Family

MASKED = Family(
    name="masked",
    summary="prefix-blind masked LM (BiGLM, MLM): Mask-Predict and parallel decoding",
    objectives=("biglm", "mlm"),
    layout="prefix_blind",
    decoder="mask-predict",
    scoring="masked",
    reward_pooling="mean",
    length_head=True,
    export="masked-lm",
)
