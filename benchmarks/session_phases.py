"""Where a pytest session's wall time goes, phase by phase: a pytest plugin that times the
real session without changing what it does, for ``benchmarks/session_overhead.py``.

Loaded with ``-p session_phases`` (this folder on ``PYTHONPATH``) and told where to write
by ``$BATCHPROF_PHASES_OUT``; ``$BATCHPROF_PHASES_T0`` is the ``time.monotonic()`` at which
the parent started the process (one clock for both on Linux), so that the interpreter's
and pytest's own start-up, before any plugin runs, is counted too.

Every second of the process goes to exactly one phase, the innermost one running (so
the phases add up to the wall time):

* the imports of the heavy libraries (:data:`TIMED_IMPORTS`) and of the plugin's own
  modules (``pytest_batchprof.*``, assertion rewriting included), each an import hook's
  timing of the module's execution, the libraries it imports in turn carved out;
* the plugin's functions and methods in :data:`TIMED_CALLS` (data load, model checks,
  warm-up, training steps, evaluation, FLOPs, latency, ...), found by their qualified
  names in whichever module defines them, and wrapped when that module is first
  imported, before any other module binds them;
* what is left goes to the pytest stage it falls in (start-up, collection, the test,
  session finish, teardown).

Python's garbage collections are phases too (:data:`GC_PHASES`), wherever they happen.
The wrappers add two clock readings and a list operation per call: nothing measurable
against what they time. The file written holds each phase's seconds and calls, and the
rows of the runs the session trained (their figures, to compare before and after).
"""

from __future__ import annotations

import functools
import gc
import importlib.abc
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import pytest

IMPORTED = time.monotonic()
T0 = float(os.environ.get("BATCHPROF_PHASES_T0", IMPORTED))

TIMED_IMPORTS = ("torch", "torchvision", "torch._dynamo", "torch.utils.benchmark", "numpy",
                 "scipy", "sklearn", "matplotlib", "pandas", "fvcore", "codecarbon",
                 "hypothesis", "sympy", "psutil", "tabulate", "PIL")
"""Libraries whose import is a phase of its own (top-level names, and the parts of torch
that only some code needs: ``torch._dynamo``, ``torch.utils.benchmark``)."""

TIMED_CALLS = {
    "load_dataset": "data: load, split, normalise",
    "Dataset.to": "data: to the device",
    "Dataset.fingerprint": "data: fingerprint (SHA-256)",
    "prepare_model": "model: prepare (build, name, fingerprint)",
    "initial_model": "model: initial model (seeded build + optimizer)",
    "check_recipe": "model: checks (check_recipe)",
    "build_experiment": "model: build_experiment (the rest)",
    "warm_up": "warm-up (engine.training.warm_up)",
    "TrainingLoop.__init__": "training: loop set-up",
    "TrainingLoop._train": "training: steps",
    "evaluate_batches": "evaluation: val, test and curve points",
    "TrainingLoop.finish": "training: loop steps' finish",
    "count_parameters": "measure: params",
    "model_sizes": "measure: sizes (torch.save)",
    "count_flops": "measure: FLOPs",
    "measure_latency": "measure: latency",
    "inference_carbon": "measure: inference CO2",
    "PeakMemoryMeter.__enter__": "measure: memory meter",
    "PeakMemoryMeter.__exit__": "measure: memory meter",
    "SummaryCollector.finish": "report: summary and files",
    "SummaryReporter.pytest_terminal_summary": "report: terminal table",
}
"""Qualified name (as ``__qualname__`` spells it) -> phase."""
WHOLE = {"warm-up (engine.training.warm_up)", "model: checks (check_recipe)"}
"""Phases whose own calls of other timed functions stay theirs (the warm-up's evaluation
is the warm-up's); imports and collections inside them are still told apart."""

YOUNG_GC = "gc: young collections (generations 0 and 1)"
GC_PHASES = (YOUNG_GC, YOUNG_GC, "gc: full collections (generation 2)")
"""Python's cyclic garbage collector, by generation: a full collection walks every object
the process holds (torch's and its imports' hundreds of thousands)."""

START_UP = "start-up: interpreter, pytest"
STAGES = {
    "configure": "pytest: plugins, options, configure",
    "collect": "pytest: collection (its own work)",
    "test": "pytest: the test (fixtures, hooks)",
    "finish": "pytest: session finish",
    "unconfigure": "pytest: unconfigure",
}
OWN_IMPORTS = "import pytest_batchprof (own modules)"


class Clock:
    """Charges elapsed time to the innermost running phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.inside: dict[str, set[str]] = defaultdict(set)
        """Phase -> the phases (or stages) it ran inside: who imported torch, say."""
        self.stack: list[str] = []
        self.stage = STAGES["configure"]
        self.last = IMPORTED
        self.seconds[START_UP] = IMPORTED - T0

    def charge(self) -> float:
        now = time.monotonic()
        self.seconds[self.stack[-1] if self.stack else self.stage] += now - self.last
        self.last = now
        return now

    def enter(self, phase: str) -> None:
        self.charge()
        self.inside[phase].add(self.stack[-1] if self.stack else self.stage)
        self.stack.append(phase)
        self.calls[phase] += 1

    def leave(self) -> None:
        self.charge()
        self.stack.pop()

    def to_stage(self, stage: str) -> None:
        self.charge()
        self.stage = STAGES[stage]


CLOCK = Clock()
ROWS: list[dict[str, Any]] = []


def timed(phase: str, function: Any) -> Any:
    """``function`` charging its calls to ``phase``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if CLOCK.stack and CLOCK.stack[-1] in WHOLE:
            return function(*args, **kwargs)
        CLOCK.enter(phase)
        try:
            return function(*args, **kwargs)
        finally:
            CLOCK.leave()

    return wrapper


def wrap_module(module: Any) -> None:
    """Wrap the :data:`TIMED_CALLS` that ``module`` defines, in place."""
    for name, value in list(vars(module).items()):
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if isinstance(value, type):
            for qualified, phase in TIMED_CALLS.items():
                owner, _, method = qualified.partition(".")
                if owner == value.__qualname__ and method in vars(value):
                    setattr(value, method, timed(phase, vars(value)[method]))
        elif callable(value) and getattr(value, "__qualname__", None) in TIMED_CALLS:
            setattr(module, name, timed(TIMED_CALLS[value.__qualname__], value))


class TimedLoader(importlib.abc.Loader):
    """A module's loader, its execution charged to a phase (and its functions wrapped)."""

    def __init__(self, loader: Any, phase: str, own: bool) -> None:
        self.loader, self.phase, self.own = loader, phase, own

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        CLOCK.enter(self.phase)
        try:
            self.loader.exec_module(module)
        finally:
            CLOCK.leave()
        if self.own:
            wrap_module(module)

    def __getattr__(self, name: str) -> Any:  # get_code, get_resource_reader, ...
        return getattr(self.loader, name)


class TimingFinder(importlib.abc.MetaPathFinder):
    """Finds a timed module through the finders after it, and times its loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        own = fullname.startswith("pytest_batchprof")
        if not own and fullname not in TIMED_IMPORTS:
            return None
        index = sys.meta_path.index(self)
        for finder in sys.meta_path[index + 1:]:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        phase = OWN_IMPORTS if own else f"import {fullname}"
        spec.loader = TimedLoader(spec.loader, phase, own)
        return spec


def on_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        CLOCK.enter(GC_PHASES[info["generation"]])
    else:
        CLOCK.leave()


if "pytest_batchprof" in sys.modules:  # loaded after the plugin: its functions are bound
    raise RuntimeError("session_phases must load before pytest_batchprof: pass it with -p")
sys.meta_path.insert(0, TimingFinder())
gc.callbacks.append(on_collection)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    CLOCK.to_stage("collect")
    try:
        return (yield)
    finally:
        CLOCK.to_stage("test")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    CLOCK.to_stage("finish")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    ROWS.extend(getattr(report, "batchprof_rows", None) or [])


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Write the phases; the parent counts the time from here to the process's exit."""
    CLOCK.to_stage("unconfigure")
    out = os.environ.get("BATCHPROF_PHASES_OUT")
    if not out:
        return
    written = CLOCK.charge()
    with open(out, "w") as file:
        json.dump({"seconds": dict(CLOCK.seconds), "calls": dict(CLOCK.calls),
                   "written_at": written - T0, "rows": ROWS,
                   "inside": {phase: sorted(outer) for phase, outer in CLOCK.inside.items()},
                   "not_run": sorted(set(TIMED_CALLS.values()) - set(CLOCK.calls)),
                   "modules": sorted({name.split(".")[0] for name in sys.modules})},
                  file, default=str)
