"""Seed 000, "Effect of Batch Size on Accuracy": one hidden layer of 1024 ReLU units,
Adam, trained at every ``--batch-sizes`` value on ``--dataset``.

Run it as ``make bench ARGS="--batch-sizes 1,16,64"`` (MNIST) or
``make bench ARGS="--dataset digits"`` (offline, seconds).
"""

from __future__ import annotations

MIN_TEST_ACCURACY = {
    "mnist": 0.95,
    "fashion-mnist": 0.80,
    "kmnist": 0.80,
    "digits": 0.85,
    "synthetic": 0.85,
}
"""Test accuracy every run must reach after the default 2 epochs, by data set."""


def test_mlp_1024(trained_mlp, batch_size, dataset):
    run = trained_mlp(hidden=(1024,), batch_size=batch_size)
    assert run.test_accuracy >= MIN_TEST_ACCURACY[dataset.name], run
