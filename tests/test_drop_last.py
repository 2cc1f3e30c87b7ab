"""``drop_last``: the keyword and ``--batchprof-drop-last`` drop each epoch's last partial
batch (alone, in an ensemble); without it, a BatchNorm model that a run would hand a batch of
one sample fails before training, in one line naming it."""

from __future__ import annotations

import json

import pytest
from session_output import failure_section, summary_rows

EPOCHS = 1
BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", str(EPOCHS),
        "--batchprof-no-report", "-p", "no:randomly")
TRAIN_SAMPLES = 550
"""Training samples of ``synthetic(size=600)`` (50 held out for validation)."""
BATCH = 64
WHOLE_BATCHES = TRAIN_SAMPLES // BATCH

STEPS = """
import json, pathlib
import pytest


def steps(run):
    return sorted({int(state["step"]) for state in run.optimizer.state_dict()["state"].values()})


@pytest.mark.dataset("synthetic", size=600)
def test_steps(trained_mlp):
    runs = {"default": trained_mlp(hidden=16, batch_size=64),
            "dropped": trained_mlp(hidden=16, batch_size=64, drop_last=True)}
    pathlib.Path("steps.json").write_text(json.dumps({
        name: [steps(run), run.samples_per_epoch, run.config.drop_last]
        for name, run in runs.items()}))


@pytest.mark.dataset("synthetic", size=600)
def test_ensemble(trained_mlp):
    repeated = trained_mlp(hidden=16, batch_size=64, drop_last=True, repeats=2)
    pathlib.Path("members.json").write_text(json.dumps(
        [[steps(run), run.samples_per_epoch, run.ensemble] for run in repeated.runs]))
"""


def _steps(pytester: pytest.Pytester) -> dict[str, list[object]]:
    return json.loads((pytester.path / "steps.json").read_text())


def test_the_keyword_drops_the_last_partial_batch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(STEPS)
    result = pytester.runpytest(*BASE, "-k", "test_steps")
    result.assert_outcomes(passed=1)
    partial = -(-TRAIN_SAMPLES // BATCH)  # the short last batch counted
    assert _steps(pytester) == {
        "default": [[EPOCHS * partial], TRAIN_SAMPLES, False],
        "dropped": [[EPOCHS * WHOLE_BATCHES], WHOLE_BATCHES * BATCH, True],
    }
    result.stdout.fnmatch_lines(["batchprof: training 64-16-10 on *, batch 64, *, drop_last"])
    assert sorted(row["model"] for row in summary_rows(result)) == ["64-16-10", "64-16-10"]


def test_the_option_drops_it_for_every_run(pytester: pytest.Pytester) -> None:
    """(Its ini twin, ``batchprof_drop_last = true``, is in test_options.py's GOOD_INI.)"""
    pytester.makepyfile(STEPS)
    result = pytester.runpytest(*BASE, "-k", "test_steps", "--batchprof-drop-last")
    result.assert_outcomes(passed=1)
    steps = _steps(pytester)
    assert steps["default"] == steps["dropped"] == [
        [EPOCHS * WHOLE_BATCHES], WHOLE_BATCHES * BATCH, True]
    assert any(line.startswith("batchprof: ") and " drop-last" in line
               for line in result.stdout.lines)  # the header says so


def test_an_ensemble_drops_it_for_every_member(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(STEPS)
    result = pytester.runpytest(*BASE, "-k", "test_ensemble")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["batchprof: training 2 runs of * as one ensemble (seeds 0, 1)"])
    members = json.loads((pytester.path / "members.json").read_text())
    assert members == [[[EPOCHS * WHOLE_BATCHES], WHOLE_BATCHES * BATCH, "one of 2"]] * 2


BATCH_NORM_PROJECT = {
    "netlib": """
from torch import nn


class Block(nn.Module):
    def __init__(self, width_in, width_out):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out),
                                    nn.ReLU())

    def forward(self, x):
        return self.layers(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), Block(64, 16), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)
""",
}
NET_TEST = """
import pytest
from netlib import Net


@pytest.mark.dataset("synthetic", size=600)
@pytest.mark.parametrize("drop_last", [False, True])
def test_net(trained_model, drop_last):
    run = trained_model(Net, batch_size={batch}, drop_last=drop_last, data_parallel={processes})
    assert run.samples_per_epoch < 550
"""


@pytest.mark.parametrize(("batch", "processes", "where", "fix"), [
    (61, 1, "the last batch of an epoch holds 1 sample (550 training samples, batch 61)",
     "pass drop_last=True or --batchprof-drop-last, or another batch size"),
    (4, 2, "the last batch of an epoch gives a process 1 sample (550 training samples, batch "
     "4 over 2 processes)",
     "pass drop_last=True or --batchprof-drop-last, or another batch size"),
], ids=["alone", "data-parallel"])
def test_batchnorm_facing_a_one_sample_batch_fails_in_one_line_before_training(
        pytester: pytest.Pytester, batch: int, processes: int, where: str, fix: str) -> None:
    assert TRAIN_SAMPLES % batch == processes  # each process's slice of the last batch: 1
    pytester.makepyfile(**BATCH_NORM_PROJECT,
                        test_net=NET_TEST.format(batch=batch, processes=processes))
    result = pytester.runpytest(*BASE)
    result.assert_outcomes(passed=1, failed=1)  # drop_last=True trains
    (line,) = failure_section(result, "test_net[False]")
    assert line.startswith("model Net (")
    assert line.endswith(f" has BatchNorm layers, and {where}: BatchNorm cannot train on one "
                         f"sample; {fix}")
    trained = [line for line in result.outlines if line.startswith("batchprof: training")]
    assert len(trained) == 1 and trained[0].endswith(", drop_last")  # nothing before the line
    assert [row["batch"] for row in summary_rows(result)] == [str(batch)]  # drop_last's row


def test_a_batch_of_one_per_process_is_refused_whatever_drop_last(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**BATCH_NORM_PROJECT, test_net=NET_TEST.format(batch=2, processes=2))
    result = pytester.runpytest(*BASE)
    result.assert_outcomes(failed=2)
    for test in ("test_net[False]", "test_net[True]"):
        (line,) = failure_section(result, test)
        assert line.endswith(" has BatchNorm layers, and every batch holds 1 sample per "
                             "process (batch 2 over 2 processes): BatchNorm cannot train on "
                             "one sample; use a batch size of 4 or more"), line
