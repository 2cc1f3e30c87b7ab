"""Seed 000, "Effect of Batch Size on Accuracy": how batch size moves accuracy and cost.

Two MLPs, Adam, ``--epochs`` (default 2) at every ``--batch-sizes`` value:

* 784-1024-10, one hidden layer of 1024 ReLU units on the 28x28 images;
* 400-1024-1024-10, two hidden layers on the 20x20 centre crop (where MNIST's
  digits sit; the posts' parameter and FLOP counts add up only for 400 inputs).
  On a data set with smaller images (digits: 8x8) it takes the whole image.

Thresholds and their fast-mode rule are in ``conftest.py``. Run it as::

    make bench ARGS="-m batch_size_study --batch-sizes 1,16,64,128"
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.batch_size_study

POSTS_CROP = (20, 20)


def test_one_hidden_layer_1024(trained_mlp, batch_size, accuracy_floor):
    run = trained_mlp(hidden=(1024,), batch_size=batch_size)
    assert run.test_accuracy >= accuracy_floor(run), run


def test_two_hidden_layers_1024_on_20x20_crop(trained_mlp, batch_size, dataset, accuracy_floor):
    fits = all(side >= crop for side, crop in zip(dataset.image_shape, POSTS_CROP, strict=True))
    run = trained_mlp(hidden=(1024, 1024), batch_size=batch_size,
                      input_size=POSTS_CROP if fits else None)
    assert run.test_accuracy >= accuracy_floor(run), run
