"""Architecture: the posts' MLP against convolutional networks, at the folder's batch sizes.

Three models, Adam, ``--epochs`` (default 2) at every ``--batch-sizes`` value:

* 784-1024-10, the reference posts' MLP (814,090 parameters);
* c6-c16-120-84-10, LeNet-5 as it is usually fitted to MNIST's 28x28 digits
  (the first convolution pads by 2; 61,706 parameters);
* c16-c32-1000-10, a CNN sized to the MLP's parameter count (824,258): most of
  its parameters sit in the first fully connected layer, as in LeNet.

The question is the one the posts asked of depth and width, asked of the
architecture: for the parameters, FLOPs and latency each spends, what accuracy
does it buy? The summary table puts them side by side; the report's trade-off
plot draws accuracy against FLOPs and latency. Floors are the data set's, as in
the other studies (``conftest.py``)::

    make bench ARGS="-m architecture"
"""

from __future__ import annotations

import pytest

from pytest_batchprof import cnn, mlp

pytestmark = pytest.mark.architecture

MODELS = {
    "mlp-784-1024-10": mlp((1024,)),
    "lenet5": cnn(channels=(6, 16), hidden=(120, 84)),
    "cnn-mlp-sized": cnn(channels=(16, 32), hidden=(1000,)),
}

QUICK_RUN_RELAX_PP = 4.0
"""Percentage points the floor drops per halving of the reference budget's samples, for
this study (the MLP studies drop 2). LeNet-5's 61,706 parameters start slower than the
MLPs: in CI's fast mode (5,000 samples, one epoch) at batch 128, 40 steps, it reached 80.0%
test accuracy where 784-1024-10 reached 90.1%. The full budget keeps the data set's floor."""


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_architecture(trained_model, batch_size, model, accuracy_floor):
    run = trained_model(model, batch_size=batch_size)
    assert run.test_accuracy >= accuracy_floor(run, QUICK_RUN_RELAX_PP), run
