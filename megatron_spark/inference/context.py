"""What scoring a policy works with on one rank: :class:`Scoring` (the roles every scorer reads)
and :class:`Inference` (a checkpoint behind a rollout engine, for ``eval`` and ``generate``).

Training's :class:`~megatron_spark.train.roles.Roles` carry the same roles and are scored
by the same functions (:mod:`megatron_spark.eval.accuracy`); an :class:`Inference` has no
optimizer, no reference model and no run state, because nothing trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from megatron_spark import platform
from megatron_spark.checkpoint import steps as ckpt
from megatron_spark.inference.build import build_data, build_engine, load_model, max_positions
from megatron_spark.inference.lengths import check_lengths
from megatron_spark.parallel import ParallelContext
from megatron_spark.rollout.client import RolloutClient

if TYPE_CHECKING:  # the config tree sits above every component it configures
    from megatron_spark.data.tasks import TaskSource
    from megatron_spark.data.tokenizer import Tokenizer
    from megatron_spark.train.config import RunConfig


class Scoring(Protocol):
    """The roles a scorer reads: the run's config, the parallel layout, the task, its verifier,
    the tokenizer and the rollout engine holding the policy's current weights."""

    cfg: RunConfig
    par: ParallelContext
    tokenizer: Tokenizer
    task: TaskSource
    verifier: Any
    rollout: RolloutClient


class Inference:
    """``model.init`` behind a rollout engine, with the task it is scored on."""

    def __init__(self, cfg: RunConfig):
        """Set up the platform, check every length limit of scoring before loading the weights,
        load them and hand them to the engine."""
        platform.setup(cfg.parallel, seed=cfg.seed)
        self.cfg = cfg
        self.par = ParallelContext.from_megatron()
        self.tokenizer, self.task, _, self.verifier = build_data(cfg)
        check_lengths(cfg, "eval", self.tokenizer, self.task, max_positions(cfg, self.tokenizer))
        model, arch = load_model(cfg, self.tokenizer, cfg.parallel)
        self.judge_trained = ckpt.judge_trained(cfg.model.init)
        """Whether these weights were trained on judge prompts: test-time modes need it."""
        self.rollout = RolloutClient(*build_engine(cfg, model, arch, self.par), self.par, self.tokenizer)
        self.rollout.sync()

    def close(self) -> None:
        self.rollout.close()
        platform.teardown()
