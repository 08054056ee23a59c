"""Preemption: SIGTERM and SIGINT end a training run at the next step boundary, with a checkpoint.

SLURM sends SIGTERM on preemption and at the time limit (then SIGKILL after ``KillWait``); Ctrl-C
sends SIGINT. The first signal asks the loop to stop: the current step finishes, every rank
agrees on the step to stop after (one all-reduce per step: ranks may see the signal in
different steps), the run writes a checkpoint unless that step is already saved, prints one
line naming it and exits with :data:`EXIT_STATUS` (128 + the signal's number, what a shell
reports for a process the signal killed). A second signal exits at once.

A second copy of the signal that arrives within :data:`DUPLICATE_WINDOW_S` of the first is the
same request: SLURM signals every process of a job step, a terminal's Ctrl-C every process of
the foreground group, and torchrun forwards the signal it got to its workers, so each worker sees
it twice. A different signal is always a second request, however soon it comes.

The signals are watched on a thread (``signal.set_wakeup_fd``): Python runs its handlers only
between bytecodes of the main thread, which may be inside a collective or a long kernel; the
thread reads each signal as it arrives and can end the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}
"""Exit status after a stop asked for by each signal (also after the second signal)."""
DUPLICATE_WINDOW_S = 1.0
"""A repeat of the first signal this soon after it is the same request, not a second one."""


class StopSignals:
    """Installed for the life of a training run (main thread); :meth:`agreed` is the step-
    boundary check."""

    def __init__(self):
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._wakeup_previous: int | None = None
        self._read_fd: int | None = None
        self._write_fd: int | None = None

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only: nothing to watch
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        for sig in SIGNALS:
            # The Python-level handler does nothing: the watcher thread acts on the wakeup byte.
            self._previous[sig] = signal.signal(sig, lambda *_: None)
        self._wakeup_previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="stop-signals", daemon=True).start()
        return self

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                os.close(self._read_fd)
                return
            for signum in data:
                if signum not in EXIT_STATUS:
                    continue
                now = time.monotonic()
                if self.signum is None:
                    self.signum, self._first_at = signum, now
                    _say(
                        f"received {signal.Signals(signum).name}: stopping after this step with a "
                        f"checkpoint (a second signal exits at once)"
                    )
                elif signum != self.signum or now - self._first_at > DUPLICATE_WINDOW_S:
                    name, first = signal.Signals(signum).name, signal.Signals(self.signum).name
                    again = "again" if signum == self.signum else f"after {first}"
                    _say(f"received {name} {again}: exiting now, without a checkpoint")
                    os._exit(EXIT_STATUS[signum])

    def uninstall(self) -> None:
        if self._write_fd is None:
            return
        signal.set_wakeup_fd(self._wakeup_previous if self._wakeup_previous is not None else -1)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)  # ends the watcher's read
        self._write_fd = None

    def agreed(self) -> int | None:
        """The signal every rank stops for (collective over the world: each rank must call this
        at the same step boundary), or None to go on."""
        mine = self.signum or 0
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([mine], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # any rank's signal stops every rank
            mine = int(t.item())
        return mine or None


def _say(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"megatron-spark: {text}", file=sys.stderr, flush=True)
