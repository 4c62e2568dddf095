"""``biglm serve`` and the annotation page's server: one worker owns the model (``scheduler``).

The continuous steppers (``steppers``) add themselves to ``scheduler.STEPPERS`` (the one table, by the family's
decoder) when imported here, so every user of the scheduler sees them.
"""

from biglm.serve.steppers import autoregressive as _autoregressive  # noqa: F401  (registers its steppers)
