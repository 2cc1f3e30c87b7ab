"""Command-line options, their ini twins, and the validation of both.

Every option is ``--batchprof-NAME`` on the command line and ``batchprof_NAME``
in the ini file; the command line wins over the ini file, which wins over the
default. The options of the experiments also answer to a short spelling
without the prefix (``--epochs``, ``--device``, ``--batch-sizes``):
:func:`take_short_spellings` rewrites them on the command line once the
project's initial conftests and every plugin have registered their own
options, and only for names nobody else holds. The plugin loads in every
pytest session of its environment, and a project's own ``--device`` must keep
working. All values are parsed and checked once, when the session starts, into
one frozen :class:`~pytest_batchprof.settings.Settings`; a bad value ends the
session with a one-line ``pytest.UsageError`` (exit code 4) naming the spelling
that was used, the value and what is allowed.

This module imports neither torch nor codecarbon (the country table is read
only when ``--batchprof-co2-country`` is given).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_batchprof.data import catalog
from pytest_batchprof.data.catalog import DATASET_NAMES
from pytest_batchprof.measuring.carbon import known_countries
from pytest_batchprof.settings import (
    DATA_DIR_ENV,
    DEFAULT_COUNTRY,
    DEFAULT_DATA_DIR,
    LR_SCALINGS,
    OOM_ACTIONS,
    OPTIMIZERS,
    PRECISIONS,
    SIZE_UNITS,
    Settings,
    default_data_dir,
)

GROUP = "batchprof"
GROUP_TITLE = ("batchprof: batch-size and architecture experiments (each --batchprof-NAME of "
               "the experiments also answers to --NAME, unless the project defines that name)")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BASELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$")
_SIZE_UNITS_ANY_CASE = {unit.lower(): scale for unit, scale in SIZE_UNITS.items()}


class OptionError(ValueError):
    """A value that an option does not accept; the message says what is allowed."""


# ---------------------------------------------------------------- parsers


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"1,16,64"`` into ``(1, 16, 64)``.

    Spaces around items are allowed; empty items, non-integers, values below 1
    and repeated values are not (a repeated size would run the same test twice).
    """
    if not text.strip():
        raise OptionError("is empty")
    sizes: list[int] = []
    for item in text.split(","):
        token = item.strip()
        if not token:
            raise OptionError("has an empty item")
        size = _parse_int(token)
        if size < 1:
            raise OptionError(f"has {token!r}, which is below 1")
        if size in sizes:
            raise OptionError(f"repeats {size}")
        sizes.append(size)
    return tuple(sizes)


def _parse_int(token: str) -> int:
    """Plain ASCII digits only: ``int()`` would also take ``1_6`` and non-ASCII digits."""
    if not _INTEGER.match(token):
        raise OptionError(f"has {token!r}, which is not a whole number")
    return int(token)


def _positive_int(text: str) -> int:
    value = _parse_int(text.strip())
    if value < 1:
        raise OptionError(f"is {value}, which is below 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse_int(text.strip())
    if value < 0:
        raise OptionError(f"is {value}, which is negative")
    return value


def _finite_float(text: str, zero_allowed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"is {text!r}, which is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        bound = ">= 0" if zero_allowed else "above 0"
        raise OptionError(f"is {text}, which is not a finite number {bound}")
    return value


def parse_lr_grid(text: str) -> tuple[float, ...]:
    """Parse ``"1e-4,3e-4,1e-3"`` into the learning rates, smallest first
    (:func:`check_lr_grid`)."""
    rates: list[float] = []
    for item in text.split(","):
        token = item.strip()
        if not token:
            raise OptionError("has an empty item")
        try:
            rates.append(float(token))
        except ValueError:
            raise OptionError(f"has {token!r}, which is not a number") from None
    return check_lr_grid(rates)


def check_lr_grid(rates: Sequence[float]) -> tuple[float, ...]:
    """The learning rates of a grid, smallest first: at least two, each a finite number
    above 0, none repeated (a grid of one rate tunes nothing)."""
    seen: list[float] = []
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise OptionError(f"has {rate!r}, which is not a number")
        if not math.isfinite(rate) or rate <= 0:
            raise OptionError(f"has {rate:g}, which is not a finite number above 0")
        if rate in seen:
            raise OptionError(f"repeats {rate:g}")
        seen.append(float(rate))
    if len(seen) < 2:
        raise OptionError("has one rate; a grid needs two or more to choose from")
    return tuple(sorted(seen))


def _positive_float(text: str) -> float:
    return _finite_float(text, zero_allowed=False)


def _non_negative_float(text: str) -> float:
    return _finite_float(text, zero_allowed=True)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"is {text!r}, which is not a number") from None
    if not math.isfinite(value):
        raise OptionError(f"is {text}, which is not a finite number")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise OptionError(f"is {text}, which is not below 1")
    return value


def _margin(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise OptionError(f"is {text}, which is not below 1")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise OptionError(f"is {text!r}, which is not one of {', '.join(choices)}")
        return value

    return parse


def _dataset_name(text: str) -> str:
    """A built-in data set (any case) or one registered by the project's conftest."""
    value = text.strip()
    if value.lower() in DATASET_NAMES:
        return value.lower()
    if value in catalog.REGISTERED:
        return value
    raise OptionError(f"is {text!r}, which is not one of {', '.join(catalog.dataset_names())} "
                      f"(register your own with pytest_batchprof.register_dataset in a "
                      f"conftest.py)")


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise OptionError(f"is {text!r}, which is not true or false")


def _country(text: str) -> str:
    code = text.strip().upper()
    if code not in known_countries():
        raise OptionError(f"is {text!r}, which codecarbon has no energy mix for")
    return code


def parse_columns(text: str) -> tuple[str, ...]:
    """``model,batch_size,test_accuracy``: names of row keys, in order."""
    names = tuple(item.strip() for item in text.split(","))
    for name in names:
        if not _COLUMN.match(name):
            raise OptionError(f"has {name!r}, which is not a column name")
    return names


def _baseline_name(text: str) -> str:
    name = text.strip()
    if not _BASELINE_NAME.match(name) or name.endswith(".json"):
        raise OptionError(f"is {text!r}, which is not a baseline name")
    return name


def _directory(text: str) -> Path:
    return Path(text.strip()).expanduser()


def _not_a_file(path: Path) -> None:
    """A directory that may not exist yet, but not a path taken by a file."""
    if path.exists() and not path.is_dir():
        raise OptionError(f"names an existing file ({path}), not a directory")


def parse_size(text: str) -> int:
    """``2GiB``, ``512MB``, ``1.5 GB`` or a number of bytes, as whole bytes above 0."""
    match = _SIZE.match(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _SIZE_UNITS_ANY_CASE):
        raise OptionError(f"is {text!r}, which is not a size")
    size = int(float(match.group(1)) * _SIZE_UNITS_ANY_CASE.get(unit, 1))
    if size < 1:
        raise OptionError(f"is {text!r}, which is below one byte")
    return size


def _device(text: str) -> str:
    spec = text.strip().lower()
    if not _DEVICE.match(spec):
        raise OptionError(f"is {text!r}, which is not a device name")
    return spec


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Option:
    """One setting: its flag, ini key, parser and the help both share."""

    field: str
    metavar: str | None
    parse: Callable[[str], Any]
    allowed: str
    help: str
    switch: bool = False
    """A flag without a value on the command line (``--no-co2``); ``true``/``false`` in ini."""
    name: str | None = None
    """The option's name when it is not the field's: ``batchprof_report`` for ``report_dir``."""
    check: Callable[[Any], None] | None = None
    """A check of the final value, after a relative ini path is resolved against the ini file."""

    @property
    def key(self) -> str:
        """The option's name without the prefix: ``epochs``, ``report``, ``cache_clear``."""
        return (self.name or self.field).removeprefix(f"{GROUP}_")

    @property
    def flag(self) -> str:
        """The spelling that always reaches the plugin: ``--batchprof-epochs``."""
        return f"--{GROUP}-" + self.key.replace("_", "-")

    @property
    def short_flag(self) -> str | None:
        """``--epochs`` for the experiments' options; ``None`` for the plugin's own
        (``--batchprof-report``, ``--batchprof-compare``, ...), which have no other name."""
        return None if self.name else "--" + self.field.replace("_", "-")

    @property
    def ini(self) -> str:
        return f"{GROUP}_{self.key}"

    @property
    def dest(self) -> str:
        return f"{GROUP}_{self.field}"


OPTIONS: tuple[Option, ...] = (
    Option("batch_sizes", "LIST", parse_batch_sizes,
           "a comma-separated list of whole numbers >= 1, e.g. 1,16,64",
           "batch sizes that parametrize every test using the batch_size fixture "
           "(default: 64)"),
    Option("epochs", "N", _positive_int, "a whole number >= 1",
           "training epochs per run (default: 2)"),
    Option("dataset", "NAME", _dataset_name,
           "one of " + ", ".join(DATASET_NAMES) + " or a registered name",
           "data set of the dataset fixture (default: mnist)"),
    Option("data_dir", "PATH", lambda text: Path(text).expanduser(), "a directory path",
           f"where data sets are read and downloaded (default: ${DATA_DIR_ENV}, "
           f"else {DEFAULT_DATA_DIR})"),
    Option("device", "DEVICE", _device, "auto, cpu, cuda, cuda:N or mps",
           "torch device: auto picks cuda, then mps, then cpu (default: auto)"),
    Option("seed", "N", _non_negative_int, "a whole number >= 0",
           "seed of weight initialisation and shuffling (default: 0)"),
    Option("repeats", "N", _positive_int, "a whole number >= 1",
           "train every configuration with N seeds, the seed to the seed + N - 1; tables show "
           "the mean and its 95-percent confidence interval (default: 1)"),
    Option("lr", "FLOAT", _positive_float, "a finite number above 0, e.g. 1e-3",
           "learning rate (default: 1e-3)"),
    Option("optimizer", "NAME", _choice(OPTIMIZERS), "adam or sgd",
           "optimizer (default: adam)"),
    Option("lr_scaling", "RULE", _choice(LR_SCALINGS), "none, linear or sqrt",
           "scale --batchprof-lr with the batch size b: linear lr x b/B (Goyal et al. 2017), "
           "sqrt lr x sqrt(b/B), where B is --batchprof-lr-base-batch (default: none)"),
    Option("lr_base_batch", "B", _positive_int, "a whole number >= 1",
           "the batch size at which --batchprof-lr applies unscaled (default: 64)"),
    Option("lr_warmup_epochs", "E", _non_negative_float, "a number of epochs >= 0, e.g. 1 or 0.5",
           "ramp the learning rate linearly from --batchprof-lr to the run's scaled lr over the "
           "first E epochs, step by step (default: 0, no warm-up)"),
    Option("target_accuracy", "F", _fraction, "a fraction above 0 and below 1, e.g. 0.97",
           "stop each run when its validation accuracy reaches F, and report the steps, "
           "samples, epochs and seconds it took (default: off)"),
    Option("target_metric", "V", _finite, "a finite number in the metric's units, e.g. 0.3",
           "stop each run scored by another metric than accuracy (RMSE, F1, perplexity, "
           "metric=) when its validation metric reaches V in its direction (at most V when "
           "lower is better), and report the steps, samples, epochs and seconds it took "
           "(default: off)"),
    Option("train_subset", "N", _positive_int, "a whole number >= 1",
           "train on the first N training samples only, for quick runs (default: all)"),
    Option("drop_last", None, _boolean, "true or false",
           "drop each epoch's last partial batch, as DataLoader(drop_last=True) does: an "
           "epoch trains on its whole batches only (needed by BatchNorm when the last batch "
           "would hold one sample; default: off, every sample)", switch=True),
    Option("val_fraction", "F", _fraction, "a number above 0 and below 1",
           "share of the training file held out for validation "
           "(default: 1/12, i.e. 5,000 of MNIST's 60,000)"),
    Option("inference_batch_size", "N", _positive_int, "a whole number >= 1",
           "batch size of the inference latency figure (default: the run's training "
           "batch size, as in the reference posts)"),
    Option("noise_scale", None, _boolean, "true or false",
           "estimate each run's critical batch size (the gradient noise scale B_simple of "
           "McCandlish et al. 2018) after training", switch=True),
    Option("precision", "NAME", _choice(PRECISIONS), "fp32, tf32, bf16 or fp16",
           "numeric precision of training, evaluation and latency: tf32 (TF32 matmuls on "
           "CUDA), bf16 or fp16 (torch.autocast mixed precision; fp16 with a gradient "
           "scaler, on CUDA or MPS) (default: fp32)"),
    Option("keep_denormals", None, _boolean, "true or false",
           "compute on denormal floats instead of flushing them to zero while training "
           "on the CPU (slower; see the manual's 'Memory and precision' guide)", switch=True),
    Option("no_co2", None, _boolean, "true or false",
           "do not measure energy and CO2eq with codecarbon", switch=True),
    Option("co2_country", "ISO3", _country,
           "an ISO 3166 alpha-3 country code codecarbon knows, e.g. USA, FRA, DEU",
           f"country whose electricity mix turns energy into CO2eq "
           f"(default: {DEFAULT_COUNTRY})"),
    Option("report_dir", "DIR", lambda text: Path(text).expanduser(), "a directory path",
           "where the session's report files go (default: reports/ under the rootdir)",
           name="batchprof_report"),
    Option("no_report", None, _boolean, "true or false",
           "write no report files (the terminal table stays)", name="batchprof_no_report",
           switch=True),
    Option("columns", "LIST", parse_columns, "a comma-separated list of row keys, e.g. "
           "model,batch_size,test_accuracy",
           "columns of the summary table, in order (default: the posts' table)",
           name="batchprof_columns"),
    Option("save", "NAME", _baseline_name, "a name of letters, digits, '.', '_' and '-'",
           "save this session's figures as baseline NAME (reports/baselines/NAME.json)",
           name="batchprof_save"),
    Option("compare", "NAME|PATH", lambda text: text.strip(), "a baseline name or a path",
           "compare every run with the same configuration in a saved baseline",
           name="batchprof_compare"),
    Option("fail_drop", "PP", _non_negative_float, "a number of percentage points >= 0",
           "with --batchprof-compare: fail when a run's test accuracy fell by more than PP "
           "percentage points, or a run's other metric changed for the worse (an RMSE rose, "
           "an F1 fell) by more than PP percent of the baseline's value (default: 0.5)",
           name="batchprof_fail_drop"),
    Option("fail_slowdown", "PCT", _non_negative_float, "a percentage >= 0",
           "with --batchprof-compare: fail when a run trained more than PCT% slower "
           "(default: off; times depend on the machine)", name="batchprof_fail_slowdown"),
    Option("fail_missing", None, _boolean, "true or false",
           "with --batchprof-compare: fail a test whose run has no entry in the baseline, as "
           "a first run of a regression test fails (record it with --batchprof-save); "
           "entries only in the baseline are listed, never failed",
           name="batchprof_fail_missing", switch=True),
    Option("cache_dir", "DIR", _directory, "a directory path (created when missing)",
           "keep trained runs in DIR, keyed by configuration, data and versions, and load "
           "them instead of training again (default: off)", name="batchprof_cache",
           check=_not_a_file),
    Option("cache_clear", None, _boolean, "true or false",
           "with --batchprof-cache: delete the cached runs when the session starts",
           name="batchprof_cache_clear", switch=True),
    Option("memory_budget", "SIZE", parse_size,
           "a size such as 2GiB, 512MB or 1.5GB (decimal kB MB GB TB, binary KiB MiB GiB "
           "TiB, or bytes)",
           "a run whose peak memory passes SIZE counts as out of memory, as if the device "
           "had run out (default: on CUDA the device's memory, on the CPU none)",
           name="batchprof_memory_budget"),
    Option("oom", "ACTION", _choice(OOM_ACTIONS), "skip or fail",
           "what a run that runs out of memory does to its test; its row reads 'out of "
           "memory at batch B' either way (default: skip)", name="batchprof_oom"),
    Option("data_parallel", "N", _positive_int, "a whole number >= 1",
           "train every run in N processes with torch.distributed's DistributedDataParallel "
           "(gloo on the CPU, NCCL on CUDA); the batch size stays the global batch and must "
           "divide by N (default: 1)", name="batchprof_data_parallel"),
    Option("find_max_batch", None, _boolean, "true or false",
           "for each model of the session, find the largest batch size whose training fits "
           "the memory limit (--batchprof-memory-budget, or the CUDA device's memory) and "
           "report it", name="batchprof_find_max_batch", switch=True),
    Option("max_batch_margin", "F", _margin, "a fraction >= 0 and below 1, e.g. 0.1",
           "with --batchprof-find-max-batch: report the largest fit less this fraction "
           "(default: 0.1)", name="batchprof_max_batch_margin"),
    Option("max_batch_cap", "N", _positive_int, "a whole number >= 1",
           "with --batchprof-find-max-batch: the largest batch size to try (default: the "
           "training samples)", name="batchprof_max_batch_cap"),
    Option("lr_grid", "LIST", parse_lr_grid,
           "two or more learning rates, comma-separated, e.g. 1e-4,3e-4,1e-3,3e-3",
           "train every configuration at each of these learning rates and keep, per batch "
           "size, the one best on the validation split (fewest steps to "
           "--batchprof-target-accuracy when set, else the highest final val accuracy); the "
           "report shows the whole grid (default: off)", name="batchprof_lr_grid"),
    Option("no_ensemble", None, _boolean, "true or false",
           "train the runs that differ only in seed and learning rate (--batchprof-repeats, "
           "--batchprof-lr-grid) one at a time instead of as one stacked ensemble",
           name="batchprof_no_ensemble", switch=True),
)


INI_TYPE: object = (str | int | float | bool) if pytest.version_tuple >= (9, 2) else None
"""The type of every ini twin: any TOML scalar where pytest takes a type expression (9.2
and later), so that pytest 9's native ``[tool.pytest]`` table may say ``batchprof_epochs =
1`` or ``batchprof_no_co2 = true``; an ini file's text stays text (``str`` is tried
first). Values reach the options' parsers as text (:func:`_ini_text`); what no ini type of
pytest holds, a TOML array of numbers, or any scalar but a string before 9.2, is read
from the file as TOML typed it (:func:`_native_toml_value`)."""


def register(parser: pytest.Parser) -> None:
    """Add every ``--batchprof-NAME`` option to pytest's ``batchprof`` help group, and its
    ini twin (:data:`INI_TYPE`)."""
    group = parser.getgroup(GROUP, GROUP_TITLE)
    for option in OPTIONS:
        text = option.help.replace("%", "%%")  # argparse formats help: "PCT%" reads "%%"
        if option.switch:
            group.addoption(option.flag, dest=option.dest, action="store_const", const="true",
                            default=None, help=text)
        else:
            group.addoption(option.flag, dest=option.dest, metavar=option.metavar,
                            default=None, help=text)
        parser.addini(option.ini, option.help, type=INI_TYPE, default=None)


@dataclass(frozen=True)
class ShortSpellings:
    """What :func:`take_short_spellings` did to a command line."""

    yielded: tuple[Option, ...] = ()
    """Options whose short spelling another option holds: it was left alone. In OPTIONS order."""
    used: dict[str, str] = dataclasses.field(default_factory=dict)
    """Field -> the short spelling of its last occurrence, where that one was short."""


SHORT_SPELLINGS_KEY = pytest.StashKey[ShortSpellings]()


def take_short_spellings(parser: pytest.Parser, args: list[str]) -> ShortSpellings:
    """Turn ``--epochs``, ``--device``, ... in ``args`` (in place) into their ``--batchprof-``
    spellings, for every short name that no other option holds.

    Call it once every plugin and initial conftest has added its options, right
    before pytest parses ``args``. The short spellings are never options of
    their own: a name the project (or a plugin, or a conftest that loads later)
    defines cannot collide with them, and ``--help`` lists only the
    ``--batchprof-`` names. Nothing after ``--`` is touched.
    """
    held = _option_names(parser)
    yielded = tuple(option for option in OPTIONS
                    if option.short_flag is not None and option.short_flag in held)
    ours = {option.short_flag: option for option in OPTIONS
            if option.short_flag is not None and option.short_flag not in held}
    prefixed = {option.flag: option for option in OPTIONS}
    used: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg == "--":
            break
        name, equals, value = str(arg).partition("=")
        if name in ours:
            option = ours[name]
            args[index] = option.flag + equals + value
            used[option.field] = name
        elif name in prefixed:  # the last occurrence wins, as argparse lets it
            used.pop(prefixed[name].field, None)
    return ShortSpellings(yielded, used)


def _option_names(parser: pytest.Parser) -> set[str]:
    """Every option string registered so far, through pytest's parser or its argparse."""
    groups = [*getattr(parser, "_groups", ()), getattr(parser, "_anonymous", None)]
    names = {name for group in groups if group is not None  # pytest 8 keeps _anonymous apart
             for option in group.options for name in option.names()}
    argparser = getattr(parser, "optparser", None)  # pytest >= 9 builds argparse as it goes
    names.update(getattr(argparser, "_option_string_actions", {}))
    return names


def settings_from_config(config: pytest.Config) -> Settings:
    """Read, parse and check every option; raise ``pytest.UsageError`` on the first bad one."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw, source = _raw_value(config, option)
        if raw is None:
            continue
        try:
            value = option.parse(raw)
        except OptionError as error:
            raise pytest.UsageError(
                f"{source} {error}; expected {option.allowed} (got {raw!r})"
            ) from None
        if isinstance(value, Path) and source.startswith(option.ini) and config.inipath:
            value = Path(os.path.normpath(config.inipath.parent / value))  # no "dir/../"
        if option.check is not None:
            try:
                option.check(value)
            except OptionError as error:
                raise pytest.UsageError(
                    f"{source} {error}; expected {option.allowed} (got {raw!r})"
                ) from None
        values[option.field] = value
    if "data_dir" not in values:
        values["data_dir"] = default_data_dir()
    values.setdefault("report_dir", config.rootpath / "reports")
    processes = values.get("data_parallel", 1)
    check_batches_divide(config, values.get("batch_sizes", Settings.batch_sizes), processes,
                         f"{source_of(config, 'data_parallel')} {processes}")
    if values.get("lr_grid") and values.get("lr_scaling", "none") != "none":
        raise pytest.UsageError(
            f"{source_of(config, 'lr_grid')} tunes the learning rate at every batch size, and "
            f"{source_of(config, 'lr_scaling')} {values['lr_scaling']} would scale it too: "
            f"leave one of them out")
    if values.get("fail_missing") and values.get("compare") is None:
        raise pytest.UsageError(
            f"{source_of(config, 'fail_missing')} needs --batchprof-compare NAME (or "
            f"batchprof_compare in the ini file): there is no baseline to miss an entry in")
    if values.get("cache_clear") and values.get("cache_dir") is None:
        raise pytest.UsageError(
            f"{source_of(config, 'cache_clear')} needs --batchprof-cache DIR "
            f"(or batchprof_cache in the ini file): there is no cache to clear"
        )
    return Settings(**values)


def check_batches_divide(config: pytest.Config, batch_sizes: tuple[int, ...], processes: int,
                         by: str) -> None:
    """Raise a one-line usage error if a batch size does not split evenly among
    ``processes`` (``by`` names what set them: ``--batchprof-data-parallel 2``)."""
    indivisible = [size for size in batch_sizes if size % processes]
    if indivisible:
        raise pytest.UsageError(
            f"{source_of(config, 'batch_sizes')} has {indivisible[0]}, which does not divide "
            f"by {by}: the batch size is the global batch, split evenly among the processes; "
            f"use multiples of {processes}")


def source_of(config: pytest.Config, field: str) -> str:
    """Where a setting came from: ``--batchprof-device``, ``--device`` (the spelling used)
    or ``batchprof_device (ini)``."""
    return _raw_value(config, _option(field))[1]


def is_given(config: pytest.Config, field: str) -> bool:
    """Whether a setting was given (on the command line or in the ini file), not defaulted."""
    return _raw_value(config, _option(field))[0] is not None


def _option(field: str) -> Option:
    return next(option for option in OPTIONS if option.field == field)


def _raw_value(config: pytest.Config, option: Option) -> tuple[str | None, str]:
    cli = config.getoption(option.dest)
    if cli is not None:
        spellings = config.stash.get(SHORT_SPELLINGS_KEY, ShortSpellings())
        return str(cli), spellings.used.get(option.field, option.flag)
    ini = _ini_text(_ini_value(config, option.ini))
    if ini is not None and ini != "":
        return ini, f"{option.ini} (ini)"
    return None, option.flag


_ABSENT = object()


def _ini_value(config: pytest.Config, key: str) -> object:
    """The ini value of ``key`` as pytest reads it; where pytest's ini types cannot hold it
    (:data:`INI_TYPE`), as TOML typed it in the config file."""
    try:
        return config.getini(key)
    except pytest.UsageError:  # an -o override is text, which the type takes: the file's
        native = _native_toml_value(config, key)
        if native is _ABSENT:
            raise
        return native


NATIVE_TOML_KEY = pytest.StashKey[dict[str, object]]()
"""The native TOML table of the session's config file, read once (see
:func:`_native_toml_value`)."""


def _native_toml_value(config: pytest.Config, key: str) -> object:
    """``key`` of the native TOML table pytest reads (``[tool.pytest]`` in pyproject.toml,
    ``[pytest]`` in pytest.toml or another .toml file), or ``_ABSENT``; the file is read
    once a session, when the first value pytest's ini types cannot hold asks for it."""
    if NATIVE_TOML_KEY not in config.stash:
        config.stash[NATIVE_TOML_KEY] = _native_toml_table(config.inipath)
    return config.stash[NATIVE_TOML_KEY].get(key, _ABSENT)


def _native_toml_table(path: Path | None) -> dict[str, object]:
    """The native pytest table of the TOML file at ``path``; empty when there is none."""
    if path is None or path.suffix != ".toml":
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pytest itself depends on tomli there
        import tomli as tomllib
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = (document.get("tool", {}).get("pytest", {}) if path.name == "pyproject.toml"
             else document.get("pytest", {}))
    return table if isinstance(table, dict) else {}


def _ini_text(value: object) -> str | None:
    """An ini value as the options' parsers read it: TOML's ``true`` as ``true``, an array
    ``[8, 16]`` as ``8,16``, a number as Python writes it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # batchprof_batch_sizes = [8, 16]
        return ",".join(_ini_text(item) or "" for item in value)
    return str(value)
