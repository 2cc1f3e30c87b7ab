"""Per-session state: validated settings, the device, loaded data sets and finished runs.

One :class:`BatchprofSession` lives in ``config.stash`` for the whole pytest
session, so that a data set is read from disk once and a configuration asked
for by several tests is trained once. It is made of parts with one job each:
:class:`DataSets` (load, check, fingerprint), :class:`CachedRuns` (runs kept
across sessions), :class:`Trainer` (the engine under the meters and the
progress line, with the loop steps asked for), :class:`Measurer` (what is measured
after training) and
:class:`Say` (the console lines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from pytest_batchprof.data.datasets import (
    Dataset,
    DatasetUnavailable,
    dataset_key,
    load_dataset,
)
from pytest_batchprof.engine.ensemble import (
    Ensemble,
    EnsembleOutOfMemory,
    MemberLoop,
    ensemble_obstacle,
)
from pytest_batchprof.engine.memory import MaxBatch, MemoryLimit, OutOfMemory
from pytest_batchprof.engine.parallel import Shard, train_data_parallel
from pytest_batchprof.engine.status import TrainingStatus
from pytest_batchprof.engine.steps import LoopStep, NoiseScaleEstimate
from pytest_batchprof.engine.training import (
    Run,
    RunConfig,
    TrainingLoop,
    initial_model,
    measured_inputs,
    warm_up,
)
from pytest_batchprof.hardware.precision import emulation_note, matmul_precision
from pytest_batchprof.measuring import noise_scale
from pytest_batchprof.measuring.carbon import Carbon, CarbonMeter
from pytest_batchprof.measuring.metrics import PeakMemory, PeakMemoryMeter, measure
from pytest_batchprof.reports.figures import TRAINED_ALONE
from pytest_batchprof.runs.build import Experiment, build_experiment
from pytest_batchprof.runs.cache import RunCache
from pytest_batchprof.runs.max_batch import find_max_batch
from pytest_batchprof.runs.progress import Console, RunProgress
from pytest_batchprof.settings import Settings, flag_of, format_size


def memory_limit(settings: Settings, device: torch.device) -> MemoryLimit | None:
    """``--batchprof-memory-budget`` when given; else, on CUDA, the device's memory."""
    if settings.memory_budget is not None:
        return MemoryLimit(settings.memory_budget,
                           f"the {flag_of('memory_budget')} of "
                           f"{format_size(settings.memory_budget)}")
    if device.type == "cuda":
        return MemoryLimit(torch.cuda.get_device_properties(device).total_memory,
                           f"the memory of {device}")
    return None


class Say:
    """Where a session's one-line messages go: the console, or nowhere."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._once: set[str] = set()

    def __call__(self, line: str) -> None:
        if self.console is not None:
            self.console.line(line)

    def once(self, line: str) -> None:
        """Say ``line`` the first time only."""
        if line not in self._once:
            self._once.add(line)
            self(line)


@dataclass
class DataSets:
    """The session's data sets: each read from disk once, moved to the device and
    fingerprinted (for cache keys) on first use.

    Nothing here checks a data set against the session's settings: a data set smaller
    than ``--batchprof-train-subset`` is used whole (the run's row says so), and a batch
    size larger than a data set fails only the runs that ask for it
    (:func:`~pytest_batchprof.runs.build.build_experiment`), so one small data set
    never stops a session that uses several.
    """

    settings: Settings
    device: torch.device
    loaded: dict[str, Dataset] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    """By data set name: hashing MNIST takes 0.2-0.4 s, and data sets are frozen."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Data sets that could not be had (missing files, a failed download): each test that
    asks for one again fails with the same line, without another download attempt."""

    def get(self, name: str | None = None, options: dict[str, object] | None = None) -> Dataset:
        """The named data set (default: ``--dataset``), loaded on first use, on the device;
        raises what :func:`~pytest_batchprof.data.datasets.load_dataset` raises, each time
        it is asked for (a registration that failed fails every test that uses it)."""
        name = name or self.settings.dataset
        key = dataset_key(name, options)
        if key in self.unavailable:
            raise DatasetUnavailable(self.unavailable[key])
        if key not in self.loaded:
            try:
                loaded = load_dataset(name, self.settings.data_dir, self.settings.val_fraction,
                                      options)
            except DatasetUnavailable as error:
                self.unavailable[key] = str(error)
                raise
            self.loaded[key] = loaded.to(self.device)
        return self.loaded[key]

    def fingerprint(self, dataset: Dataset) -> str:
        if dataset.name not in self.fingerprints:
            self.fingerprints[dataset.name] = dataset.fingerprint()
        return self.fingerprints[dataset.name]


@dataclass
class Measurer:
    """Measures a trained (or cached) run that did not diverge, and says how it went."""

    settings: Settings
    say: Say
    carbon: CarbonMeter | None

    def __call__(self, run: Run, experiment: Experiment, peak: PeakMemory,
                 train_carbon: Carbon | None, origin: str = "") -> None:
        if run.diverged:
            self.say(f"  diverged: {run.diverged}")
            return
        if run.out_of_memory:
            self.say(f"  {run.out_of_memory.describe()}")
            return
        with matmul_precision(run.config.precision, torch.device(run.config.device)):
            run.measurements = measure(
                run.inference_model(), run.optimizer, run.test_images,
                self.settings.inference_batch_size or run.config.batch_size,
                peak, train_carbon, self.carbon, run.config.precision,
            )
        score = (f"test acc={run.test_accuracy:.4f}" if run.config.metric == "accuracy"
                 else f"test {run.metric_name}={run.metric:.4g}")
        self.say(f"  trained in {run.train_seconds:.2f} s{origin}, {score}, "
                 f"{run.measurements.latency.describe()}")
        if run.noise_scale is not None:
            self.say(f"  {run.noise_scale.describe()}")


@dataclass
class Trainer:
    """Trains an experiment on the engine, under the session's memory and CO2 meters and
    its progress line, with the optional loop steps the settings ask for; pays torch's
    one-off costs before the first run."""

    device: torch.device
    console: Console | None
    carbon: CarbonMeter | None
    extra_steps: tuple[type[LoopStep], ...] = ()
    """Optional :mod:`~pytest_batchprof.engine.steps` (``--noise-scale``'s estimate)."""
    memory_limit: Callable[[], MemoryLimit | None] = lambda: None
    """The peak a run may reach before it counts as out of memory (asked for when a run
    starts: on CUDA, the device's memory)."""
    launched: Shard | None = None
    """Under torchrun: this process is one rank of every run, trained in place."""
    warmed_up: bool = False

    def warm_up(self) -> None:
        """Pay torch's one-off costs once, before anything is timed or measured: the
        optimizers' have been paid by then, since every experiment's own model, loss and
        optimizer took a step on the device when it was built
        (:func:`~pytest_batchprof.runs.build.check_recipe`); the evaluation's remain."""
        if not self.warmed_up:
            warm_up(self.device, optimizers=())
            self.warmed_up = True

    def _prepare(self) -> None:
        """Torch's and codecarbon's one-off costs (its hardware probe), paid before a
        training is built and measured, so that they are part of no run's figures."""
        self.warm_up()
        if self.carbon:
            self.carbon.prepare()

    @contextmanager
    def _metered(self, memory: PeakMemoryMeter) -> Iterator[list[Carbon] | None]:
        """The session's meters around a training: ``memory``, and its energy and CO2eq
        (``None`` with ``--batchprof-no-co2``; else a list filled when the block ends)."""
        with ExitStack() as stack:
            stack.enter_context(memory)
            yield stack.enter_context(self.carbon.measure()) if self.carbon else None

    def __call__(self, experiment: Experiment) -> tuple[Run, PeakMemory, Carbon | None]:
        config = experiment.config
        self._prepare()
        progress = None
        if self.console is not None:
            progress = RunProgress(self.console, config.epochs, verbose=self.console.verbose,
                                   metric=config.metric)
        memory = PeakMemoryMeter(self.device)
        loop = None  # a data-parallel run forks processes, whose loops train it
        if config.processes == 1 or self.launched is not None:
            loop = TrainingLoop(config, experiment.data, self.device, experiment.recipe,
                                progress, self.extra_steps, memory, self.memory_limit(),
                                shard=self.launched)
        with self._metered(memory) as train_carbon:
            run = None
            try:
                run = (loop.run() if loop is not None else
                       train_data_parallel(config, experiment.data, self.device,
                                           experiment.recipe, progress))
            finally:  # an interrupted run leaves no half-drawn progress line behind
                if progress is not None:
                    progress.finish(run.history if run is not None else [])
        if loop is not None:
            loop.finish()  # measures the trained model: outside the meters of its training
        return run, memory.result, train_carbon[0] if train_carbon else None

    def ensemble(self, experiments: list[Experiment]) -> (
            list[tuple[Run, PeakMemory, Carbon | None]] | str):
        """Train ``experiments`` (differing only in seed and lr) as one
        :class:`~pytest_batchprof.engine.ensemble.Ensemble`; or say why they cannot be.

        Each member's training CO2eq is the ensemble's split as its time is (its share of
        the ensemble's training seconds); its peak memory is the whole ensemble's.
        """
        self._prepare()
        first = experiments[0]
        progress: list[RunProgress | None] = [None] * len(experiments)
        if self.console is not None:  # each member's epoch lines, named by seed and lr
            progress = [RunProgress(self.console, experiment.config.epochs,
                                    verbose=self.console.verbose,
                                    indent=f"  seed {experiment.config.seed}, "
                                           f"lr {experiment.config.lr:g}: ",
                                    metric=experiment.config.metric)
                        for experiment in experiments]
        loops: list[MemberLoop] = []
        for experiment, observer in zip(experiments, progress, strict=True):
            leader_only = None if observer is None else _LeaderOnly(observer)
            loops.append(MemberLoop(experiment.config, experiment.data, self.device,
                                    experiment.recipe, leader_only, self.extra_steps))
            if leader_only is not None:
                leader_only.loop = loops[-1]
        reason = ensemble_obstacle(loops, first.recipe)
        if reason is not None:
            return reason
        memory = PeakMemoryMeter(self.device)
        with self._metered(memory) as train_carbon:
            runs = None
            try:
                runs = Ensemble(loops, first.recipe).run()
            except EnsembleOutOfMemory as error:
                return str(error)
            finally:
                for observer, loop in zip(progress, loops, strict=True):
                    if observer is not None:
                        observer.finish(loop.run_record.history)
        for loop in loops:
            loop.finish()
        carbon = train_carbon[0] if train_carbon else None
        total = sum(run.train_seconds for run in runs) or 1.0
        peak = PeakMemory(memory.result.bytes,
                          f"{memory.result.method}, of the whole ensemble of {len(runs)}")
        return [(run, peak, carbon.scaled(run.train_seconds / total) if carbon else None)
                for run in runs]


class _LeaderOnly:
    """A member's progress line in an ensemble: all of its epoch lines, but the status
    line only while it is the first member still training (the members advance
    together, so one status line tells where all of them stand)."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress
        self.loop: MemberLoop | None = None
        """The member it reports (set once the member's loop is made)."""

    def on_progress(self, status: TrainingStatus) -> None:
        members = self.loop.ensemble.members
        if members and members[0] is self.loop:
            self.progress.on_progress(status)

    def on_epoch(self, config: RunConfig, record) -> None:
        self.progress.on_epoch(config, record)


@dataclass
class CachedRuns:
    """The run cache as the session uses it: a hit is rebuilt and measured afresh."""

    cache: RunCache
    device: torch.device
    carbon: CarbonMeter | None
    say: Say
    memory_limit: Callable[[], MemoryLimit | None] = lambda: None
    """A hit whose recorded peak passes it counts as out of memory, as a fresh run would."""
    noise_scale: bool = False
    """Estimate a hit's gradient noise scale, as :class:`~pytest_batchprof.engine.steps.
    NoiseScaleEstimate` does at the end of a fresh run (the entry holds the trained
    weights, not the estimate)."""

    def key(self, config: RunConfig, data_fingerprint: str) -> str:
        """The entry name of ``config`` on data with this fingerprint."""
        return self.cache.key(config, data_fingerprint)

    def store(self, key: str, run: Run) -> None:
        """Keep ``run`` (diverged ones too: see :mod:`pytest_batchprof.runs.cache`)."""
        self.cache.store(key, run)

    def load(self, experiment: Experiment, key: str, measure_run: Measurer) -> Run | None:
        """The run of ``experiment`` from the cache; ``None`` on a miss.

        Training figures (history, times, peak memory, training CO2eq) are the
        ones measured when the run trained; latency, FLOPs, sizes and inference
        CO2eq are measured now, on this machine.
        """
        if not self.cache.path(key).is_file():
            return None  # a plain miss: no model to build
        config, data = experiment.config, experiment.data
        model, optimizer = initial_model(config, self.device, experiment.recipe)
        cached = self.cache.load(key, model, optimizer)
        if cached is None:
            return None
        model.eval()
        measured, call = measured_inputs(data.test, experiment.recipe)
        run = Run(config=config, model=model, optimizer=optimizer,
                  samples_per_epoch=cached.samples_per_epoch, test_images=measured, call=call,
                  history=cached.history, curve=cached.curve,
                  train_seconds=cached.train_seconds,
                  test_loss=cached.test_loss, test_accuracy=cached.test_accuracy,
                  test_metric=cached.test_metric, val_note=data.val_note,
                  diverged=cached.diverged, time_to_target=cached.time_to_target,
                  ensemble=cached.ensemble, threads=cached.threads)
        self.say(f"batchprof: loaded {config.describe()} from the cache")
        train_carbon = None
        if self.carbon:
            self.carbon.prepare()
            train_carbon = cached.train_carbon or Carbon(
                None, None, None,
                f"not measured: trained with {flag_of('no_co2')} before it was cached")
        peak = cached.peak_memory or PeakMemory(0, "not measured (cached run)")
        limit = self.memory_limit()
        if cached.peak_memory is not None and limit is not None and peak.bytes > limit.bytes:
            run.out_of_memory = OutOfMemory(config.batch_size, peak.bytes,
                                            f"its recorded peak passes {limit.source}")
            run.test_loss = run.test_accuracy = run.test_metric = None  # as a fresh run's
        if self.noise_scale and run.diverged is None and run.out_of_memory is None:
            run.noise_scale = noise_scale.estimate(model, experiment.recipe.loss, data.train.x,
                                                   data.train.y, seed=config.seed)
        measure_run(run, experiment, peak, train_carbon, " (cached)")
        return run


class BatchprofSession:
    """What the fixtures share within one pytest session (or one xdist worker): its data
    sets, its trained runs, and the parts that make a run (build the experiment, find
    it in the cache or train it, measure it)."""

    def __init__(self, settings: Settings, device: torch.device,
                 console: Console | None = None, launched: Shard | None = None) -> None:
        self.settings, self.device, self.console = settings, device, console
        self.launched = launched
        """This process's rank when torchrun started pytest on several processes or nodes:
        every run then trains data-parallel across all of them."""
        self.say = Say(console)
        self.data = DataSets(settings, device)
        self.runs: dict[RunConfig, Run] = {}
        self.max_batches: dict[tuple[object, ...], MaxBatch] = {}
        self.carbon = None if settings.no_co2 else CarbonMeter(settings.co2_country)
        self.measure = Measurer(settings, self.say, self.carbon)
        self.trainer = Trainer(device, console, self.carbon,
                               (NoiseScaleEstimate,) if settings.noise_scale else (),
                               lambda: self.memory_limit, launched)
        self.cache = (None if settings.cache_dir is None else
                      CachedRuns(RunCache(settings.cache_dir), device, self.carbon, self.say,
                                 lambda: self.memory_limit, settings.noise_scale))

    @cached_property
    def memory_limit(self) -> MemoryLimit | None:
        """The peak a run may reach (:func:`memory_limit`), read when a run first needs it."""
        return memory_limit(self.settings, self.device)

    @property
    def datasets(self) -> dict[str, Dataset]:
        """The data sets loaded so far, by name (and loader options)."""
        return self.data.loaded

    def dataset(self, name: str | None = None, options: dict[str, object] | None = None) -> (
            Dataset):
        """The named data set (default: ``--dataset``), loaded on first use, on the device."""
        return self.data.get(name, options)

    def run(self, dataset: Dataset, model: object, batch_size: int, **arguments: Any) -> Run:
        """Train (or return the already trained) run of ``model`` (a factory) in this
        configuration; :func:`~pytest_batchprof.runs.build.build_experiment` says
        what the keyword ``arguments`` are and what fills in those left out."""
        return self.runs_of(dataset, model, batch_size, [{}], **arguments)[0]

    def runs_of(self, dataset: Dataset, model: object, batch_size: int,
                variants: list[dict[str, Any]], **arguments: Any) -> list[Run]:
        """The runs of ``model`` in each of ``variants`` (``seed`` and ``lr`` keywords over
        ``arguments``), in their order. Those not trained yet nor cached train together
        as one ensemble (:mod:`~pytest_batchprof.engine.ensemble`) when they can, else one
        at a time; the console says why not."""
        if self.launched is not None:  # every run spans torchrun's processes
            asked = arguments.get("data_parallel")
            if asked not in (None, 1, self.launched.world):
                raise ValueError(f"data_parallel={asked!r}: under torchrun every run spans its "
                                 f"{self.launched.world} processes; leave data_parallel out")
            arguments["data_parallel"] = self.launched.world
        experiments = [build_experiment(self.settings, dataset, model, batch_size, self.device,
                                        **{**arguments, **variant}) for variant in variants]
        max_batch = (self.max_batch(experiments[0]) if self.settings.find_max_batch else None)
        untrained: dict[RunConfig, Experiment] = {}
        for experiment in experiments:
            config = experiment.config  # unnamed factories differ in config.architecture
            if config not in self.runs and config not in untrained:
                cached = self._cached(experiment, dataset)
                if cached is None:
                    untrained[config] = experiment
        self._train(list(untrained.values()), dataset)
        runs = [self.runs[experiment.config] for experiment in experiments]
        for run in runs:
            if run.max_batch is None:
                run.max_batch = max_batch
        return runs

    def max_batch(self, experiment: Experiment) -> MaxBatch | None:
        """The largest batch of ``experiment``'s model that fits the memory limit, searched
        once per model (:mod:`~pytest_batchprof.runs.max_batch`); ``None`` without a limit."""
        config, limit = experiment.config, self.memory_limit
        if limit is None:
            return None
        key = (config.model_name, config.architecture, config.dataset, config.input_shape,
               config.optimizer, config.loss, config.code, config.precision)
        if key not in self.max_batches:
            self.say(f"batchprof: finding the largest batch of {config.model_name} on "
                     f"{config.dataset}")
            self.trainer.warm_up()  # the probes' first steps are not torch's one-off costs
            found = find_max_batch(experiment, self.device, limit,
                                   self.settings.max_batch_margin, self.settings.max_batch_cap)
            self.say(f"  {found.describe()}")
            self.max_batches[key] = found
        return self.max_batches[key]

    def _cached(self, experiment: Experiment, dataset: Dataset) -> Run | None:
        """The run of ``experiment`` from the cache (kept in :attr:`runs`), or ``None``."""
        if self.cache is None:
            return None
        if experiment.cache_note is not None:
            self.say.once(f"batchprof: {experiment.cache_note}")
            return None
        key = self.cache.key(experiment.config, self.data.fingerprint(dataset))
        run = self.cache.load(experiment, key, self.measure)
        if self.launched is not None and not self.launched.all_true(run is not None,
                                                                     self.device):
            run = None  # a rank without the entry trains, so all of them do
        if run is not None:
            self.runs[experiment.config] = run
        return run

    def _train(self, experiments: list[Experiment], dataset: Dataset) -> None:
        """Train ``experiments`` (as one ensemble when there are several and they can be),
        measure them, cache them and keep them in :attr:`runs`."""
        if not experiments:  # all of them trained already, or cached
            return
        precision = experiments[0].config.precision  # they share it; said once a session
        emulated = emulation_note(precision, self.device)
        if emulated:
            self.say.once(f"batchprof: {precision} is emulated here: {emulated}")
        trained, reason = None, None
        if len(experiments) > 1:
            reason = self.settings.ensemble_obstacle()
            if reason is None:
                described = experiments[0].config.describe(variant=False)
                self.say(f"batchprof: training {len(experiments)} runs of {described} as one "
                         f"ensemble ({self._variants(experiments)})")
                trained = self.trainer.ensemble(experiments)
                if isinstance(trained, str):
                    reason, trained = trained, None
            if reason is not None:
                self.say.once(f"batchprof: {experiments[0].config.model_name}'s runs that "
                              f"differ only in seed and lr train one at a time: {reason}")
        if trained is None:
            for experiment in experiments:
                self.say(f"batchprof: training {experiment.config.describe()}")
                run, peak, carbon = self.trainer(experiment)
                if reason is not None:  # the report says why it trained alone
                    run.ensemble = f"{TRAINED_ALONE}{reason}"
                self._keep(experiment, dataset, run, peak, carbon)
            return
        for experiment, (run, peak, carbon) in zip(experiments, trained, strict=True):
            self.say(f"batchprof: {run.config.describe()} (ensemble member)")
            self._keep(experiment, dataset, run, peak, carbon)

    @staticmethod
    def _variants(experiments: list[Experiment]) -> str:
        seeds = sorted({experiment.config.seed for experiment in experiments})
        rates = sorted({experiment.config.lr for experiment in experiments})
        return (f"seeds {', '.join(map(str, seeds))}"
                + (f"; lr {', '.join(f'{rate:g}' for rate in rates)}" if len(rates) > 1 else ""))

    def _keep(self, experiment: Experiment, dataset: Dataset, run: Run, peak: PeakMemory,
              train_carbon: Carbon | None) -> None:
        """Note the threads it trained with, measure a trained run, store it in the cache
        (rank 0 only) and keep it."""
        if run.config.processes == 1 or self.launched is not None:  # trained in this process
            run.threads = torch.get_num_threads()
        self.measure(run, experiment, peak, train_carbon)
        stores = self.launched is None or self.launched.rank == 0
        if (self.cache is not None and experiment.cache_note is None
                and run.out_of_memory is None and stores):  # out of memory is not a verdict
            self.cache.store(self.cache.key(experiment.config, self.data.fingerprint(dataset)),
                             run)
        self.runs[experiment.config] = run
