"""Torch threads under pytest-xdist: each worker trains with its share of the cores.

torch gives every process as many intra-op threads as it counts cores, so under
``pytest -n N`` each of the N workers would take them all: the cores are
oversubscribed N times, and a worker's time figures compare neither with a
serial session's nor with each other's. A worker's session therefore sets
``max(1, threads // N)`` threads when it is made, ``threads`` being torch's count
in that worker before the change; unless the user chose the count (with
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, which torch reads for its own), which
is left as it is. Every row holds the threads its run trained with (``threads``),
and a worker's rows say so in the table (``threads_note``).

The decision is a plain function (:func:`worker_share`) so that it can be
checked without torch; :func:`share_threads` applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables by which a user chooses torch's thread count: a worker keeps it."""


@dataclass(frozen=True)
class ThreadShare:
    """The torch threads this process trains with, and how that count was chosen."""

    threads: int
    """The count set (or kept) when the session was made."""
    before: int
    """torch's count before: the cores as torch counts them, or the user's choice."""
    workers: int | None = None
    """The xdist workers of the session, when this process is one of them."""
    chosen_by: str | None = None
    """The environment variable that chose the count, which a worker then keeps."""

    def note(self, threads: int) -> str | None:
        """What a row trained with ``threads`` threads says of them: ``None`` outside xdist,
        else ``xdist worker: 1 of 2 threads, 2 workers``."""
        if self.workers is None:
            return None
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        if self.chosen_by is not None:
            return f"xdist worker: {threads} threads ({self.chosen_by}), {workers}"
        return f"xdist worker: {threads} of {self.before} threads, {workers}"


def worker_share(threads: int, workers: int | None, environ: Mapping[str, str]) -> ThreadShare:
    """The threads of a process that has ``threads`` torch threads now and is one of
    ``workers`` xdist workers (``None``: not a worker, the count is kept)."""
    if workers is None:
        return ThreadShare(threads, threads)
    chosen_by = next((name for name in USER_THREAD_VARIABLES if environ.get(name)), None)
    if chosen_by is not None:
        return ThreadShare(threads, threads, workers, chosen_by)
    return ThreadShare(max(1, threads // workers), threads, workers)


def share_threads(workerinput: Mapping[str, object] | None,
                  environ: Mapping[str, str]) -> ThreadShare:
    """Set this process's torch threads to its share (see the module docstring); ``workerinput``
    is ``config.workerinput`` in an xdist worker, else ``None``. Imports torch."""
    import torch

    workers = None if workerinput is None else int(workerinput.get("workercount", 1))
    share = worker_share(torch.get_num_threads(), workers, environ)
    if share.threads != share.before:
        torch.set_num_threads(share.threads)
    return share
