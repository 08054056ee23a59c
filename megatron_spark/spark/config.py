"""Settings of SPARK's recycling: which items are built from each step's rollouts, how many, and
how they are trained. Owned by :mod:`megatron_spark.spark`; the ``spark:`` section of a run config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ItemKind = Literal["pointwise", "pairwise", "reflection"]
ITEM_KINDS: tuple[str, ...] = ("pointwise", "pairwise", "reflection")


@dataclass(frozen=True)
class SparkConfig:
    """Recycling of rollouts into judge and reflection items (off unless ``enabled``)."""

    enabled: bool = False
    """Train the policy as its own judge and self-corrector (SPARK); false: plain GRPO."""
    schedule: Literal["joint", "alternating"] = "joint"
    """``joint``: each update packs the step's policy samples with the samples of items recycled
    at earlier steps (one forward/backward, one weight sync); ``alternating``: the paper's two
    phases, a policy update and then a separate update on items popped from the queue."""
    pointwise: bool = True
    """Build pointwise items (is this answer correct?)."""
    pairwise: bool = True
    """Build pairwise items (which of two answers is correct?)."""
    reflection: bool = True
    """Build reflection items (here is a wrong attempt: solve it again)."""
    pairwise_fraction: float = 0.7
    """For a group with both right and wrong answers: chance of a pairwise item (else pointwise)."""
    pointwise_vocabs: tuple[str, ...] = ("yesno", "ab")
    """Verdict vocabularies drawn per pointwise item: ``yesno`` (Yes/No), ``ab`` (A = correct,
    B = incorrect)."""
    balance_pointwise: bool = True
    """Keep as many "correct" as "incorrect" pointwise items per step (unbalanced items collapse
    the verdict to the majority label)."""
    reflection_full_fraction: float = 0.5
    """Share of reflection items that show the whole wrong response (the rest: its final answer)."""
    reflection_wrong_tone_fraction: float = 0.5
    """Share of reflection prompts that say the attempt is wrong (the rest ask to check it)."""
    max_judge_items_per_step: int = 32
    """Most judge items (pointwise + pairwise) built per step; at most one per prompt group."""
    max_reflection_items_per_step: int = 32
    """Most reflection items built per step; at most one per prompt group."""
    items_per_step: int = 32
    """Items popped from the queue and rolled out per step."""
    num_samples_per_item: int = 8
    """Group size of an item's rollout."""
    max_new_tokens: int = 64
    """Longest judge or reflection response."""
    max_item_age_steps: int = 4
    """Items built more than this many steps ago are dropped from the queue (counted)."""
    policy_weight: float = 1.0
    """Loss weight of policy samples (joint schedule)."""
    judge_weight: float = 1.0
    """Loss weight of pointwise and pairwise samples (joint schedule)."""
    reflection_weight: float = 1.0
    """Loss weight of reflection samples (joint schedule)."""
    judge_rl_tokens: Literal["all", "verdict"] = "all"
    """Which tokens of a judge sample carry its advantage: ``all`` (the whole reply, as in the
    paper) or ``verdict`` (the boxed verdict only; the sample's own check before it is context).
    The loss is a mean over every trained token of the step, so with a worked check of ~40
    tokens per reply the verdict's share of the judge's RL gradient is ~1/40 under ``all``."""
    judge_reward: Literal["verdict", "checked"] = "verdict"
    """What a judge sample's reward asks for: ``verdict`` (the right verdict, as in the paper) or
    ``checked`` (the right verdict after the task's worked check of the shown answer(s), written
    out correctly: :meth:`~megatron_spark.spark.checks.TaskChecks.reasoning`). Under ``checked``
    a right verdict after a wrong check earns nothing, and the verdict cross-entropy copies come
    only from samples whose check is right, so no target ever asks the verdict to contradict the
    check before it. Needs a task with worked checks (Countdown, arithmetic); an item whose answer
    has none (arithmetic: an answer that is not an integer) is paid for its verdict alone."""
    judge_ce_samples: int = 1
    """How many of a judge item's samples (the first ones that box something; under
    ``judge_reward: checked`` the first whose check is right) get a verdict cross-entropy copy:
    the right verdict after that sample's own check."""
    judge_ce_weight: float = 0.0
    """Weight of teacher-forced cross-entropy on the correct verdict of each judge item, after the
    first sample's own reasoning; averaged over the step's verdict tokens (0 disables)."""
    judge_ce_correct_check: bool = False
    """Under ``judge_reward: checked`` with ``judge_ce_weight > 0``: when no sample of a judge item
    writes its worked check, the item's cross-entropy copies become corrections instead of
    nothing: each of the first ``judge_ce_samples`` samples up to where it departs from the worked
    check, as context, then the rest of the check and the right verdict, trained. Without it such
    an item teaches nothing when every sample makes the same slip (all rewards 0: no advantage;
    no right check: no verdict target), which is how a judge keeps a blind spot."""

    def __post_init__(self) -> None:
        for name in ("pairwise_fraction", "reflection_full_fraction", "reflection_wrong_tone_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        bad = [v for v in self.pointwise_vocabs if v not in ("yesno", "ab")]
        if bad or not self.pointwise_vocabs:
            raise ValueError(
                f"pointwise_vocabs must be a non-empty list of 'yesno', 'ab'; got {list(self.pointwise_vocabs)}"
            )
        for name in ("items_per_step", "num_samples_per_item", "max_new_tokens", "judge_ce_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_judge_items_per_step", "max_reflection_items_per_step", "max_item_age_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("policy_weight", "judge_weight", "reflection_weight", "judge_ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.judge_ce_correct_check and (self.judge_reward != "checked" or self.judge_ce_weight <= 0):
            raise ValueError(
                "judge_ce_correct_check needs judge_reward: checked and judge_ce_weight > 0, got "
                f"judge_reward: {self.judge_reward}, judge_ce_weight: {self.judge_ce_weight}"
            )
        if self.enabled and not (self.pointwise or self.pairwise or self.reflection):
            raise ValueError("enabled, but pointwise, pairwise and reflection are all off")
