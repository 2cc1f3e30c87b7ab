"""pytest glue: options, hooks and the public fixtures ``trained_model``, ``trained_mlp``,
``batchprof_batch_size``, ``batchprof_dataset``, ``batchprof_device`` and their aliases
``batch_size``, ``dataset`` and ``device``.

The plugin's machinery reads only its ``batchprof_`` fixtures; a project's own fixture of
an alias's name replaces the alias for its tests, the pytest way, and the plugin neither
reads nor parametrizes it (:data:`ALIASES`), as the project's options take the short
spellings of the plugin's.

Registered through the ``pytest11`` entry point ``batchprof``, so installing
the package is all it takes, and so the plugin loads in every pytest session of
its environment, including those of projects that never use it. It therefore
imports only pytest and its own light modules when it loads: torch and every
other heavy dependency are imported, and the device resolved, when a test first
asks for a batchprof fixture (:func:`batchprof_session`). Options and their
short spellings are in :mod:`pytest_batchprof.plugin.options`; the
:class:`~pytest_batchprof.settings.Settings` they make live in ``config.stash``.
Everything that can be checked before a test runs is checked in
``pytest_configure`` or right after collection, so a bad option or a missing data
set ends the session once, with one line, instead of failing every test.

The plugin is the package's top layer: the session's report (:mod:`.report`, which
compares with baselines through :mod:`pytest_batchprof.gating`) and
:func:`pytest_batchprof.record` (:mod:`.recording`, which reads the running test) live
here beside the fixtures, since both need the session's pytest state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_batchprof.engine.launch import launched_rank
from pytest_batchprof.plugin import hooks
from pytest_batchprof.plugin.options import (
    SHORT_SPELLINGS_KEY,
    check_batches_divide,
    is_given,
    register,
    settings_from_config,
    source_of,
    take_short_spellings,
)
from pytest_batchprof.plugin.terminal import TerminalConsole
from pytest_batchprof.plugin.threads import ThreadShare, share_threads
from pytest_batchprof.settings import Settings

if TYPE_CHECKING:
    import torch

    from pytest_batchprof.data.datasets import Dataset
    from pytest_batchprof.engine.parallel import Shard
    from pytest_batchprof.engine.training import Run
    from pytest_batchprof.gating import Threshold
    from pytest_batchprof.plugin.report import SessionReport, SummaryCollector
    from pytest_batchprof.runs.repeats import RepeatedRun
    from pytest_batchprof.runs.session import BatchprofSession

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey["BatchprofSession"]()
"""The session's shared state, present once a test has used the plugin."""
CLEARED_KEY = pytest.StashKey[int]()
RUNS_KEY = pytest.StashKey[list["Run"]]()
THREADS_KEY = pytest.StashKey[ThreadShare]()
"""The torch threads this process trains with, and how they were chosen (made with the
session's state)."""
ALIASES = {"batch_size": "batchprof_batch_size", "dataset": "batchprof_dataset",
           "device": "batchprof_device"}
"""The public fixtures of generic names, each an alias of the plugin's own: a project's
fixture of the same name wins, and the plugin's machinery reads only its own."""
DATA_FIXTURES = ("batchprof_dataset", "trained_model", "trained_mlp")
"""The fixtures that load a data set: a test using the plugin's own needs its data."""
_CURRENT_ITEM: ContextVar[pytest.Item | None] = ContextVar("batchprof_item", default=None)
"""The test whose body is running, for :func:`pytest_batchprof.record`."""
THRESHOLD_MARKERS = ("min_accuracy", "min_metric", "max_metric")
"""The markers that bound a test's runs (:class:`~pytest_batchprof.gating.Threshold`): their
accuracy from below, their metric (RMSE, F1, perplexity, the user's) from below or above."""
ACCELERATOR_CHECK_SKIPPED = ("auto", "cpu")
"""Device specs that cannot be missing: the device is resolved when first needed. Any other
(``cuda``, ``mps``) is checked when the session starts, so a missing one is a usage error."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Add ``pytest_batchprof_summary`` and ``pytest_batchprof_markdown``."""
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``batchprof`` option group and an ini twin for every option."""
    register(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]):
    """Once the project's initial conftests (and every plugin) have added their options,
    turn the short spellings that nobody holds into ours, before pytest parses ``args``."""
    result = yield
    early_config.stash[SHORT_SPELLINGS_KEY] = take_short_spellings(parser, args)
    return result


def pytest_configure(config: pytest.Config) -> None:
    """Validate every option and keep the settings in ``config.stash``.

    A device other than ``auto`` or ``cpu`` is checked now (that imports torch:
    the option asks for the plugin); otherwise nothing heavy is imported here.
    """
    config.addinivalue_line(
        "markers",
        "min_accuracy(fraction, split='test'): fail the test if any run it trains has a lower "
        "accuracy on that split (test, val or train), e.g. min_accuracy(0.96)",
    )
    config.addinivalue_line(
        "markers",
        "min_metric(value, split='test'): fail the test if any run it trains has a lower "
        "metric (run.metric: F1, or the one given with metric=) on that split (test, val or "
        "train), e.g. min_metric(0.8)",
    )
    config.addinivalue_line(
        "markers",
        "max_metric(value, split='test'): fail the test if any run it trains has a higher "
        "metric (run.metric: RMSE, perplexity, or the one given with metric=) on that split "
        "(test, val or train), e.g. max_metric(0.5)",
    )
    config.addinivalue_line(
        "markers",
        "dataset(name, **options): the data set of this test's batchprof_dataset (and its "
        "dataset alias), trained_model and trained_mlp fixtures and of "
        "pytest_batchprof.record, instead of --batchprof-dataset, e.g. "
        "dataset('synthetic', size=600)",
    )
    settings = settings_from_config(config)
    config.stash[SETTINGS_KEY] = settings
    if settings.device not in ACCELERATOR_CHECK_SKIPPED:
        batchprof_session(config)
    is_worker = hasattr(config, "workerinput")
    if settings.cache_clear and not is_worker:  # once, before workers start
        from pytest_batchprof.runs.cache import RunCache

        config.stash[CLEARED_KEY] = RunCache(settings.cache_dir).clear()
    launched = launched_rank()
    if not is_worker and (launched is None or launched[0] == 0):
        # xdist workers send their rows to the controller; under torchrun, rank 0 reports
        config.pluginmanager.register(SummaryReporter(config, _baseline(config, settings)),
                                      "batchprof-summary")
    if not is_worker and config.pluginmanager.hasplugin("html") and config.getoption(
            "htmlpath", None):  # pytest-html writes a report: the rows go into it too
        from pytest_batchprof.plugin.html import HtmlResults

        config.pluginmanager.register(HtmlResults(config), "batchprof-html")


def batchprof_session(config: pytest.Config) -> BatchprofSession:
    """The session's shared state (data sets, trained runs, the device), made on first use.

    Making it imports torch and resolves ``--batchprof-device``; a session whose
    tests never use the plugin never pays for either. In a pytest-xdist worker it
    also gives torch the worker's share of the threads (:mod:`~pytest_batchprof.plugin.
    threads`).
    """
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        return session
    from pytest_batchprof.hardware.devices import Accelerators, DeviceError, select_device
    from pytest_batchprof.runs.session import BatchprofSession

    settings = config.stash[SETTINGS_KEY]
    worker_id = getattr(config, "workerinput", {}).get("workerid")
    try:
        device = select_device(settings.device, Accelerators.probe(), worker_id)
    except DeviceError as error:
        raise pytest.UsageError(
            f"{source_of(config, 'device')} {error}; expected auto, cpu or a device this "
            f"machine has (got {settings.device!r})"
        ) from None
    from pytest_batchprof.hardware.precision import unsupported

    reason = unsupported(settings.precision, device)
    if reason is not None:
        raise pytest.UsageError(f"{source_of(config, 'precision')} is {settings.precision!r}, "
                                f"which this session's device cannot run: {reason}")
    if settings.find_max_batch and settings.memory_budget is None and device.type != "cuda":
        raise pytest.UsageError(
            f"{source_of(config, 'find_max_batch')} needs a memory limit, and {device} has "
            f"none of its own: give --batchprof-memory-budget SIZE")
    launched = None
    if launched_rank() is not None:  # torchrun started this pytest as one rank of several
        import torch

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        launched = _join_launched_group(config, settings, device)
    config.stash[THREADS_KEY] = share_threads(getattr(config, "workerinput", None), os.environ)
    console = TerminalConsole(config)
    session = BatchprofSession(settings, device, console, launched)
    config.stash[SESSION_KEY] = session
    if settings.device == "auto":  # the header could not say which device that is
        console.line(f"batchprof: device {device} (auto: cuda, then mps, then cpu)")
    return session


def _join_launched_group(config: pytest.Config, settings: Settings,
                         device: torch.device) -> Shard:
    """Under torchrun, every pytest process is one rank of each run: check the options
    against the world size, and join the process group."""
    from pytest_batchprof.engine.parallel import join_launched_group

    _, world = launched_rank()
    if settings.data_parallel > 1:
        raise pytest.UsageError(
            f"{source_of(config, 'data_parallel')} forks processes of its own; under torchrun "
            f"each of its {world} pytest processes is already one rank: leave it out")
    check_batches_divide(config, settings.batch_sizes, world, f"torchrun's {world} processes")
    return join_launched_group(device)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Give torch back the threads it had before a worker's share was set (a session run
    inside another process, as pytester's, leaves that process as it found it)."""
    share = config.stash.get(THREADS_KEY, None)
    if share is not None and share.threads != share.before:
        import torch

        torch.set_num_threads(share.before)


def current_item() -> pytest.Item | None:
    """The test whose body is running in this thread, if any."""
    return _CURRENT_ITEM.get()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One line with every batchprof setting (and the device, once resolved).

    Further lines say which short spellings were left to the project, and how
    many cached runs ``--batchprof-cache-clear`` deleted. The fixtures left to the
    project are named after collection (:func:`pytest_report_collectionfinish`).
    """
    settings = config.stash[SETTINGS_KEY]
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        device = str(session.device)
    elif settings.device == "cpu":
        device = "cpu"
    else:
        device = "chosen when a test first needs it"  # not worth importing torch for now
    lines = [f"{settings.header()} ({device})"]
    spellings = config.stash.get(SHORT_SPELLINGS_KEY, None)
    if spellings is not None and spellings.yielded:
        shorts = ", ".join(option.short_flag for option in spellings.yielded)
        ours = ", ".join(option.flag for option in spellings.yielded)
        lines.append(f"batchprof: left to this project: {shorts} (batchprof's own: {ours})")
    if CLEARED_KEY in config.stash:
        count = config.stash[CLEARED_KEY]
        lines.append(f"batchprof: cleared {count} cached run{'s' if count != 1 else ''} "
                     f"from {settings.cache_dir}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that uses the plugin's ``batchprof_batch_size`` (by name, or
    through the plugin's ``batch_size``) over ``--batch-sizes`` (ids ``bs16``).

    A project's own ``batch_size`` fixture shadows the plugin's, so a test that uses it is
    not parametrized (its closure holds no ``batchprof_batch_size``, unless the project's
    fixture asks for it). A test's own ``@pytest.mark.parametrize("batch_size", ...)`` (or
    of ``batchprof_batch_size``) wins.
    """
    if ("batchprof_batch_size" not in metafunc.fixturenames
            or not _resolves_to_ours(metafunc.definition, "batchprof_batch_size")
            or _parametrizes_batch_size(metafunc)):
        return
    sizes = metafunc.config.stash[SETTINGS_KEY].batch_sizes
    metafunc.parametrize("batchprof_batch_size", sizes, indirect=True,
                         ids=[f"bs{size}" for size in sizes])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Load every data set the selected tests need now, so a missing one stops the session once.

    A test needs a data set when it names one (``@pytest.mark.dataset``) or uses the
    plugin's ``batchprof_dataset`` fixture (as the test resolves it). A test that only
    trains through :func:`trained_model` or :func:`trained_mlp` may pass its own
    ``dataset=``: the session's data set is loaded for it here only when it was chosen
    (``--batchprof-dataset`` or its ini twin), never the default on a guess, which would
    stop a project whose tests all train on its own registered data for want of MNIST.
    A session of the project's own tests, with its own ``dataset`` fixture, loads
    nothing and imports no torch. A registered data set whose registration failed is
    left to its tests, which fail with its one line when they ask for it; the rest of
    the session runs.
    """
    config = session.config
    if config.option.collectonly:
        return
    chosen = is_given(config, "dataset")
    wanted: dict[tuple[str | None, str], tuple[str, dict[str, object]]] = {}
    for item in session.items:
        if not any(_resolves_to_ours(item, fixture) for fixture in DATA_FIXTURES):
            continue
        name, options = dataset_request(item)
        if name is None and not chosen and not _resolves_to_ours(item, "batchprof_dataset"):
            continue  # trains through trained_model or trained_mlp, maybe on its own set
        wanted.setdefault((name, repr(sorted(options.items()))), (name, options))
    if not wanted:
        return
    from pytest_batchprof.data.datasets import DatasetRegistrationError, DatasetUnavailable

    state = batchprof_session(config)
    for name, options in wanted.values():
        try:
            state.dataset(name, options)
        except DatasetRegistrationError:
            continue  # its tests fail at first use (_load), with the same line
        except (DatasetUnavailable, ValueError) as error:
            raise pytest.UsageError(str(error)) from None


def pytest_report_collectionfinish(config: pytest.Config,
                                   items: Sequence[pytest.Item]) -> list[str]:
    """Name the public fixtures (:data:`ALIASES`) that something else defines too (a
    conftest, a test module, another plugin) where the selected tests can see it, and the
    ``batchprof_`` fixtures the plugin reads instead; nothing when there is none.

    Said after collection, when every conftest and test module has added its fixtures.
    (Under pytest-xdist the workers collect, and pytest shows no worker's line.) Only
    the tests that use a name are looked at, once per module or class: fixtures are
    visible by where a test is defined, and this runs in every session of the
    environment, the project's own included.
    """
    held = []
    for name in ALIASES:
        places = {item.parent.nodeid if item.parent is not None else item.nodeid: item
                  for item in items if name in getattr(item, "fixturenames", ())}
        if any(not _is_ours(definition) for item in places.values()
               for definition in _definitions(item, name)):
            held.append(name)
    if not held:
        return []
    ours = ", ".join(ALIASES[name] for name in held)
    return [f"batchprof: left to this project: fixture{'s' if len(held) > 1 else ''} "
            f"{', '.join(held)} (batchprof's own: {ours})"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the rows of the runs a test trained to its report (they travel with xdist)."""
    report = yield
    runs = item.stash.get(RUNS_KEY, [])
    if runs and (call.when == "call" or (call.when == "setup" and report.outcome != "passed")):
        report.batchprof_rows = [_row(item.config, run) for run in runs]
    return report


class SummaryReporter:
    """Gathers rows as tests finish and renders the summary; one per session's config.

    A plugin object rather than module hooks, so that each config (pytester
    runs sessions inside sessions) keeps its own rows.
    """

    def __init__(self, config: pytest.Config,
                 baseline: tuple[Path, dict[str, object]] | None = None) -> None:
        self.config = config
        self.baseline = baseline
        self.nothing_compared = False
        self._collector: SummaryCollector | None = None
        self.report: SessionReport | None = None
        self.finished = False

    @property
    def collector(self) -> SummaryCollector:
        """The rows gathered so far (made when the first row arrives: it imports the
        report modules)."""
        if self._collector is None:
            from pytest_batchprof.plugin.report import SummaryCollector

            self._collector = SummaryCollector()
        return self._collector

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Under pytest-xdist, check ``--batchprof-columns`` now, before the workers start:
        this controller collects nothing (they do), so :meth:`pytest_collection_finish`
        never comes."""
        if self.config.pluginmanager.has_plugin("dsession"):
            self._check_columns()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Check ``--batchprof-columns`` before any test trains (every conftest that may
        add a column through ``pytest_batchprof_summary`` is loaded by now)."""
        self._check_columns()

    def _check_columns(self) -> None:
        """A ``--batchprof-columns`` name that no row can have is a usage error, one line
        naming the known columns; unless a ``pytest_batchprof_summary`` hook may add it,
        which only the rows will tell (the summary warns then)."""
        requested = self.config.stash[SETTINGS_KEY].columns
        if not requested or self.config.hook.pytest_batchprof_summary.get_hookimpls():
            return
        from pytest_batchprof.reports.tables import KNOWN_COLUMNS, unknown_columns

        unknown = unknown_columns(requested)
        if unknown:
            raise pytest.UsageError(
                f"{source_of(self.config, 'columns')} names {', '.join(unknown)}, which no "
                f"row has; known columns: {', '.join(sorted(KNOWN_COLUMNS))}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Gather rows as tests finish, so an interrupted session keeps what it measured."""
        rows = getattr(report, "batchprof_rows", None)
        if rows:
            self.collector.add(rows, report.nodeid, report.outcome)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Render the summary and write the report files (on the xdist controller only)."""
        self.finish(session, exitstatus)

    def finish(self, session: pytest.Session, exitstatus: int) -> SessionReport | None:
        """Render the summary and write the report files, once: another plugin's
        ``pytest_sessionfinish`` that needs the report (pytest-html's, :mod:`.html`) may
        come first and ask for it."""
        if not self.finished:
            self.finished = True
            self._finish(session, exitstatus)
        return self.report

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        state = self.config.stash.get(SESSION_KEY, None)
        if state is not None:
            from pytest_batchprof.reports.tables import run_key

            for run in state.runs.values():  # trained in a test that never reported (Ctrl-C)
                row = _row(self.config, run)
                if run_key(row) not in self.collector.rows:
                    self.collector.add([row], "", "interrupted")
        if self._collector is not None:
            self.report = self._collector.finish(self.config, self.config.stash[SETTINGS_KEY],
                                                 partial=self._stopped(session, exitstatus),
                                                 baseline=self.baseline,
                                                 failed=exitstatus != pytest.ExitCode.OK)
        if self.report and self.report.comparison and self.report.comparison.regressions:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif (self.baseline is not None and self.report is None
              and not self.config.option.collectonly):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # compared nothing: no silent pass
            self.nothing_compared = True

    def _stopped(self, session: pytest.Session, exitstatus: int) -> bool:
        """Whether the session ended before every test ran (Ctrl-C, ``-x``, ``--maxfail``)
        or a run's test never reported: its report is partial. Failed assertions are not:
        their runs finished, and the table has their outcomes."""
        return (exitstatus == pytest.ExitCode.INTERRUPTED
                or bool(session.shouldstop or session.shouldfail)
                or any(row.get("outcome") == "interrupted"
                       for row in self.collector.rows.values()))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the markdown summary table and where the report files went."""
        report = self.report
        if self.nothing_compared:
            terminalreporter.write_line(
                f"batchprof: no run was trained, so nothing was compared with the baseline "
                f"{self.baseline[0]}", red=True)
        if report is None:
            return
        terminalreporter.write_sep("=", report.title)
        for line in report.table.splitlines():
            terminalreporter.write_line(line)
        for part in report.lines():
            if part.kind == "heading":
                terminalreporter.write_sep("-", part.text)
            else:
                style = {"caution": {"yellow": True},
                         "regression": {"red": True, "bold": True}}.get(part.kind, {})
                for line in part.text.splitlines():
                    terminalreporter.write_line(line, **style)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Reject bad ``@pytest.mark.min_accuracy``, ``min_metric`` and ``max_metric``
    arguments before the test trains anything."""
    _thresholds(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Check ``@pytest.mark.min_accuracy``, ``min_metric`` and ``max_metric`` against every
    run the test trained (or recorded: the test is :func:`current_item` while it runs),
    and with ``--batchprof-fail-missing`` that each has an entry in the baseline."""
    token = _CURRENT_ITEM.set(item)
    try:
        result = yield
    finally:
        _CURRENT_ITEM.reset(token)
    thresholds = _thresholds(item)
    if thresholds:
        runs = item.stash.get(RUNS_KEY, [])
        if not runs:
            pytest.fail(f"@pytest.mark.{thresholds[0].marker}: the test trained no run to "
                        f"check (use trained_model, trained_mlp or pytest_batchprof.record)",
                        pytrace=False)
        rows = [run.summary() for run in runs if not run.lr_discarded]
        failures = [line for threshold in thresholds for line in threshold.failures(rows)]
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
    _missing_entries(item)
    return result


# ---------------------------------------------------------------- fixtures


# The plugin's machinery reads only its ``batchprof_`` fixtures. ``batch_size``, ``dataset``
# and ``device`` are public aliases of them (:data:`ALIASES`): a project's own fixture of
# one of those names shadows the alias the pytest way, and the plugin never reads it.


@pytest.fixture
def batchprof_batch_size(request: pytest.FixtureRequest) -> int:
    """The batch size of this test, one of ``--batch-sizes`` (default 64).

    Any test whose fixtures include it (by this name, or through the ``batch_size``
    alias) is parametrized over ``--batch-sizes`` with ids such as ``bs16``;
    ``@pytest.mark.parametrize("batchprof_batch_size", [...])`` (or of ``batch_size``)
    on the test overrides the option.
    """
    return request.param


@pytest.fixture
def batch_size(batchprof_batch_size: int) -> int:
    """The batch size of this test, one of ``--batch-sizes``: an alias of
    :func:`batchprof_batch_size`.

    A project's own ``batch_size`` fixture replaces it for the tests that see
    that fixture; those tests are then not parametrized over ``--batch-sizes``
    (ask for ``batchprof_batch_size`` to have both).
    """
    return batchprof_batch_size


@pytest.fixture(scope="session")
def batchprof_device(pytestconfig: pytest.Config) -> torch.device:
    """The ``torch.device`` of this session, from ``--batchprof-device`` (auto: cuda, mps,
    then cpu)."""
    return batchprof_session(pytestconfig).device


@pytest.fixture(scope="session")
def device(batchprof_device: torch.device) -> torch.device:
    """The ``torch.device`` of this session: an alias of :func:`batchprof_device`, which a
    project's own ``device`` fixture replaces."""
    return batchprof_device


@pytest.fixture(scope="session")
def batchprof_settings(pytestconfig: pytest.Config) -> Settings:
    """The session's validated options, for experiments that adapt to them.

    A frozen :class:`~pytest_batchprof.settings.Settings`: ``.batch_sizes``,
    ``.epochs``, ``.train_subset``, ``.seed``, ``.lr`` and the rest, after the
    command line, the ini file and the defaults have been merged.
    """
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture
def batchprof_dataset(request: pytest.FixtureRequest) -> Dataset:
    """The data set (``--batchprof-dataset``, or this test's ``@pytest.mark.dataset``), on the
    device: what :func:`trained_model` trains on unless told otherwise.

    Loaded once per session: ``dataset.train``, ``.val`` and ``.test`` each have
    ``.x`` ``(N, *sample)`` and ``.y`` ``(N,)``; also ``.name``, ``.image_shape``,
    ``.input_size`` and ``.num_classes``.
    """
    name, options = dataset_request(request.node)
    return _load(request.config, name, options)


@pytest.fixture
def dataset(batchprof_dataset: Dataset) -> Dataset:
    """The data set of this test: an alias of :func:`batchprof_dataset`, which a project's
    own ``dataset`` fixture replaces (the plugin then trains on its own all the same)."""
    return batchprof_dataset


@pytest.fixture
def trained_model(request: pytest.FixtureRequest) -> Callable[..., Run]:
    """A factory that trains any model; it returns the
    :class:`~pytest_batchprof.engine.training.Run`.

    Usage::

        def test_lenet(trained_model, batch_size):
            run = trained_model(LeNet5, batch_size=batch_size, epochs=2)
            assert run.test_accuracy >= 0.98

    ``model`` is an ``nn.Module`` subclass or any callable returning a fresh
    ``nn.Module``; it is called with no arguments, or, when it has one required
    parameter, with the data's :class:`~pytest_batchprof.data.description.DataDescription`
    (``.input_shape``, ``.channels``, ``.num_classes``), so that it can size its
    layers. The shipped families are :func:`~pytest_batchprof.experiment.models.mlp` and
    :func:`~pytest_batchprof.experiment.models.cnn` (LeNet-5 by default).

    Keywords: ``batch_size`` (default: this test's ``batch_size`` when that name is
    the plugin's, else its ``batchprof_batch_size``, else the first of
    ``--batch-sizes``; a project's own ``batch_size`` fixture is never read: pass it
    as ``batch_size=``), ``epochs``, ``lr``, ``seed``
    (default: the options; an ``lr`` given here is used as it is, unscaled),
    ``optimizer`` (``adam``, ``sgd``, or a callable taking the parameters and
    returning a ``torch.optim.Optimizer``: the run's learning rate is written into
    its parameter groups), ``loss`` (default cross-entropy; any
    ``loss(outputs, targets)`` returning the batch's mean), ``name`` (what the
    table calls the model; default the class or function name and its parameter
    count, ``LeNet5 (61,706)``), ``input_size`` (a centre crop of images, ``400``
    or ``(h, w)``), ``dataset`` (default: this test's data set, as
    ``batchprof_dataset`` gives it), ``repeats`` (default: ``--repeats``),
    ``precision`` (``fp32``, ``tf32``, ``bf16`` or ``fp16``; default:
    ``--batchprof-precision``), ``data_parallel`` (processes of a
    DistributedDataParallel run; default: ``--batchprof-data-parallel``) and
    ``drop_last`` (drop each epoch's last partial batch; default:
    ``--batchprof-drop-last``, off).

    What the run learns and how it is scored: the data set's task (``register_dataset(...,
    task=...)``: classification, regression, multilabel, tokens) gives the loss and the
    metric (accuracy, RMSE, micro F1, perplexity); ``metric`` replaces the metric with a
    torchmetrics ``Metric`` (its ``higher_is_better`` is read) or
    :func:`pytest_batchprof.metric`. ``run.metric`` and ``run.metric_name`` hold it;
    ``@pytest.mark.min_metric(v)`` / ``max_metric(v)`` assert it. Batches may be
    ``(x, y)``, ``(x1, x2, ..., y)`` or mappings (``model(**inputs)``, the targets under
    ``labels``); outputs tensors, tuples, mappings or objects with ``logits``;
    ``forward(model, batch) -> (outputs, targets)`` covers anything else.
    ``scheduler(optimizer, steps_per_epoch, epochs)`` returns an ``LRScheduler`` stepped
    after every step (a warm-up composes with it); ``sync_batchnorm=True`` synchronises
    BatchNorm across a data-parallel run's processes.

    The same configuration asked for again in the session is trained once, and
    with ``--batchprof-cache`` it is kept across sessions, keyed by a
    fingerprint of the model's structure and its factory's name (a lambda or a
    function defined inside a test is trained but not cached). A model that
    fails to build, whose outputs are not ``(batch, classes)``, or whose loss is
    not a finite scalar fails the test with one line before training starts, as does
    one with BatchNorm layers whose run would hand it a batch of one sample; a
    model that cannot take the data's samples (a shipped ``cnn`` whose convolutions
    shrink the images to nothing, or a factory or forward pass that raises
    :class:`~pytest_batchprof.experiment.models.ShapeMismatch`) skips it, naming the
    model and the shape; a run whose loss becomes NaN or inf fails it with the
    reason. A run that runs
    out of memory (the device's, or ``--batchprof-memory-budget``) skips the
    test with ``out of memory at batch B`` (``--batchprof-oom fail`` fails it);
    its row says so and the session goes on.

    With ``repeats=N`` above 1 the configuration is trained with seeds
    ``seed`` to ``seed + N - 1`` and the factory returns a
    :class:`~pytest_batchprof.runs.repeats.RepeatedRun`: its figures are the means
    over the seeds (so ``run.test_accuracy >= 0.96`` checks the mean),
    ``run.interval("test_accuracy")`` gives the 95% confidence interval, and
    ``run.runs`` the single runs. The report shows one row per configuration,
    mean ± interval.

    With ``lr_grid=[1e-4, 3e-4, 1e-3]`` (default: ``--batchprof-lr-grid``, unless the
    call gives its own ``lr``) the configuration is trained at every rate of the grid
    (with each seed) and the factory returns the run (or runs) of the rate that did best
    on the validation split: fewest steps to ``--target-accuracy`` when set, else the
    highest final validation accuracy (:mod:`~pytest_batchprof.runs.lr_grid`). Every run
    is in the report's grid; the table, thresholds and baselines read the chosen one.
    Runs that differ only in seed and rate train together as one stacked ensemble
    (:mod:`~pytest_batchprof.engine.ensemble`) unless ``--batchprof-no-ensemble``.

    With pytest-benchmark's ``benchmark`` fixture in the same test, every
    run's figures go into ``benchmark.extra_info["batchprof"]`` (kept by
    ``--benchmark-save``), and ``benchmark(run.predictor())`` times inference;
    training is never repeated by the benchmark's calibration.
    """
    state = batchprof_session(request.config)

    def factory(
        model: object,
        *,
        batch_size: int | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        optimizer: object = None,
        seed: int | None = None,
        loss: Callable[..., object] | None = None,
        name: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        dataset: str | None = None,
        repeats: int | None = None,
        precision: str | None = None,
        data_parallel: int | None = None,
        lr_grid: Sequence[float] | None = None,
        drop_last: bool | None = None,
        metric: object = None,
        forward: Callable[..., object] | None = None,
        scheduler: Callable[..., object] | None = None,
        sync_batchnorm: bool = False,
    ) -> Run | RepeatedRun:
        from pytest_batchprof.data.loading import DataReadError
        from pytest_batchprof.engine.parallel import DataParallelError
        from pytest_batchprof.experiment.models import ModelError, ShapeMismatch

        repeats = state.settings.repeats if repeats is None else repeats
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats={repeats!r} must be a whole number >= 1")
        grid = _lr_grid(lr_grid, lr, state.settings.lr_grid)
        if dataset is None:
            data = request.getfixturevalue("batchprof_dataset")
        else:
            data = _load(request.config, dataset, {})
        if batch_size is None:
            batch_size = _tests_batch_size(request) or state.settings.batch_sizes[0]
        first_seed = state.settings.seed if seed is None else seed
        seeds = [first_seed + offset if offset else first_seed for offset in range(repeats)]
        variants = [{"seed": each, "lr": rate} for rate in (grid or (lr,)) for each in seeds]
        failure = skipped = None
        try:  # a bad seed reaches the session as given, for its error
            trained = state.runs_of(data, model, batch_size, variants, epochs=epochs,
                                    optimizer=optimizer, input_size=input_size, loss=loss,
                                    name=name, precision=precision,
                                    data_parallel=data_parallel, drop_last=drop_last,
                                    metric=metric, forward=forward, scheduler=scheduler,
                                    sync_batchnorm=sync_batchnorm)
        except ShapeMismatch as error:  # a model that cannot take this data: no bug in it
            skipped = str(error)
        except (ModelError, DataParallelError, DataReadError) as error:
            failure = str(error)
        if skipped is not None:
            pytest.skip(skipped)
        if failure is not None:  # one line, outside the except: no chained traceback
            pytest.fail(failure, pytrace=False)
        runs = _tuned(trained, grid, state) if grid else trained
        used = request.node.stash.setdefault(RUNS_KEY, [])
        for run in trained:
            if run not in used:
                used.append(run)
            if "benchmark" in request.fixturenames:
                _record_in_benchmark(request.getfixturevalue("benchmark"), run)
        for run in runs:
            if run.diverged:
                pytest.fail(f"{run.config.describe()} diverged: {run.diverged}", pytrace=False)
            if run.out_of_memory:  # its row reads so; the test is skipped, or fails if asked
                message = f"{run.config.describe()}: {run.out_of_memory.describe()}"
                if state.settings.oom == "fail":
                    pytest.fail(message, pytrace=False)
                pytest.skip(message)
        if repeats == 1:
            return runs[0]
        from pytest_batchprof.runs.repeats import RepeatedRun

        return RepeatedRun(tuple(runs))

    return factory


@pytest.fixture
def trained_mlp(trained_model: Callable[..., Run]) -> Callable[..., Run]:
    """A factory that trains one of the reference posts' MLPs: ``trained_model(mlp(...))``.

    Usage::

        def test_accuracy(trained_mlp, batch_size):
            run = trained_mlp(hidden=(1024,), batch_size=batch_size, epochs=2)
            assert run.test_accuracy >= 0.96

    ``hidden`` (default ``(1024,)``) and ``activation`` (relu, gelu, tanh,
    sigmoid, linear) choose the MLP, named by its widths (``784-1024-10``);
    every other keyword is :func:`trained_model`'s.
    """

    def factory(hidden: int | Sequence[int] = (1024,), *, activation: str = "relu",
                **keywords: object) -> Run | RepeatedRun:
        from pytest_batchprof.experiment.models import mlp

        return trained_model(mlp(hidden, activation), **keywords)

    return factory


# ---------------------------------------------------------------- helpers


def _row(config: pytest.Config, run: Run) -> dict[str, object]:
    """The run's row: its figures (the torch threads it trained with among them, kept in
    the cache with it), and in an xdist worker a note that its times are a worker's
    (:mod:`~pytest_batchprof.plugin.threads`)."""
    from pytest_batchprof.plugin.report import row_from_run

    row = row_from_run(run)
    share = config.stash.get(THREADS_KEY, None)
    note = None if share is None or run.threads is None else share.note(run.threads)
    if note is not None:
        row["threads_note"] = note
    return row


def _tests_batch_size(request: pytest.FixtureRequest) -> int | None:
    """The batch size the test gives through the plugin's fixtures: its ``batch_size`` when
    that name is the plugin's alias (or the test's parametrize of it), else its
    ``batchprof_batch_size``; ``None`` when it has neither. A project's own ``batch_size``
    is never read: the test gives ``batch_size=`` to the factory."""
    if _resolves_to_ours(request.node, "batch_size"):
        return request.getfixturevalue("batch_size")
    if _resolves_to_ours(request.node, "batchprof_batch_size"):
        return request.getfixturevalue("batchprof_batch_size")
    return None


def _record_in_benchmark(benchmark: object, run: Run) -> None:
    """Append the run's figures (not its series: they are long) to ``benchmark.extra_info``."""
    from pytest_batchprof.reports.figures import SERIES_KEYS

    figures = {key: value for key, value in run.summary().items() if key not in SERIES_KEYS}
    runs = benchmark.extra_info.setdefault("batchprof", [])
    if figures not in runs:
        runs.append(figures)


def _lr_grid(asked: Sequence[float] | None, lr: float | None,
             option: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """The grid a fixture call tunes over: its ``lr_grid=``, else ``--batchprof-lr-grid``
    unless the call gives its own ``lr``; ``None``: no tuning."""
    if asked is None:
        return None if lr is not None else option
    if lr is not None:
        raise ValueError("lr= and lr_grid= both given: the grid tunes the learning rate; "
                         "pass one of them")
    from pytest_batchprof.plugin.options import OptionError, check_lr_grid

    try:
        if isinstance(asked, str) or not isinstance(asked, Sequence):
            raise OptionError("is not a list of numbers")
        return check_lr_grid(asked)
    except OptionError as error:
        raise ValueError(f"lr_grid={asked!r} {error}; expected two or more learning rates "
                         f"above 0, e.g. lr_grid=[1e-4, 3e-4, 1e-3]") from None


def _tuned(trained: list[Run], grid: tuple[float, ...], state: BatchprofSession) -> list[Run]:
    """Choose the grid's best rate on validation (:func:`~pytest_batchprof.runs.lr_grid.
    choose_lr`), mark every run with the choice, and return the chosen rate's runs."""
    from pytest_batchprof.runs.lr_grid import choose_lr

    by_rate: dict[float, list[Run]] = {rate: [] for rate in grid}
    for run in trained:
        by_rate[run.config.lr].append(run)
    config = trained[0].config
    choice = choose_lr(by_rate, config.target_accuracy if config.target_metric is None
                       else config.target_metric)
    for run in trained:
        run.lr_choice = choice
    state.say(f"  {trained[0].config.model_name}, batch {trained[0].config.batch_size}: "
              f"{choice.describe()}")
    if choice.chosen is None:
        pytest.fail(f"{trained[0].config.describe(variant=False)}: every lr of the grid "
                    f"({', '.join(f'{rate:g}' for rate in grid)}) diverged or ran out of "
                    f"memory; lower the grid", pytrace=False)
    return by_rate[choice.chosen]


def _thresholds(item: pytest.Item) -> list[Threshold]:
    """The test's ``min_accuracy``, ``min_metric`` and ``max_metric`` markers, checked (a
    bad one fails the test in one line)."""
    markers = [marker for name in THRESHOLD_MARKERS
               if (marker := item.get_closest_marker(name)) is not None]
    if not markers:  # the gates are imported only by the tests that have one
        return []
    from pytest_batchprof.gating import Threshold

    thresholds = []
    for marker in markers:
        try:
            thresholds.append(Threshold.from_marker(marker.args, marker.kwargs, marker.name))
        except ValueError as error:
            raise pytest.fail.Exception(f"@pytest.mark.{error}", pytrace=False) from None
    return thresholds


BASELINE_KEY = pytest.StashKey[tuple[Path, dict[str, object]] | None]()
"""The baseline of ``--batchprof-compare`` as :func:`_baseline` read it."""


def _baseline(config: pytest.Config, settings: Settings) -> (
        tuple[Path, dict[str, object]] | None):
    """The baseline of ``--batchprof-compare``, read once (when the session starts: a bad
    file ends it at once; in an xdist worker when a test first checks its entry)."""
    if BASELINE_KEY in config.stash:
        return config.stash[BASELINE_KEY]
    loaded = None
    if settings.compare is not None:
        from pytest_batchprof.gating import baseline_path
        from pytest_batchprof.reports.storage import ReportError, load_report

        path = baseline_path(settings.compare, settings.baseline_dir)
        try:
            loaded = path, load_report(path)
        except ReportError as error:
            raise pytest.UsageError(
                f"{source_of(config, 'compare')}: baseline {error}") from None
    config.stash[BASELINE_KEY] = loaded
    return loaded


def _missing_entries(item: pytest.Item) -> None:
    """``--batchprof-fail-missing``: fail the test if a run it trained (or recorded) has no
    entry in the baseline, with one line per run saying how to record it."""
    settings = item.config.stash[SETTINGS_KEY]
    runs = [run for run in item.stash.get(RUNS_KEY, []) if not run.lr_discarded]
    if not settings.fail_missing or not runs:
        return
    from pytest_batchprof.gating import missing_entries

    path, baseline = _baseline(item.config, settings)
    rows = [{**run.summary(), "tests": [item.nodeid]} for run in runs]
    lines = missing_entries(rows, baseline, path, settings.baseline_dir)
    if lines:
        pytest.fail("\n".join(lines), pytrace=False)


def dataset_request(item: pytest.Item) -> tuple[str | None, dict[str, object]]:
    """The data set an item asks for through ``@pytest.mark.dataset``, if any."""
    marker = item.get_closest_marker("dataset")
    if marker is None:
        return None, {}
    if len(marker.args) != 1 or not isinstance(marker.args[0], str):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.dataset takes one data set name, e.g. "
            f"@pytest.mark.dataset('digits')"
        )
    return marker.args[0], dict(marker.kwargs)


def _load(config: pytest.Config, name: str | None, options: dict[str, object]) -> Dataset:
    from pytest_batchprof.data.datasets import DatasetUnavailable

    failure = None
    try:
        return batchprof_session(config).dataset(name, options)
    except (DatasetUnavailable, ValueError) as error:  # a failed registration is a ValueError
        failure = str(error)
    pytest.fail(failure, pytrace=False)  # outside the except: one line, no chained exception


def _is_ours(fixturedef: object) -> bool:
    """Whether a fixture definition is one of this module's fixtures."""
    return getattr(getattr(fixturedef, "func", None), "__module__", None) == __name__


def _definitions(node: pytest.Item, name: str) -> Sequence[object]:
    """The definitions of fixture ``name`` visible to ``node``, the one it uses last.

    pytest 8.1 and later look them up by the node; pytest 8.0, the oldest this plugin
    supports, by its node id."""
    manager = node.session._fixturemanager
    return manager.getfixturedefs(name, node.nodeid if _BY_NODE_ID else node) or ()


_BY_NODE_ID = pytest.version_tuple < (8, 1)
"""Whether this pytest's ``FixtureManager.getfixturedefs`` takes a node id (8.0)."""


def _resolves_to_ours(node: pytest.Item, name: str) -> bool:
    """Whether ``name`` is among ``node``'s fixtures and its fixture there is the plugin's:
    pytest uses the last of a name's definitions visible to a test, so a conftest's, a
    module's or a class's fixture of that name shadows ours. A test's own parametrize of
    the name overrides whichever that is; the question stays whose name it overrides."""
    if name not in getattr(node, "fixturenames", ()):
        return False
    definitions = _definitions(node, name)
    return bool(definitions) and _is_ours(definitions[-1])


def _parametrizes_batch_size(metafunc: pytest.Metafunc) -> bool:
    """Whether the test's own ``@pytest.mark.parametrize`` gives ``batch_size`` or
    ``batchprof_batch_size``: then ``--batch-sizes`` does not."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = argnames.split(",")
        if {"batch_size", "batchprof_batch_size"} & {name.strip() for name in argnames}:
            return True
    return False
