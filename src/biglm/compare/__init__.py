"""``biglm compare``: recipes (run configs) side by side on the same data, budget and held-out tasks."""

from biglm.compare.core import TASKS, CompareOptions, compare, load_recipes

__all__ = ["TASKS", "CompareOptions", "compare", "load_recipes"]
