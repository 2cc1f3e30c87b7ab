"""Small projects that tests write for their inner pytester sessions."""

from __future__ import annotations


def blobs_conftest(train: int, test: int) -> str:
    """A conftest.py registering ``blobs``: 16 features, 4 classes equally often, a fixed
    prototype per class plus noise; ``train`` and ``test`` samples, from seed 0."""
    return f"""
    import torch

    import pytest_batchprof

    FEATURES, CLASSES = 16, 4


    def blobs(count, generator, prototypes):
        labels = torch.arange(count) % CLASSES  # every class equally often
        noise = 0.5 * torch.randn(count, FEATURES, generator=generator)
        return prototypes[labels] + noise, labels


    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(CLASSES, FEATURES, generator=generator)
    pytest_batchprof.register_dataset("blobs", train=blobs({train}, generator, prototypes),
                                      test=blobs({test}, generator, prototypes))
"""
