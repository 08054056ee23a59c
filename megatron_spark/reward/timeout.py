"""Run a function under a wall-clock limit, interrupting it if it runs past.

On the main thread the limit is a ``SIGALRM`` interval timer: it interrupts pure Python loops and
blocking calls such as ``time.sleep`` alike. Signals only reach the main thread, so elsewhere the
function runs on a helper thread that the caller stops waiting for at the deadline; the helper is
then sent an asynchronous exception, which ends pure Python code at its next bytecode (a blocking
C call ends first, then the exception is raised; either way the caller has moved on).

math-verify arms ``signal.alarm`` itself; callers under this limit pass it no timeout, so the
two never overwrite each other's timers.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CallTimedOut(Exception):
    """The function did not return within its limit."""


class _Expired(BaseException):
    """Raised inside the timed function; a BaseException so that ``except Exception`` in the
    function (ours, math-verify's or the user's) does not swallow it."""


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _on_alarm(signum, frame):
    raise _Expired


def _call_with_alarm(fn: Callable[[], T], timeout_s: float) -> T:
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    # setitimer returns the timer it replaces: an enclosing limit, re-armed on the way out.
    outer_s, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.monotonic()
    try:
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Expired:
        raise CallTimedOut(f"no result within {timeout_s:g} s") from None
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if outer_s > 0:
            left_s = outer_s - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left_s, 1e-3))


def _call_on_thread(fn: Callable[[], T], timeout_s: float) -> T:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the caller below (or dropped after a timeout)
            outcome["error"] = e

    worker = threading.Thread(target=run, name="timed-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Expired))
        raise CallTimedOut(f"no result within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def call_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()``, or CallTimedOut once ``timeout_s`` seconds have passed without a result."""
    if _can_use_alarm():
        return _call_with_alarm(fn, timeout_s)
    return _call_on_thread(fn, timeout_s)
