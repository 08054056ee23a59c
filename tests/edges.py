"""Helpers of the edge tests: a refused command exits 2 with one stderr line, creates nothing and
changes nothing (every file hashed before and after)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, _env


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` (hidden ones included) -> sha256 of its bytes ('dir' for a
    directory); a root that does not exist maps to 'absent'."""
    out = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = "absent"
            continue
        for dirpath, _, filenames in os.walk(root):
            out[dirpath] = "dir"
            for name in filenames:
                path = Path(dirpath) / name
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cli(args: list[str], pythonpath: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``megatron-spark ARGS`` in a fresh process (``pythonpath`` first on its import path)."""
    env = _env()
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "megatron_spark.cli", *(a if isinstance(a, bytes) else str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one stderr line of a command that must exit 2 naming ``needles``, without a traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert lines[0].startswith("megatron-spark: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]
