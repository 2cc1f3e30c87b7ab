"""BatchNorm synchronised across a data-parallel run's processes (``sync_batchnorm=True``).

Each process of a data-parallel run normalises its own slice of the global batch; plain
BatchNorm then computes its statistics on that slice alone, and a run of N processes
trains another model than one process on the whole batch. Synchronised, every process
normalises with the statistics of the global batch, and the running statistics are those
of the global batch too.

On CUDA that is ``torch.nn.SyncBatchNorm``. Torch's refuses CPU tensors (and
``DistributedDataParallel`` refuses it in a CPU model), and data-parallel runs on the CPU
use gloo: :class:`CpuSyncBatchNorm` sums each channel's values, their squares and their
count on every process and all-reduces the sums with the autograd-aware
``torch.distributed.nn.functional.all_reduce``, so that the gradients flow through the
global statistics as through torch's. The sums are taken in float64: the variance, the
mean square less the squared mean, then loses nothing at float32.

The converted layers keep the BatchNorm's parameters (the same tensors, so an optimizer
made before the conversion still steps them) and buffers, under the same names: a
converted model's ``state_dict`` loads into the unconverted one.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class CpuSyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` for CPU tensors (gloo): in training, with a process group of
    more than one process, the statistics are the global batch's (all-reduced sums);
    otherwise it is BatchNorm. (It is torch's ``_BatchNorm``, not a subclass of
    ``nn.SyncBatchNorm``, which ``DistributedDataParallel`` refuses in a CPU model.)"""

    def __init__(self, *arguments: object, process_group: object = None,
                 **keywords: object) -> None:
        super().__init__(*arguments, **keywords)
        self.process_group = process_group
        """The group whose batches make the statistics; ``None``: every process."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        return self._synchronised(input, group)

    def _synchronised(self, input: torch.Tensor, group: object) -> torch.Tensor:
        """Normalise ``input`` with the statistics of every process's batch, and move the
        running statistics towards them as BatchNorm does (unbiased variance, over the
        global count)."""
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        values = input.double()
        local_count = torch.tensor([input.numel() // channels], dtype=torch.float64)
        sums = _summed(torch.cat([values.sum(dims), (values * values).sum(dims),
                                  local_count]), group)
        count = sums[-1]
        if count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{int(count.item())} over the processes")
        mean = sums[:channels] / count
        var = (sums[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            self._track(mean.detach(), var.detach(), count.item())
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        output = (values - mean.view(shape)) * scale.view(shape)
        if self.weight is not None:
            output = output * self.weight.view(shape)
        if self.bias is not None:
            output = output + self.bias.view(shape)
        return output.to(input.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """BatchNorm's update of the running statistics and of the batches tracked."""
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        unbiased = var * (count / (count - 1))
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype),
                                                  alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype),
                                                 alpha=momentum)


def _summed(tensor: torch.Tensor, group: object) -> torch.Tensor:
    """``tensor`` summed over the processes of ``group``, the gradient summed back.

    ``torch.distributed.nn.functional.all_reduce`` is the autograd-aware all-reduce of
    every torch this package supports (the functional collectives that newer torches point
    to instead, in a FutureWarning, have no backward in older ones): its warning is not
    the user's business."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor, group=group)


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm layer synchronised across the process group:
    ``nn.SyncBatchNorm`` on CUDA, :class:`CpuSyncBatchNorm` elsewhere. Convert before
    wrapping the model in ``DistributedDataParallel``; the model itself is returned,
    unless it is a BatchNorm layer (then its synchronised twin is)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _converted(model)


def _converted(module: nn.Module) -> nn.Module:
    """:func:`synchronise_batchnorm` on the CPU: ``convert_sync_batchnorm``'s walk, making
    :class:`CpuSyncBatchNorm` layers."""
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        converted = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                     module.affine, module.track_running_stats)
        if module.affine:  # the module's own tensors, whatever their device and dtype
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, _converted(child))
    return converted

