"""Growing trained models: ``biglm expand`` (width by function-preserving initialisation, depth by stacking)
and the pieces the training schedule ``train.growth`` uses.

- ``expand_model(model, ExpandSpec(...)) -> (model, plan)``; ``expand_checkpoint(src, out, spec)``;
- ``max_logit_change(source, expanded, rows)``: the max |Δlogits| on the same inputs, under the family's
  own attention layout;
- ``biglm.grow.expand``: the maps and rules (see its docstring for what is exact and why).
"""

from biglm.grow.api import ExpandReport, expand_checkpoint, expand_model, family_layout, max_logit_change
from biglm.grow.expand import ExpandSpec, Plan, expand_optimizer_state, expand_state, make_plan, target_config

__all__ = ["ExpandReport", "ExpandSpec", "Plan", "expand_checkpoint", "expand_model", "expand_optimizer_state",
           "expand_state", "family_layout", "make_plan", "max_logit_change", "target_config"]
