"""Per-session state: validated settings, the device, loaded data sets and finished runs.

One :class:`BatchprofSession` lives in ``config.stash`` for the whole pytest
session, so that a data set is read from disk once and a configuration asked
for by several tests is trained once.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from pytest_batchprof.data.datasets import Dataset, dataset_key, load_dataset
from pytest_batchprof.engine.training import (
    LossFunction,
    OptimizerFactory,
    Run,
    RunConfig,
    initial_model,
    train,
    warm_up,
)
from pytest_batchprof.experiment.build import Experiment, build_experiment
from pytest_batchprof.measuring import noise_scale
from pytest_batchprof.measuring.carbon import Carbon, CarbonMeter
from pytest_batchprof.measuring.metrics import PeakMemory, measure, peak_memory
from pytest_batchprof.plugin.options import Settings, flag_of
from pytest_batchprof.plugin.progress import Console, RunProgress
from pytest_batchprof.runs.cache import RunCache


@dataclass
class BatchprofSession:
    """What the fixtures share within one pytest session (or one xdist worker)."""

    settings: Settings
    device: torch.device
    console: Console | None = None
    """Where training lines and the progress line go (none: silent)."""
    datasets: dict[str, Dataset] = field(default_factory=dict)
    runs: dict[RunConfig, Run] = field(default_factory=dict)
    notes: set[str] = field(init=False, default_factory=set)
    """One-line notes already printed (each once per session)."""
    carbon: CarbonMeter | None = field(init=False, default=None)
    cache: RunCache | None = field(init=False, default=None)
    fingerprints: dict[str, str] = field(init=False, default_factory=dict)
    """Data fingerprints by data set name: hashing MNIST takes 0.2-0.4 s."""
    warmed_up: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not self.settings.no_co2:
            self.carbon = CarbonMeter(self.settings.co2_country)
        if self.settings.cache_dir is not None:
            self.cache = RunCache(self.settings.cache_dir)

    def fingerprint(self, dataset: Dataset) -> str:
        """The data set's fingerprint, computed once per session (data sets are frozen)."""
        if dataset.name not in self.fingerprints:
            self.fingerprints[dataset.name] = dataset.fingerprint()
        return self.fingerprints[dataset.name]

    def dataset(self, name: str | None = None, options: dict[str, object] | None = None) -> (
            Dataset):
        """The named data set (default: ``--dataset``), loaded on first use, on the device."""
        name = name or self.settings.dataset
        key = dataset_key(name, options)
        if key not in self.datasets:
            loaded = load_dataset(name, self.settings.data_dir, self.settings.val_fraction,
                                  options)
            self.check_fits(loaded)
            self.datasets[key] = loaded.to(self.device)
        return self.datasets[key]

    def check_fits(self, data: Dataset) -> None:
        """Raise ``ValueError`` if the train subset or a batch size exceeds the training set."""
        settings = self.settings
        available = len(data.train)
        if settings.train_subset is not None and settings.train_subset > available:
            raise ValueError(
                f"{flag_of('train_subset')} {settings.train_subset} is larger than the "
                f"{available} training samples of {data.name}; use at most {available}"
            )
        usable = settings.train_subset or available
        too_big = [size for size in settings.batch_sizes if size > usable]
        if too_big:
            raise ValueError(
                f"{flag_of('batch_sizes')} has {too_big[0]}, which is larger than the {usable} "
                f"training samples of {data.name}; use batch sizes of at most {usable}"
            )

    def run(
        self,
        dataset: Dataset,
        model: object,
        batch_size: int,
        epochs: int | None = None,
        lr: float | None = None,
        optimizer: str | OptimizerFactory | None = None,
        seed: int | None = None,
        input_size: int | tuple[int, int] | None = None,
        loss: LossFunction | None = None,
        name: str | None = None,
    ) -> Run:
        """Train (or return the already trained) run of ``model`` (a factory) in this
        configuration; see :func:`pytest_batchprof.experiment.build.build_experiment` for the arguments."""
        experiment = build_experiment(
            self.settings, dataset, model, batch_size, self.device, epochs=epochs, lr=lr,
            optimizer=optimizer, seed=seed, input_size=input_size, loss=loss, name=name)
        config, data = experiment.config, experiment.data
        key = config  # factories without a stable name differ in config.architecture
        if key in self.runs:
            return self.runs[key]
        cache_key = None
        if self.cache is not None and experiment.cache_note is not None:
            if experiment.cache_note not in self.notes:
                self.notes.add(experiment.cache_note)
                self._say(f"batchprof: {experiment.cache_note}")
        elif self.cache is not None:
            cache_key = self.cache.key(config, self.fingerprint(dataset))
            run = self._load_cached(experiment, cache_key)
            if run is not None:
                self.runs[key] = run
                return run
        self._say(f"batchprof: training {config.describe()}")
        if not self.warmed_up:  # one-off costs are not part of any run's figures
            warm_up(self.device)
            self.warmed_up = True
        if self.carbon:
            self.carbon.prepare()  # its hardware probe, once per session
        progress = None
        if self.console is not None:
            progress = RunProgress(self.console, config.epochs, verbose=self.console.verbose)
        with ExitStack() as stack:
            memory = stack.enter_context(peak_memory(self.device))
            train_carbon = stack.enter_context(self.carbon.measure()) if self.carbon else None
            run = None
            try:
                run = train(config, data, self.device, progress, experiment.recipe)
            finally:  # an interrupted run leaves no half-drawn progress line behind
                if progress is not None:
                    progress.finish(run.history if run is not None else [])
        self._measure(run, experiment, memory[0], train_carbon[0] if train_carbon else None)
        if cache_key is not None:  # diverged runs too: see cache.py
            self.cache.store(cache_key, run)
        self.runs[key] = run
        return run

    def _load_cached(self, experiment: Experiment, key: str) -> Run | None:
        """The run of ``config`` from the cache, measured afresh; ``None`` on a miss.

        Training figures (history, times, peak memory, training CO2eq) are the
        ones measured when the run trained; latency, FLOPs, sizes and inference
        CO2eq are measured now, on this machine.
        """
        assert self.cache is not None
        if not self.cache.path(key).is_file():
            return None  # a plain miss: no model to build
        config, data = experiment.config, experiment.data
        model, optimizer = initial_model(config, self.device, experiment.recipe)
        cached = self.cache.load(key, model, optimizer)
        if cached is None:
            return None
        model.eval()
        run = Run(config=config, model=model, optimizer=optimizer,
                  samples_per_epoch=cached.samples_per_epoch, test_images=data.test.x,
                  history=cached.history, curve=cached.curve,
                  train_seconds=cached.train_seconds,
                  test_loss=cached.test_loss, test_accuracy=cached.test_accuracy,
                  diverged=cached.diverged, time_to_target=cached.time_to_target)
        self._say(f"batchprof: loaded {config.describe()} from the cache")
        train_carbon = None
        if self.carbon:
            self.carbon.prepare()
            train_carbon = cached.train_carbon or Carbon(
                None, None, None,
                f"not measured: trained with {flag_of('no_co2')} before it was cached")
        peak = cached.peak_memory or PeakMemory(0, "not measured (cached run)")
        self._measure(run, experiment, peak, train_carbon, " (cached)")
        return run

    def _measure(self, run: Run, experiment: Experiment, peak: PeakMemory,
                 train_carbon: Carbon | None, origin: str = "") -> None:
        """Measure a run that did not diverge, and say how it went."""
        if run.diverged:
            self._say(f"  diverged: {run.diverged}")
            return
        data = experiment.data
        run.measurements = measure(
            run.model, run.optimizer, data.test.x,
            self.settings.inference_batch_size or run.config.batch_size,
            peak, train_carbon, self.carbon,
        )
        self._say(f"  trained in {run.train_seconds:.2f} s{origin}, "
                  f"test acc={run.test_accuracy:.4f}, {run.measurements.latency.describe()}")
        if self.settings.noise_scale:
            run.noise_scale = noise_scale.estimate(
                run.model, experiment.recipe.loss, data.train.x, data.train.y, seed=run.config.seed)
            self._say(f"  {run.noise_scale.describe()}")

    def _say(self, line: str) -> None:
        if self.console is not None:
            self.console.line(line)
