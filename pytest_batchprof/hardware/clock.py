"""The clock of a timed stretch of device work: CUDA events on CUDA, else the host's.

On CUDA, kernels run after the host has queued them, so a host clock measures
finished work only after a device sync. The training loop and the latency
figure time a stretch (an epoch's steps, a block of inference calls) with one
sync at its end and none inside it: on CUDA by a pair of events recorded in
the stream around it (``torch.cuda.Event(enable_timing=True)``, read with
``elapsed_time`` once the end event has completed), elsewhere by
``time.perf_counter`` after a device sync at each end. The report names the
clock each figure came from.
"""

from __future__ import annotations

import time

import torch

from pytest_batchprof.hardware.devices import synchronize

CUDA_EVENTS = "CUDA events"
HOST_CLOCK = "time.perf_counter"


def clock_name(device: torch.device) -> str:
    """Which clock a :class:`Stopwatch` on ``device`` reads."""
    return CUDA_EVENTS if device.type == "cuda" else HOST_CLOCK


class Stopwatch:
    """Times the device work queued between :meth:`start` and :meth:`stop`, in seconds."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = clock_name(device)
        self._began: torch.cuda.Event | float | None = None

    def start(self) -> None:
        if self.name == CUDA_EVENTS:
            self._began = torch.cuda.Event(enable_timing=True)
            self._began.record()
        else:
            synchronize(self.device)
            self._began = time.perf_counter()

    def stop(self) -> float:
        """Seconds since :meth:`start`, once the work queued until now has finished."""
        if self.name == CUDA_EVENTS:
            ended = torch.cuda.Event(enable_timing=True)
            ended.record()
            ended.synchronize()  # the one host wait, at the end
            return self._began.elapsed_time(ended) / 1000  # milliseconds
        synchronize(self.device)
        return time.perf_counter() - self._began
