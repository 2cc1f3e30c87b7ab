"""Choosing the torch device a session trains on.

``auto`` prefers CUDA, then Apple's MPS, then the CPU. Under pytest-xdist each
worker on a multi-GPU machine takes its own GPU (``gwN`` -> ``cuda:N % count``)
so that parallel workers do not share one card. The probe of what the machine
has is a parameter, so the choice is tested with fakes on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DeviceError(ValueError):
    """A device that was asked for and that this machine does not have."""


@dataclass(frozen=True)
class Accelerators:
    """What the machine offers: the number of CUDA devices and whether MPS works."""

    cuda_count: int
    mps: bool

    @classmethod
    def probe(cls) -> Accelerators:
        """Ask torch what this machine has."""
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mps_backend = getattr(torch.backends, "mps", None)
        mps = bool(mps_backend and mps_backend.is_available())
        return cls(cuda_count=cuda, mps=mps)


def worker_index(worker_id: str | None) -> int | None:
    """``"gw3"`` -> 3; ``None`` or ``"master"`` (no xdist) -> None."""
    if worker_id and worker_id.startswith("gw") and worker_id[2:].isdigit():
        return int(worker_id[2:])
    return None


def select_device(
    spec: str, accelerators: Accelerators, worker_id: str | None = None
) -> torch.device:
    """Turn a validated spec into a ``torch.device`` this machine has.

    Raises :class:`DeviceError` for a device that is not there, with what is.
    """
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not accelerators.mps:
            raise DeviceError(f"mps is not available here; {_available(accelerators)}")
        return torch.device("mps")
    if spec.startswith("cuda:"):
        index = int(spec.split(":", 1)[1])
        if index >= accelerators.cuda_count:
            raise DeviceError(f"{spec} is not available here; {_available(accelerators)}")
        return torch.device(spec)
    if spec == "cuda" and not accelerators.cuda_count:
        raise DeviceError(f"cuda is not available here; {_available(accelerators)}")
    if accelerators.cuda_count:  # "cuda" or "auto"
        worker = worker_index(worker_id) or 0
        return torch.device(f"cuda:{worker % accelerators.cuda_count}")
    if accelerators.mps:
        return torch.device("mps")
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a clock read after it measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _available(accelerators: Accelerators) -> str:
    names = ["cpu"]
    names += [f"cuda:{i}" for i in range(accelerators.cuda_count)]
    if accelerators.mps:
        names.append("mps")
    return "this machine has " + ", ".join(names)
