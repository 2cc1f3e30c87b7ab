"""Numeric precision: --batchprof-precision and the fixtures' keyword, the engine's autocast
and gradient scaler, TF32 on CUDA (faked), and where precision shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from session_output import assert_one_clean_error, summary_rows

from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine.training import train
from pytest_batchprof.experiment.config import EXPERIMENT_KEYS, LINE_KEYS, RUN_KEYS
from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.hardware import precision

BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", "1",
        "--batchprof-no-report")

TWO_PRECISIONS = """
import json, pathlib
import pytest


@pytest.mark.dataset("synthetic", size=1200)
def test_run(trained_mlp):
    run = trained_mlp(hidden=32, batch_size=32)
    other = trained_mlp(hidden=32, batch_size=32, precision="fp32")
    pathlib.Path("runs.json").write_text(json.dumps(
        [run.config.precision, other.config.precision, run.test_accuracy,
         other.test_accuracy, run is other]))
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("synthetic", tmp_path_factory.mktemp("unused"), 0.1, {"size": 800})


# ---------------------------------------------------------------- sessions


def test_bf16_trains_on_the_cpu_and_the_table_shows_it(pytester: pytest.Pytester) -> None:
    import json

    pytester.makepyfile(TWO_PRECISIONS)
    result = pytester.runpytest(*BASE, "--precision", "bf16")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: * precision=bf16 *",
                                 "batchprof: training 64-32-10 on *, cpu, bf16"])
    bf16, fp32, bf16_accuracy, fp32_accuracy, same = json.loads(
        (pytester.path / "runs.json").read_text())
    assert (bf16, fp32, same) == ("bf16", "fp32", False)  # two runs, two rows
    assert abs(bf16_accuracy - fp32_accuracy) < 0.05
    rows = summary_rows(result)
    assert sorted(row["precision"] for row in rows) == ["bf16", "fp32"]


def test_precision_is_part_of_the_cache_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TWO_PRECISIONS)
    cache = f"--batchprof-cache={pytester.path / 'runs'}"
    first = pytester.runpytest(*BASE, cache)  # fp32 only: the same run twice
    first.assert_outcomes(passed=1)
    second = pytester.runpytest(*BASE, cache, "--precision", "bf16")
    second.assert_outcomes(passed=1)
    output = second.stdout.str()
    assert "training 64-32-10 on synthetic(size=1200), batch 32, 1 epoch, adam lr=0.001, " \
           "seed 0, cpu, bf16" in output  # not the fp32 entry
    assert "loaded 64-32-10 on synthetic(size=1200), batch 32, 1 epoch, adam lr=0.001, " \
           "seed 0, cpu from the cache" in output
    third = pytester.runpytest(*BASE, cache, "--precision", "bf16")
    assert "batchprof: training" not in third.stdout.str()
    assert third.stdout.str().count("from the cache") == 2


@pytest.mark.parametrize(("args", "words"), [
    (("--precision", "fp64"), "--precision is 'fp64', which is not one of fp32, tf32, bf16, fp16"),
    (("--batchprof-precision", "tf32"),
     "--batchprof-precision is 'tf32', which this session's device cannot run: tf32 is a CUDA "
     "matmul mode, and cpu is not a CUDA device"),
])
def test_a_precision_the_device_cannot_run_is_one_usage_error(pytester: pytest.Pytester,
                                                              args: tuple[str, ...],
                                                              words: str) -> None:
    pytester.makepyfile(TWO_PRECISIONS)
    line = assert_one_clean_error(pytester.runpytest(*BASE, *args))
    assert words in line


def test_fp16_on_a_cpu_without_fp16_is_a_usage_error(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_fp16", lambda: False)
    pytester.makepyfile(TWO_PRECISIONS)
    line = assert_one_clean_error(pytester.runpytest_inprocess(*BASE, "--precision", "fp16"))
    assert "this CPU has no fp16 arithmetic" in line and "use bf16" in line


def test_bf16_on_a_cpu_without_bf16_says_once_it_is_emulated(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 on a CPU without bf16 instructions trains several times slower than fp32: the
    console says so once, and the bf16 row and the report's notes carry it."""
    import json

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # the probe, faked
    pytester.makepyfile(TWO_PRECISIONS, test_again=TWO_PRECISIONS.replace("runs.json",
                                                                            "again.json"))
    reports = pytester.path / "reports"
    result = pytester.runpytest(*BASE[:-1], "--precision", "bf16", f"--batchprof-report={reports}",
                                "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    said = [line for line in result.outlines
            if line.startswith("batchprof: ") and "emulated" in line]
    assert said == ["batchprof: bf16 is emulated here: this CPU has no bf16 instructions (no "
                    "avx512_bf16 or amx_bf16), so torch emulates bf16 and it trains several "
                    "times slower than fp32"]
    rows = json.loads((reports / "latest.json").read_text())["rows"]
    notes = {row["precision"]: row.get("precision_note") for row in rows}
    assert notes == {"fp32": None, "bf16": "bf16 emulated: " + said[0].split(": ", 2)[2]}
    assert f"Precision: {notes['bf16']}." in (reports / "latest.md").read_text()


def test_the_emulation_note_follows_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for native in (True, None):  # bf16 instructions, or a CPU that cannot be probed
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        assert precision.emulation_note("bf16", cpu) is None
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert "emulates bf16" in precision.emulation_note("bf16", "cpu")
    assert precision.emulation_note("fp32", cpu) is None
    assert precision.emulation_note("bf16", "cuda:0") is None


def test_cpu_bf16_follows_the_cpu_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    skylake = tmp_path / "skylake"
    skylake.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert precision.cpu_has_bf16(skylake) is False
    assert precision.cpu_has_bf16(zen4) is True
    assert precision.cpu_has_bf16(sapphire) is True
    assert precision.cpu_has_bf16(tmp_path / "missing") is None
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    graviton3 = tmp_path / "graviton3"
    graviton3.write_text("Features\t: fp asimd sve bf16 i8mm\n")
    assert precision.cpu_has_bf16(graviton3) is True
    assert precision.cpu_has_bf16(zen4) is True  # cached per file: probed once


def test_the_ini_twin(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbatchprof_precision = bf16\n")
    pytester.makepyfile(TWO_PRECISIONS)
    result = pytester.runpytest(*BASE)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: * precision=bf16 *"])


# ---------------------------------------------------------------- the engine


def test_bf16_runs_the_forward_pass_in_bf16_and_keeps_fp32_weights(synthetic,
                                                                   run_config) -> None:
    run = train(run_config(synthetic, precision="bf16", epochs=1), synthetic,
                torch.device("cpu"))
    assert all(parameter.dtype == torch.float32 for parameter in run.model.parameters())
    model = precision.in_precision(run.model, "bf16", torch.device("cpu"))
    assert model(synthetic.test.x[:4]).dtype == torch.bfloat16
    assert precision.in_precision(run.model, "fp32", torch.device("cpu")) is run.model
    assert run.test_accuracy > 0.5
    again = train(run_config(synthetic, precision="bf16", epochs=1), synthetic,
                  torch.device("cpu"))
    assert [record.val_loss for record in again.history] == [
        record.val_loss for record in run.history]  # seeded: the same figures on the CPU


def test_fp16_steps_through_the_gradient_scaler(synthetic, run_config,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[float] = []
    real = torch.amp.GradScaler.step

    def counting_step(self, optimizer, *args, **kwargs):
        steps.append(self.get_scale())
        return real(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", counting_step)
    config = run_config(synthetic, precision="fp16", epochs=1, batch_size=16)
    run = train(config, synthetic, torch.device("cpu"))
    assert len(steps) == 45  # every step of the epoch (720 samples / 16)
    assert run.diverged is None and run.test_accuracy is not None
    assert precision.grad_scaler("bf16", torch.device("cpu")) is None


def test_tf32_is_set_for_the_run_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.device("cuda", 0)
    with precision.matmul_precision("tf32", cuda):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with precision.matmul_precision("tf32", torch.device("cpu")):
        assert not torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # torch's default


@pytest.mark.parametrize(("capability", "bf16", "checked", "refused"), [
    ((7, 0), True, "tf32", "cuda:0 (Fake GPU, compute capability 7.0) has no TF32; it needs 8.0"),
    ((8, 0), True, "tf32", None),
    ((8, 0), False, "bf16", "cuda:0 (Fake GPU) has no bf16"),
    ((8, 0), True, "bf16", None),
    ((7, 0), True, "fp16", None),
])
def test_what_a_cuda_device_can_run(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                    bf16: bool, checked: str, refused: str | None) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    reason = precision.unsupported(checked, torch.device("cuda", 0))
    assert reason == refused if refused is None else refused in reason


def test_cpu_fp16_follows_the_cpu_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    zen4 = tmp_path / "zen4"
    zen4.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_fp16 amx_tile\n")
    assert not precision.cpu_has_fp16(zen4)
    assert precision.cpu_has_fp16(sapphire)
    assert not precision.cpu_has_fp16(tmp_path / "missing")
    monkeypatch.setattr(precision.platform, "machine", lambda: "arm64")
    assert precision.cpu_has_fp16(zen4)
    assert precision.unsupported("bf16", torch.device("cpu")) is None
    assert "not one of" in precision.unsupported("fp8", torch.device("cpu"))


def test_precision_is_a_recipe_a_baseline_judges_and_splits_plot_lines() -> None:
    """A bf16 run is compared with the baseline's fp32 run of the same experiment (the
    difference against the seeds' noise), unless the baseline has a bf16 run of its own."""
    from pytest_batchprof.gating import compare

    assert "precision" in RUN_KEYS and "precision" in LINE_KEYS
    assert "precision" not in EXPERIMENT_KEYS
    row = {"model": "m", "dataset": "d", "input_shape": [8, 8], "batch_size": 32, "epochs": 1,
           "seed": 0, "precision": "fp32", "test_accuracy": 0.90}
    baseline = {"rows": [row, {**row, "precision": "bf16", "test_accuracy": 0.80}],
                "environment": {}}
    now = [{**row, "precision": "bf16", "test_accuracy": 0.81}]
    entry, fp32_only = compare(now, baseline, Path("base.json"), 0.5, None, {}).entries
    assert (entry.baseline, entry.now, entry.verdict) == (0.80, 0.81, "improved")
    assert fp32_only.verdict == "not run (only in baseline)"
    (entry,) = compare(now, {**baseline, "rows": [row]}, Path("base.json"), 0.5, None,
                       {}).entries
    assert entry.baseline == 0.90 and entry.verdict.startswith("REGRESSION: -9.00 pp")


def test_latency_is_timed_in_the_runs_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_batchprof.measuring import metrics

    timed: list[type] = []
    monkeypatch.setattr(metrics, "measure_latency",
                        lambda model, inputs: timed.append(type(model)) or metrics.Latency(
                            len(inputs), 1e-6, 0.0, 1e-6, 1, 1))
    model = build_mlp(16, (8,), 4)
    metrics.measure(model, None, torch.zeros(4, 4, 4), 2, metrics.PeakMemory(0, "given"), None,
                    None, precision="bf16")
    assert timed == [precision.InPrecision, precision.InPrecision]
