"""The loop shared by ``megatron-spark sft`` and ``megatron-spark train``: step, evaluate, save.

SIGTERM and SIGINT stop the loop at the next step boundary with a checkpoint
(:mod:`~megatron_spark.train.preempt`).
"""

from __future__ import annotations

import signal

from megatron_spark.errors import Stopped
from megatron_spark.train.config import RunConfig
from megatron_spark.train.preempt import EXIT_STATUS, StopSignals
from megatron_spark.train.session import Session


def run(cfg: RunConfig, command: str, resume: bool = False, overwrite: bool = False) -> str:
    """Run ``command`` ("sft" or "train") to ``cfg.train.num_steps``; returns the run directory."""
    from megatron_spark.train import grpo, sft, spark_step

    if command == "sft":
        step_fn, per_step = sft.sft_step, sft.optimizer_steps(cfg)
    elif cfg.spark.enabled:
        step_fn, per_step = spark_step.spark_step, spark_step.optimizer_steps(cfg)
    else:
        step_fn, per_step = grpo.grpo_step, grpo.optimizer_steps(cfg)
    signals = StopSignals().install()
    try:
        s = Session(cfg, command, resume, overwrite, optimizer_steps_per_step=per_step)
        stopped_by, failed = None, True
        try:
            s.metrics.print(f"run directory: {s.run_dir}")
            r = s.roles  # what a step works with (the Session keeps files, logs and checkpoints)
            if r.state.step == 0:
                s.log(s.evaluate())
            if command == "sft":
                r.rollout.sleep()  # SFT only uses the engine to evaluate
            while r.state.step < cfg.train.num_steps:
                signum = signals.agreed()
                if signum is not None:
                    stopped_by = signal.Signals(signum).name
                    raise _stop(s, stopped_by, EXIT_STATUS[signum])
                metrics = s.finish_step(*step_fn(r))
                if s.stop_error is None and s.should_eval():
                    if command == "sft":
                        with r.timer("sync"):
                            r.rollout.sync()
                    metrics.update(s.evaluate())
                    if command == "sft":
                        r.rollout.sleep()
                s.log(metrics)  # before saving: a resumed run cuts the record back to its checkpoint
                if s.stop_error is not None:
                    raise s.stop_error  # logged above, never saved: the last checkpoint stays good
                if s.should_save():
                    s.save()
            failed = False
            return str(s.run_dir)
        finally:
            s.close(stopped_by=stopped_by, failed=failed and stopped_by is None)
    finally:
        signals.uninstall()


def _stop(s: Session, signal_name: str, exit_status: int) -> Stopped:
    """Save the step just finished (unless it is saved already) and say where it is."""
    step = s.roles.state.step
    if step == 0:
        return Stopped(f"stopped by {signal_name} before the first step; nothing to save", exit_status)
    if s.saved_step != step:
        s.save()
    return Stopped(
        f"stopped by {signal_name} after step {step}: checkpoint {s.ckpt_root / f'step_{step:06d}'}; "
        f"continue with --resume",
        exit_status,
    )
