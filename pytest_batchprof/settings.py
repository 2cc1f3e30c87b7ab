"""The session's settings as plain data: :class:`Settings`, its defaults, and the values
its choices allow.

The plugin (:mod:`pytest_batchprof.plugin.options`) registers an option for each field,
parses and checks the command line and the ini file, and builds one frozen
:class:`Settings` when the session starts; everything below the plugin reads the settings
from here, and names an option by :func:`flag_of`. This module imports neither torch,
pytest nor any other module of the package: every layer may read it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "BATCHPROF_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/pytest-batchprof")
OPTIMIZERS = ("adam", "sgd")
LR_SCALINGS = ("none", "linear", "sqrt")
OOM_ACTIONS = ("skip", "fail")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
"""Numeric precisions of training and inference (see :mod:`pytest_batchprof.hardware.precision`)."""
DEFAULT_VAL_FRACTION = 1 / 12
DEFAULT_COUNTRY = "USA"
"""The country whose energy mix turns energy into CO2eq (ISO 3166 alpha-3)."""
SIZE_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
"""Units of a memory size: decimal (kB, MB, GB, TB) and binary (KiB ... TiB); any case."""
FLAG_PREFIX = "--batchprof-"
RENAMED_OPTIONS = {"report_dir": "report", "cache_dir": "cache"}
"""Settings whose option is not named after the field: ``--batchprof-report`` sets
``report_dir``."""


@dataclass(frozen=True)
class Settings:
    """The session's validated options, shared by every fixture."""

    batch_sizes: tuple[int, ...] = (64,)
    epochs: int = 2
    dataset: str = "mnist"
    data_dir: Path = DEFAULT_DATA_DIR
    device: str = "auto"
    seed: int = 0
    repeats: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_scaling: str = "none"
    lr_base_batch: int = 64
    lr_warmup_epochs: float = 0.0
    target_accuracy: float | None = None
    target_metric: float | None = None
    train_subset: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    inference_batch_size: int | None = None
    keep_denormals: bool = False
    drop_last: bool = False
    """Drop each epoch's last partial batch (see :class:`~pytest_batchprof.experiment.config.
    RunConfig`'s ``drop_last``)."""
    noise_scale: bool = False
    precision: str = "fp32"
    no_co2: bool = False
    co2_country: str = DEFAULT_COUNTRY
    report_dir: Path = Path("reports")
    no_report: bool = False
    columns: tuple[str, ...] | None = None
    save: str | None = None
    compare: str | None = None
    fail_drop: float = 0.5
    fail_slowdown: float | None = None
    fail_missing: bool = False
    """With ``compare``: fail a test whose run has no entry in the baseline."""
    cache_dir: Path | None = None
    cache_clear: bool = False
    memory_budget: int | None = None
    """Bytes a run's peak memory may reach before it counts as out of memory."""
    oom: str = "skip"
    """What an out-of-memory run does to its test: ``skip`` or ``fail``."""
    find_max_batch: bool = False
    data_parallel: int = 1
    max_batch_margin: float = 0.1
    max_batch_cap: int | None = None
    lr_grid: tuple[float, ...] | None = None
    """Learning rates every configuration is trained at; the best on validation is chosen."""
    no_ensemble: bool = False
    """Train runs that differ only in seed and lr one at a time, not as one ensemble."""

    @property
    def baseline_dir(self) -> Path:
        """Where named baselines live: ``reports/baselines/`` by default."""
        return self.report_dir / "baselines"

    def header(self) -> str:
        """One line for ``pytest_report_header``."""
        subset = "all" if self.train_subset is None else str(self.train_subset)
        sizes = ",".join(map(str, self.batch_sizes))
        inference = self.inference_batch_size or "training"
        co2 = "off" if self.no_co2 else self.co2_country
        return (
            f"batchprof: dataset={self.dataset} batch-sizes={sizes} epochs={self.epochs} "
            f"optimizer={self.optimizer} lr={self.lr:g} seed={self.seed}"
            f"{f' repeats={self.repeats}' if self.repeats > 1 else ''} device={self.device} "
            f"train-subset={subset} val-fraction={self.val_fraction:.4g} "
            f"inference-batch-size={inference} co2={co2} data-dir={self.data_dir}"
        ) + self._lr_schedule() + (
            f" target-accuracy={self.target_accuracy:g}" if self.target_accuracy else "") + (
            f" target-metric={self.target_metric:g}" if self.target_metric is not None
            else "") + (
            " noise-scale" if self.noise_scale else "") + (
            f" precision={self.precision}" if self.precision != Settings.precision else "") + (
            " keep-denormals" if self.keep_denormals else "") + (
            " drop-last" if self.drop_last else "") + (
            f" cache={self.cache_dir}" if self.cache_dir is not None else "") + (
            f" memory-budget={format_size(self.memory_budget)}"
            if self.memory_budget is not None else "") + (
            f" oom={self.oom}" if self.oom != Settings.oom else "") + (
            f" find-max-batch (margin {self.max_batch_margin:.0%}"
            f"{f', cap {self.max_batch_cap}' if self.max_batch_cap else ''})"
            if self.find_max_batch else "") + (
            f" data-parallel={self.data_parallel}" if self.data_parallel > 1 else "") + (
            f" lr-grid={','.join(f'{lr:g}' for lr in self.lr_grid)}" if self.lr_grid else ""
        ) + self._ensembles()

    def _ensembles(self) -> str:
        """Whether runs that differ only in seed and lr train together, and if not, why."""
        if (self.repeats == 1 and not self.lr_grid) or self.no_ensemble:
            return " ensembles=off" if self.no_ensemble else ""
        reason = self.ensemble_obstacle()
        return f" ensembles=off ({reason})" if reason else " ensembles=on"

    def ensemble_obstacle(self) -> str | None:
        """What in the settings keeps every run alone (the model may add a reason of its own)."""
        if self.no_ensemble:
            return flag_of("no_ensemble")
        if self.data_parallel > 1:
            return "data-parallel runs"
        if self.memory_budget is not None:
            return "each run's peak is checked against the memory budget alone"
        if self.precision == "fp16":
            return "fp16's gradient scaler steps all members together"
        return None

    def _lr_schedule(self) -> str:
        schedule = (self.lr_scaling, self.lr_base_batch, self.lr_warmup_epochs)
        if schedule == (Settings.lr_scaling, Settings.lr_base_batch, Settings.lr_warmup_epochs):
            return ""  # the defaults: every run at --lr
        return (f" lr-scaling={self.lr_scaling} lr-base-batch={self.lr_base_batch} "
                f"lr-warmup-epochs={self.lr_warmup_epochs:g}")


def format_size(size: int) -> str:
    """``2 GiB``, ``512 MB``: a size in the largest unit that keeps it whole, else in MiB."""
    whole = [(scale, unit) for unit, scale in SIZE_UNITS.items()
             if size >= scale and size % scale == 0]
    scale, unit = max(whole)  # bytes always divide
    if scale == 1 and size >= 2**20:
        return f"{size / 2**20:.4g} MiB"
    return f"{size // scale} {unit}"


def default_data_dir() -> Path:
    """``$BATCHPROF_DATA_DIR`` when set, else ``~/.cache/pytest-batchprof``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR.expanduser()


def flag_of(field: str) -> str:
    """The ``--batchprof-`` spelling of a setting, for messages written away from the config:
    ``flag_of("train_subset")`` is ``--batchprof-train-subset``."""
    if field not in _FIELDS:
        raise ValueError(f"flag_of({field!r}): not a field of Settings; pass one of "
                         f"{', '.join(sorted(_FIELDS))}")
    return FLAG_PREFIX + RENAMED_OPTIONS.get(field, field).replace("_", "-")


_FIELDS = frozenset(field.name for field in dataclasses.fields(Settings))
