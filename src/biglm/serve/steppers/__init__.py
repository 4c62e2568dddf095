"""Continuous steppers of the scheduler, one module per decoder; each registers itself in
``biglm.serve.scheduler.STEPPERS`` when imported (``biglm.serve`` imports them)."""
