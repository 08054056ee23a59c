"""The run's progress besides weights and optimizer: :class:`RunState`, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_spark.data.tasks import ProblemSampler
from megatron_spark.spark.queue import ItemQueue


@dataclass
class RunState:
    """Where the run is: the step, the sampler's position, SPARK's item queue, the frozen pool of
    held-out wrong answers and the count of skipped (non-finite) steps. The same on every rank;
    a resumed run continues from it bit for bit (with the weights, the optimizer and the RNG
    states, which the checkpoint holds beside it)."""

    sampler: ProblemSampler
    queue: ItemQueue
    step: int = 0
    skipped_steps: int = 0
    consecutive_bad: int = 0
    """Non-finite steps in a row (``train.max_consecutive_bad_steps`` stops the run)."""
    judge_pool: Any = None
    """Held-out wrong answers of the initial policy (built at the first judge evaluation)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "consecutive_bad": self.consecutive_bad,
            "queue": self.queue.state_dict(),
            "judge_pool": self.judge_pool,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_bad = int(state["consecutive_bad"])
        self.queue.load_state_dict(state["queue"])
        self.judge_pool = state["judge_pool"]
