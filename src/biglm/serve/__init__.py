"""``biglm serve`` and the annotation page's server: one worker owns the model (``scheduler``); the continuous
steppers (``steppers``) are listed in ``scheduler.STEPPERS`` by the family's decoder."""
