"""The loop shared by ``megatron-spark sft`` and ``megatron-spark train``: step, evaluate, save."""

from __future__ import annotations

from megatron_spark.train.config import RunConfig
from megatron_spark.train.session import Session


def run(cfg: RunConfig, command: str, resume: bool = False) -> str:
    """Run ``command`` ("sft" or "train") to ``cfg.train.num_steps``; returns the run directory."""
    from megatron_spark.train.grpo import grpo_step
    from megatron_spark.train.sft import sft_step
    from megatron_spark.train.spark_step import spark_step

    step_fn = {"sft": sft_step, "train": spark_step if cfg.spark.enabled else grpo_step}[command]
    s = Session(cfg, command, resume=resume)
    try:
        s.metrics.print(f"run directory: {s.run_dir}")
        if s.step == 0:
            s.log(s.evaluate())
        if command == "sft":
            s.release_engine()  # SFT only uses the engine to evaluate
        while s.step < cfg.train.num_steps:
            metrics = step_fn(s)
            if s.stop_error is None and s.should_eval():
                if command == "sft":
                    s.sync_weights()
                metrics.update(s.evaluate())
                if command == "sft":
                    s.release_engine()
            s.log(metrics)  # before saving: a resumed run cuts the record back to its checkpoint
            if s.stop_error is not None:
                raise s.stop_error  # logged above, never saved: the last checkpoint stays good
            if s.should_save():
                s.save()
        return str(s.run_dir)
    finally:
        s.close()
