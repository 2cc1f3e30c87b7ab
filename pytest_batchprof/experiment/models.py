"""Models: the shipped families (MLPs, LeNet-style CNNs), the user's own, and their identity.

A *model factory* is anything that makes a fresh ``nn.Module``: an ``nn.Module``
subclass, a function, or one of the shipped factories :func:`mlp` and
:func:`cnn`. It is called with no arguments, or with the data set's
:class:`~pytest_batchprof.data.description.DataDescription` when it has exactly
one required positional parameter, so that a model can size its input and output
layers from the data.

A run's cache key and report row need to know *which* model trained, and with
what code. For that, :func:`prepare_model` builds the model once and
fingerprints it twice: its *architecture*, the structure alone (the module tree
as ``repr`` shows it, with layer types and their settings, every parameter's
and buffer's name, shape and dtype, and the factory's qualified name); and its
*code*, the source files that compute it (the factory's, and those of every
module class in its tree: :mod:`.code`). A factory whose identity cannot be
told from its name (a lambda, a function or class defined inside another
function, a callable object that is not a dataclass), or a model whose code
cannot be read, is trained, but its runs are not cached: two such factories
with the same structure may compute different things.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, is_dataclass

from torch import nn

from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.errors import one_line
from pytest_batchprof.experiment.code import Code, code_of, model_code
from pytest_batchprof.experiment.config import mlp_name
from pytest_batchprof.experiment.libraries import is_keras_model, keras_build, keras_structure

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}
"""Hidden-layer activations; ``linear`` makes e.g. the 784-1-10 bottleneck of seed 003."""

ModelFactory = Callable[..., nn.Module]


class ModelError(ValueError):
    """A model that cannot be trained as given; the message is one line naming it."""


class ShapeMismatch(ModelError):
    """The model cannot take the data's samples: not a bug, a pairing that does not exist.

    The fixtures skip a test whose model raises it (when its factory builds the model, or
    in its forward pass), with a reason naming the model and the data's shape: the shipped
    :func:`cnn` raises it for flat features and for images its convolutions shrink to
    nothing, and a user's factory may raise it for data it was not written for. Any other
    failure of a model fails its test: the plugin cannot tell a model never meant for this
    data from a bug in it, and a skip would hide the bug.
    """


def normalise_hidden(hidden: int | Sequence[int], argument: str = "hidden") -> tuple[int, ...]:
    """Accept ``1024`` or ``(1024, 1024)``; reject widths below 1."""
    if isinstance(hidden, int):
        widths = (hidden,)
    elif isinstance(hidden, Sequence) and not isinstance(hidden, str):
        widths = tuple(hidden)
    else:
        widths = (hidden,)  # rejected below, with the argument's name
    if any(isinstance(width, bool) or not isinstance(width, int) or width < 1
           for width in widths):
        what = "hidden width" if argument == "hidden" else "count"
        raise ValueError(f"{argument}={hidden!r}: every {what} must be a whole number >= 1")
    return widths


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")


# ---------------------------------------------------------------- the shipped families


def build_mlp(
    input_size: int, hidden: Sequence[int], num_classes: int, activation: str = "relu"
) -> nn.Sequential:
    """Flatten, then ``Linear`` + activation per hidden width, then a ``Linear`` head.

    Weights come from torch's default initialisation, so seed the global RNG
    (or use ``torch.random.fork_rng``) before calling for a reproducible model.
    """
    _check_activation(activation)
    return nn.Sequential(nn.Flatten(), *dense_layers(input_size, hidden, num_classes,
                                                     activation))


def dense_layers(width_in: int, hidden: Sequence[int], num_classes: int,
                 activation: str) -> list[nn.Module]:
    """``Linear`` + activation per hidden width, then a ``Linear`` head: an MLP's layers,
    and a CNN's after its convolutions."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return layers


@dataclass(frozen=True)
class MLP:
    """A factory of multilayer perceptrons sized by the data: see :func:`mlp`."""

    hidden: tuple[int, ...]
    activation: str = "relu"

    def __call__(self, data: DataDescription) -> nn.Sequential:
        return build_mlp(data.input_size, self.hidden, data.num_classes, self.activation)

    def model_name(self, data: DataDescription) -> str:
        """``784-1024-10``: input, hidden and output widths."""
        return mlp_name(data.input_size, self.hidden, data.num_classes)


def mlp(hidden: int | Sequence[int] = (1024,), activation: str = "relu") -> MLP:
    """The reference posts' MLP: ``trained_model(mlp((1024,)))`` is ``trained_mlp((1024,))``."""
    _check_activation(activation)
    return MLP(normalise_hidden(hidden), activation)


class AddChannel(nn.Module):
    """Give ``(N, H, W)`` images their channel axis, ``(N, 1, H, W)``; leave 4-d input alone."""

    def forward(self, images):
        return images.unsqueeze(1) if images.dim() == 3 else images


def build_cnn(
    input_shape: Sequence[int],
    channels: Sequence[int],
    hidden: Sequence[int],
    num_classes: int,
    kernel_size: int = 5,
    activation: str = "relu",
) -> nn.Sequential:
    """LeNet-5's pattern: per entry of ``channels`` a convolution, the activation and a 2x2
    max-pool; then flatten, ``Linear`` + activation per ``hidden`` width, a ``Linear`` head.

    The first convolution pads by ``kernel_size // 2`` (it keeps the image size:
    LeNet-5 saw 32x32 images, MNIST's are 28x28 with the border cut), the others
    do not pad. ``input_shape`` is ``(H, W)`` or ``(C, H, W)``.
    """
    _check_activation(activation)
    if len(input_shape) not in (2, 3):
        raise ShapeMismatch(f"a CNN needs images, (H, W) or (C, H, W); this data has "
                            f"samples of shape {tuple(input_shape)}")
    in_channels = input_shape[0] if len(input_shape) == 3 else 1
    height, width = input_shape[-2:]
    layers: list[nn.Module] = [AddChannel()]
    for index, out_channels in enumerate(channels):
        padding = kernel_size // 2 if index == 0 else 0
        height, width = (side + 2 * padding - kernel_size + 1 for side in (height, width))
        height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ShapeMismatch(
                f"channels={tuple(channels)}: {input_shape[-2]}x{input_shape[-1]} images "
                f"shrink to nothing after {index + 1} convolutions of {kernel_size}x"
                f"{kernel_size} and 2x2 pooling; use fewer convolutions or a smaller "
                f"kernel_size")
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
                   ACTIVATIONS[activation](), nn.MaxPool2d(2)]
        in_channels = out_channels
    layers.append(nn.Flatten())
    layers += dense_layers(in_channels * height * width, hidden, num_classes, activation)
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class CNN:
    """A factory of LeNet-style CNNs sized by the data: see :func:`cnn`."""

    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    kernel_size: int = 5
    activation: str = "relu"

    def __call__(self, data: DataDescription) -> nn.Sequential:
        return build_cnn(data.input_shape, self.channels, self.hidden, data.num_classes,
                         self.kernel_size, self.activation)

    def model_name(self, data: DataDescription) -> str:
        """``c6-c16-120-84-10``: convolution channels (``c``), hidden widths, classes."""
        convolutions = [f"c{count}" for count in self.channels]
        return "-".join([*convolutions, *(str(width) for width in self.hidden),
                         str(data.num_classes)])


def cnn(
    channels: int | Sequence[int] = (6, 16),
    hidden: int | Sequence[int] = (120, 84),
    kernel_size: int = 5,
    activation: str = "relu",
) -> CNN:
    """A LeNet-style CNN factory; the defaults are LeNet-5 (61,706 parameters on MNIST).

    ``trained_model(cnn())`` trains it; ``cnn(channels=(32, 64), hidden=(128,))`` is a
    wider one. Named ``c6-c16-120-84-10`` in tables.
    """
    _check_activation(activation)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size={kernel_size!r} must be a whole number >= 1")
    return CNN(normalise_hidden(channels, "channels"), normalise_hidden(hidden, "hidden"),
               kernel_size, activation)


# ---------------------------------------------------------------- any factory


@dataclass(frozen=True)
class PreparedModel:
    """A factory checked against the data: its name, fingerprint, and how to build it."""

    build: Callable[[], nn.Module]
    """Makes a fresh model (seed the RNG first for reproducible weights)."""
    name: str
    architecture: str
    """SHA-256 (hex, 16 digits) of the model's structure: the module tree, parameter shapes
    and the factory's name (:func:`module_fingerprint`)."""
    params: int
    uncached_reason: str | None = None
    """Why runs of this model cannot be cached (``its factory is a lambda; ...``)."""
    code: Code = field(default_factory=Code)
    """The code that computes the model: its factory's and module classes' source files
    (:mod:`.code`); the run adds its loss and optimizer."""
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    """The MLP family's settings (``None`` for other models), kept in rows and keys."""
    model_id: str | None = None
    """What a baseline knows the model by across commits (:func:`model_id`)."""


def model_id(factory: object, data: DataDescription, name: str | None) -> str | None:
    """What a baseline knows a model by, across commits: the ``name=`` given, else the
    factory's name without the parameter count (``LeNet5``, ``make_net``), a shipped CNN
    its layers (``c6-c16-120-84-10``); ``None`` for a shipped MLP, which its widths name."""
    if name is None and isinstance(factory, MLP):
        return None
    return model_label(factory, data, name)


def model_label(factory: object, data: DataDescription, name: str | None = None) -> str:
    """A model's name without its parameter count: the ``name=`` given, a shipped family's
    layers (``784-1024-10``, ``c6-c16-120-84-10``), else the factory's name (``LeNet5``)."""
    if name is not None:
        return name
    if isinstance(factory, MLP | CNN):
        return factory.model_name(data)
    return factory_label(factory)


def factory_label(factory: object) -> str:
    """How messages name a factory: ``LeNet5``, ``make_net``, ``cnn(...)``."""
    if is_dataclass(factory) and not isinstance(factory, type):
        return repr(factory)
    if isinstance(factory, functools.partial):
        return factory_label(factory.func)
    return getattr(factory, "__name__", None) or type(factory).__name__


def factory_identity(factory: object) -> tuple[str | None, str | None]:
    """A stable text naming ``factory`` (its qualified name, and its settings or arguments);
    or ``None`` and why it has none, a clause (``is a lambda; ...``) for the caller to give
    a subject. The name tells factories apart; what their code computes is
    :func:`.code.code_of`'s to fingerprint."""
    if is_dataclass(factory) and not isinstance(factory, type):
        cls = type(factory)
        return f"{cls.__module__}.{cls.__qualname__}:{factory!r}", None
    if inspect.ismethod(factory):  # a bound method computes with its object's state
        owner = factory.__self__
        if isinstance(owner, type) or (is_dataclass(owner) and not isinstance(owner, type)):
            inner, reason = factory_identity(factory.__func__)
            return (None, reason) if inner is None else (f"{inner} of {owner!r}", None)
        return None, (f"is a method of a {type(owner).__name__} object, whose state has no "
                      f"stable name; use a dataclass, or a module-level function")
    if isinstance(factory, functools.partial):
        inner, reason = factory_identity(factory.func)
        if inner is None:
            return None, reason
        arguments = (*factory.args, *sorted(factory.keywords.items()))
        if not all(_plain(value) for value in arguments):
            return None, "is a functools.partial whose arguments are not plain values"
        return f"partial({inner}, {arguments!r})", None
    qualname = getattr(factory, "__qualname__", None)
    module = getattr(factory, "__module__", None)
    if qualname is None or module is None:
        return None, (f"is a {type(factory).__name__} object without a qualified name; use a "
                      f"class, a module-level function or a dataclass")
    if "<lambda>" in qualname:
        return None, "is a lambda; define a module-level function or class instead"
    if "<locals>" in qualname:
        return None, (f"is defined inside a function ({qualname}); define it at module "
                      f"level, so that its name identifies it")
    return f"{module}.{qualname}", None


def local_identity(factory: object) -> str:
    """What tells apart factories without a stable name (a lambda, a function or class
    defined in a test): where their code is (module, qualified name and line, not the
    file's path, which differs between machines), and the plain values their closure
    holds (other values by their ``id``). Good within a session and, for the same code
    and plain values, across sessions and machines; not enough for a cache, which must
    not trust a closure."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    target = getattr(target, "__func__", target)
    name = (f"{getattr(target, '__module__', None)}."
            f"{getattr(target, '__qualname__', type(target).__qualname__)}")
    code = getattr(target, "__code__", None)
    if code is not None:
        where = f"{name} line {code.co_firstlineno}"
        cells = [cell.cell_contents for cell in (target.__closure__ or ())]
    else:
        try:
            where = f"{name} line {inspect.getsourcelines(target)[1]}"
        except (OSError, TypeError):
            where = f"{name} object {id(target)}"
        cells = []
    values = [repr(value) if _plain(value) else f"{type(value).__name__}@{id(value)}"
              for value in cells]
    return f"unnamed {factory_label(factory)} at {where} with {values}"


def _plain(value: object) -> bool:
    if isinstance(value, tuple | list):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


def takes_description(factory: object) -> bool:
    """Whether ``factory`` wants the :class:`DataDescription` (one required positional
    parameter) or nothing; raise ``ModelError`` when it wants more."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: try no arguments
        return False
    required = [parameter for parameter in signature.parameters.values()
                if parameter.default is inspect.Parameter.empty
                and parameter.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                       inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        names = ", ".join(parameter.name for parameter in required)
        raise ModelError(f"model {factory_label(factory)} needs {len(required)} arguments "
                         f"({names}); it must take none, or one: the data description")
    return len(required) == 1


def module_fingerprint(model: nn.Module, identity: str) -> str:
    """SHA-256 (16 hex digits) of ``identity`` (who made the model), the module tree as
    ``repr`` shows it (layer types and settings; a Keras model's layers and their
    configurations, which its ``repr`` leaves out), and every parameter's and buffer's
    name, shape and dtype."""
    structure = [identity, repr(model), *keras_structure(model)]
    structure += [f"{key}:{tuple(value.shape)}:{value.dtype}"
                  for key, value in model.state_dict().items()]
    return hashlib.sha256("\n".join(structure).encode()).hexdigest()[:16]


def prepare_model(factory: object, data: DataDescription, name: str | None = None) -> (
        PreparedModel):
    """Build ``factory``'s model once for ``data``: check it, name it, fingerprint it.

    Raises :class:`ModelError` (one line naming the model) when the factory is not
    callable or fails, or returns something other than an ``nn.Module``. The
    caller seeds the RNG. A factory that makes a Keras model is built again, and its
    ``build`` always builds, in a fresh Keras session seeded from torch's seed
    (:func:`.libraries.keras_build`), so that every build has the same ``state_dict``
    keys and weights.
    """
    if isinstance(factory, nn.Module):
        raise ModelError(
            f"model is an instance of {type(factory).__name__}; pass its class (or a "
            f"function returning a fresh model), so that every run starts from its own "
            f"seeded weights")
    if not callable(factory):
        raise ModelError(f"model={factory!r} is neither an nn.Module subclass nor a callable "
                         f"returning one")
    label = factory_label(factory)
    with_description = takes_description(factory)

    def build() -> nn.Module:
        return factory(data) if with_description else factory()

    try:
        model = build()
    except ShapeMismatch:  # the model says it cannot take this data: the caller names it
        raise
    except Exception as error:  # the user's code: any failure is theirs to read in one line
        raise ModelError(f"model {label} failed to build: {one_line(error)}") from error
    if not isinstance(model, nn.Module):
        fix = ("; Keras makes torch modules on the torch backend only: set KERAS_BACKEND=torch "
               "before keras is imported" if is_keras_model(model) else "")
        raise ModelError(f"model {label} returned a {type(model).__name__}, not an "
                         f"nn.Module{fix}")
    if is_keras_model(model):  # rebuilt as every run will build it: see .libraries
        build = keras_build(build)
        model = build()
    params = sum(parameter.numel() for parameter in model.parameters())
    if params == 0:
        raise ModelError(f"model {label} has no parameters to train")
    identity, reason = factory_identity(factory)
    digest = module_fingerprint(model, identity or local_identity(factory))
    code = code_of(factory, "its factory") | model_code(model)
    known_as = model_id(factory, data, name)
    if name is None:
        name = (model_label(factory, data) if isinstance(factory, MLP | CNN)
                else f"{label} ({params:,})")
    return PreparedModel(
        build=build, name=name, architecture=digest, params=params,
        uncached_reason=code.reason if identity is not None else f"its factory {reason}",
        code=code,
        hidden=factory.hidden if isinstance(factory, MLP) else None,
        activation=factory.activation if isinstance(factory, MLP) else None,
        model_id=known_as,
    )
