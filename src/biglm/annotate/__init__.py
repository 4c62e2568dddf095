"""Preference data from people and from AI judges: ``biglm annotate`` (a local web page) and ``biglm judge``.

Both write biglm's preference format (``biglm.data.preferences``) through ``AnswerStore``: each answer is
appended whole and synced before it is acknowledged, a restart continues where the file stops, and the
file reads back with ``biglm finetune --task reward`` at every moment.
"""

from .pairs import Pair, PairPool, read_pairs, read_prompts
from .store import Answer, AnswerStore, Conflict, JsonlLog, pair_key

__all__ = ["Answer", "AnswerStore", "Conflict", "JsonlLog", "Pair", "PairPool", "pair_key", "read_pairs",
           "read_prompts"]
