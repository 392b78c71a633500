"""Progress bars inside long computations: a diffusion bound over many timesteps, an ODE solve, a
sampling chain. Lightning's bar moves once per batch; one batch of a test bound or of an adaptive
likelihood solve can take minutes, so the computation itself reports how far it is.

A bar appears only when the computation has run for :data:`DELAY` seconds (short ones, and tests,
stay quiet), is removed when it ends (``leave=False``), shows an ETA, and is off altogether where
the run's progress bar is (``trainer.enable_progress_bar=false``; :func:`set_enabled`) or with
``GENLAB_PROGRESS=0`` in the environment.

    with progress.bar("test bound: timestep chunks", total=len(chunks)) as p:
        for chunk in chunks:
            ...
            p.advance()

    with progress.bar("ODE solve", total=1.0, unit="of t") as p:   # continuous progress
        p.reach(abs(t - t0) / abs(t1 - t0))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

DELAY = 2.0  # seconds before a bar is shown
MININTERVAL = 1.0  # seconds between redraws
_state = {"enabled": True}


def set_enabled(enabled: bool) -> None:
    """Show (True) or hide (False) the bars of long computations in this process."""
    _state["enabled"] = bool(enabled)


def enabled() -> bool:
    """Whether bars are shown: :func:`set_enabled` and ``GENLAB_PROGRESS`` (``0`` hides them)."""
    return _state["enabled"] and os.environ.get("GENLAB_PROGRESS", "1") != "0"


class Bar:
    """A handle on one bar: :meth:`advance` by steps, or :meth:`reach` a share of a continuous total."""

    def __init__(self, bar: tqdm) -> None:
        self._bar = bar
        self.done = 0.0

    def advance(self, n: float = 1) -> None:
        """``n`` more units done."""
        self.done += n
        self._bar.update(n)

    def reach(self, value: float) -> None:
        """Done up to ``value`` (monotone: a solver that steps back, e.g. after a rejected step, leaves the bar)."""
        if value > self.done:
            self._bar.update(value - self.done)
            self.done = value

    def note(self, text: str) -> None:
        """A short status after the bar (e.g. ``nfe=120``)."""
        self._bar.set_postfix_str(text, refresh=False)


@contextmanager
def bar(desc: str, total: float, unit: str = "it") -> Iterator[Bar]:
    """A bar for one computation of ``total`` units (module docstring)."""
    kwargs = {"bar_format": "{l_bar}{bar}| {n:.2f}/{total:.2f} [{elapsed}<{remaining}{postfix}]"} \
        if isinstance(total, float) else {}
    t = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=DELAY, mininterval=MININTERVAL, miniters=1, file=sys.stderr,
             dynamic_ncols=True, disable=not enabled(), **kwargs)
    try:
        yield Bar(t)
    finally:
        t.close()
