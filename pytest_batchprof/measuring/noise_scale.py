"""The gradient noise scale, an estimate of the critical batch size (McCandlish et al. 2018).

``B_simple = tr(Sigma) / |G|^2``: the per-sample gradient covariance's trace
over the squared norm of the true gradient. Below it, doubling the batch
nearly halves the steps a run needs; well above it, a bigger batch buys little
but costs samples.

Neither quantity is observed directly. Their appendix A.1 estimates both from
the squared norms of minibatch gradients at two batch sizes, b < B:

    E|G_b|^2 = |G|^2 + tr(Sigma) / b

so that, with ``s = |G_b|^2`` and ``l = |G_B|^2`` measured at the same weights,

    |G|^2   ~ (B l - b s) / (B - b)
    tr(S)   ~ (s - l) / (1/b - 1/B)

Both are unbiased; their ratio is not, so each is averaged over many pairs of
batches first and the ratio taken last. The spread is a seeded bootstrap over
the pairs: the 2.5th and 97.5th percentiles of the ratio of resampled means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SMALL_BATCH = 32
BIG_BATCH = 1024
PAIRS = 64
BOOTSTRAP_SAMPLES = 1000


@dataclass(frozen=True)
class NoiseScale:
    """``B_simple`` in samples, its 95% bootstrap interval and what it was measured from.

    ``b_simple`` is ``None`` when the true-gradient estimate is not positive:
    at a minimum the noise dominates and the estimate has no meaning.
    """

    b_simple: float | None
    low: float | None
    high: float | None
    gradient_sq: float
    trace: float
    small_batch: int
    big_batch: int
    pairs: int

    def describe(self) -> str:
        """One line for the live output."""
        if self.b_simple is None:
            return "critical batch: n/a (the true gradient is lost in the noise)"
        spread = (f" (95% {self.low:,.0f} to {self.high:,.0f})" if self.low is not None
                  and self.high is not None else "")
        return f"critical batch B_simple={self.b_simple:,.0f} samples{spread}"

    def summary(self) -> dict[str, object]:
        return {
            "critical_batch": self.b_simple,
            "critical_batch_low": self.low,
            "critical_batch_high": self.high,
            "critical_batch_pairs": f"{self.pairs} x (batch {self.small_batch}, "
                                    f"batch {self.big_batch})",
        }


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradient_sq_norm(model: nn.Module, loss_fn: LossFunction, x: torch.Tensor,
                     y: torch.Tensor) -> float:
    """``|grad|^2`` of the mean loss over the batch, over all trainable parameters."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, parameters)
    return float(sum((grad.double() ** 2).sum() for grad in grads))


def estimate(model: nn.Module, loss_fn: LossFunction, x: torch.Tensor, y: torch.Tensor,
             small_batch: int = SMALL_BATCH, big_batch: int = BIG_BATCH, pairs: int = PAIRS,
             seed: int = 0) -> NoiseScale:
    """Estimate ``B_simple`` of ``model`` at its current weights on the samples ``x``, ``y``.

    Every batch is drawn at random with replacement from the samples, so the
    estimate is that of the data set's own gradient distribution. The model's
    weights and training mode are left as they were.
    """
    count = len(x)
    big_batch = min(big_batch, count)
    if not 1 <= small_batch < big_batch:
        raise ValueError(f"need 1 <= small batch < big batch, got {small_batch} and {big_batch}")
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout or batch-norm updates: the gradient of the weights as they are
    small_sq, big_sq = [], []
    try:
        for _ in range(pairs):
            for size, store in ((small_batch, small_sq), (big_batch, big_sq)):
                index = torch.randint(count, (size,), generator=generator).to(x.device)
                store.append(gradient_sq_norm(model, loss_fn, x[index], y[index]))
    finally:
        model.train(was_training)
    small_t = torch.tensor(small_sq, dtype=torch.float64)
    big_t = torch.tensor(big_sq, dtype=torch.float64)
    gradient_sq, trace = _components(small_t.mean(), big_t.mean(), small_batch, big_batch)
    resample = torch.randint(pairs, (BOOTSTRAP_SAMPLES, pairs), generator=generator)
    g_boot, s_boot = _components(small_t[resample].mean(dim=1), big_t[resample].mean(dim=1),
                                 small_batch, big_batch)
    ratios = (s_boot / g_boot)[g_boot > 0]
    b_simple = float(trace / gradient_sq) if gradient_sq > 0 else None
    low = high = None
    if b_simple is not None and len(ratios) >= BOOTSTRAP_SAMPLES // 2:
        low, high = (float(q) for q in torch.quantile(ratios, torch.tensor(
            [0.025, 0.975], dtype=torch.float64)))
    return NoiseScale(b_simple, low, high, float(gradient_sq), float(trace), small_batch,
                      big_batch, pairs)


def _components(small_sq: torch.Tensor, big_sq: torch.Tensor, small: int, big: int) -> (
        tuple[torch.Tensor, torch.Tensor]):
    """The unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` from mean squared norms."""
    gradient_sq = (big * big_sq - small * small_sq) / (big - small)
    trace = (small_sq - big_sq) / (1 / small - 1 / big)
    return gradient_sq, trace
