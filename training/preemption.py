"""Preemption: SIGTERM / SIGUSR1 -> finish the step, checkpoint, exit with :data:`PREEMPTED_EXIT_CODE` on every rank.

slurm (``--signal``, ``scancel``, time limits) and Kubernetes (pod eviction, node drain) send SIGTERM some seconds
before SIGKILL. The handler only sets a flag; the training loop asks :meth:`PreemptionWatch.should_stop` after
every step, which all-reduces the flag (max) so that every rank stops after the SAME step even when the signal
reached only some of them, or reached them at different steps. One scalar all-reduce per step is the price;
the step already waits on a gather.

``torchrun``/``accelerate launch`` forward a SIGTERM they receive to the ranks and SIGKILL them 30 s later, so a
checkpoint must fit in that window (it does for the reference configs on local disk).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import torch

__all__ = ["PREEMPTED_EXIT_CODE", "PARENT_DIED_EXIT_CODE", "PreemptionWatch"]

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" -- the run checkpointed and can be requeued
PARENT_DIED_EXIT_CODE = 70  # a rank whose launcher died exits with this code (training.run_lock.watch_parent)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """Flag set by SIGTERM/SIGUSR1 (handlers installed in ``__init__``, restored by :meth:`close`)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test calling train() from a thread)
                logger.warning("preemption signals not handled: train() runs outside the main thread")
                break

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then checkpoint and exit", self.signal_name)

    def should_stop(self) -> bool:
        """Collective: ``True`` on every rank when any rank has received a preemption signal."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item() > 0)
        if stop and not self.requested:
            self.requested = True
            logger.warning("another rank received a preemption signal: stopping after this step")
        return stop

    def close(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
