"""Whether torchrun started this pytest as one rank of a multi-process, multi-node run.

``torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT
-m pytest ...`` on every node starts pytest once per process, with the environment
below set. The plugin then trains each run data-parallel across all of them
(:func:`~pytest_batchprof.engine.parallel.join_launched_group`), and only rank 0
writes the report and compares with baselines. Read without torch: the plugin asks
when pytest configures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun (torch's elastic launcher) sets in every process it starts."""


def launched_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world size)`` when torchrun started this process as one of several;
    ``None`` otherwise."""
    environ = os.environ if environ is None else environ
    if not all(name in environ for name in LAUNCHER_VARIABLES):
        return None
    world = int(environ["WORLD_SIZE"])
    return (int(environ["RANK"]), world) if world > 1 else None
