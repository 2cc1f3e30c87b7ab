"""Numeric precision of a run: TF32 matmuls, or bf16 / fp16 mixed precision by autocast.

``fp32`` is torch's default. ``tf32`` lets CUDA's matmuls and convolutions run
on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation), set for the
run and restored after it. ``bf16`` and ``fp16`` run the forward pass and the
loss under ``torch.autocast`` (matmuls and convolutions in the low precision,
reductions and the loss in fp32), with the weights and the optimizer in fp32;
``fp16`` adds ``torch.amp.GradScaler``, since its gradients underflow without
it. Evaluation and the latency figure run in the run's precision too.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from pytest_batchprof.settings import PRECISIONS

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TF32_MIN_CAPABILITY = 8
"""CUDA compute capability (major) from which GPUs have TF32 tensor cores (Ampere)."""


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why ``device`` cannot train in ``precision`` (one line), or ``None`` when it can."""
    if precision not in PRECISIONS:
        return f"{precision!r} is not one of {', '.join(PRECISIONS)}"
    if precision == "tf32":
        if device.type != "cuda":
            return f"tf32 is a CUDA matmul mode, and {device} is not a CUDA device"
        major, minor = torch.cuda.get_device_capability(device)
        if major < TF32_MIN_CAPABILITY:
            return (f"{device} ({torch.cuda.get_device_name(device)}, compute capability "
                    f"{major}.{minor}) has no TF32; it needs {TF32_MIN_CAPABILITY}.0 or newer")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{device} ({torch.cuda.get_device_name(device)}) has no bf16"
    if precision == "fp16" and device.type == "cpu" and not cpu_has_fp16():
        return ("this CPU has no fp16 arithmetic (no avx512_fp16 or amx_fp16), so fp16 "
                "would be emulated; use bf16, or fp16 on a CUDA or MPS device")
    return None


def cpu_has_fp16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in fp16 natively: ARM64, or x86 with ``avx512_fp16`` or
    ``amx_fp16`` (Sapphire Rapids and later; AMD's Zen 4 has bf16 but not fp16)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_fp16", "amx_fp16"))


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: Cooper Lake, Sapphire Rapids,
Zen 4 and later. ARM64 names its extension ``bf16``."""


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU computes in bf16 natively (:data:`BF16_CPU_FLAGS`, or ARM64's
    ``bf16``, or a torch CPU capability naming BF16); ``None`` when it cannot be told (no
    ``/proc/cpuinfo``: macOS, Windows). Probed once per file: every row of a session
    asks."""
    if "BF16" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return None
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "bf16" in flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def emulation_note(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` will run slower than fp32 on ``device`` (a clause), or ``None``:
    bf16 on a CPU without bf16 instructions, which torch emulates in fp32 arithmetic with
    conversions around every operation (3-4x slower than fp32 on an AVX2 CPU)."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_bf16() is not False:
        return None
    return (f"this CPU has no bf16 instructions (no {' or '.join(BF16_CPU_FLAGS)}), so "
            f"torch emulates bf16 and it trains several times slower than fp32")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The context of a forward pass and loss in ``precision`` (reusable): ``torch.autocast``
    for bf16 and fp16, nothing for fp32 and tf32."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's gradient scaler (``None`` for the others)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """For tf32 on CUDA, let matmuls and cuDNN convolutions use TF32 while the block runs,
    and restore what was set before; nothing otherwise."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class InPrecision(nn.Module):
    """``model`` called under its run's autocast: what the latency and inference timers
    call, so that they time the precision the run trained in."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.context = autocast(precision, device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with self.context:
            return self.model(inputs)


def in_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``model`` as inference in ``precision`` calls it: itself for fp32 and tf32 (whose
    matmul mode :func:`matmul_precision` sets), wrapped in :class:`InPrecision` otherwise."""
    return model if precision not in AUTOCAST_DTYPES else InPrecision(model, precision, device)
