"""What each random stream of a training step is for.

Every stream is seeded from (run seed, step, purpose) by :meth:`Roles.seed <megatron_spark.train.roles.Roles.seed>`, the same
on every rank and on resume; a new purpose must take a new number, since the numbers are part of
what recorded runs reproduce.
"""

from __future__ import annotations

from enum import IntEnum


class SeedPurpose(IntEnum):
    POLICY_ROLLOUT = 0
    """Sampling the task prompts' responses."""
    ITEM_ROLLOUT = 1
    """Sampling the responses of recycled judge and reflection items (SPARK)."""
    RECYCLE = 2
    """The recycler's choices: which answers an item shows, its template and verdict vocabulary."""
    WARM_START_MIX = 3
    """The warm start's choices: which example kind each problem becomes, its candidates."""
    OWN_ANSWERS = 4
    """Sampling the model's own answers for the warm start's judge and reflection examples."""
