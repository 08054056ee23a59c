"""What optimizer steps report: :class:`UpdateStats`, added up over minibatches and phases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_spark.parallel import ParallelContext

HEAD_FIELDS = (
    "loss",
    "rl_tokens",
    "all_rl_tokens",
    "entropy_sum",
    "clipped",
    "kl_sum",
    "gap_sum",
    "gap_tokens",
)
"""The loss head's sums: each rank holds its own share (the statistics owner of each replica, zero
elsewhere) until :meth:`UpdateStats.reduced` adds them up over the world."""


@dataclass(frozen=True)
class UpdateStats:
    """Sums over optimizer steps. ``a + b`` adds every field, except the log-prob gap, which is
    ``a``'s (the first update's) unless ``a`` took no step."""

    loss: float = 0.0
    rl_tokens: float = 0.0
    """RL response tokens that went through the loss head."""
    all_rl_tokens: float = 0.0
    """RL response tokens of the step, also those left out as adding nothing
    (``grpo.skip_zero_advantage``)."""
    entropy_sum: float = 0.0
    clipped: float = 0.0
    """RL tokens whose ratio was clipped."""
    kl_sum: float = 0.0
    """KL(policy || reference) estimate summed over RL tokens (``grpo.kl_estimator``)."""
    gap_sum: float = 0.0
    """|rollout - trainer| log-prob summed over the RL tokens of the first update, before it: the
    engine and the trainer then hold one policy."""
    gap_tokens: float = 0.0
    """The RL tokens ``gap_sum`` is over."""
    grad_norm: float = 0.0
    """Summed over steps (the same on every rank)."""
    lr: float = 0.0
    """Summed over steps."""
    steps: float = 0.0
    """Optimizer steps taken."""
    applied: float = 0.0
    """Optimizer steps applied (not skipped for a non-finite gradient)."""

    def __add__(self, other: UpdateStats) -> UpdateStats:
        sums = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        first = self if self.steps else other
        return UpdateStats(**{**sums, "gap_sum": first.gap_sum, "gap_tokens": first.gap_tokens})

    def reduced(self, par: ParallelContext) -> UpdateStats:
        """The loss head's sums added up over the world (the optimizer's own fields are the same
        on every rank and stay as they are). Collective."""
        return dataclasses.replace(self, **par.reduce({k: getattr(self, k) for k in HEAD_FIELDS}))

    def metrics(self) -> dict[str, float]:
        """``train/*`` of world-reduced statistics."""
        rl_tokens = max(1.0, self.rl_tokens)
        steps = max(1.0, self.steps)
        return {
            "train/loss": self.loss / steps,
            "train/entropy": self.entropy_sum / rl_tokens,
            "train/clip_fraction": self.clipped / rl_tokens,
            "train/kl_ref": self.kl_sum / rl_tokens,
            "train/grad_norm": self.grad_norm / steps,
            "train/logprob_gap_rollout_vs_train": self.gap_sum / max(1.0, self.gap_tokens),
            "train/skipped_token_fraction": (self.all_rl_tokens - self.rl_tokens)
            / max(1.0, self.all_rl_tokens),
        }
