"""A failed worker's cause where torchrun shows it last.

When a worker exits non-zero, torchrun's elastic agent stops the others and, once they are gone,
prints about 30 lines: a traceback of torchrun itself, then a ``ChildFailedError`` summary ending
with the "Root Cause (first observed failure)" block. Anything a worker printed comes before all
of that, so a one-line error on the worker's stderr ends up buried. The root-cause block's last
field, ``traceback``, is read from the worker's error file (the path torchrun passes in
``TORCHELASTIC_ERROR_FILE``, the mechanism behind torch's ``@record``), or is a link to torch's
docs when the worker wrote none. So the CLI writes the cause there:

* a :class:`~megatron_spark.errors.UserError`: its one line, exactly as rank 0 prints it (every
  rank that raises it writes it: the agent of each node then shows it);
* any other exception (a bug): its traceback, through torch's own ``ErrorHandler``, so the
  summary ends with the exception's last line.

torchrun itself still exits with status 1 whatever the worker's status was. Outside torchrun
(no ``TORCHELASTIC_ERROR_FILE``) nothing is written.
"""

from __future__ import annotations

import json
import os
import time


def _error_file() -> str | None:
    return os.environ.get("TORCHELASTIC_ERROR_FILE")


def record_user_error(message: str) -> None:
    """Write ``message`` as this worker's failure for the torchrun agent's summary."""
    path = _error_file()
    if not path:
        return
    # The layout torch's ErrorHandler writes; without "py_callstack" the summary shows "message"
    # as it is, and the timestamp lets the agent order failures (the first is the root cause).
    data = {"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}
    with open(path, "w") as f:
        json.dump(data, f)


def record_exception(error: BaseException) -> None:
    """Write the exception being handled (call from an ``except`` block) and its traceback."""
    if not _error_file():
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(error)
