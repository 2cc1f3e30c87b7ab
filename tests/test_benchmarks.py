"""The experiments folder (``benchmarks/``): its threshold rule, defaults and selection.

The experiments themselves run on MNIST in ``.ci/run`` (``make bench-fast``);
here they are collected, and a few run on scikit-learn's digits.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rule() -> ModuleType:
    """The benchmarks' conftest as a module; the data sets it registers (the pipelines
    study's) are forgotten at once, so that no other test sees them."""
    from pytest_batchprof.data import catalog

    before = set(catalog.REGISTERED)
    module = load("conftest")
    for name in set(catalog.REGISTERED) - before:
        catalog.REGISTERED.pop(name, None)
    return module


def test_full_budget_keeps_the_floors(rule: ModuleType) -> None:
    assert rule.floor_for("mnist", 16, 110_000, 55_000) == pytest.approx(0.95)
    assert rule.floor_for("mnist", 128, 110_000, 55_000) == pytest.approx(0.95)
    assert rule.floor_for("mnist", 1, 110_000, 55_000) == pytest.approx(0.90)
    assert rule.floor_for("mnist", 15, 110_000, 55_000) == pytest.approx(0.90)


def test_more_samples_never_raise_a_floor(rule: ModuleType) -> None:
    assert rule.floor_for("mnist", 64, 550_000, 55_000) == pytest.approx(0.95)


def test_ci_fast_mode_relaxes_by_two_points_per_halving(rule: ModuleType) -> None:
    halvings = math.log2(110_000 / 5_000)  # --train-subset 5000 --epochs 1: 4.46 halvings
    expected = 0.95 - 0.02 * halvings
    assert rule.floor_for("mnist", 64, 5_000, 55_000) == pytest.approx(expected)
    assert 0.86 < expected < 0.87
    assert rule.floor_for("mnist", 64, 55_000, 55_000) == pytest.approx(0.93)  # one epoch


def test_every_dataset_has_floors(rule: ModuleType) -> None:
    from pytest_batchprof.data.datasets import DATASETS

    assert set(rule.FLOORS) == set(DATASETS)
    for small, large in rule.FLOORS.values():
        assert 0.1 < small <= large < 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")  # registered in benchmarks/
def test_large_batches_keep_the_posts_steps_per_epoch() -> None:
    linear = load("test_large_batch_linear")
    assert [linear.scaled_batch_size(b, 55_000) for b in linear.POSTS_BATCH_SIZES] == [
        1000, 2000, 5000, 10000, 20000]
    assert [linear.scaled_batch_size(b, 5_000) for b in linear.POSTS_BATCH_SIZES] == [
        91, 182, 455, 909, 1818]
    assert linear.scaled_batch_size(1000, 10) == 1


@pytest.fixture
def experiments(pytester: pytest.Pytester) -> Path:
    """A copy of ``benchmarks/`` (its tests, conftest and pytest.ini) in the test's directory."""
    target = pytester.path / "benchmarks"
    shutil.copytree(BENCHMARKS, target, ignore=shutil.ignore_patterns("speed", "__pycache__",
                                                                       "*overhead*"))
    return target


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_folder_defaults_to_batches_16_64_128(pytester: pytest.Pytester,
                                             experiments: Path) -> None:
    result = pytester.runpytest(str(experiments), "--collect-only", "-q", "--dataset", "digits")
    ids = collected(result)
    assert result.ret == pytest.ExitCode.OK
    one_layer = [i for i in ids if "test_one_hidden_layer_1024" in i]
    assert [i.rsplit("[", 1)[1] for i in one_layer] == ["bs16]", "bs64]", "bs128]"]
    # architecture: 3 models; pipelines: the ResNet with and without augmentation, and the
    # regression
    assert len(ids) == 2 * 3 + 4 * 3 + 5 + 1 + 3 * 3 + 5 + 1 + 2 * 3 + 3


@pytest.mark.parametrize(("marker", "count"), [
    ("batch_size_study", 2 * 3), ("depth_width", 4 * 3), ("large_batch", 5 + 1),
    ("large_batch_data_parallel", 5 + 1), ("pipelines", 2 * 3 + 3),
])
def test_each_experiment_is_selected_by_its_marker(pytester: pytest.Pytester,
                                                   experiments: Path, marker: str,
                                                   count: int) -> None:
    result = pytester.runpytest(str(experiments), "--collect-only", "-q", "--dataset",
                                "digits", "-m", marker, "--strict-markers")
    assert len(collected(result)) == count


def test_batch_sizes_option_overrides_the_folder_default(pytester: pytest.Pytester,
                                                         experiments: Path) -> None:
    result = pytester.runpytest(str(experiments), "--collect-only", "-q", "--dataset",
                                "digits", "--batch-sizes", "1,16,64", "-k", "depth")
    ids = collected(result)
    assert len(ids) == 4 * 3
    assert sum("bs16" in i for i in ids) == sum("bs64" in i for i in ids) == 4  # and 4 of bs1


def test_depth_and_width_pass_their_floors_on_digits(pytester: pytest.Pytester,
                                                     experiments: Path) -> None:
    result = pytester.runpytest(str(experiments), "-m", "depth_width", "--dataset", "digits",
                                "--batch-sizes", "128", "--no-co2", "--batchprof-no-report")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*64-1024-1024-10*digits*128*"])


def test_the_architecture_study_skips_its_cnns_on_digits(pytester: pytest.Pytester,
                                                        experiments: Path) -> None:
    """``make bench ARGS="--dataset digits"``: LeNet-5's convolutions shrink 8x8 images to
    nothing, so the CNNs are skipped, saying why; the MLP passes its floor."""
    result = pytester.runpytest(str(experiments), "-m", "architecture", "--dataset", "digits",
                                "--batch-sizes", "128", "--no-co2", "--batchprof-no-report",
                                "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "SKIPPED * c6-c16-120-84-10 cannot take digits' 8x8 images: *",
        "SKIPPED * c16-c32-1000-10 cannot take digits' 8x8 images: *"], consecutive=False)


def test_the_data_parallel_study_runs_two_processes_on_the_cpu(pytester: pytest.Pytester,
                                                               experiments: Path) -> None:
    """The study's single-process and 2-process runs, side by side; each stops at 30%
    validation accuracy instead of training its 200 epochs."""
    result = pytester.runpytest(
        str(experiments), "-m", "large_batch or large_batch_data_parallel", "--dataset",
        "digits", "-k", "test_linear_bottleneck and 1000]", "--no-co2",
        "--batchprof-target-accuracy", "0.3", "--batchprof-no-report", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    rows = [line for line in result.outlines if line.startswith("| 64-1-10")]
    assert len(rows) == 2  # the single-process run and the 2-process one, side by side
    header = next(line for line in result.outlines if line.startswith("| model"))
    assert "scaling efficiency (%)" in header and "| processes " in header


def study_args() -> list[str]:
    """``STUDY_ARGS`` of the Makefile, the results page's scaling study, as arguments."""
    text = (BENCHMARKS.parent / "Makefile").read_text(encoding="utf-8")
    definition = text.split("STUDY_ARGS :=", 1)[1]
    lines = []
    for line in definition.splitlines():
        lines.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(lines).split()


def test_the_scaling_study_runs_as_the_makefile_says(pytester: pytest.Pytester,
                                                      experiments: Path) -> None:
    """``make study``'s options, on digits at two batch sizes instead of MNIST at seven, for
    at most two epochs instead of ten."""
    args = [arg for arg in study_args() if not arg.startswith("--batchprof-report")]
    assert args[:2] == ["--batch-sizes", "16,32,64,128,256,512,1024"]
    assert {"--batchprof-repeats", "--batchprof-lr-grid", "--batchprof-target-accuracy",
            "--batchprof-noise-scale"} <= set(args)
    result = pytester.runpytest(  # the later of two same spellings wins
        str(experiments / "test_batch_size.py") + "::test_one_hidden_layer_1024", *args,
        "--batch-sizes", "64,256", "--dataset", "digits", "--batchprof-target-accuracy", "0.9",
        "--batchprof-epochs", "2",
        "--no-co2", "--batchprof-no-report", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    text = result.stdout.str()  # each batch size's 3 seeds x 4 rates: one ensemble
    assert text.count("batchprof: training 12 runs of 64-1024-10") == 2
    assert text.count("(ensemble member)") == 24
    assert text.count("lr grid: chose lr=") == 2
    header = next(line for line in result.outlines if line.startswith("| model"))
    for label in ("| lr ", "| seeds ", "steps to target", "B_simple (noise scale)"):
        assert label in header
    rows = [line for line in result.outlines if line.startswith("| 64-1024-10")]
    assert len(rows) == 2 and all(" ± " in line for line in rows)
