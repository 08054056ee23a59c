"""Per-step metrics: ``RUN_DIR/metrics.jsonl``, TensorBoard events, optionally Weights & Biases,
and the console's progress (:mod:`megatron_spark.progress`: a bar on a terminal, periodic lines in
a log file).

Only rank 0 writes. Names are documented in docs/metrics.md. On resume the jsonl file is cut back
to the checkpoint's step and TensorBoard purges later events, so a resumed run's record reads as
if it had never stopped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_spark.progress import ProgressReport

CONSOLE_KEYS = {
    "policy/accuracy": "acc",
    "eval/accuracy": "eval_acc",
    "train/loss": "loss",
    "train/grad_norm": "gnorm",
}
"""Metrics shown on the progress bar, and their short labels."""


@dataclass(frozen=True)
class WandbConfig:
    """Mirror the run's metrics to Weights & Biases (needs ``pip install 'megatron_spark[wandb]'``)."""

    enabled: bool = False
    """Log every record of metrics.jsonl (its finite numbers) to a wandb run, from rank 0."""
    project: str = "megatron-spark"
    """wandb project."""
    entity: str | None = None
    """wandb team or user (null: the logged-in account's default)."""
    name: str | None = None
    """Run name shown by wandb (null: the run directory's name)."""
    group: str | None = None
    """wandb group, e.g. to put an SFT run and the GRPO run started from it side by side."""
    tags: tuple[str, ...] = ()
    """wandb tags."""
    mode: Literal["online", "offline"] | None = None
    """``offline``: write the run under RUN_DIR/wandb/ only (no network; ``wandb sync`` uploads it
    later); ``online``: stream to the server; null: wandb's own setting (``WANDB_MODE``,
    ``wandb offline``)."""

    def __post_init__(self) -> None:
        # Checked when the config is read, on every rank: not after the model is built.
        if self.enabled and importlib.util.find_spec("wandb") is None:
            raise ValueError(
                "enabled, but the wandb package is not installed (pip install 'megatron_spark[wandb]')"
            )


@dataclass(frozen=True)
class MetricsConfig:
    """Where a run's metrics go besides RUN_DIR/metrics.jsonl, and how progress is shown."""

    tensorboard: bool = True
    """Write TensorBoard events under RUN_DIR/tensorboard/."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging (off by default)."""
    progress_every_s: float = 30.0
    """When stdout is not a terminal (SLURM, a pipe, a file): seconds between the plain progress
    lines (one is also printed at the start and the end). A terminal shows a live bar instead."""

    def __post_init__(self) -> None:
        if self.progress_every_s < 0:
            raise ValueError(f"progress_every_s must be >= 0, got {self.progress_every_s}")


class StageTimer:
    """``with timer("rollout"): ...`` records ``time/rollout_s``."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{stage}_s"
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return out


class WandbSink:
    """The run's records mirrored to a wandb run under RUN_DIR/wandb/.

    A resumed run (``start_step > 0``) continues the wandb run whose id RUN_DIR/wandb/run_id
    holds; wandb cannot rewind a run, so the records it already has for steps after the
    checkpoint are kept and the resumed run's records for those steps are not sent again.
    """

    def __init__(self, cfg: WandbConfig, run_dir: Path, job_type: str, start_step: int, run_config: dict):
        import wandb

        id_file = run_dir / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if start_step > 0 and id_file.is_file() else None
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or run_dir.resolve().name,
            group=cfg.group,
            tags=list(cfg.tags),
            job_type=job_type,
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            mode=cfg.mode,
            config=run_config,
        )
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run.id + "\n")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if step < self.run.step:  # already recorded before the resumed checkpoint (see above)
            return
        values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        self.run.log(values, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() can return before wandb's service has written the run's records; teardown
        # waits for it, so RUN_DIR/wandb/ is complete when the run's logger is closed.
        wandb.teardown()


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        title: str = "train",
        config: MetricsConfig | None = None,
        run_config: dict | None = None,
    ):
        """``title``: the command (train, sft), labels the progress and the wandb job type;
        ``run_config``: the resolved config as a plain dict (stored with the wandb run)."""
        config = config or MetricsConfig()
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        self._wandb = None
        self._progress = None
        if not enabled:
            return
        self._truncate(start_step)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is optional: the jsonl file is the record
                self._writer = None
        if config.wandb.enabled:
            self._wandb = WandbSink(config.wandb, run_dir, title, start_step, run_config or {})
        self._progress = ProgressReport(
            title, total_steps, completed=start_step, unit="steps", every_s=config.progress_every_s
        )

    def _truncate(self, start_step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= start_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        plain = {k: _plain(v) for k, v in sorted(metrics.items())}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **plain}) + "\n")
        if self._writer is not None:
            for k, v in plain.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._writer.add_scalar(k, v, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(step, plain)
        info = "  ".join(f"{label}={metrics[k]:.3g}" for k, label in CONSOLE_KEYS.items() if k in metrics)
        self._progress.update(completed=step, info=info)

    def print(self, text: str) -> None:
        """``text`` above the progress bar, as one line however wide (logs are grepped by line)
        and verbatim (no rich markup)."""
        if self.enabled:
            self._progress.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
