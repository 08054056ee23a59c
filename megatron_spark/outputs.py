"""Every command's output is refused when present, never the input, and appears whole or not at all.

Checks run before any work, so that a command that cannot write its output fails in a second
with one line, not after an hour with a traceback; the write itself goes to a temporary sibling
that is renamed over the output only when complete (``os.replace``: atomic on one file system).
:func:`~megatron_spark.checkpoint.io.atomic_output_dir` is the directory form.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_spark.errors import UserError


def check_writable(out: Path, flag: str = "--out") -> None:
    """Refuse an output whose nearest existing ancestor is a file or not writable."""
    out = Path(out).absolute()
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {out}: cannot write in {parent} (permission denied)")
            return


def check_not_input(out: Path, inputs: Iterable[tuple[str, str | Path]], flag: str = "--out") -> None:
    """Refuse an output that is one of the inputs or holds one (replacing it would destroy the
    input). ``inputs``: (flag, path) pairs, for the message."""
    real_out = Path(out).resolve()
    for name, path in inputs:
        real_in = Path(path).resolve()
        if real_out == real_in or real_out in real_in.parents:
            raise UserError(
                f"{flag} {out}: is the input {name} {path} or holds it; write the output elsewhere"
            )


def check_output(
    out: Path,
    overwrite: bool,
    inputs: Iterable[tuple[str, str | Path]] = (),
    flag: str = "--out",
    want_dir: bool = False,
) -> None:
    """All the refusals, in the order a user fixes them: the input, the kind, presence, access."""
    out = Path(out)
    check_not_input(out, inputs, flag)
    if want_dir and out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a directory")
    if not want_dir and out.is_dir():
        raise UserError(f"{flag} {out}: is a directory; name the file to write")
    present = out.exists() and (not want_dir or any(out.iterdir()))
    if present and not overwrite:
        what = "already holds files" if want_dir else "already exists"
        raise UserError(f"{flag} {out}: {what}; pass --overwrite to replace it")
    check_writable(out, flag)


@contextlib.contextmanager
def atomic_file(out: Path, overwrite: bool, inputs: Iterable[tuple[str, str | Path]] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to write; it becomes ``out`` only if the block
    completes (an existing ``out`` stays untouched otherwise, and the temporary goes)."""
    out = Path(out)
    check_output(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
