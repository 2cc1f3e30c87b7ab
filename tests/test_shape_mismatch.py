"""Models that cannot take a data set's samples are skipped, naming the model and the shape;
a user's model that fails on them for any other reason fails its test, in one line."""

from __future__ import annotations

import pytest
from session_output import failure_section, summary_rows

BASE = ("-p", "no:cacheprovider", "--no-co2", "--device", "cpu", "--epochs", "1",
        "--batchprof-no-report", "-p", "no:randomly")

ARCHITECTURE = """
import pytest
from pytest_batchprof import cnn, mlp

MODELS = {
    "mlp-64-32-10": mlp((32,)),
    "lenet5": cnn(channels=(6, 16), hidden=(120, 84)),
    "cnn-mlp-sized": cnn(channels=(16, 32), hidden=(1000,)),
}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_architecture(trained_model, model):
    assert trained_model(model, batch_size=64).test_accuracy > 0
"""


def test_the_architecture_studys_cnns_skip_digits_8x8_images(pytester: pytest.Pytester) -> None:
    """The README's offline run: LeNet-5's two 5x5 convolutions cannot shrink 8x8 images."""
    pytester.makepyfile(ARCHITECTURE)
    result = pytester.runpytest(*BASE, "--dataset", "digits", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "SKIPPED * c6-c16-120-84-10 cannot take digits' 8x8 images: channels=(6, 16): 8x8 "
        "images shrink to nothing after 2 convolutions of 5x5 and 2x2 pooling; *",
        "SKIPPED * c16-c32-1000-10 cannot take digits' 8x8 images: *",
    ], consecutive=False)
    assert [row["model"] for row in summary_rows(result)] == ["64-32-10"]
    assert "(partial)" not in result.stdout.str()


USER_MODELS = """
import pytest
from torch import nn
from pytest_batchprof import ShapeMismatch


def wants_28x28(data):
    if data.image_size != (28, 28):
        raise ShapeMismatch(f"it is written for 28x28 images")
    return nn.Sequential(nn.Flatten(), nn.Linear(784, data.num_classes))


class SaysSoInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, x):
        if x.shape[1:] != (28, 28):
            raise ShapeMismatch(f"it takes 28x28 images, not {tuple(x.shape[1:])}")
        return self.head(x.flatten(1))


class Fixed784(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, x):
        return self.head(x.flatten(1))


@pytest.mark.dataset("synthetic", size=600)
@pytest.mark.parametrize("model", [wants_28x28, SaysSoInForward, Fixed784],
                         ids=["factory", "forward", "bug"])
def test_user_model(trained_model, model):
    trained_model(model, batch_size=64)
"""


def test_a_users_model_is_skipped_only_when_it_says_it_cannot_take_the_shape(
        pytester: pytest.Pytester) -> None:
    """The rule: ``ShapeMismatch`` (raised by the factory or the forward pass) skips; any
    other failure, a shape error of torch's included, fails in one line, since the plugin
    cannot tell a model never meant for this data from a bug in it."""
    pytester.makepyfile(USER_MODELS)
    result = pytester.runpytest(*BASE, "-rs")
    result.assert_outcomes(skipped=2, failed=1)
    result.stdout.fnmatch_lines([
        "SKIPPED * wants_28x28 cannot take synthetic(size=600)'s 8x8 images: it is written "
        "for 28x28 images",
        "SKIPPED * SaysSoInForward (7,850) cannot take synthetic(size=600)'s 8x8 images: it "
        "takes 28x28 images, not (8, 8)",
    ], consecutive=False)
    assert failure_section(result, "test_user_model[bug]") == [
        "model Fixed784 (7,850) failed on a batch of shape (2, 8, 8): RuntimeError: mat1 and "
        "mat2 shapes cannot be multiplied (2x64 and 784x10)"]
