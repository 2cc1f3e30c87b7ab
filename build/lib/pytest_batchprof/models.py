"""The multilayer perceptrons the experiments train, and their conventional names."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}
"""Hidden-layer activations; ``linear`` makes e.g. the 784-1-10 bottleneck of seed 003."""


def normalise_hidden(hidden: int | Sequence[int]) -> tuple[int, ...]:
    """Accept ``1024`` or ``(1024, 1024)``; reject widths below 1."""
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if any(not isinstance(width, int) or width < 1 for width in widths):
        raise ValueError(f"hidden={hidden!r}: every hidden width must be a whole number >= 1")
    return widths


def mlp_name(input_size: int, hidden: Sequence[int], num_classes: int) -> str:
    """The posts' way of naming an MLP by its layer widths: ``784-1024-10``."""
    return "-".join(str(width) for width in (input_size, *hidden, num_classes))


def build_mlp(
    input_size: int, hidden: Sequence[int], num_classes: int, activation: str = "relu"
) -> nn.Sequential:
    """Flatten, then ``Linear`` + activation per hidden width, then a ``Linear`` head.

    Weights come from torch's default initialisation, so seed the global RNG
    (or use ``torch.random.fork_rng``) before calling for a reproducible model.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width_in = input_size
    for width in hidden:
        layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
        width_in = width
    layers.append(nn.Linear(width_in, num_classes))
    return nn.Sequential(*layers)
