"""The plugin's fixtures beside a project's own of the same names, and its threads under xdist.

The plugin's machinery reads only its ``batchprof_`` fixtures; ``batch_size``,
``dataset`` and ``device`` are public aliases that a project's own fixture of the
same name replaces, the pytest way. Written as a user meets it: a project whose
conftest has its own ``dataset`` (a dict), ``device`` (a string) and
``batch_size`` (32) fixtures and its own ``--device`` and ``--lr`` options, and
tests that use the plugin's factories beside tests that use only the project's
fixtures. (A session of the project's tests alone, which must not even import
torch, is in ``test_coexistence.py``.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from session_output import assert_one_clean_error, failure_section, summary_rows

from pytest_batchprof.plugin.threads import ThreadShare, worker_share

SIZES = (24, 48)
"""The session's ``--batch-sizes``: neither is the project's own batch size."""

PROJECT_BATCH = 32

PROJECT_CONFTEST = f"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--device", default="project-default", help="the project's own")
    parser.addoption("--lr", default="0.5", help="the project's own")


@pytest.fixture
def dataset():
    return {{"rows": [1, 2, 3], "source": "the project's"}}


@pytest.fixture
def device(pytestconfig):
    return pytestconfig.getoption("device")


@pytest.fixture
def batch_size():
    return {PROJECT_BATCH}
"""

PROJECT_TESTS = f"""
import pytest


def test_project_fixtures(dataset, device, batch_size, pytestconfig):
    assert dataset["source"] == "the project's"
    assert device == "project-gpu"
    assert batch_size == {PROJECT_BATCH}
    assert pytestconfig.getoption("lr") == "0.75"
"""

PLUGIN_TESTS = f"""
import pytest


def test_trained_mlp_beside_project_fixtures(trained_mlp, dataset, device, batch_size):
    run = trained_mlp(hidden=8)
    assert run.config.dataset == "synthetic"  # the plugin's data, not the project's dict
    assert run.config.batch_size == {SIZES[0]}  # the first of --batch-sizes, never 32
    assert run.config.device == "cpu"
    assert (dataset["source"], device, batch_size) == ("the project's", "project-gpu",
                                                       {PROJECT_BATCH})


def test_trained_model_reads_its_own_batch_size(trained_model, batchprof_batch_size,
                                                batch_size, batchprof_dataset):
    from pytest_batchprof.experiment.models import mlp

    run = trained_model(mlp((8,)))
    assert run.config.batch_size == batchprof_batch_size != batch_size
    assert batchprof_dataset.name == "synthetic"


def test_explicit_batch_size(trained_mlp, batch_size):
    assert trained_mlp(hidden=8, batch_size=batch_size).config.batch_size == {PROJECT_BATCH}
"""

SMALL = ("--dataset", "synthetic", "--train-subset", "300", "--epochs", "1")
"""A quick run of the plugin's own data set."""

RUN_ARGS = (*SMALL, "--batchprof-device", "cpu",
            "--batch-sizes", ",".join(map(str, SIZES)), "--device", "project-gpu",
            "--lr", "0.75", "--batchprof-columns", "model,batch_size,threads,threads_note",
            "-p", "no:randomly")


def fixtures_line(*names: str) -> str:
    """The line naming ``names`` as fixtures left to the project."""
    own = ", ".join(f"batchprof_{name}" for name in names)
    return (f"batchprof: left to this project: fixture{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)} (batchprof's own: {own})")


def passed_ids(result: pytest.RunResult) -> list[str]:
    """The node ids ``-v`` reported as passed, in order."""
    return [line.split(" PASSED")[0] for line in result.outlines if " PASSED" in line]


# ---------------------------------------------------------------- a project's own fixtures


def test_project_fixtures_beside_the_plugins(pytester: pytest.Pytester) -> None:
    """The project's tests see their own values, unparametrized; the plugin's factories
    train on its own data set at its own batch sizes; the header names what was left."""
    pytester.makeconftest(PROJECT_CONFTEST)
    pytester.makepyfile(test_project=PROJECT_TESTS, test_plugin=PLUGIN_TESTS)
    result = pytester.runpytest(*RUN_ARGS, "-v")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, output
    sweep = [f"test_plugin.py::test_trained_model_reads_its_own_batch_size[bs{size}]"
             for size in SIZES]
    assert sorted(passed_ids(result)) == sorted([
        "test_plugin.py::test_trained_mlp_beside_project_fixtures",
        *sweep,
        "test_plugin.py::test_explicit_batch_size",
        "test_project.py::test_project_fixtures",
    ])
    assert "Traceback" not in output and "AttributeError" not in output
    assert fixtures_line("batch_size", "dataset", "device") in result.outlines
    assert ("batchprof: left to this project: --device, --lr (batchprof's own: "
            "--batchprof-device, --batchprof-lr)") in result.outlines
    rows = summary_rows(result)
    # the first size's run trained once; outside xdist each row holds this process's
    # threads and no note
    assert sorted(int(row["batch"]) for row in rows) == sorted({*SIZES, PROJECT_BATCH})
    assert {(row["threads"], row["threads note"]) for row in rows} == {
        (str(torch.get_num_threads()), "")}


def test_header_names_only_the_names_the_project_holds(pytester: pytest.Pytester) -> None:
    """A module's own fixture counts too; a name nobody else defines is not named."""
    pytester.makepyfile(
        """
        import pytest


        @pytest.fixture
        def device():
            return "the module's"


        def test_device(device, batch_size):
            assert device == "the module's" and batch_size == 8
        """
    )
    result = pytester.runpytest("--batch-sizes", "8", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    assert [line for line in result.outlines if "left to this project" in line] == [
        fixtures_line("device")]


def test_no_line_when_the_project_holds_no_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_bs(batch_size):\n    assert batch_size == 8\n")
    result = pytester.runpytest("--batch-sizes", "8", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "left to this project" in line]


def test_a_fixture_may_build_on_the_plugins_own(pytester: pytest.Pytester) -> None:
    """A project fixture that asks for ``batchprof_batch_size`` is swept over
    ``--batch-sizes``; one that overrides ``dataset`` with the plugin's as its parent gets
    the plugin's data set (pytest's override-with-parent pattern)."""
    pytester.makeconftest(
        """
        import pytest


        @pytest.fixture
        def batch_size(batchprof_batch_size):
            return 2 * batchprof_batch_size


        @pytest.fixture
        def dataset(dataset):
            return dataset.name
        """
    )
    pytester.makepyfile(
        """
        def test_doubled(batch_size, batchprof_batch_size, dataset):
            assert batch_size == 2 * batchprof_batch_size
            assert dataset == "synthetic"
        """
    )
    result = pytester.runpytest("--dataset", "synthetic", "--batch-sizes", "8,16", "-v",
                                "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert passed_ids(result) == ["test_a_fixture_may_build_on_the_plugins_own.py::"
                                  f"test_doubled[bs{size}]" for size in (8, 16)]


# ---------------------------------------------------------------- data loaded after collection


MNIST_TESTS = """
def test_project(dataset, device):
    assert dataset == {"project": True} and device == "cpu:project"


def test_plugin(trained_mlp):
    trained_mlp(hidden=8)
"""

MNIST_CONFTEST = """
import pytest


@pytest.fixture
def dataset():
    return {"project": True}


@pytest.fixture
def device():
    return "cpu:project"
"""


def test_missing_mnist_ends_the_session_only_when_a_selected_test_uses_it(
        pytester: pytest.Pytester) -> None:
    """MNIST is absent (the suite's data dir is empty, downloads fail): the project's tests
    run. The plugin's test, which may train on a data set of its own choosing, fails with
    one line when it asks for the default one, once tried; chosen with ``--dataset``, the
    missing data set ends the session once, before any test runs."""
    pytester.makeconftest(MNIST_CONFTEST)
    pytester.makepyfile(MNIST_TESTS)
    result = pytester.runpytest("-k", "project", "-p", "no:randomly")
    result.assert_outcomes(passed=1, deselected=1)

    result = pytester.runpytest("-p", "no:randomly", "-k", "project or plugin",
                                "--batchprof-no-report")
    result.assert_outcomes(passed=1, failed=1)
    (line,) = failure_section(result, "test_plugin")
    assert line.startswith("MNIST is not in"), line

    result = pytester.runpytest("-p", "no:randomly", "--dataset", "mnist")
    assert "MNIST is not in" in assert_one_clean_error(result)


def test_failed_registration_fails_its_tests_and_the_rest_run(
        pytester: pytest.Pytester) -> None:
    """A registered data set whose registration failed does not end the session after
    collection: its tests fail with its one line, the others run."""
    pytester.makeconftest(
        """
        import torch

        from pytest_batchprof import register_dataset

        x = torch.rand(40, 4)
        register_dataset("broken", train=(x, torch.rand(40)), test=(x, torch.rand(40)))
        """
    )
    pytester.makepyfile(
        """
        import pytest


        @pytest.mark.dataset("broken")
        def test_broken(trained_mlp):
            trained_mlp(hidden=8)


        @pytest.mark.dataset("synthetic", size=200)
        def test_fine(trained_mlp):
            assert trained_mlp(hidden=8, epochs=1).config.dataset.startswith("synthetic")
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    (line,) = [line for line in failure_section(result, "test_broken") if line.strip()]
    assert "broken" in line and "Traceback" not in result.stdout.str()


# ---------------------------------------------------------------- threads under xdist


def torch_default_threads() -> int:
    """torch's thread count in a fresh process of this environment, as an xdist worker has
    it before the plugin shares the cores out."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                          capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.strip())


def test_xdist_workers_share_the_cores(pytester: pytest.Pytester,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``-n 2``: a worker trains with half of torch's threads (at least 1), and its row
    holds that count and a note that its times are a worker's."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch_default_threads()
    pytester.makepyfile(
        """
        def test_run(trained_mlp):
            trained_mlp(hidden=4, batch_size=32)


        def test_other(batchprof_settings):
            assert batchprof_settings.epochs == 1
        """
    )
    result = pytester.runpytest("-n", "2", *SMALL, "--batchprof-columns",
                                "model,threads,threads_note", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    share = max(1, before // 2)
    assert summary_rows(result) == [
        {"model": "64-4-10", "threads": str(share),
         "threads note": f"xdist worker: {share} of {before} threads, 2 workers"}]


def test_a_workers_share_is_given_back_when_its_session_ends(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that believes it is one of 2 xdist workers (``config.workerinput``, as
    xdist sets it) runs with half the threads, and leaves this process as it found it."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_configure(config):
            config.workerinput = {"workerid": "gw0", "workercount": 2}
        """
    )
    pytester.makepyfile(
        f"""
        import torch

        def test_threads(device):
            assert torch.get_num_threads() == {max(1, before // 2)}
        """
    )
    result = pytester.runpytest("--batchprof-device", "cpu", "-p", "no:rerunfailures",
                                "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("threads", "workers", "environ", "expected", "note"),
    [(8, None, {}, ThreadShare(8, 8), None),
     (8, 2, {}, ThreadShare(4, 8, 2), "xdist worker: 4 of 8 threads, 2 workers"),
     (2, 3, {}, ThreadShare(1, 2, 3), "xdist worker: 1 of 2 threads, 3 workers"),
     (6, 1, {}, ThreadShare(6, 6, 1), "xdist worker: 6 of 6 threads, 1 worker"),
     (3, 2, {"OMP_NUM_THREADS": "3"}, ThreadShare(3, 3, 2, "OMP_NUM_THREADS"),
      "xdist worker: 3 threads (OMP_NUM_THREADS), 2 workers"),
     (4, 2, {"MKL_NUM_THREADS": "4", "OMP_NUM_THREADS": ""},
      ThreadShare(4, 4, 2, "MKL_NUM_THREADS"),
      "xdist worker: 4 threads (MKL_NUM_THREADS), 2 workers")],
    ids=["serial", "halved", "at-least-one", "one-worker", "omp-chosen", "mkl-chosen"],
)
def test_worker_share(threads: int, workers: int | None, environ: dict[str, str],
                      expected: ThreadShare, note: str | None) -> None:
    share = worker_share(threads, workers, environ)
    assert share == expected
    assert share.note(share.threads) == note



def test_a_cached_run_keeps_the_threads_it_trained_with(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained by a worker with its share of the threads and loaded from the cache
    by a serial session reports the threads it trained with, not the loader's."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("torch has one thread here: a worker's share would not differ")
    pytester.makeconftest(
        """
        import os
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_configure(config):
            if os.environ.get("FAKE_WORKER"):
                config.workerinput = {"workerid": "gw0", "workercount": 2}
        """
    )
    pytester.makepyfile(
        """
        def test_run(trained_mlp):
            trained_mlp(hidden=4, batch_size=32)
        """
    )
    common = (*SMALL, f"--batchprof-cache={pytester.path / 'runs'}", "--batchprof-columns",
              "model,threads", "-p", "no:rerunfailures", "-p", "no:randomly")
    monkeypatch.setenv("FAKE_WORKER", "1")
    trained = pytester.runpytest(*common)
    trained.assert_outcomes(passed=1)
    monkeypatch.delenv("FAKE_WORKER")
    loaded = pytester.runpytest(*common, "-s")
    loaded.assert_outcomes(passed=1)
    loaded.stdout.fnmatch_lines(["*loaded 64-4-10 * from the cache*"])
    # the worker reports no table of its own (xdist's controller would); the loader's row
    # reads the worker's share, not its own count
    assert summary_rows(loaded) == [{"model": "64-4-10", "threads": str(max(1, before // 2))}]
