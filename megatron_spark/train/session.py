"""What every training loop works with on one rank, and the run's files.

A :class:`Session` builds the run's roles once (:class:`~megatron_spark.train.roles.Roles`: the
parallel context, the policy trainer, the rollout client, the run state, the task's data) and
keeps what a step must not touch: the run directory and its lock, checkpoints, the metrics
logger, held-out evaluation and the count of non-finite steps. The step functions (SFT, GRPO,
SPARK) take the roles only; the loop (:mod:`megatron_spark.train.run`) hands each step's result
to :meth:`Session.finish_step`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from megatron_spark import platform
from megatron_spark.checkpoint import steps as ckpt
from megatron_spark.config import dump_config, to_dict
from megatron_spark.errors import UserError
from megatron_spark.eval import accuracy
from megatron_spark.inference.build import build_data, build_engine, max_positions
from megatron_spark.inference.lengths import check_lengths
from megatron_spark.kernels.fused_head import TileConfig
from megatron_spark.parallel import ParallelContext, on_rank0
from megatron_spark.rollout.client import RolloutClient
from megatron_spark.spark.queue import ItemQueue
from megatron_spark.train import rundir
from megatron_spark.train.config import RunConfig
from megatron_spark.train.metrics import MetricsLogger, StageTimer
from megatron_spark.train.optim import Optimizer
from megatron_spark.train.policy import PolicyTrainer
from megatron_spark.train.roles import Roles
from megatron_spark.train.setup import build_policy, build_reference
from megatron_spark.train.state import RunState
from megatron_spark.train.stats import UpdateStats


def resolve_run_dir(cfg: RunConfig, command: str) -> Path:
    """The configured run directory, or ``runs/<command>-<time>`` chosen by rank 0."""
    name = [cfg.run_dir or f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(name, src=0)  # every rank writes to rank 0's choice
    return Path(name[0])


class Session:
    def __init__(
        self,
        cfg: RunConfig,
        command: str,
        resume: bool = False,
        overwrite: bool = False,
        *,
        optimizer_steps_per_step: int,
    ):
        """``command``: "sft" or "train"; ``optimizer_steps_per_step``: how many optimizer steps
        the algorithm takes per step (its ``optimizer_steps``), which sizes the learning-rate
        schedule. (Scoring a checkpoint needs none of this: :class:`~megatron_spark.inference.context.Inference`.)"""
        self.cfg = cfg
        self.command = command
        timer = StageTimer()
        parallel = cfg.parallel
        platform.setup(parallel, seed=cfg.seed)
        par = ParallelContext.from_megatron()
        self.layout = {
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            # Each rank's optimizer state covers its shards only: resume with the same setting.
            "distributed_optimizer": int(cfg.optim.distributed),
        }
        if cfg.train.num_prompts_per_step % par.dp_size:
            raise UserError(
                f"train.num_prompts_per_step={cfg.train.num_prompts_per_step} must be divisible by the "
                f"{par.dp_size} data-parallel ranks"
            )
        groups = cfg.train.num_prompts_per_step // par.dp_size
        if command == "train" and cfg.grpo.num_minibatches > groups:
            raise UserError(
                f"grpo.num_minibatches={cfg.grpo.num_minibatches} is more than the {groups} prompt groups "
                f"each of the {par.dp_size} data-parallel ranks trains per step; expected 1 to {groups}"
            )

        self.run_dir = resolve_run_dir(cfg, command)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.lock = None
        self.resume, self.overwrite = resume, overwrite
        latest = None
        on_rank0(lambda: rundir.check(self.run_dir, resume, overwrite))
        if resume:
            latest, skipped = on_rank0(lambda: ckpt.newest_intact(self.ckpt_root))
            if latest is None:
                why = f" ({skipped[-1]})" if skipped else ""
                raise UserError(f"--resume: no complete checkpoint under {self.ckpt_root}{why}")
            self.skipped_checkpoints = skipped

        tokenizer, task, sampler, verifier = build_data(cfg)
        # Every phase's longest sequence against the model's positions, before loading weights.
        check_lengths(cfg, command, tokenizer, task, max_positions(cfg, tokenizer))
        model, arch, self.tokenizer_files = build_policy(cfg, tokenizer, parallel)
        ref_model = build_reference(cfg, tokenizer, parallel) if cfg.grpo.kl_coef > 0 else None
        # The schedule counts every optimizer step of the run.
        updates = cfg.train.num_steps * optimizer_steps_per_step
        optimizer = Optimizer(model, cfg.optim, updates, model_parallel_group=par.mp_group)
        self.judge_trained = bool(
            (command == "train" and cfg.spark.enabled)
            or (command == "sft" and cfg.sft.judge_fraction > 0)
            or ckpt.judge_trained(cfg.model.init)
        )
        """Whether these weights were trained on judge prompts (format or skill): ``generate
        --tts`` refuses weights that never saw one."""
        rollout = RolloutClient(*build_engine(cfg, model, arch, par), par, tokenizer)
        from megatron_spark.model.builder import transformer_engine_available

        policy = PolicyTrainer(
            model,
            arch,
            optimizer,
            par,
            cfg.grpo,
            TileConfig(token_chunk=cfg.train.token_chunk, vocab_chunk=cfg.train.vocab_chunk),
            micro_batch_tokens=cfg.train.micro_batch_tokens,
            # Micro-batches hold a group's prompt once (``train.share_prompts``; not with TE).
            share_prompts=cfg.train.share_prompts and not transformer_engine_available(),
            temperature=cfg.rollout.temperature,
            ref_model=ref_model,
        )
        state = RunState(sampler, ItemQueue(cfg.spark.max_item_age_steps))
        self.roles = Roles(cfg, par, policy, rollout, state, tokenizer, task, verifier, timer)
        self.stop_error: UserError | None = None
        """Set by ``finish_step`` when the run must stop (too many non-finite steps in a row)."""
        self.saved_step: int | None = None
        """The step of the newest checkpoint this run wrote or resumed from."""
        if resume:
            self._restore(latest)
            self.saved_step = state.step
        # The first write: everything above only read, so a refused run leaves nothing behind.
        on_rank0(self._claim_run_dir)
        dist.barrier()
        self.metrics = MetricsLogger(
            self.run_dir,
            par.rank == 0,
            cfg.train.num_steps,
            start_step=state.step,
            title=command,
            config=cfg.metrics,
            run_config=to_dict(cfg),
        )
        from megatron_spark.data.datasets import FileTask

        if isinstance(task, FileTask):  # which format the rows were read in, and from where
            self.metrics.print(task.description)
        for line in getattr(self, "skipped_checkpoints", []):
            self.metrics.print(f"--resume: {line}")
        if resume:
            self.metrics.print(f"--resume: continuing from {latest}")
        if rollout.bridge.transport != "none":
            self.metrics.print(f"weight bridge: TP pieces over {rollout.bridge.transport}")
        with timer("sync"):
            rollout.sync()

    # ------------------------------------------------------------------ training

    def finish_step(self, metrics: dict[str, float], t: UpdateStats) -> dict[str, float]:
        """Count the step a step function just took (its ``metrics`` and update statistics ``t``)
        and, when its loss or gradient went non-finite, the skip: print one line naming the
        micro-batches, inputs and terms that went non-finite, and after too many in a row set
        ``stop_error``, which the loop raises once the step's metrics are written (so the record
        shows the stopping step). Returns ``metrics`` with ``train/lr``, ``train/skipped_steps``
        and ``train/nonfinite_microbatches``. Collective: every rank calls it once per step."""
        state, par = self.roles.state, self.roles.par
        state.step += 1
        loss = metrics["train/loss"]
        bad = t.applied != t.steps or not math.isfinite(loss) or not math.isfinite(t.grad_norm)
        # Micro-batches with a non-finite loss-head input or term, over every rank.
        mine = self.roles.policy.pop_nonfinite_notes()
        nonfinite = par.reduce({"n": float(len(mine))})["n"]
        if bad:
            notes = par.gather_world(mine) if nonfinite else []
            cause = skip_cause(notes)
            self.metrics.print(
                f"step {state.step} skipped (loss {loss:.4g}, grad norm {t.grad_norm:.4g}): {cause}"
            )
            state.skipped_steps += 1
            state.consecutive_bad += 1
            limit = self.cfg.train.max_consecutive_bad_steps
            if state.consecutive_bad >= limit:
                self.stop_error = UserError(
                    f"{state.consecutive_bad} consecutive steps had a non-finite loss or gradient "
                    f"(last at step {state.step}: {cause}); lower optim.lr or check the data "
                    f"(train.max_consecutive_bad_steps={limit})"
                )
        else:
            state.consecutive_bad = 0
        metrics.update(
            {
                "train/skipped_steps": float(state.skipped_steps),
                "train/lr": t.lr / max(1.0, t.steps),
                "train/nonfinite_microbatches": nonfinite,
            }
        )
        return metrics

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy now (:func:`megatron_spark.eval.accuracy.evaluate`; judge and
        reflection with ``train.eval_judge``), the answer pool kept in the run state."""
        with self.roles.timer("eval"):
            out, self.roles.state.judge_pool = accuracy.evaluate(
                self.roles, self.roles.state.judge_pool, self.cfg.train.eval_judge
            )
        return out

    def should_eval(self) -> bool:
        k = self.cfg.train.eval_every_steps
        return self.roles.state.step == self.cfg.train.num_steps or (k > 0 and self.roles.state.step % k == 0)

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        from megatron_spark.rollout.bridge import unwrap

        state = {**self.roles.state.state_dict(), "optimizer": self.roles.policy.optimizer.state_dict()}
        with self.roles.timer("checkpoint"):
            path = ckpt.save(
                self.ckpt_root,
                self.roles.state.step,
                unwrap(self.roles.policy.model),
                self.roles.policy.arch,
                self.cfg.precision.params_dtype,
                state,
                self.layout,
                self.cfg.train.keep_checkpoints,
                self.tokenizer_files,
                extra_meta={"judge_trained": self.judge_trained},
            )
        self.saved_step = self.roles.state.step
        return path

    def should_save(self) -> bool:
        k = self.cfg.train.save_every_steps
        return self.roles.state.step == self.cfg.train.num_steps or (k > 0 and self.roles.state.step % k == 0)

    def _restore(self, path: Path) -> None:
        from megatron_spark.checkpoint.dist import load_model
        from megatron_spark.rollout.bridge import unwrap

        state = ckpt.load_train_state(path, self.layout)
        load_model(unwrap(self.roles.policy.model), path / "model")
        self.roles.policy.optimizer.load_state_dict(state["optimizer"])
        self.roles.state.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])

    # ------------------------------------------------------------------ lifecycle

    def log(self, metrics: dict[str, float]) -> None:
        self.metrics.log(self.roles.state.step, {**metrics, **self.roles.timer.pop()})

    def _claim_run_dir(self):
        """Rank 0: lock the run directory, then write the resolved config."""
        self.lock = rundir.claim(self.run_dir, self.command, self.resume, self.overwrite)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.run_dir / "config.yaml")

    def close(self, stopped_by: str | None = None, failed: bool = False) -> None:
        """Release everything; rank 0 records in ``summary.json`` the last step, the checkpoint
        to resume from and why the run ended. After a failure a write error here is dropped:
        the error that ended the run is the one to report (a full disk fails both)."""
        self.metrics.close()
        self.roles.rollout.close()
        if self.roles.par.rank == 0:
            saved = self.ckpt_root / ckpt.step_name(self.saved_step) if self.saved_step is not None else None
            summary = {
                "run_dir": str(self.run_dir),
                "step": self.roles.state.step,
                "checkpoint": str(saved) if saved is not None else None,
                "status": stopped_by or ("failed" if failed else "completed"),
            }
            try:
                tmp = self.run_dir / ".summary.json.tmp"
                tmp.write_text(json.dumps(summary) + "\n")
                os.replace(tmp, self.run_dir / "summary.json")
            except OSError:
                if not failed:
                    raise
        if self.lock is not None:
            self.lock.release()
        platform.teardown()


def skip_cause(notes: Sequence[str], limit: int = 3) -> str:
    """What went non-finite in a skipped step: the first ``limit`` micro-batch phrases of
    :meth:`PolicyTrainer.note_nonfinite <megatron_spark.train.policy.PolicyTrainer.note_nonfinite>`, or, when the loss head saw nothing, where to look instead."""
    if not notes:
        return (
            "every input and term of the loss head was finite; the gradient overflowed or met "
            "non-finite weights in the backward pass"
        )
    more = f" | and {len(notes) - limit} more micro-batches" if len(notes) > limit else ""
    return " | ".join(notes[:limit]) + more
