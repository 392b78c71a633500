"""The finite-loss check without a host-device synchronisation per step.

On a CPU the loss is a host value: :class:`FiniteWatch` checks it at once, before the update, as
it always has. On an accelerator, reading it (``bool(torch.isfinite(loss))``) would wait for the
whole queue of kernels every step and leave the device idle while the next step is prepared. There
the watch copies the flag to pinned host memory without waiting, records an event, and reads
the flag once the event has completed, usually at the next step: a non-finite loss stops the run
one or two steps after it appeared (the weights have then been updated with it, which the error
says; the checkpoints on disk are all from before it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Pending:
    """A step's finiteness flag on its way to the host."""

    step: int
    flag: Tensor  # bool, on the host (pinned) once ``event`` has completed
    loss: Tensor  # the step's loss, detached (for the message)
    event: object | None  # a device event, None where the flag was read at once


class FiniteWatch:
    """Finds the first step whose loss was not finite (module docstring).

    Args:
        deferred: read the flags without waiting (None: on an accelerator, not on a CPU).
    """

    def __init__(self, deferred: bool | None = None) -> None:
        self.deferred = deferred
        self.pending: deque[Pending] = deque()

    def is_deferred(self, loss: Tensor) -> bool:
        return loss.device.type != "cpu" if self.deferred is None else self.deferred

    def push(self, step: int, loss: Tensor) -> None:
        """Queue ``loss``'s flag; at once (no queue) where the check is not deferred."""
        loss = loss.detach()
        flag = torch.isfinite(loss)
        event = None
        if loss.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flag = host
        self.pending.append(Pending(step, flag, loss, event))

    def check(self, step: int, loss: Tensor) -> Pending | None:
        """This step's loss queued, and the first non-finite step found so far: this one where the check is
        not deferred; an earlier one whose flag has arrived where it is."""
        if self.is_deferred(loss):
            bad = self.first_nonfinite()
            self.push(step, loss)
            return bad
        self.push(step, loss)
        return self.first_nonfinite()

    def first_nonfinite(self) -> Pending | None:
        """The earliest queued step whose flag has arrived and says non-finite; the steps checked are dropped."""
        while self.pending:
            head = self.pending[0]
            if head.event is not None and not head.event.query():
                return None  # not on the host yet: looked at again at a later step
            self.pending.popleft()
            if not bool(head.flag):
                return head
        return None
