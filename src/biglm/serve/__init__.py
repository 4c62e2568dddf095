"""``biglm serve`` and the annotation page's server: one worker owns the model (``scheduler``)."""
