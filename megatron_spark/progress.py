"""Progress of a counted task (training steps, generated sequences) on the console.

On a terminal it is a rich progress bar. Anywhere else (a SLURM log, a pipe, ``nohup``) a bar
cannot redraw itself: rich then prints only its last state, when the task ends, so a three-hour
run would say nothing for three hours. There the same information is printed as plain,
timestamped lines, one when the task starts, then at most one every ``every_s`` seconds, and one
when it ends (on stdout, or stderr for a command whose stdout is its output)::

    2026-12-04 23:10:06 train 40/300 steps (13%) elapsed 0:01:02 eta 0:06:43 acc=0.52 loss=0.01

rich decides what a terminal is (``Console.is_terminal``: ``isatty``, or ``TTY_COMPATIBLE`` /
``FORCE_COLOR`` set by the user) and whether it can redraw (not ``TERM=dumb``).
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressReport:
    """One task's progress, from ``completed`` to ``total`` in ``unit``s (``total`` may grow)."""

    def __init__(
        self,
        label: str,
        total: int,
        completed: int = 0,
        unit: str = "",
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        stderr: bool = False,
    ):
        """``stderr``: report there instead of stdout, for commands whose stdout is their output
        (``generate``'s rows)."""
        from rich.console import Console

        self.label, self.unit, self.every_s, self.clock = label, unit, every_s, clock
        self.total, self.completed = total, completed
        self.info = ""
        self._file = sys.stderr if stderr else sys.stdout
        console = Console(stderr=stderr)
        self.live = console.is_terminal and not console.is_dumb_terminal
        """Whether a bar redraws in place (a terminal); else plain lines are printed."""
        self._start, self._first = clock(), completed
        self._printed: tuple[int, int, str] | None = None  # (completed, total, info) of the last line
        self._last_line = -math.inf
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self._task = self._bar.add_task(label, total=total, completed=completed, info="")
            self._bar.start()
        else:
            self._line()

    def update(
        self,
        completed: int | None = None,
        advance: int = 0,
        total: int | None = None,
        info: str | None = None,
    ) -> None:
        """Set (``completed``) or advance the count, optionally the total and the trailing info."""
        if completed is not None:
            self.completed = completed
        self.completed += advance
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, info=self.info)
        elif self.clock() - self._last_line >= self.every_s:
            self._line()

    def print(self, text: str) -> None:
        """A message above the bar (on a terminal) or as its own line; one line however wide
        (logs are grepped by line) and verbatim (no rich markup)."""
        if self._bar is not None:
            self._bar.console.print(text, soft_wrap=True, markup=False)
        else:
            print(text, file=self._file, flush=True)

    def close(self) -> None:
        """Stop the bar; elsewhere print the final state unless the last line already showed it."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._printed != (self.completed, self.total, self.info):
            self._line()

    def _line(self) -> None:
        now = self.clock()
        elapsed = now - self._start
        share = f" ({100 * self.completed // self.total}%)" if self.total > 0 else ""
        text = f"{self.label} {self.completed}/{self.total}{' ' + self.unit if self.unit else ''}{share}"
        text += f" elapsed {_clock(elapsed)}"
        done = self.completed - self._first
        if done > 0 and self.completed < self.total:
            text += f" eta {_clock(elapsed / done * (self.total - self.completed))}"
        if self.info:
            text += f" {self.info}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {text}", file=self._file, flush=True)
        self._printed = (self.completed, self.total, self.info)
        self._last_line = now
