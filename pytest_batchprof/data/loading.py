"""Splits read through a ``torch.utils.data.DataLoader`` every epoch, as the user's own
loop reads them, so that a ``Dataset``'s transforms (random crops, flips) apply on every
read.

The user's DataLoader arguments (:data:`LOADER_OPTIONS`: workers, pinned memory,
prefetching, a collate function) pass through; what a batch-size experiment must own the
run sets (:data:`OWNED_OPTIONS`): the batch size, a shuffle drawn from a generator seeded
by the run's seed (so a rerun repeats bit for bit on the CPU with ``num_workers=0``; with
workers, torch seeds each worker's ``random``, ``torch`` and ``numpy`` from that generator,
as its documentation on randomness in multi-process loading describes), ``drop_last``,
and, in a data-parallel run, a ``DistributedSampler`` giving each process its share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch.utils.data import DataLoader, Subset

from pytest_batchprof.data.batches import split_batch, tensors_of, to_device
from pytest_batchprof.errors import one_line

LOADER_OPTIONS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor",
                  "collate_fn", "worker_init_fn", "multiprocessing_context", "timeout",
                  "in_order")
"""The DataLoader arguments ``register_dataset(..., loader={...})`` passes through."""

OWNED_OPTIONS = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last",
                 "generator")
"""The DataLoader arguments each run sets itself (the experiment's), refused in ``loader``."""

class DataReadError(RuntimeError):
    """The DataLoader of a run failed to read a batch (the user's ``Dataset``, transforms or
    collate function raised); the message is one line, naming the Dataset and the error."""


EVAL_LOADER_BATCH = 256
"""The batch size validation and test splits are read in when a DataLoader feeds them (a
batch size changes no evaluation figure, only its speed and memory)."""


def check_loader_options(where: str, options: object) -> dict[str, object]:
    """``options`` as a dict of :data:`LOADER_OPTIONS`; ``ValueError`` with one line naming
    the argument for anything else."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}: loader={options!r} must be a dict of DataLoader arguments")
    for key in options:
        if key in OWNED_OPTIONS:
            raise ValueError(f"{where}: loader={{{key!r}: ...}} is the run's to set (the batch "
                             f"size, a seeded shuffle, drop_last and the sampler belong to the "
                             f"experiment); leave it out")
        if key not in LOADER_OPTIONS:
            raise ValueError(f"{where}: loader={{{key!r}: ...}} is not a DataLoader argument "
                             f"it passes on; give {', '.join(LOADER_OPTIONS)}")
    workers = options.get("num_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"{where}: loader={{'num_workers': {workers!r}}} must be a whole "
                         f"number >= 0")
    return dict(options)


@dataclass(frozen=True)
class LoaderSplit:
    """A split a DataLoader reads every epoch: the user's map-style ``Dataset`` and the
    DataLoader arguments it was registered with."""

    dataset: torch.utils.data.Dataset
    options: Mapping[str, object] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where each batch is moved once read (the model's device)."""

    in_memory = False

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def workers(self) -> int:
        return int(self.options.get("num_workers", 0))

    def to(self, device: torch.device) -> LoaderSplit:
        """The same split, its batches moved to ``device`` as they are read."""
        return replace(self, device=torch.device(device))

    def take(self, count: int) -> LoaderSplit:
        """The first ``count`` samples (a ``Subset``), read the same way."""
        if count >= len(self):
            return self
        return replace(self, dataset=Subset(self.dataset, range(count)))

    def subset(self, indices: list[int]) -> LoaderSplit:
        """The samples at ``indices``, read the same way."""
        return replace(self, dataset=Subset(self.dataset, indices))

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               drop_last: bool = False, rank: int = 0, world: int = 1) -> DataLoader:
        """A DataLoader of this split: the user's arguments, the run's batch size, a shuffle
        from a generator seeded with ``seed``, ``drop_last``, and with ``world`` processes a
        ``DistributedSampler`` (``batch_size`` is then this process's)."""
        options = dict(self.options)
        if self.device.type == "cuda":
            options.setdefault("pin_memory", True)
        if not options.get("num_workers"):
            options.pop("persistent_workers", None)
            options.pop("prefetch_factor", None)
        generator = torch.Generator().manual_seed(seed)
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(self.dataset, num_replicas=world, rank=rank,
                                         shuffle=shuffle, seed=seed, drop_last=drop_last)
            return DataLoader(self.dataset, batch_size=batch_size, sampler=sampler,
                              drop_last=drop_last, generator=generator, **options)
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle,
                          drop_last=drop_last, generator=generator, **options)

    @staticmethod
    def release(loader: DataLoader) -> None:
        """End ``loader``'s persistent worker processes now (``persistent_workers=True``
        keeps them between passes, for as long as the DataLoader lives).

        A run calls it when it ends. Left to the garbage collector, the workers outlive
        the run, and a later collection that finds the DataLoader in a reference cycle
        waits seconds per worker for them to stop (torch joins each with a timeout once
        their queues are already finalised)."""
        iterator = getattr(loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader._iterator = None

    def batches(self, loader: DataLoader, epoch: int = 0) -> Iterator[object]:
        """One pass of ``loader`` (made by :meth:`loader`), every batch on :attr:`device`."""
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        non_blocking = bool(loader.pin_memory) and self.device.type == "cuda"
        on_cpu = self.device.type == "cpu"
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as error:  # the user's Dataset, transforms or collate_fn
                raise DataReadError(f"the DataLoader failed to read a batch of "
                                    f"{type(self.dataset).__name__}: {one_line(error)}") from error
            yield batch if on_cpu else to_device(batch, self.device, non_blocking)

    def first(self, count: int) -> object:
        """The first ``count`` samples as one collated batch, on :attr:`device` (what a
        model is tried on before a run, and timed on after it)."""
        loader = DataLoader(Subset(self.dataset, range(min(count, len(self)))),
                            batch_size=count, collate_fn=self.options.get("collate_fn"))
        return to_device(next(iter(loader)), self.device)

    @cached_property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's first input's shape, as the DataLoader collates it (read once)."""
        inputs, _ = split_batch(self.first(1))
        return tuple(int(side) for side in tensors_of(inputs)[0].shape[1:])

    def fingerprint(self, digest: hashlib._Hash, seed: int = 0) -> None:
        """Add every sample's bytes, read once in order with the random state seeded by
        ``seed`` (the same transforms draw the same way each time), to ``digest``."""
        loader = DataLoader(self.dataset, batch_size=EVAL_LOADER_BATCH,
                            collate_fn=self.options.get("collate_fn"))
        with torch.random.fork_rng(devices=[]):
            import random

            state = random.getstate()
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                digest.update(f"|{type(self.dataset).__qualname__}:{len(self)}|".encode())
                for batch in loader:
                    for tensor in tensors_of(batch):
                        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                        digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}|".encode())
                        digest.update(memoryview(flat.view(torch.uint8).numpy()))
            finally:
                random.setstate(state)
