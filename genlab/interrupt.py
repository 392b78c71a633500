"""Graceful stops on SIGTERM / SIGINT: training stops at the next step, long evaluations between chunks.

A signal only *requests* the stop (:func:`requested`); the run acts on it at safe points:
:class:`genlab.callbacks.guard.RunGuard` after each training step (it writes a checkpoint of
that state and raises :class:`RunInterrupted`), and long evaluation loops (the diffusion bound
over timesteps, the ODE likelihood's function evaluations) call :func:`check` between chunks.
A second SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt`` at once, for a user who will not wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state: dict[str, int | None] = {"signum": None}


class RunInterrupted(Exception):
    """A run was stopped by a signal (SIGTERM / SIGINT); ``signum`` says which, ``checkpoint`` (set by
    ``genlab-train``) where the state at the stop was saved."""

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum, self.checkpoint = signum, None
        super().__init__(f"interrupted by {signal.Signals(signum).name}{' ' + where if where else ''}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + signal number (143 SIGTERM, 130 SIGINT)."""
        return 128 + self.signum


def handler(signum: int, frame: FrameType | None) -> None:
    """Record the first signal; a second SIGINT means "now"."""
    if _state["signum"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    if _state["signum"] is None:
        _state["signum"] = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint",
              flush=True)


def requested() -> int | None:
    """The signal number if a stop was requested, else None."""
    return _state["signum"]


def check(where: str = "") -> None:
    """Raise :class:`RunInterrupted` if a stop was requested (call between chunks of long work)."""
    if _state["signum"] is not None:
        raise RunInterrupted(_state["signum"], where)


def install() -> None:
    """Make SIGTERM and SIGINT request a stop (replacing Lightning's SIGTERM notifier, whose
    ``SystemExit`` would end the run with exit code 0 and no record)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (a run inside a worker thread keeps the defaults)
    for s in SIGNALS:
        signal.signal(s, handler)


@contextmanager
def handling() -> Iterator[None]:
    """Install the handlers for the duration of a run; restore the previous ones and clear the
    request after (so one interrupted run in a process does not stop the next)."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state["signum"] = None
    install()
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, h in previous.items():
                signal.signal(s, h)
        _state["signum"] = None
