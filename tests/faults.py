"""Fault injection for the reliability tests: a stop request at a chosen step, damaged files,
checkpoint comparison."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from genlab import interrupt


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
    a, b = (torch.load(p, map_location="cpu", weights_only=False) for p in (a_path, b_path))
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):
        assert (key in a) == (key in b)
        for k in a.get(key, {}):
            assert torch.equal(a[key][k], b[key][k]), f"{key}[{k}] differs"
    assert len(a["optimizer_states"]) == len(b["optimizer_states"])
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"]):
        assert oa["state"].keys() == ob["state"].keys()
        for i in oa["state"]:
            for name, v in oa["state"][i].items():
                w = ob["state"][i][name]
                assert torch.equal(v, w) if torch.is_tensor(v) else v == w, f"optimizer state {i}.{name} differs"
