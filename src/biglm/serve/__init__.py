"""``biglm serve`` and the annotation page's server: one worker owns the model (``scheduler``)."""

import biglm.serve.steppers.masked  # noqa: F401  (registers the Mask-Predict stepper in scheduler.STEPPERS)
