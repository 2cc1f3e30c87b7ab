"""The cache of trained runs: a hit skips training, a mismatch misses, a bad file retrains."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pytest_batchprof
from pytest_batchprof.data import datasets as data
from pytest_batchprof.data.datasets import load_dataset
from pytest_batchprof.engine import training
from pytest_batchprof.engine.training import RunConfig, make_optimizer, train
from pytest_batchprof.experiment.models import build_mlp
from pytest_batchprof.runs import cache
from pytest_batchprof.runs.cache import BatchprofCacheWarning, RunCache

BASE = ("-p", "no:cacheprovider", "--dataset", "digits", "--epochs", "1", "--no-co2",
        "--batch-sizes", "32", "--device", "cpu", "--batchprof-no-report")

RECORDING_TEST = """
import os, torch
from dataclasses import asdict

def test_run(trained_mlp):
    run = trained_mlp(hidden=16)
    torch.save({
        "history": [asdict(record) for record in run.history],
        "train_seconds": run.train_seconds,
        "test_accuracy": run.test_accuracy,
        "test_loss": run.test_loss,
        "peak_memory": run.measurements.peak_memory.bytes,
        "weights": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict()["state"],
    }, os.environ["RESULT_FILE"])
"""


def session(pytester: pytest.Pytester, cache_dir: Path, result_file: Path, *args: str) -> (
        pytest.RunResult):
    """One pytester session of RECORDING_TEST with the cache in ``cache_dir``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESULT_FILE", str(result_file))
        result = pytester.runpytest(*BASE, f"--batchprof-cache={cache_dir}", *args)
    return result


def trained(result: pytest.RunResult) -> bool:
    """Whether the session trained (True) or loaded its run from the cache (False)."""
    text = result.stdout.str()
    assert (text.count("batchprof: training ") + text.count("from the cache")) == 1, text
    return "batchprof: training " in text


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pt"))


def cache_warnings(result: pytest.RunResult) -> list[str]:
    """The session's BatchprofCacheWarning lines (pytester sessions warn of other things too)."""
    return [line for line in result.stdout.lines if "BatchprofCacheWarning" in line]


@pytest.fixture
def recorded(pytester: pytest.Pytester, tmp_path: Path) -> tuple[Path, dict]:
    """A cache directory holding the one run of RECORDING_TEST, and what that session saw."""
    pytester.makepyfile(test_run=RECORDING_TEST)
    cache_dir = tmp_path / "cache"
    result = session(pytester, cache_dir, tmp_path / "first.pt")
    result.assert_outcomes(passed=1)
    assert trained(result)
    assert len(entries(cache_dir)) == 1
    return cache_dir, torch.load(tmp_path / "first.pt", weights_only=True)


# ---------------------------------------------------------------- sessions


def test_second_session_loads_instead_of_training(pytester: pytest.Pytester, tmp_path: Path,
                                                  recorded: tuple[Path, dict]) -> None:
    cache_dir, first = recorded
    result = session(pytester, cache_dir, tmp_path / "second.pt")
    result.assert_outcomes(passed=1)
    assert not trained(result)
    result.stdout.fnmatch_lines([
        "batchprof: loaded 64-16-10 on digits, batch 32, 1 epoch, adam lr=0.001, seed 0, cpu "
        "from the cache",
        "  trained in * s (cached), test acc=0.*, * us/sample at batch 32*",
    ])
    assert "Epoch 01" not in result.stdout.str()
    second = torch.load(tmp_path / "second.pt", weights_only=True)
    for name in ("history", "train_seconds", "test_accuracy", "test_loss", "peak_memory"):
        assert second[name] == first[name], name
    assert first["weights"].keys() == second["weights"].keys()
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name
    for index, state in first["optimizer"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, second["optimizer"][index][name]), (index, name)
    assert len(entries(cache_dir)) == 1


def patch_split_seed(patch: pytest.MonkeyPatch) -> None:
    """Same data set name and configuration, another validation split: other data."""
    patch.setattr(data, "SPLIT_SEED", 1)


def patch_torch_version(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(cache, "torch_version", lambda: "0.0.1")


def patch_plugin_version(patch: pytest.MonkeyPatch) -> None:
    patch.setattr(cache, "plugin_version", lambda: "999.0")


MISMATCHES = [
    ("seed", ("--seed", "1"), None),
    ("lr", ("--lr", "0.01"), None),
    ("batch size", ("--batch-sizes", "16"), None),
    ("epochs", ("--epochs", "2"), None),
    ("optimizer", ("--optimizer", "sgd"), None),
    ("train subset", ("--train-subset", "500"), None),
    ("val fraction", ("--val-fraction", "0.2"), None),
    ("data set", ("--dataset", "synthetic"), None),
    ("data", (), patch_split_seed),
    ("torch version", (), patch_torch_version),
    ("plugin version", (), patch_plugin_version),
]


def test_every_kind_of_mismatch_misses(pytester: pytest.Pytester, tmp_path: Path,
                                       recorded: tuple[Path, dict]) -> None:
    """One session per kind, all against the one recorded run (sessions cost seconds each)."""
    cache_dir, _ = recorded
    for count, (kind, args, change) in enumerate(MISMATCHES, start=2):
        with pytest.MonkeyPatch.context() as patch:
            if change is not None:
                change(patch)
            result = session(pytester, cache_dir, tmp_path / "other.pt", *args)
        result.assert_outcomes(passed=1)
        assert trained(result), kind
        assert not cache_warnings(result), kind  # a miss, not a bad entry
        assert len(entries(cache_dir)) == count, kind  # each is a valid run of its own


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"not a torch file\x00\xff" * 10)


def corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_garbage, corrupt_empty],
                         ids=["truncated", "garbage", "empty"])
def test_corrupt_entry_is_retrained_with_one_warning(pytester: pytest.Pytester, tmp_path: Path,
                                                     recorded: tuple[Path, dict],
                                                     corrupt) -> None:
    cache_dir, first = recorded
    (entry,) = entries(cache_dir)
    corrupt(entry)
    result = session(pytester, cache_dir, tmp_path / "again.pt")
    result.assert_outcomes(passed=1)
    assert trained(result)
    lines = [line for line in result.stdout.lines if str(entry) in line]
    assert len(lines) == 1, result.stdout.str()
    assert cache_warnings(result) == lines
    assert "cannot be " in lines[0] and "training the run again" in lines[0]
    assert entries(cache_dir) == [entry]  # written again, whole
    assert torch.load(entry, weights_only=True)["test_accuracy"] == first["test_accuracy"]
    result = session(pytester, cache_dir, tmp_path / "third.pt")
    result.assert_outcomes(passed=1)
    assert not trained(result)


ERROR_FILTERS = {
    "-W error for its class": ("-W", "error::pytest_batchprof.BatchprofCacheWarning"),
    "filterwarnings = error": ("-o", "filterwarnings=error"),
}


@pytest.mark.parametrize("filters", ERROR_FILTERS.values(), ids=ERROR_FILTERS.keys())
def test_corrupt_entry_is_retrained_under_an_error_filter(pytester: pytest.Pytester,
                                                          tmp_path: Path,
                                                          recorded: tuple[Path, dict],
                                                          filters: tuple[str, str]) -> None:
    """Warnings made errors: the cache's trouble still fails no test. The discarded entry
    is said once, in the warnings summary, and the run is trained again."""
    cache_dir, first = recorded
    (entry,) = entries(cache_dir)
    corrupt_garbage(entry)
    result = session(pytester, cache_dir, tmp_path / "again.pt", *filters)
    result.assert_outcomes(passed=1)
    assert trained(result)
    lines = [line for line in result.stdout.lines if str(entry) in line]
    assert len(lines) == 1, result.stdout.str()
    assert cache_warnings(result) == lines
    assert "cannot be read" in lines[0] and "training the run again" in lines[0]
    assert torch.load(entry, weights_only=True)["test_accuracy"] == first["test_accuracy"]


def test_corrupt_entry_warning_can_be_ignored_by_its_class(pytester: pytest.Pytester,
                                                           tmp_path: Path,
                                                           recorded: tuple[Path, dict]) -> None:
    """``pytest_batchprof.BatchprofCacheWarning`` is public: a project may filter it."""
    assert pytest_batchprof.BatchprofCacheWarning is BatchprofCacheWarning
    cache_dir, _ = recorded
    (entry,) = entries(cache_dir)
    corrupt_garbage(entry)
    result = session(pytester, cache_dir, tmp_path / "again.pt", "-W", "error", "-W",
                     "ignore::pytest_batchprof.BatchprofCacheWarning")
    result.assert_outcomes(passed=1)
    assert trained(result)
    assert str(entry) not in result.stdout.str()


def test_entry_stored_under_another_name_is_retrained(pytester: pytest.Pytester,
                                                      tmp_path: Path,
                                                      recorded: tuple[Path, dict]) -> None:
    cache_dir, _ = recorded
    (seed0,) = entries(cache_dir)
    result = session(pytester, cache_dir, tmp_path / "seed1.pt", "--seed", "1")
    assert trained(result)
    (seed1,) = set(entries(cache_dir)) - {seed0}
    seed0.replace(seed1)  # seed 0's run, renamed by hand to seed 1's name
    result = session(pytester, cache_dir, tmp_path / "again.pt", "--seed", "1")
    result.assert_outcomes(passed=1)
    assert trained(result)
    assert len(cache_warnings(result)) == 1
    result.stdout.fnmatch_lines([f"*BatchprofCacheWarning: batchprof: cache entry {seed1} cannot "
                                 f"be used (CacheEntryError: it was stored for another "
                                 f"configuration*"])
    first = torch.load(tmp_path / "seed1.pt", weights_only=True)
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert first["test_accuracy"] == again["test_accuracy"]  # seed 1's run, not seed 0's
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, again["weights"][name]), name


def test_cache_clear_empties_the_directory(pytester: pytest.Pytester, tmp_path: Path,
                                           recorded: tuple[Path, dict]) -> None:
    cache_dir, _ = recorded
    (cache_dir / f".{'0' * 64}.pt.123-abcdef12.tmp").write_bytes(b"half")  # an interrupted write
    (cache_dir / "notes.txt").write_text("not ours")
    pytester.makepyfile(test_run="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*BASE, f"--batchprof-cache={cache_dir}",
                                "--batchprof-cache-clear")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"batchprof: cleared 1 cached run from {cache_dir}"])
    assert sorted(path.name for path in cache_dir.iterdir()) == ["notes.txt"]


def test_ini_twins(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_run=RECORDING_TEST)
    pytester.makeini("[pytest]\nbatchprof_cache = runs-cache\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESULT_FILE", str(tmp_path / "result.pt"))
        result = pytester.runpytest(*BASE)
    result.assert_outcomes(passed=1)
    cache_dir = pytester.path / "runs-cache"
    assert len(entries(cache_dir)) == 1
    assert f" cache={cache_dir} " in result.stdout.lines[
        next(i for i, line in enumerate(result.stdout.lines) if line.startswith("batchprof: "))
    ] + " "
    pytester.makeini("[pytest]\nbatchprof_cache = runs-cache\nbatchprof_cache_clear = true\n")
    pytester.makepyfile(test_run="def test_nothing():\n    pass\n")
    pytester.runpytest(*BASE).assert_outcomes(passed=1)
    assert entries(cache_dir) == []


def test_cache_path_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester,
                                                    tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("")
    pytester.makepyfile(test_run="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*BASE, f"--batchprof-cache={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: --batchprof-cache names an existing file ({target}), not a directory; "
        f"expected a directory path (created when missing) (got '{target}')",
    ])
    assert "Traceback" not in result.stderr.str()


def test_cache_clear_without_a_cache_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_run="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*BASE, "--batchprof-cache-clear")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --batchprof-cache-clear needs --batchprof-cache DIR *"])


# ---------------------------------------------------------------- units


CONFIG = RunConfig(dataset="synthetic(size=300)", input_shape=(8, 8), hidden=(8,),
                   num_classes=10, activation="relu", batch_size=32, epochs=1, lr=1e-3,
                   optimizer="adam", seed=0, device="cpu", train_subset=None, val_fraction=0.25)


@pytest.fixture(scope="module")
def small() -> data.Dataset:
    return load_dataset("synthetic", Path("."), 0.25, {"size": 300})


def test_key_depends_on_every_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runs = RunCache(tmp_path)
    base = runs.key(CONFIG, "data")
    assert runs.key(CONFIG, "data") == base and len(base) == 64
    variations = [
        ("dataset", "digits"), ("input_shape", (6, 6)), ("hidden", (9,)), ("num_classes", 9),
        ("activation", "tanh"), ("batch_size", 33), ("epochs", 2), ("lr", 2e-3),
        ("optimizer", "sgd"), ("seed", 1), ("device", "cuda:0"), ("train_subset", 100),
        ("val_fraction", 0.2), ("flush_denormals", False), ("lr_warmup_epochs", 1.0),
        ("target_accuracy", 0.9), ("architecture", "0123456789abcdef"),
        ("code", "fedcba9876543210"),
    ]
    changed = {runs.key(replace(CONFIG, **{name: value}), "data")
               for name, value in variations}
    changed.add(runs.key(CONFIG, "other data"))
    monkeypatch.setattr(cache, "torch_version", lambda: "0.0.1")
    changed.add(runs.key(CONFIG, "data"))
    monkeypatch.undo()
    monkeypatch.setattr(cache, "plugin_version", lambda: "999.0")
    changed.add(runs.key(CONFIG, "data"))
    monkeypatch.undo()
    monkeypatch.setattr(cache, "CACHE_FORMAT", 999)
    changed.add(runs.key(CONFIG, "data"))
    assert len(changed) == len(variations) + 4 and base not in changed


def test_fingerprint_follows_the_data(small: data.Dataset) -> None:
    assert small.fingerprint() == small.fingerprint()
    assert small.fingerprint() == load_dataset("synthetic", Path("."), 0.25,
                                               {"size": 300}).fingerprint()
    x = small.test.x.clone()
    x[0, 0, 0] += 1e-6
    assert replace(small, test=data.Split(x, small.test.y)).fingerprint() != small.fingerprint()
    y = small.val.y.clone()
    y[0] = (y[0] + 1) % 10
    assert replace(small, val=data.Split(small.val.x, y)).fingerprint() != small.fingerprint()
    assert replace(small, name="other").fingerprint() != small.fingerprint()


def fresh(config: RunConfig = CONFIG) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_mlp(config.input_size, config.hidden, config.num_classes, config.activation)
    return model, make_optimizer(config.optimizer, model.parameters(), config.lr)


def test_store_then_load_restores_the_run(small: data.Dataset, tmp_path: Path) -> None:
    run = train(CONFIG, small, torch.device("cpu"))
    runs = RunCache(tmp_path / "new" / "dir")
    key = runs.key(CONFIG, small.fingerprint())
    assert runs.load(key, *fresh()) is None  # no file: a quiet miss
    assert runs.store(key, run) == tmp_path / "new" / "dir" / f"{key}.pt"
    assert [path.name for path in (tmp_path / "new" / "dir").iterdir()] == [f"{key}.pt"]
    model, optimizer = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = runs.load(key, model, optimizer)
    assert cached is not None
    assert cached.history == run.history
    assert (cached.train_seconds, cached.test_accuracy, cached.test_loss, cached.diverged) == (
        run.train_seconds, run.test_accuracy, run.test_loss, None)
    assert cached.peak_memory is None and cached.train_carbon is None  # run was not measured
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])
    assert optimizer.state_dict()["state"][0]["step"] == run.optimizer.state_dict()["state"][0][
        "step"]


def test_time_to_target_is_cached(small: data.Dataset, tmp_path: Path) -> None:
    config = replace(CONFIG, target_accuracy=0.01, epochs=3)  # reached at the first check
    run = train(config, small, torch.device("cpu"))
    assert run.time_to_target is not None and run.time_to_target.reached
    runs = RunCache(tmp_path)
    key = runs.key(config, small.fingerprint())
    assert key != runs.key(CONFIG, small.fingerprint())
    runs.store(key, run)
    cached = runs.load(key, *fresh(config))
    assert cached is not None and cached.time_to_target == run.time_to_target


def test_learning_curve_is_cached(small: data.Dataset, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "CURVE_EVERY_SAMPLES", 64)  # 225 samples, batches of 32
    config = replace(CONFIG, epochs=2)
    run = train(config, small, torch.device("cpu"))
    assert [point.samples for point in run.curve] == [64, 128, 192, 257, 321, 385, 449]
    runs = RunCache(tmp_path)
    key = runs.key(config, small.fingerprint())
    runs.store(key, run)
    cached = runs.load(key, *fresh(config))
    assert cached is not None and cached.curve == run.curve


def test_diverged_run_is_cached(small: data.Dataset, tmp_path: Path) -> None:
    config = replace(CONFIG, optimizer="sgd", lr=1e12, epochs=2)
    run = train(config, small, torch.device("cpu"))
    assert run.diverged
    runs = RunCache(tmp_path)
    key = runs.key(config, small.fingerprint())
    runs.store(key, run)
    cached = runs.load(key, *fresh(config))
    assert cached is not None and cached.diverged == run.diverged
    assert cached.test_accuracy is None


def bad_fields(entry: dict) -> dict:
    return {"model": entry["model"]}


def bad_shapes(entry: dict) -> dict:
    entry["model"] = build_mlp(64, (9,), 10).state_dict()
    return entry


def bad_history(entry: dict) -> dict:
    entry["history"] = [{"epoch": 1}]
    return entry


def bad_curve(entry: dict) -> dict:
    entry["curve"] = [{"samples": 10, "epoch": 0.1, "val_loss": "low", "val_accuracy": 0.5}]
    return entry


def bad_accuracy(entry: dict) -> dict:
    entry["test_accuracy"] = "0.99"
    return entry


def bad_format(entry: dict) -> dict:
    entry["format"] = 0
    return entry


@pytest.mark.parametrize("spoil", [bad_fields, bad_shapes, bad_history, bad_curve, bad_accuracy,
                                   bad_format])
def test_entry_that_does_not_fit_is_a_miss_with_a_warning(small: data.Dataset, tmp_path: Path,
                                                          spoil) -> None:
    run = train(CONFIG, small, torch.device("cpu"))
    runs = RunCache(tmp_path)
    key = runs.key(CONFIG, small.fingerprint())
    path = runs.store(key, run)
    torch.save(spoil(torch.load(path, weights_only=True)), path)
    with pytest.warns(BatchprofCacheWarning) as caught:
        assert runs.load(key, *fresh()) is None
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(path) in message and "\n" not in message
    assert not path.exists()


def test_entry_with_pickled_code_is_refused(tmp_path: Path) -> None:
    runs = RunCache(tmp_path)
    key = runs.key(CONFIG, "data")
    torch.save({"evil": RunConfig}, runs.path(key))  # a class: weights_only refuses it
    with pytest.warns(BatchprofCacheWarning, match="cannot be read"):
        assert runs.load(key, *fresh()) is None


def test_store_failure_warns_and_goes_on(small: data.Dataset, tmp_path: Path) -> None:
    run = train(CONFIG, small, torch.device("cpu"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    runs = RunCache(blocker / "sub")
    key = runs.key(CONFIG, "data")
    with pytest.warns(BatchprofCacheWarning, match="could not write cache entry"):
        assert runs.store(key, run) is None
