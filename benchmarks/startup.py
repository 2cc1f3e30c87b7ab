"""What the installed plugin costs a pytest session that does not use it, side by side.

Every pytest session of an environment where pytest-batchprof is installed
loads the plugin through its ``pytest11`` entry point, including the sessions
of projects that never asked for it. This script runs the same trivial session
(one test that uses no batchprof fixture, marker or option) with the plugin
loaded and with ``-p no:batchprof``, alternating the two so that drift in the
machine's speed hits both alike, and reports the median wall time and peak
resident memory (the child's ``ru_maxrss`` from ``wait4``) of each, the
difference, and the modules the plugin's session imported that the other did
not. The goal: at most 0.15 s and 30 MiB more, with none of torch,
torchvision, codecarbon, fvcore, matplotlib or scikit-learn imported.

    make startup                      # 5 pairs
    .venv/bin/python benchmarks/startup.py --pairs 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

WALL_GOAL_SECONDS = 0.15
RSS_GOAL_MIB = 30.0
HEAVY_MODULES = ("torch", "torchvision", "codecarbon", "fvcore", "matplotlib", "sklearn")

TRIVIAL_TEST = "def test_trivial():\n    assert 1 + 1 == 2\n"
MODULE_LISTER = """\
import json
import sys


def pytest_unconfigure(config):
    with open("modules.json", "w") as out:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), out)
"""


def one_session(directory: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``pytest -q`` session in ``directory``."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # wait4: the child's own rusage
    seconds = time.perf_counter() - started
    exit_code = child.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
    if exit_code != 0:
        raise SystemExit(f"startup: {' '.join(command)} exited with {exit_code}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def imported_modules(directory: Path, extra: list[str]) -> set[str]:
    """Top-level modules imported by the end of a session (through a conftest hook)."""
    (directory / "conftest.py").write_text(MODULE_LISTER)
    try:
        one_session(directory, extra)
        return set(json.loads((directory / "modules.json").read_text()))
    finally:
        (directory / "conftest.py").unlink()
        (directory / "modules.json").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5,
                        help="sessions with and without the plugin (default: 5 each)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="batchprof-startup-") as tmp:
        directory = Path(tmp)
        (directory / "test_trivial.py").write_text(TRIVIAL_TEST)
        without = ["-p", "no:batchprof"]
        one_session(directory, [])  # compile and cache bytecode before timing
        one_session(directory, without)
        samples: dict[str, list[tuple[float, float]]] = {"plugin": [], "no plugin": []}
        for _ in range(args.pairs):
            samples["plugin"].append(one_session(directory, []))
            samples["no plugin"].append(one_session(directory, without))
        extra_modules = imported_modules(directory, []) - imported_modules(directory, without)

    def medians(name: str) -> tuple[float, float]:
        walls, rss = zip(*samples[name], strict=True)
        return statistics.median(walls), statistics.median(rss)

    (with_wall, with_rss), (bare_wall, bare_rss) = medians("plugin"), medians("no plugin")
    wall_cost, rss_cost = with_wall - bare_wall, with_rss - bare_rss
    heavy = sorted(set(HEAVY_MODULES) & extra_modules)
    rows = [
        ["installed, unused", f"{with_wall:.3f}", f"{with_rss:.1f}"],
        ["-p no:batchprof", f"{bare_wall:.3f}", f"{bare_rss:.1f}"],
        ["cost of the plugin", f"{wall_cost:+.3f}", f"{rss_cost:+.1f}"],
        ["goal", f"<= {WALL_GOAL_SECONDS}", f"<= {RSS_GOAL_MIB:g}"],
    ]
    print(f"pytest session of one trivial test, median of {args.pairs} "
          f"(alternating, {sys.executable})")
    print(tabulate(rows, headers=["session", "wall (s)", "peak RSS (MiB)"], tablefmt="github"))
    print(f"modules the plugin added: {', '.join(sorted(extra_modules)) or 'none'}")
    met = wall_cost <= WALL_GOAL_SECONDS and rss_cost <= RSS_GOAL_MIB and not heavy
    verdict = "met" if met else "NOT met"
    print(f"goal {verdict}: {wall_cost * 1000:+.0f} ms, {rss_cost:+.1f} MiB"
          + (f"; heavy modules imported: {', '.join(heavy)}" if heavy else ""))
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
