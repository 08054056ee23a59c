"""Run directories are owned: one run at a time, never over another run's or the user's files.

A training run (``train``/``sft``) writes only these entries of its run directory::

    checkpoints/  config.yaml  metrics.jsonl  summary.json  tensorboard/  .megatron-spark.lock

Rules (docs/training.md, "Run directories"):

* **one run at a time**: rank 0 holds an exclusive ``flock`` on ``.megatron-spark.lock`` for the
  life of the run; a second run on the directory is refused, naming the holder's pid and host
  (written into the lock file). The lock goes when the process does, however it ends.
* **a fresh run starts clean**: a directory holding any run artefact is refused unless
  ``--resume`` (continue it) or ``--overwrite`` (delete those artefacts, and nothing else, first).
* **never over files it did not create**: an artefact name present in a directory no run ever
  owned (no lock file and no checkpoint) is the user's file, e.g. their own ``config.yaml``: the
  run is refused even with ``--overwrite``.
* **stale temporaries go**: ``checkpoints/.*.tmp`` left by a killed run are removed once the new
  run holds the lock (no live run can own them then).

:func:`check` runs first and only reads, so a refused run creates nothing; :func:`claim` runs at
the first write (after the model and data are built) and re-checks under the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from megatron_spark.errors import UserError

LOCK_NAME = ".megatron-spark.lock"
ARTEFACTS = ("checkpoints", "config.yaml", "metrics.jsonl", "summary.json", "tensorboard")
"""What a run writes into its directory (besides the lock file)."""


def _artefacts(run_dir: Path) -> list[str]:
    return [name for name in ARTEFACTS if (run_dir / name).exists()]


def _owned(run_dir: Path) -> bool:
    """Whether a megatron-spark run wrote this directory: it holds the lock file, or (runs from
    before the lock existed) a checkpoint."""
    ckpts = run_dir / "checkpoints"
    return (run_dir / LOCK_NAME).is_file() or (
        ckpts.is_dir() and ((ckpts / "latest").exists() or any(ckpts.glob("step_*")))
    )


def check(run_dir: Path, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """Refuse, before anything is written, a run directory this run may not use (``locked``:
    this process holds its lock already)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the run or replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir {run_dir}: exists and is not a directory")
    if not run_dir.is_dir():
        for parent in run_dir.parents:  # the nearest existing ancestor must be a writable dir
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"run_dir {run_dir}: {parent} is a file, not a directory")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise UserError(f"run_dir {run_dir}: cannot create it ({parent} is not writable)")
                break
        return
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"run_dir {run_dir}: not writable")
    holder = None if locked else _holder(run_dir)
    if holder is not None:
        raise UserError(
            f"run_dir {run_dir}: in use by {holder}; wait for it to end or choose another run_dir"
        )
    present = _artefacts(run_dir)
    if not present or resume:
        return
    if not _owned(run_dir):
        raise UserError(
            f"{run_dir / present[0]}: not written by a megatron-spark run, and a run writes its "
            f"{present[0]} there; move it away or choose another run_dir"
        )
    if not overwrite:
        raise UserError(
            f"run_dir {run_dir}: already holds a run ({', '.join(present)}); pass --resume to continue "
            f"it, --overwrite to replace it, or choose another run_dir"
        )


def _holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock ("pid 123 on host h, train since ..."), or None if free."""
    path = run_dir / LOCK_NAME
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return _describe(path)
    finally:
        os.close(fd)
    return None


def _describe(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return f"{info['command']} run pid {info['pid']} on host {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run (its lock file names no holder)"


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` or the process ends."""

    def __init__(self, run_dir: Path, command: str):
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise UserError(
                f"run_dir {run_dir}: in use by {_describe(self.path)}; wait for it to end or choose "
                f"another run_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def claim(run_dir: Path, command: str, resume: bool, overwrite: bool) -> RunLock:
    """Create ``run_dir`` if needed and lock it; then, under the lock, check it again (another
    run may have come and gone since :func:`check`), remove stale temporaries and, with
    ``overwrite``, the previous run's artefacts."""
    check(run_dir, resume, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, command)
    try:
        check(run_dir, resume, overwrite, locked=True)
        if overwrite:
            for name in _artefacts(run_dir):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
