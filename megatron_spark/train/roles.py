"""What one training step works with: :class:`Roles`, each object with one job.

Built once by :class:`~megatron_spark.train.session.Session` and handed to the step functions
(SFT, GRPO, SPARK), which train, roll out and advance the run state through it. Logging, saving,
evaluating and the run directory stay with the Session: a step cannot reach them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_spark.data.tasks import TaskSource
from megatron_spark.data.tokenizer import Tokenizer
from megatron_spark.parallel import ParallelContext
from megatron_spark.rollout.client import RolloutClient
from megatron_spark.train.config import RunConfig
from megatron_spark.train.metrics import StageTimer
from megatron_spark.train.policy import PolicyTrainer
from megatron_spark.train.seeds import SeedPurpose
from megatron_spark.train.state import RunState


@dataclass(frozen=True)
class Roles:
    cfg: RunConfig
    """The run's settings (read only)."""
    par: ParallelContext
    """Ranks, groups and collectives; slicing a step across data-parallel replicas."""
    policy: PolicyTrainer
    """Model, optimizer and loss head: train and forward log-probs."""
    rollout: RolloutClient
    """The rollout engine behind the weight bridge: generate, sync, sleep and wake."""
    state: RunState
    """Step, sampler position, item queue: what a checkpoint restores besides the weights."""
    tokenizer: Tokenizer
    task: TaskSource
    """The task source (its name picks the task's worked checks)."""
    verifier: Any
    timer: StageTimer
    """Wall time per stage of the step (``time/<stage>_s``)."""

    def seed(self, purpose: SeedPurpose = SeedPurpose.POLICY_ROLLOUT) -> int:
        """Distinct per run seed, step and purpose, equal on every rank (each DP replica samples
        its rows of the step-wide batch, ``SamplingParams.first_row``); the same on resume."""
        # The 0 stands where the DP rank once was, so that recorded one-process runs reproduce.
        return hash((self.cfg.seed, self.state.step, 0, int(purpose))) & 0x7FFFFFFF
