"""Per-step metrics: ``RUN_DIR/metrics.jsonl``, TensorBoard events and a rich progress bar.

Only rank 0 writes. Names are documented in docs/metrics.md. On resume the jsonl file is cut back
to the checkpoint's step and TensorBoard purges later events, so a resumed run's record reads as
if it had never stopped.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

CONSOLE_KEYS = {
    "policy/accuracy": "acc",
    "eval/accuracy": "eval_acc",
    "train/loss": "loss",
    "train/grad_norm": "gnorm",
}
"""Metrics shown on the progress bar, and their short labels."""


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


class MetricsLogger:
    def __init__(
        self, run_dir: Path, enabled: bool, total_steps: int, start_step: int = 0, title: str = "train"
    ):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        self._progress = None
        if not enabled:
            return
        self._truncate(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is optional: the jsonl file is the record
            self._writer = None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._task = self._progress.add_task(title, total=total_steps, completed=start_step, info="")
        self._progress.start()

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
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._writer.add_scalar(k, v, step)
            self._writer.flush()
        info = "  ".join(f"{label}={metrics[k]:.3g}" for k, label in CONSOLE_KEYS.items() if k in metrics)
        self._progress.update(self._task, completed=step, info=info)

    def print(self, text: str) -> None:
        """``text`` above the progress bar, as one line however wide (logs are grepped by line)
        and verbatim (no rich markup)."""
        if self.enabled:
            self._progress.console.print(text, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
