"""SIGTERM / SIGINT of `gateway serve`, caught from the process's first lines (docs/deploy.md "Graceful drain").

A worker of `serve --workers N` takes seconds to start on a busy machine (importing the runtime alone took 3-7 s
on a loaded 2-core box, then the store, SIP and the control bus). A SIGTERM in that time — the supervisor
stopping, an operator draining one worker, PR_SET_PDEATHSIG — used to meet Python's default action: the worker died
with -15 without closing anything, and the supervisor, seeing a death rather than a drain, started it again (or,
when it was itself stopping, reported the worker as failed). Here the signals are counted from
`python -m gateway serve`'s first line and handed to the event loop's handler once it runs.

Only `serve` catches them: other commands keep Python's Ctrl-C (KeyboardInterrupt).
"""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_caught = False
_pending = 0


def catch_if_serving(argv: list[str]) -> None:
    """Count stop signals from now on when `argv` (without the program name) runs `serve`. Idempotent: the
    console script and `python -m gateway` both call it, and a count already taken is kept."""
    global _caught
    if _caught or argv[:1] != ["serve"]:
        return
    _caught = True
    for sig in STOP_SIGNALS:
        signal.signal(sig, _count)


def _count(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending += 1


def pending() -> int:
    """Stop signals caught and not yet handed to a loop (`take_over`)."""
    return _pending


def take_over(loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]) -> None:
    """From now on each stop signal calls `on_signal` in `loop`; signals that came before are replayed (at most
    two: the first drains, the second hangs up at once, more add nothing).

    The loop's handlers are installed first: `signal.signal` runs the handlers of signals already delivered before
    it replaces them, so each signal is counted here or seen by the loop, never lost in between."""
    global _pending
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    missed, _pending = _pending, 0
    for _ in range(min(missed, 2)):
        loop.call_soon(on_signal)
