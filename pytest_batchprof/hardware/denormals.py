"""Flushing denormal floats to zero on every CPU thread torch computes on.

Adam's running averages decay by 0.9 (and 0.999) each step wherever a
gradient is zero, as it is for the weights of a ReLU unit that is off. After
about 800 such steps they fall below 1.2e-38, float32's smallest normal
number, and x86 CPUs compute on such denormals up to 100 times slower, so a
run's steps slow down several times after its first thousand (the manual's
'Memory and precision' guide has the figures). Flushing denormals to
zero (the FTZ and DAZ bits, what TensorFlow does by default) keeps every step
as fast as the first; the values it changes are below 1.2e-38, where they do
not change an Adam update (its epsilon is 1e-8).

``torch.set_flush_denormal`` sets the bits only on the calling thread, and
torch's OpenMP workers already exist by the time a run starts. So the flag is
also set inside one OpenMP parallel region of the runtime torch is linked
with, which runs on every thread of that pool. :func:`flush_state` checks the result on
all threads, with a multiplication large enough to be split across them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PROBE_BITS = 1 << 22
"""The bits of a float32 denormal (5.9e-39), written as an integer: converting a
float literal would itself be flushed on a thread that flushes."""

PROBE_ELEMENTS = 1 << 18
"""Eight of torch's 32,768-element grains (1 MB, about 2 ms): split across up to 8 threads."""


def flush_state() -> str:
    """``"on"``, ``"off"`` or ``"partial"``: whether torch's threads flush denormals."""
    probe = torch.full((PROBE_ELEMENTS,), PROBE_BITS, dtype=torch.int32).view(torch.float32)
    surviving = int((probe * 1.0).count_nonzero())
    if surviving == 0:
        return "on"
    return "off" if surviving == PROBE_ELEMENTS else "partial"


def set_flush(enabled: bool) -> None:
    """Set flushing on this thread and every OpenMP worker (:func:`flush_state` checks it)."""
    if torch.set_flush_denormal(enabled):  # False: a CPU without the bits, nothing to set
        _on_every_openmp_thread(lambda: torch.set_flush_denormal(enabled))


@contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush denormals inside the block (when ``enabled``), restoring the state found.

    One probe per block, for the state to restore: a run pays about 2 ms.
    """
    if not enabled:
        yield
        return
    before = flush_state()
    set_flush(True)
    try:
        yield
    finally:
        if before != "on":
            set_flush(False)


def _on_every_openmp_thread(action: Callable[[], object]) -> None:
    """Run ``action`` once on each thread of the calling thread's OpenMP pool.

    A no-op where torch does not use a GNU-compatible OpenMP runtime (libgomp,
    or LLVM's libomp, which exports the same entry point); the calling thread
    is then the only one changed, and :func:`flush_state` says "partial".
    """
    library = _openmp_library()
    if library is None:
        return
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = callback_type(lambda _: action())  # ctypes takes the GIL in each thread
    parallel = library.GOMP_parallel
    parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    parallel(callback, None, 0, 0)  # 0 threads: the pool's current size


def _openmp_library() -> ctypes.CDLL | None:
    """torch's CPU library, through which ``GOMP_parallel`` resolves to torch's own runtime.

    Looking the symbol up in libtorch_cpu's handle searches its dependencies,
    so it finds the OpenMP runtime torch was linked with, not another copy in
    the process (scikit-learn, for one, brings its own libgomp).
    """
    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        if hasattr(library, "GOMP_parallel"):
            return library
    return None
