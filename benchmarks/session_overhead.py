"""A whole pytest-batchprof session against the textbook script it replaces, side by side,
and where the session's wall time goes outside training.

Each side runs in a fresh process, alternating (``--pairs``, default 3; medians shown), so
that drift in the machine's speed hits both alike:

* session: ``python -m pytest`` on a generated test file in a temporary directory (an
  empty ``pytest.ini``, so no project's settings apply), one test calling
  ``trained_mlp(hidden=(1024,), batch_size=128)`` on MNIST for one epoch, with
  ``--batchprof-no-co2 --batchprof-no-report -p no:cacheprovider``; the run cache is off
  (it is unless ``--batchprof-cache`` or the ini's ``batchprof_cache`` names a folder), so
  every session trains. The repository's dev extra's pytest plugins (hypothesis, xdist,
  rerunfailures) are turned off with ``-p no:...``: a user who installs the package has
  none of them (``--keep-dev-plugins`` keeps them; hypothesis's imports hypothesis at the
  end of every session, about a second);
* script: ``benchmarks/textbook_mnist.py``, the posts' script (torchvision's MNIST,
  ``ToTensor`` + ``Normalize``, ``DataLoader`` batch 128 with shuffling, 784-1024-10, Adam
  lr 1e-3, one epoch, then validation and test accuracy).

Both read the same files (``--data-dir``, default ``$BATCHPROF_DATA_DIR``). The table gives
each side's whole-process wall time, its training time (the session's optimisation loop,
its per-epoch validation pass excluded, beside the row's own train time, which includes
it; the script's epoch loop) and session / script. The session's phases come from
``benchmarks/session_phases.py``, a pytest plugin loaded with ``-p`` that charges every
second of the process to the innermost phase running (library imports, the plugin's data
load, model checks, warm-up, training, evaluation, FLOPs, latency, ..., and pytest's own
stages), so they add up to the wall time; the time after the session's last hook, the
interpreter's exit, is the wall time left over.

Both sides run without ``PYTHONDONTWRITEBYTECODE`` (as a user's shell has it), after one
untimed pair that caches bytecode and the data files (``--no-warm-up`` skips it).
``--package DIR`` adds a third side: the session with the ``pytest_batchprof`` package
found in ``DIR`` first (e.g. ``git archive HEAD pytest_batchprof | tar -x -C DIR``), to
compare a change with what it replaces in one run. ``--profile FILE`` runs one more
session under ``cProfile`` and prints its most expensive calls.

    make overhead                                        # 3 pairs
    .venv/bin/python benchmarks/session_overhead.py --pairs 5 --package /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "textbook_mnist.py"
GOAL_RATIO = 0.8
DEV_PLUGINS = ("hypothesispytest", "xdist", "xdist.looponfail", "rerunfailures")
"""pytest plugins of the repository's dev extra, which users of the package do not have."""
SESSION_TEST = """\
def test_mnist_mlp(trained_mlp):
    run = trained_mlp(hidden=({hidden},), batch_size={batch_size})
    assert run.test_accuracy is not None
"""
EXIT = "exit: after the last hook (interpreter teardown)"
TRAINING_PHASE = "training: steps"
MEASURED_AFRESH = ("train_seconds", "latency_median_s", "latency_single_median_s",
                   "peak_memory_bytes")
"""The row's figures that every session measures anew; the others must agree across sides."""


@dataclass
class Sample:
    """One process of one side: its wall time, peak memory and what it said of itself."""

    wall: float
    rss_mib: float
    training: float
    phases: dict[str, float]
    calls: dict[str, int] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    """The session's timed phases that never ran (the data's fingerprint, with no cache)."""


@dataclass
class Side:
    """How to start one side's process, and its samples."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    session: bool
    samples: list[Sample] = field(default_factory=list)

    def median(self, pick) -> float:
        return statistics.median(pick(sample) for sample in self.samples)


def run_process(side: Side, phases_file: Path) -> Sample:
    """Run ``side`` once; its wall time from just before the fork to its exit."""
    phases_file.unlink(missing_ok=True)
    env = dict(side.env, BATCHPROF_PHASES_OUT=str(phases_file))
    started = time.monotonic()
    env["BATCHPROF_PHASES_T0"] = repr(started)
    child = subprocess.Popen(side.command, cwd=side.cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)  # wait4: the child's own rusage
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
    if child.returncode != 0:
        raise SystemExit(f"session_overhead: {side.name} exited with {child.returncode}:\n"
                         f"{' '.join(side.command)}\n{output[-4000:]}")
    rss = usage.ru_maxrss / 1024  # KiB on Linux
    if side.session:
        report = json.loads(phases_file.read_text())
        phases = dict(report["seconds"])
        phases[EXIT] = wall - report["written_at"]
        (row,) = report["rows"]
        figures = {key: row.get(key) for key in (
            "train_seconds", "train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
            "params", "flops", "train_flops", "macs", "state_dict_bytes", "checkpoint_bytes",
            "latency_median_s", "latency_single_median_s", "peak_memory_bytes")}
        return Sample(wall, rss, phases.get(TRAINING_PHASE, 0.0), phases, report["calls"],
                      figures, report["not_run"])
    report = json.loads(output.strip().splitlines()[-1])
    phases = dict(report["phases"])
    phases["interpreter: start-up before the script's first line, and exit"] = (
        wall - report["elapsed_in_process"])
    return Sample(wall, rss, phases["training"], phases, figures={
        "val_accuracy": report["val_accuracy"], "test_accuracy": report["test_accuracy"]})


def child_env(data_dir: Path, package: Path | None) -> dict[str, str]:
    """The parent's environment, as a user's shell has it: bytecode cached, this folder
    (for ``-p session_phases``) and ``package`` first on the path."""
    env = dict(os.environ, BATCHPROF_DATA_DIR=str(data_dir))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    paths = [str(package)] if package is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(HERE), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def session_command(args: argparse.Namespace, test_file: Path) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-p", "session_phases", str(test_file), "-q",
               "-p", "no:cacheprovider", "--batchprof-no-co2", "--batchprof-no-report",
               f"--batchprof-epochs={args.epochs}", "--batchprof-device=cpu"]
    if not args.keep_dev_plugins:
        for plugin in DEV_PLUGINS:
            command += ["-p", f"no:{plugin}"]
    return command


def print_profile(args: argparse.Namespace, session: Side, profile: Path) -> None:
    """One more session under cProfile; its costliest calls, training's hot loop aside."""
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), *session.command[1:]]
    run_process(Side("profiled session", command, session.env, session.cwd, True),
                session.cwd / "profiled.json")
    print(f"\ncProfile of one session ({profile}); cumulative seconds, under the profiler's "
          f"own overhead (Python-level calls cost several times more than unprofiled):")
    stats = pstats.Stats(str(profile))
    stats.sort_stats("cumulative").print_stats(r"pytest_batchprof|importlib\._bootstrap\b",
                                               args.profile_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("BATCHPROF_DATA_DIR",
                                                    "~/.cache/pytest-batchprof")).expanduser())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--package", type=Path, action="append", default=[],
                        help="also run the session with the pytest_batchprof package in DIR "
                             "(the folder that holds it); may be given more than once")
    parser.add_argument("--keep-dev-plugins", action="store_true",
                        help="leave the dev extra's pytest plugins on in the session")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="time from the first pair (bytecode and page cache cold)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run one more session under cProfile, writing FILE")
    parser.add_argument("--profile-lines", type=int, default=40)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    data_dir = args.data_dir.resolve()
    if not (data_dir / "MNIST" / "raw").is_dir():
        parser.error(f"--data-dir: no MNIST/raw under {data_dir}; point it (or "
                     f"BATCHPROF_DATA_DIR) at the folder that holds MNIST/raw/")
    for package in args.package:
        if not (package / "pytest_batchprof" / "__init__.py").is_file():
            parser.error(f"--package: {package} holds no pytest_batchprof/__init__.py")

    with tempfile.TemporaryDirectory(prefix="batchprof-overhead-") as tmp:
        directory = Path(tmp)
        (directory / "pytest.ini").write_text("[pytest]\n")
        test_file = directory / "test_session.py"
        test_file.write_text(SESSION_TEST.format(hidden=args.hidden,
                                                 batch_size=args.batch_size))
        command = session_command(args, test_file)
        sides = [Side("session", command, child_env(data_dir, None), directory, True)]
        sides += [Side(f"session ({package})", command,
                       child_env(data_dir, package.resolve()), directory, True)
                  for package in args.package]
        sides.append(Side("script", [sys.executable, str(SCRIPT), "--data-dir", str(data_dir),
                                     "--batch-size", str(args.batch_size),
                                     "--epochs", str(args.epochs), "--json"],
                          child_env(data_dir, None), directory, False))
        phases_file = directory / "phases.json"
        load_before = os.getloadavg()[0]
        if not args.no_warm_up:
            for side in sides:
                run_process(side, phases_file)
        for pair in range(args.pairs):
            for side in sides:
                side.samples.append(run_process(side, phases_file))
                print(f"pair {pair + 1}/{args.pairs}: {side.name} {side.samples[-1].wall:.2f} s",
                      file=sys.stderr)
        report(args, sides, (load_before, os.getloadavg()[0]))
        if args.profile is not None:
            print_profile(args, sides[0], args.profile)


def report(args: argparse.Namespace, sides: list[Side], load: tuple[float, float]) -> None:
    script = sides[-1]
    script_wall = script.median(lambda sample: sample.wall)
    rows = []
    for side in sides:
        wall = side.median(lambda sample: sample.wall)
        training = side.median(lambda sample: sample.training)
        row_train = (f"{side.median(lambda sample: sample.figures['train_seconds']):.2f}"
                     if side.session else "")
        rows.append([side.name, f"{wall:.2f}", f"{training:.2f}", row_train,
                     f"{wall - training:.2f}", f"{side.median(lambda s: s.rss_mib):.0f}",
                     f"{wall / script_wall:.2f}",
                     ", ".join(f"{sample.wall:.2f}" for sample in side.samples)])
    print(f"\n784-{args.hidden}-10 on MNIST, batch {args.batch_size}, {args.epochs} epoch(s); "
          f"median of {args.pairs} alternating pairs of fresh processes ({sys.executable}); "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[1]:.1f} after "
          f"(other work on the machine slows both sides, unevenly)")
    print(tabulate(rows, headers=["side", "wall (s)", "training (s)", "row's train (s)",
                                  "outside training (s)", "peak RSS (MiB)", "/ script",
                                  "each wall (s)"], tablefmt="github"))
    for side in sides[:-1]:
        ratio = side.median(lambda sample: sample.wall) / script_wall
        verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
        print(f"{side.name}: {ratio:.2f}x the script's wall time; goal <= {GOAL_RATIO}x "
              f"{verdict}")

    sessions = [side for side in sides if side.session]
    if len(sessions) > 1:
        first = sessions[0].samples[-1].figures
        differ = sorted({key for side in sessions for sample in side.samples
                         for key, value in sample.figures.items()
                         if key not in MEASURED_AFRESH and value != first[key]})
        print("the sessions' rows: " + (f"DIFFER in {', '.join(differ)}" if differ else
                                        "the same figures (timings, latency and peak memory "
                                        "aside: each session measures them anew)"))

    for side in sides:
        names: dict[str, None] = {}
        for sample in side.samples:
            names.update(dict.fromkeys(sample.phases))
        medians = {name: statistics.median(sample.phases.get(name, 0.0)
                                           for sample in side.samples) for name in names}
        calls: dict[str, int] = defaultdict(int, side.samples[-1].calls)
        ordered = sorted(medians.items(), key=lambda item: -item[1])
        phase_rows = [[name, f"{seconds:.3f}", calls[name] or ""]
                      for name, seconds in ordered if seconds >= 0.0005 or calls[name]]
        phase_rows.append(["sum of the phases' medians", f"{sum(medians.values()):.3f}", ""])
        print(f"\n{side.name}: phases (median seconds; every second counted once, in the "
              f"innermost phase running)")
        print(tabulate(phase_rows, headers=["phase", "seconds", "calls"], tablefmt="github"))
        if side.samples[-1].not_run:
            print(f"not run in this session: {', '.join(side.samples[-1].not_run)}")
        figures = side.samples[-1].figures
        print(f"{side.name}: " + ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in figures.items()))


if __name__ == "__main__":
    main()
