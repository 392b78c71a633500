"""Fault injection for the reliability tests: a stop request at a chosen step, damaged files,
checkpoint comparison."""

from __future__ import annotations

import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from genlab import interrupt
from genlab.checkpoints import differences


class StopAt(Callback):
    """Request a stop (as SIGTERM would) right after training step ``step``: config
    ``+callbacks.stop._target_=faults.StopAt +callbacks.stop.step=N``."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            interrupt.handler(self.signum, None)


def flip_bytes(path: Path, n: int = 4096, at: float = 0.5) -> None:
    """Invert ``n`` bytes of a file starting at the fraction ``at`` of its length."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_same_state(a_path: str, b_path: str) -> None:
    """Two checkpoints hold bit-identical weights (also the raw ones of an EMA run), optimizer states
    and global step."""
    assert differences(a_path, b_path) == []
