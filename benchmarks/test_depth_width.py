"""Seed 001, "Effect of Model Size and Shape": depth and width at a given batch size.

784-512-10, 784-1024-10, 784-512-512-10 and 784-1024-1024-10 (ReLU, Adam,
``--epochs``) at every ``--batch-sizes`` value; the summary table puts their
parameter counts and FLOPs beside accuracy and time. 784-1024-10 is the same
configuration as the batch-size study's, so a session running both trains it
once. Thresholds are in ``conftest.py``::

    make bench ARGS="-m depth_width --batch-sizes 1,16,64,128"
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.depth_width

SHAPES = [(512,), (1024,), (512, 512), (1024, 1024)]


@pytest.mark.parametrize("hidden", SHAPES, ids=["-".join(map(str, h)) for h in SHAPES])
def test_depth_and_width(trained_mlp, batch_size, hidden, accuracy_floor):
    run = trained_mlp(hidden=hidden, batch_size=batch_size)
    assert run.test_accuracy >= accuracy_floor(run), run
