"""Device selection, tested with fake accelerators: no test here needs a GPU.

``select_device`` takes what the machine has as a parameter, so its choices are
unit-tested with :class:`Accelerators` values; the sessions below replace
``Accelerators.probe`` (pytester runs in-process, so the patch is seen by the
plugin inside the inner session) and never move a tensor to the chosen device.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from pytest_batchprof.hardware import devices
from pytest_batchprof.hardware.devices import (
    Accelerators,
    DeviceError,
    select_device,
    synchronize,
    worker_index,
)

CPU_ONLY = Accelerators(cuda_count=0, mps=False)
MPS_ONLY = Accelerators(cuda_count=0, mps=True)
ONE_GPU = Accelerators(cuda_count=1, mps=False)
TWO_GPUS = Accelerators(cuda_count=2, mps=False)
TWO_GPUS_AND_MPS = Accelerators(cuda_count=2, mps=True)
MACHINES = [CPU_ONLY, MPS_ONLY, ONE_GPU, TWO_GPUS, TWO_GPUS_AND_MPS]
WORKERS = [None, "master", "gw0", "gw1", "gw5"]


def fake_machine(monkeypatch: pytest.MonkeyPatch, accelerators: Accelerators) -> None:
    """Make ``Accelerators.probe()`` report ``accelerators``, for this test only."""
    monkeypatch.setattr(devices.Accelerators, "probe", classmethod(lambda cls: accelerators))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process session; hypothesis's plugin is off because it re-imports hypothesis
    (seconds) in every inner session, and it plays no part here."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines + result.errlines if line.startswith("ERROR")]


# ---------------------------------------------------------------- select_device


@pytest.mark.parametrize(
    ("accelerators", "expected"),
    [
        (TWO_GPUS_AND_MPS, "cuda:0"),
        (TWO_GPUS, "cuda:0"),
        (ONE_GPU, "cuda:0"),
        (MPS_ONLY, "mps"),
        (CPU_ONLY, "cpu"),
    ],
)
def test_auto_prefers_cuda_then_mps_then_cpu(accelerators: Accelerators, expected: str) -> None:
    chosen = select_device("auto", accelerators)
    assert isinstance(chosen, torch.device)
    assert chosen == torch.device(expected)


@pytest.mark.parametrize("accelerators", MACHINES)
@pytest.mark.parametrize("worker_id", WORKERS)
def test_cpu_is_always_cpu(accelerators: Accelerators, worker_id: str | None) -> None:
    assert select_device("cpu", accelerators, worker_id) == torch.device("cpu")


@pytest.mark.parametrize(
    ("spec", "accelerators", "message"),
    [
        ("cuda", CPU_ONLY, "cuda is not available here; this machine has cpu"),
        ("cuda", MPS_ONLY, "cuda is not available here; this machine has cpu, mps"),
        ("cuda:0", CPU_ONLY, "cuda:0 is not available here; this machine has cpu"),
        ("cuda:1", ONE_GPU, "cuda:1 is not available here; this machine has cpu, cuda:0"),
        ("cuda:2", TWO_GPUS_AND_MPS,
         "cuda:2 is not available here; this machine has cpu, cuda:0, cuda:1, mps"),
        ("mps", CPU_ONLY, "mps is not available here; this machine has cpu"),
        ("mps", TWO_GPUS, "mps is not available here; this machine has cpu, cuda:0, cuda:1"),
    ],
)
def test_absent_device_raises_naming_what_the_machine_has(
    spec: str, accelerators: Accelerators, message: str
) -> None:
    with pytest.raises(DeviceError) as caught:
        select_device(spec, accelerators)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)  # callers may catch it as a bad value


@pytest.mark.parametrize(
    ("spec", "accelerators", "expected"),
    [
        ("cuda", ONE_GPU, "cuda:0"),
        ("cuda:0", ONE_GPU, "cuda:0"),
        ("cuda:1", TWO_GPUS, "cuda:1"),
        ("mps", MPS_ONLY, "mps"),
        ("mps", TWO_GPUS_AND_MPS, "mps"),  # asked for explicitly, mps beats cuda
    ],
)
def test_present_device_is_used(spec: str, accelerators: Accelerators, expected: str) -> None:
    assert select_device(spec, accelerators) == torch.device(expected)


@pytest.mark.parametrize("spec", ["auto", "cuda"])
@pytest.mark.parametrize(("worker", "gpu"), [(f"gw{n}", n % 2) for n in range(6)])
def test_xdist_workers_spread_over_gpus(spec: str, worker: str, gpu: int) -> None:
    assert select_device(spec, TWO_GPUS, worker) == torch.device(f"cuda:{gpu}")


@pytest.mark.parametrize("worker", [None, "master"])
@pytest.mark.parametrize("spec", ["auto", "cuda"])
def test_without_xdist_the_first_gpu_is_used(spec: str, worker: str | None) -> None:
    assert select_device(spec, TWO_GPUS, worker) == torch.device("cuda:0")


@pytest.mark.parametrize("worker", [None, "master", "gw0", "gw1", "gw2", "gw3"])
def test_explicit_gpu_is_respected_under_any_worker(worker: str | None) -> None:
    assert select_device("cuda:1", TWO_GPUS, worker) == torch.device("cuda:1")
    assert select_device("cuda:0", TWO_GPUS, worker) == torch.device("cuda:0")


@pytest.mark.parametrize("worker", ["gw0", "gw3"])
def test_workers_on_an_mps_machine_share_mps(worker: str) -> None:
    assert select_device("auto", MPS_ONLY, worker) == torch.device("mps")


@pytest.mark.parametrize(
    ("worker_id", "index"),
    [
        ("gw0", 0),
        ("gw3", 3),
        ("gw12", 12),
        (None, None),
        ("", None),
        ("master", None),
        ("gw", None),
        ("gwx", None),
        ("gw-1", None),
        ("xgw1", None),
    ],
)
def test_worker_index(worker_id: str | None, index: int | None) -> None:
    assert worker_index(worker_id) == index


# ---------------------------------------------------------------- Accelerators.probe


def test_probe_counts_available_cuda_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert Accelerators.probe() == Accelerators(cuda_count=3, mps=False)


def test_probe_ignores_device_count_when_cuda_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = mock.Mock(return_value=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert Accelerators.probe() == Accelerators(cuda_count=0, mps=True)
    count.assert_not_called()


def test_probe_of_a_cpu_only_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    probed = Accelerators.probe()
    assert probed == CPU_ONLY
    assert select_device("auto", probed) == torch.device("cpu")


def test_probe_without_an_mps_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delattr(torch.backends, "mps")
    assert Accelerators.probe() == CPU_ONLY


# ---------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    ("flag", "machine", "has"),
    [
        ("cuda", CPU_ONLY, "cpu"),
        ("cuda:1", ONE_GPU, "cpu, cuda:0"),
        ("mps", CPU_ONLY, "cpu"),
    ],
)
def test_session_with_an_absent_device_is_a_usage_error(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    machine: Accelerators,
    has: str,
) -> None:
    fake_machine(monkeypatch, machine)
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_never_runs(device):
            Path("ran").touch()
        """
    )
    result = run(pytester, "--device", flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = error_lines(result)
    assert len(errors) == 1, errors
    # e.g. "ERROR: --device cuda: cuda is not available here; this machine has cpu; ..."
    assert errors[0].startswith(f"ERROR: --device {flag}")
    assert f"{flag} is not available here; this machine has {has};" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "ran").exists()


def device_test(expected: str) -> str:
    """A test module that writes the session's device to ``device.txt`` and checks it
    (without moving anything to it: the GPUs of these sessions are fakes)."""
    return (
        "from pathlib import Path\n\n"
        "def test_device(device):\n"
        "    Path('device.txt').write_text(str(device))\n"
        f"    assert str(device) == {expected!r}\n"
    )


@pytest.mark.parametrize(("machine", "spec", "expected"), [
    (TWO_GPUS, "auto", "cuda:0"),              # auto picks the first GPU
    (TWO_GPUS_AND_MPS, "cpu", "cpu"),          # cpu is cpu even with GPUs
], ids=["auto-picks-first-gpu", "cpu-even-with-gpus"])
def test_session_device_choice(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                               machine: Accelerators, spec: str, expected: str) -> None:
    fake_machine(monkeypatch, machine)
    pytester.makepyfile(device_test(expected))
    result = run(pytester, "--device", spec)
    result.assert_outcomes(passed=1)
    assert (pytester.path / "device.txt").read_text() == expected
    if spec == "auto":  # resolved when the test asked for it, and said then
        result.stdout.fnmatch_lines([
            f"batchprof: dataset=* device={spec} * (chosen when a test first needs it)",
            f"batchprof: device {expected} (auto: cuda, then mps, then cpu)"])
    else:
        result.stdout.fnmatch_lines([f"batchprof: dataset=* device={spec} * ({expected})"])


def test_auto_device_is_resolved_when_first_needed_and_said_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = []
    fake_machine(monkeypatch, MPS_ONLY)
    real_probe = devices.Accelerators.probe
    monkeypatch.setattr(devices.Accelerators, "probe",
                        classmethod(lambda cls: probes.append(1) or real_probe()))
    pytester.makepyfile(
        """
        def test_nothing():
            pass

        def test_first(device):
            assert str(device) == "mps"

        def test_second(device):
            assert str(device) == "mps"
        """
    )
    result = run(pytester, "-k", "nothing")  # no --device: auto, and no test needs it
    result.assert_outcomes(passed=1, deselected=2)
    assert probes == []
    assert [line for line in result.outlines if line.startswith("batchprof:")] == [
        next(line for line in result.outlines if line.startswith("batchprof: dataset="))]

    result = run(pytester)
    result.assert_outcomes(passed=3)
    assert probes == [1]
    resolved = [line for line in result.outlines if line.startswith("batchprof: device")]
    assert resolved == ["batchprof: device mps (auto: cuda, then mps, then cpu)"]


def test_session_as_xdist_worker_takes_its_own_gpu(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``config.workerinput`` (set by xdist on its workers) decides the GPU: gw3 -> cuda:1."""
    fake_machine(monkeypatch, TWO_GPUS)
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_configure(config):
            config.workerinput = {"workerid": "gw3"}
        """
    )
    pytester.makepyfile(device_test("cuda:1"))
    # pytest-rerunfailures reads a real worker's socket port from workerinput
    result = run(pytester, "-p", "no:rerunfailures")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "device.txt").read_text() == "cuda:1"
    result.stdout.fnmatch_lines(["batchprof: device cuda:1 (auto: *)"])


# ---------------------------------------------------------------- synchronize


@pytest.fixture
def sync_mocks(monkeypatch: pytest.MonkeyPatch) -> tuple[mock.Mock, mock.Mock]:
    cuda_sync, mps_sync = mock.Mock(), mock.Mock()
    monkeypatch.setattr(torch.cuda, "synchronize", cuda_sync)
    monkeypatch.setattr(torch.mps, "synchronize", mps_sync)
    return cuda_sync, mps_sync


def test_synchronize_on_cpu_does_nothing(sync_mocks: tuple[mock.Mock, mock.Mock]) -> None:
    cuda_sync, mps_sync = sync_mocks
    assert synchronize(torch.device("cpu")) is None
    cuda_sync.assert_not_called()
    mps_sync.assert_not_called()


@pytest.mark.parametrize("name", ["cuda:0", "cuda:1"])
def test_synchronize_waits_for_the_cuda_device(
    sync_mocks: tuple[mock.Mock, mock.Mock], name: str
) -> None:
    cuda_sync, mps_sync = sync_mocks
    synchronize(torch.device(name))
    cuda_sync.assert_called_once_with(torch.device(name))
    mps_sync.assert_not_called()


def test_synchronize_waits_for_mps(sync_mocks: tuple[mock.Mock, mock.Mock]) -> None:
    cuda_sync, mps_sync = sync_mocks
    synchronize(torch.device("mps"))
    mps_sync.assert_called_once_with()
    cuda_sync.assert_not_called()
