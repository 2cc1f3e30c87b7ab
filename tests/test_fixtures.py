"""The public fixtures in real pytest sessions (pytester), on small offline data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SYNTHETIC = ("--dataset", "synthetic", "--epochs", "1")


def test_trained_mlp_returns_a_complete_run(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_run(trained_mlp, batch_size, dataset):
            run = trained_mlp(hidden=(32, 16), epochs=2)
            assert run.config.batch_size == batch_size == 16
            assert run.name == "64-32-16-10"
            assert run.config.dataset == dataset.name == "synthetic"
            assert len(run.history) == 2
            assert run.train_seconds > 0
            assert run.test_accuracy > 0.5
            assert run.train_accuracy == run.history[-1].train_accuracy
            assert run.val_accuracy == run.history[-1].val_accuracy
        """
    )
    result = pytester.runpytest("--dataset", "synthetic", "--batch-sizes", "16")
    result.assert_outcomes(passed=1)


def test_batchprof_settings_gives_the_merged_options(pytester: pytest.Pytester):
    pytester.makeini("[pytest]\nbatchprof_epochs = 3\n")
    pytester.makepyfile(
        """
        def test_settings(batchprof_settings):
            assert batchprof_settings.epochs == 3                  # from the ini file
            assert batchprof_settings.train_subset == 120          # from the command line
            assert batchprof_settings.batch_sizes == (8, 32)
            assert batchprof_settings.seed == 0                    # the default
        """
    )
    result = pytester.runpytest("--dataset", "synthetic", "--train-subset", "120",
                                "--batch-sizes", "8,32")
    result.assert_outcomes(passed=1)


def test_epoch_lines_show_live_without_dash_s(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_run(trained_mlp):
            trained_mlp(hidden=16, epochs=2, batch_size=32)
        """
    )
    result = pytester.runpytest(*SYNTHETIC)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "batchprof: training 64-16-10 on synthetic, batch 32, 2 epochs, adam lr=0.001, seed 0, cpu",
        "  Epoch 01, Train acc=0.*, Val acc=0.*, Train loss=*, Val loss=*",
        "  Epoch 02, Train acc=0.*, Val acc=0.*, Train loss=*, Val loss=*",
        "  trained in * s, test acc=0.*",
    ])
    # shown while the test runs, i.e. before its outcome is reported
    text = result.stdout.str()
    assert text.index("Epoch 02") < text.index("1 passed")


def test_quiet_hides_epoch_lines(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_run(trained_mlp):
            trained_mlp(hidden=16)
        """
    )
    result = pytester.runpytest(*SYNTHETIC, "-q")
    result.assert_outcomes(passed=1)
    assert "Epoch 01" not in result.stdout.str()


def test_same_configuration_trains_once_per_session(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        RUNS = []

        def test_first(trained_mlp, batch_size):
            RUNS.append(trained_mlp(hidden=16))

        def test_second(trained_mlp, batch_size):
            RUNS.append(trained_mlp(hidden=16))
            assert RUNS[-1] is RUNS[-2]

        def test_other_seed_trains_again(trained_mlp, batch_size):
            run = trained_mlp(hidden=16, seed=1)
            assert run is not RUNS[0]
            assert run.config.seed == 1
        """
    )
    result = pytester.runpytest(*SYNTHETIC, "--batch-sizes", "32")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("batchprof: training") == 2


def test_same_seed_reproduces_across_sessions(pytester: pytest.Pytester, tmp_path: Path):
    pytester.makepyfile(
        """
        import json, os

        def test_run(trained_mlp):
            run = trained_mlp(hidden=32, epochs=2, batch_size=16)
            figures = [(r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy)
                       for r in run.history]
            with open(os.environ["RESULT_FILE"], "w") as handle:
                json.dump({"history": figures, "test": run.test_accuracy}, handle)
        """
    )
    outputs = []
    for attempt, seed in enumerate(("3", "3", "4")):
        result_file = tmp_path / f"run{attempt}.json"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RESULT_FILE", str(result_file))
            pytester.runpytest(*SYNTHETIC, "--seed", seed).assert_outcomes(passed=1)
        outputs.append(json.loads(result_file.read_text()))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_diverging_run_fails_the_test_with_the_reason(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        def test_diverges(trained_mlp):
            trained_mlp(hidden=16, optimizer="sgd", lr=1e12, epochs=3)
        """
    )
    result = pytester.runpytest(*SYNTHETIC)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*64-16-10 on synthetic, batch 64, 3 epochs, sgd lr=1e+12, seed 0, cpu diverged: "
        "training loss became * in epoch 1*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_batch_size_defaults_to_the_tests_parameter(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import pytest

        def test_from_option(trained_mlp, batch_size):
            assert trained_mlp(hidden=8).config.batch_size == batch_size

        @pytest.mark.parametrize("batch_size", [10])
        def test_from_parametrize(trained_mlp, batch_size):
            assert trained_mlp(hidden=8).config.batch_size == 10

        def test_without_parameter(trained_mlp):
            assert trained_mlp(hidden=8).config.batch_size == 24
        """
    )
    result = pytester.runpytest(*SYNTHETIC, "--batch-sizes", "24,48")
    result.assert_outcomes(passed=4)


def test_centre_crop_and_dataset_override(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import pytest

        def test_crop(trained_mlp, dataset):
            run = trained_mlp(hidden=8, input_size=36)
            assert run.name == "36-8-10"
            assert run.config.input_shape == (6, 6)
            assert dataset.image_shape == (8, 8)

        def test_dataset_argument(trained_mlp):
            assert trained_mlp(hidden=8, dataset="digits").config.dataset == "digits"

        @pytest.mark.dataset("synthetic", size=300, image_size=5)
        def test_marker(trained_mlp, dataset):
            assert dataset.image_shape == (5, 5)
            assert len(dataset.train) + len(dataset.val) == 300
            assert trained_mlp(hidden=8).name == "25-8-10"

        def test_bad_arguments(trained_mlp):
            with pytest.raises(ValueError, match="input_size=37 is not a square"):
                trained_mlp(hidden=8, input_size=37)
            with pytest.raises(ValueError, match="batch_size=0 must be"):
                trained_mlp(hidden=8, batch_size=0)
            with pytest.raises(ValueError, match="activation='swish'"):
                trained_mlp(hidden=8, activation="swish")
        """
    )
    result = pytester.runpytest(*SYNTHETIC, "--batch-sizes", "32")
    result.assert_outcomes(passed=4)


def test_dataset_fixture_holds_normalised_tensors_on_the_device(pytester: pytest.Pytester):
    pytester.makepyfile(
        """
        import torch

        def test_tensors(dataset, device):
            assert dataset.train.x.device.type == device.type
            assert dataset.train.x.dtype == torch.float32
            assert dataset.train.y.dtype == torch.int64
            assert abs(dataset.train.x.mean().item()) < 1e-4
            assert abs(dataset.train.x.std().item() - 1) < 1e-3
            assert dataset.num_classes == 10 and dataset.input_size == 64

        def test_loaded_once(dataset, pytestconfig):
            from pytest_batchprof.plugin import SESSION_KEY
            assert list(pytestconfig.stash[SESSION_KEY].datasets) == ["synthetic"]
        """
    )
    pytester.runpytest(*SYNTHETIC).assert_outcomes(passed=2)


@pytest.mark.mnist
def test_mnist_784_1024_10_reaches_96_percent(pytester: pytest.Pytester, mnist_dir: Path):
    """The foundation's acceptance figure: batch 64, 2 epochs, >= 96% test accuracy."""
    pytester.makepyfile(
        """
        def test_mnist(trained_mlp, batch_size):
            run = trained_mlp(hidden=(1024,), batch_size=batch_size, epochs=2)
            print(f"MNIST test accuracy {run.test_accuracy:.4f}")
            assert len(run.history) == 2
            assert run.test_accuracy >= 0.96, run
        """
    )
    result = pytester.runpytest("--dataset", "mnist", f"--data-dir={mnist_dir}",
                                "--batch-sizes", "64", "--epochs", "2", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*784-1024-10 on mnist, batch 64*", "MNIST test accuracy 0.9*"])
