"""Model factories: the shipped families (MLP, LeNet-style CNN), any user factory, and identity.

Closed formulas for one sample (stride 1, no dilation, no groups):

* ``Conv2d(C_in, C_out, k, padding=p)`` on ``H x W``: ``H_out = H + 2p - k + 1`` (and
  likewise ``W_out``); params = ``C_out * C_in * k * k + C_out``; MACs (fvcore) =
  ``C_out * H_out * W_out * C_in * k * k``; forward FLOPs (FlopCounterMode) = 2 x MACs.
  Neither counter counts the bias add, nor ReLU, max-pooling, flatten or reshapes.
* ``Linear(n_in, n_out)``: params = ``n_in * n_out + n_out``; MACs = ``n_in * n_out``.

LeNet-5 (``cnn()``) on 1x28x28: conv1 keeps 28x28 (padding 2), pool -> 14, conv2 -> 10,
pool -> 5, so the first Linear sees 16 * 5 * 5 = 400 features.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.experiment.models import (
    CNN,
    MLP,
    ModelError,
    cnn,
    factory_identity,
    mlp,
    module_fingerprint,
    prepare_model,
    takes_description,
)
from pytest_batchprof.measuring.metrics import count_flops, count_parameters

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # imported once, quietly, as test_metrics does
    import fvcore.nn  # noqa: F401

MNIST = DataDescription((28, 28), 10)
CIFAR10 = DataDescription((3, 32, 32), 10)
FLAT = DataDescription((12,), 3)

LENET5_PARAMS = {
    "conv1": 1 * 6 * 25 + 6,  # 156
    "conv2": 6 * 16 * 25 + 16,  # 2,416
    "fc1": 400 * 120 + 120,  # 48,120
    "fc2": 120 * 84 + 84,  # 10,164
    "fc3": 84 * 10 + 10,  # 850
}

LENET5_MACS = {
    "1": 6 * 28 * 28 * 1 * 25,  # conv1: 117,600
    "4": 16 * 10 * 10 * 6 * 25,  # conv2: 240,000
    "8": 400 * 120,  # 48,000
    "10": 120 * 84,  # 10,080
    "12": 84 * 10,  # 840
}
"""LeNet-5's MACs on 1x28x28, keyed as ``macs_by_layer`` keys them: the index of the layer in
the ``nn.Sequential`` (0 is AddChannel, 2/3 ReLU and pool, 7 Flatten: none counts)."""


def conv_macs(c_in: int, c_out: int, kernel: int, padding: int, height: int, width: int) -> int:
    """MACs of a stride-1 ``Conv2d`` on one ``c_in x height x width`` sample (bias excluded)."""
    h_out, w_out = (side + 2 * padding - kernel + 1 for side in (height, width))
    return c_out * h_out * w_out * c_in * kernel * kernel


# ---------------------------------------------------------------- module-level factories
# Defined here, not inside tests, so that their qualified names identify them.


class TinyNet(nn.Module):
    """2,080 parameters: enough for a thousands separator in its name."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class SizedNet(nn.Module):
    """A class factory that takes the data description."""

    def __init__(self, data: DataDescription) -> None:
        super().__init__()
        self.fc = nn.Linear(data.input_size, data.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class NoArguments:
    """A class whose ``__init__`` takes nothing but ``self``."""

    def __init__(self) -> None:
        self.made = True


class NamedNet(nn.Module):
    """A user model that happens to carry a ``model_name`` attribute of its own."""

    model_name = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)


class CallableObject:
    """A plain callable object: instances have no ``__qualname__``."""

    def __call__(self) -> nn.Module:
        return nn.Linear(2, 2)


class Builder:
    """A builder whose ``build`` method's result depends on the instance's state."""

    def __init__(self, std: float) -> None:
        self.std = std

    def build(self) -> nn.Module:
        layer = nn.Linear(4, 2)
        nn.init.normal_(layer.weight, std=self.std)
        return layer


@dataclass(frozen=True)
class WidthFactory:
    """A dataclass factory: its ``repr`` identifies it."""

    width: int

    def __call__(self) -> nn.Module:
        return nn.Linear(4, self.width)


def make_linear() -> nn.Module:
    return nn.Linear(4, 2)


def sized_linear(data: DataDescription) -> nn.Module:
    return nn.Linear(data.input_size, data.num_classes)


def sized_with_default(data: DataDescription, width: int = 3) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, width),
                         nn.Linear(width, data.num_classes))


def two_arguments(data: DataDescription, width: int) -> nn.Module:
    return nn.Linear(data.input_size, width)


def scaled_linear(width: int) -> nn.Module:
    return nn.Linear(4, width)


def broken() -> nn.Module:
    raise RuntimeError("no weights today\nsecond line of the traceback text")


def not_a_module() -> int:
    return 3


def no_parameters() -> nn.Module:
    return nn.ReLU()


def strided_conv(stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=stride), nn.Flatten())


linear_lambda = lambda: nn.Linear(2, 2)  # noqa: E731 - the point: a lambda has no stable name


# ---------------------------------------------------------------- DataDescription


@pytest.mark.parametrize(
    ("shape", "channels", "input_size", "image_size"),
    [((28, 28), 1, 784, (28, 28)), ((3, 32, 32), 3, 3072, (32, 32)), ((20,), None, 20, None)],
    ids=["HW", "CHW", "flat"],
)
def test_data_description(shape: tuple[int, ...], channels: int | None, input_size: int,
                          image_size: tuple[int, int] | None) -> None:
    """Grayscale images have one channel, flat features none; input_size is the product."""
    data = DataDescription(shape, 10)
    assert (data.channels, data.input_size, data.image_size) == (channels, input_size,
                                                                 image_size)


# ---------------------------------------------------------------- cnn(): LeNet-5 and kin


def test_cnn_defaults_are_lenet5() -> None:
    """cnn() on MNIST is LeNet-5: 61,706 parameters, conv and linear layers as in the paper."""
    factory = cnn()
    assert factory == CNN(channels=(6, 16), hidden=(120, 84), kernel_size=5, activation="relu")
    model = factory(MNIST)
    assert sum(LENET5_PARAMS.values()) == 61_706
    assert count_parameters(model) == (61_706, 61_706)
    layers = [layer for layer in model if isinstance(layer, nn.Conv2d | nn.Linear)]
    assert [sum(p.numel() for p in layer.parameters()) for layer in layers] == list(
        LENET5_PARAMS.values())
    assert factory.model_name(MNIST) == "c6-c16-120-84-10"


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 1, 28, 28)], ids=["NHW", "NCHW"])
def test_lenet5_takes_images_with_or_without_their_channel_axis(shape: tuple[int, ...]) -> None:
    """(N, H, W) batches get their channel axis; (N, 1, H, W) batches pass as they are."""
    model = cnn()(MNIST)
    assert model(torch.zeros(shape)).shape == (3, 10)


def test_lenet_on_cifar10_sizes_its_layers_from_the_data() -> None:
    """3x32x32: conv1 keeps 32x32, pool -> 16, conv2 -> 12, pool -> 6: 16 * 6 * 6 = 576
    features into the first Linear."""
    model = cnn()(CIFAR10)
    expected = ((3 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (576 * 120 + 120)
                + (120 * 84 + 84) + (84 * 10 + 10))
    assert expected == 83_126
    assert count_parameters(model) == (expected, expected)
    assert model[8].in_features == 576
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert cnn(channels=(32, 64), hidden=128).model_name(CIFAR10) == "c32-c64-128-10"


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5, 7])
def test_the_computed_flatten_size_matches_the_convolutions(kernel_size: int) -> None:
    """Even kernels pad by k // 2 and so grow the image by one: the size build_cnn computes
    for the first Linear must still match what the convolutions produce."""
    model = cnn(kernel_size=kernel_size)(MNIST)
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10)


def test_images_too_small_for_the_convolutions_are_refused() -> None:
    """4x4 survives conv1 (padded) and one pooling (2x2), but not the unpadded conv2."""
    with pytest.raises(ValueError, match=r"channels=\(6, 16, 32\): 4x4 images shrink to "
                                         r"nothing after 2 convolutions"):
        cnn(channels=(6, 16, 32))(DataDescription((4, 4), 10))


def test_a_cnn_needs_images() -> None:
    with pytest.raises(ValueError, match=r"a CNN needs images.*shape \(12,\)"):
        cnn()(FLAT)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"channels": 0}, "channels=0"), ({"channels": (6, -1)}, "channels="),
     ({"hidden": 0}, "hidden=0"), ({"kernel_size": 0}, "kernel_size=0"),
     ({"kernel_size": True}, "kernel_size=True"), ({"activation": "swish"}, "activation='swish'")],
)
def test_bad_cnn_arguments_are_named(arguments: dict[str, object], named: str) -> None:
    """Refused when the factory is made, not later when it is called on data."""
    with pytest.raises(ValueError, match=re.escape(named)):
        cnn(**arguments)


# ---------------------------------------------------------------- FLOPs and MACs of convolutions


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "padding", "height", "width"),
    [(1, 6, 5, 2, 28, 28), (3, 8, 3, 1, 10, 12), (6, 16, 5, 0, 14, 14), (2, 5, 1, 0, 7, 9),
     (4, 3, 3, 0, 3, 3)],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_flops_and_macs_match_the_closed_formula(
        c_in: int, c_out: int, kernel: int, padding: int, height: int, width: int,
        bias: bool) -> None:
    """MACs = C_out * H_out * W_out * C_in * k * k, FLOPs = 2 x MACs; the bias add is not
    counted by either counter (the figures are equal with and without a bias)."""
    layer = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=bias)
    count = count_flops(layer, torch.zeros(1, c_in, height, width))
    macs = conv_macs(c_in, c_out, kernel, padding, height, width)
    assert count.notes == ()
    assert count.macs == macs
    assert count.forward_flops == 2 * macs
    # Training: forward plus the weight gradient (as many FLOPs again); the example needs
    # no input gradient, and the bias gradient (a sum) is not counted.
    assert count.train_flops == 4 * macs
    # A bare layer has no children: macs_by_layer keys top-level children only (the root's
    # own total, fvcore's "" entry, is left out), so it is empty.
    assert count.macs_by_layer == {}


def test_lenet5_flops_and_macs() -> None:
    """Convolutions and linears only: 117,600 + 240,000 + 58,920 = 416,520 MACs; ReLU,
    max-pooling, AddChannel and Flatten count nothing in either counter."""
    model = cnn()(MNIST)
    assert conv_macs(1, 6, 5, 2, 28, 28) == LENET5_MACS["1"] == 117_600
    assert conv_macs(6, 16, 5, 0, 14, 14) == LENET5_MACS["4"] == 240_000
    assert LENET5_MACS["8"] + LENET5_MACS["10"] + LENET5_MACS["12"] == 58_920
    count = count_flops(model, torch.zeros(1, 28, 28))
    assert count.notes == ()
    assert count.macs == 416_520
    assert count.forward_flops == 2 * 416_520
    assert count.macs_by_layer == LENET5_MACS
    # Backward: every weight gradient costs its layer's forward FLOPs again, every input
    # gradient too except conv1's (the example needs none).
    backward = 2 * 416_520 + 2 * (416_520 - LENET5_MACS["1"])
    assert count.train_flops == 2 * 416_520 + backward == 2_263_920
    assert model.training  # count_flops restores the mode it found


def test_lenet5_flops_do_not_depend_on_the_channel_axis() -> None:
    """A 1x1x28x28 example counts the same as a 1x28x28 one (AddChannel is free)."""
    model = cnn()(MNIST)
    assert count_flops(model, torch.zeros(1, 1, 28, 28)) == count_flops(
        model, torch.zeros(1, 28, 28))


# ---------------------------------------------------------------- mlp()


def test_mlp_factory() -> None:
    """mlp((1024,)) on MNIST is the posts' 784-1024-10 with 814,090 parameters."""
    factory = mlp((1024,))
    model = factory(MNIST)
    assert count_parameters(model)[0] == 784 * 1024 + 1024 + 1024 * 10 + 10 == 814_090
    assert factory.model_name(MNIST) == "784-1024-10"
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10)


def test_mlp_normalises_a_single_width() -> None:
    assert mlp(64) == mlp((64,)) == mlp([64]) == MLP((64,), "relu")
    assert mlp(64).hidden == (64,)
    assert mlp((32, 16), "tanh").model_name(FLAT) == "12-32-16-3"


@pytest.mark.parametrize(
    ("arguments", "named"),
    [({"hidden": 0}, "hidden=0"), ({"hidden": (8, 0)}, "hidden=(8, 0)"),
     ({"hidden": (8, 2.5)}, "hidden=(8, 2.5)"), ({"activation": "swish"}, "activation='swish'")],
)
def test_bad_mlp_arguments_are_named(arguments: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        mlp(**arguments)


@pytest.mark.parametrize("make", [mlp, lambda hidden: cnn(channels=hidden)], ids=["mlp", "cnn"])
def test_a_lone_non_integer_width_is_named(make: object) -> None:
    """(8, 2.5) is refused with a ValueError naming the argument; 2.5 alone should be too."""
    with pytest.raises(ValueError, match=r"=2\.5: every"):
        make(2.5)


# ---------------------------------------------------------------- factory_identity


@pytest.mark.parametrize("factory", [make_linear, TinyNet], ids=["function", "class"])
def test_module_level_factories_have_a_stable_identity(factory: object) -> None:
    """``module.qualname``: the same on every call. Its source is not part of it: that is
    the run's code (:mod:`pytest_batchprof.experiment.code`), not the model's name."""
    assert factory_identity(factory) == (f"{__name__}.{factory.__qualname__}", None)


def test_factories_without_a_stable_name_have_no_identity() -> None:
    """A lambda, a class defined inside a function, a callable object: each gets None and a
    clause the caller gives a subject to ("its factory is a lambda; ...")."""

    class LocalNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    expected = {
        linear_lambda: "is a lambda;",
        LocalNet: "is defined inside a function (",
        CallableObject(): "is a CallableObject object without a qualified name;",
    }
    for factory, clause in expected.items():
        identity, reason = factory_identity(factory)
        assert identity is None
        assert reason is not None
        assert reason.startswith(clause)


def test_a_dataclass_factory_is_identified_by_its_repr() -> None:
    """The shipped families are dataclasses: their settings are their identity."""
    assert factory_identity(cnn()) == (f"pytest_batchprof.experiment.models.CNN:{cnn()!r}", None)
    assert factory_identity(cnn()) == factory_identity(cnn((6, 16)))
    assert factory_identity(cnn()) != factory_identity(cnn(channels=(6, 32)))
    assert factory_identity(WidthFactory(3)) == (f"{__name__}.WidthFactory:WidthFactory("
                                                 f"width=3)", None)


def test_a_partial_is_identified_by_its_function_and_plain_arguments() -> None:
    """Plain arguments (numbers, strings, tuples) name a partial; any other object does not."""
    identity, reason = factory_identity(functools.partial(scaled_linear, 3))
    inner, _ = factory_identity(scaled_linear)
    assert (identity, reason) == (f"partial({inner}, (3,))", None)
    assert factory_identity(functools.partial(scaled_linear, 4))[0] != identity
    assert factory_identity(functools.partial(scaled_linear, width=3))[0] == (
        f"partial({inner}, (('width', 3),))")
    identity, reason = factory_identity(functools.partial(scaled_linear, object()))
    assert identity is None
    assert reason is not None
    assert reason.startswith("is a functools.partial whose arguments are not plain values")
    assert factory_identity(functools.partial(linear_lambda))[1].startswith("is a lambda")


def test_bound_methods_of_different_objects_do_not_share_an_identity() -> None:
    """Builder(0.01).build and Builder(10.0).build make differently initialised models, like
    partial(f, object()) they must not be told apart by name alone (or get no identity)."""
    small, large = Builder(0.01).build, Builder(10.0).build
    assert module_fingerprint(small(), "x") == module_fingerprint(large(), "x")  # same shapes
    small_identity, _ = factory_identity(small)
    large_identity, _ = factory_identity(large)
    assert small_identity is None or small_identity != large_identity


# ---------------------------------------------------------------- prepare_model


def test_prepare_a_module_class() -> None:
    """Named ``ClassName (N,NNN)``; cached; build() makes a fresh model each time."""
    prepared = prepare_model(TinyNet, MNIST)
    assert prepared.name == "TinyNet (2,080)"
    assert prepared.params == 64 * 32 + 32 == 2_080
    assert prepared.uncached_reason is None
    assert (prepared.hidden, prepared.activation) == (None, None)
    first, second = prepared.build(), prepared.build()
    assert isinstance(first, TinyNet)
    assert first is not second
    assert prepare_model(TinyNet, MNIST, name="tiny").name == "tiny"


def test_prepare_the_shipped_families() -> None:
    """Named by their layer widths; the MLP family's settings are kept for rows and keys."""
    prepared = prepare_model(mlp(32, "gelu"), MNIST)
    assert (prepared.name, prepared.params) == ("784-32-10", 784 * 32 + 32 + 32 * 10 + 10)
    assert (prepared.hidden, prepared.activation) == ((32,), "gelu")
    lenet = prepare_model(cnn(), MNIST)
    assert (lenet.name, lenet.params, lenet.hidden, lenet.uncached_reason) == (
        "c6-c16-120-84-10", 61_706, None, None)
    assert prepare_model(cnn(), MNIST, name="LeNet-5").name == "LeNet-5"


@pytest.mark.parametrize("factory", [sized_linear, sized_with_default, SizedNet],
                         ids=["function", "function-with-default", "class"])
def test_a_factory_with_one_required_parameter_receives_the_description(
        factory: object) -> None:
    """The model is sized from the data: 3x4 inputs (12 features), 5 classes."""
    prepared = prepare_model(factory, DataDescription((3, 4), 5))
    model = prepared.build()
    assert model(torch.zeros(2, 12)).shape == (2, 5)


def test_a_factory_needing_two_arguments_is_refused() -> None:
    with pytest.raises(ModelError, match=re.escape(
            "model two_arguments needs 2 arguments (data, width); it must take none, or one")):
        prepare_model(two_arguments, MNIST)


@pytest.mark.parametrize(
    ("factory", "message"),
    [(broken, "model broken failed to build: RuntimeError: no weights today"),
     (not_a_module, "model not_a_module returned a int, not an nn.Module"),
     (no_parameters, "model no_parameters has no parameters to train"),
     (TinyNet(), "model is an instance of TinyNet; pass its class"),
     ("TinyNet", "model='TinyNet' is neither an nn.Module subclass nor a callable")],
    ids=["raises", "non-module", "no-parameters", "instance", "not-callable"],
)
def test_unusable_factories_raise_a_one_line_model_error(factory: object, message: str) -> None:
    """One line naming the model, even when its own error spans several."""
    with pytest.raises(ModelError) as caught:
        prepare_model(factory, MNIST)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_factory_without_identity_is_prepared_but_not_cached() -> None:
    prepared = prepare_model(linear_lambda, MNIST)
    assert prepared.uncached_reason is not None
    assert prepared.uncached_reason.startswith("its factory is a lambda;")
    assert prepared.name == "<lambda> (6)"


def test_a_user_class_with_a_model_name_attribute_is_named_by_its_label() -> None:
    prepared = prepare_model(NamedNet, MNIST)
    assert prepared.name == "NamedNet (6)"


# ---------------------------------------------------------------- architecture fingerprints


def test_the_architecture_fingerprint() -> None:
    """16 hex digits; the same for the same factory, different for different layer sizes."""
    lenet = prepare_model(cnn(channels=(6, 16)), MNIST).architecture
    assert re.fullmatch(r"[0-9a-f]{16}", lenet)
    assert prepare_model(cnn(channels=(6, 16)), MNIST).architecture == lenet
    assert prepare_model(cnn(channels=(6, 32)), MNIST).architecture != lenet
    assert prepare_model(cnn(), CIFAR10).architecture != lenet  # data-sized layers differ
    tiny = prepare_model(TinyNet, MNIST).architecture
    assert prepare_model(TinyNet, MNIST, name="renamed").architecture == tiny


def test_the_fingerprint_sees_settings_without_parameters() -> None:
    """Stride changes no parameter shape, but the module tree's repr shows it."""
    one, two = strided_conv(1), strided_conv(2)
    shapes = [(key, value.shape) for key, value in one.state_dict().items()]
    assert shapes == [(key, value.shape) for key, value in two.state_dict().items()]
    assert module_fingerprint(one, "same") != module_fingerprint(two, "same")
    assert module_fingerprint(one, "same") == module_fingerprint(strided_conv(1), "same")


def test_the_fingerprint_includes_the_identity() -> None:
    model = make_linear()
    assert module_fingerprint(model, "a") != module_fingerprint(model, "b")
    assert re.fullmatch(r"[0-9a-f]{16}", module_fingerprint(model, "a"))


# ---------------------------------------------------------------- takes_description


@pytest.mark.parametrize(
    ("factory", "expected"),
    [(NoArguments, False), (TinyNet, False), (make_linear, False), (sized_linear, True),
     (sized_with_default, True), (SizedNet, True), (cnn(), True), (mlp(8), True),
     (functools.partial(two_arguments, width=3), True), (CallableObject(), False)],
    ids=["class-no-args", "module-no-args", "function-no-args", "function-data",
         "function-data-default", "class-data", "cnn", "mlp", "partial", "callable-object"],
)
def test_takes_description(factory: object, expected: bool) -> None:
    """One required positional parameter: the description; none: nothing."""
    assert takes_description(factory) is expected


def test_takes_description_refuses_two_required_parameters() -> None:
    with pytest.raises(ModelError, match=r"needs 2 arguments \(data, width\)"):
        takes_description(two_arguments)
