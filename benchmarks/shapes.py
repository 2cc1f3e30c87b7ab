"""A generated 3x32x32 image set for the ``pipelines`` study: ten glyphs on noise.

Each image is one of ten glyphs (a disc, a ring, a plus, a T, a checkerboard, an L, a
right triangle, an arrow, an F, a P) drawn 10 to 16 pixels wide at a random place, in
a random bright colour on a random dark one (so colour says nothing of the class),
with a small square of a third colour somewhere as a distractor and Gaussian noise
over all. Five glyphs have no mirror symmetry (the L, the triangle, the arrow, the F,
the P) and none is another's mirror image, so a horizontal flip keeps every label.

The training images are drawn with less variety than the validation and test images,
as a small training set covers less of the world than the data a model meets later:
their glyph sits within :data:`TRAIN_SHIFT` pixels of the centre and is never
mirrored, where the held-out images' glyph sits anywhere it fits and is mirrored half
the time. The standard CIFAR augmentation (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, :func:`augmentation`) supplies the shifts and mirrors the
training images lack, which is what the study measures.

Everything is generated from fixed seeds on first use (a few seconds), offline.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SIZE = 32
CLASSES = ("disc", "ring", "plus", "T", "checker", "L", "triangle", "arrow", "F", "P")
TRAIN_SAMPLES = 4_000
VAL_SAMPLES = 1_000
TEST_SAMPLES = 2_000
TRAIN_SHIFT = 3
"""Pixels the centre of a training image's glyph may lie from the image's centre."""
GLYPH_SIZES = (10, 16)
"""Smallest and largest glyph width in pixels."""
NOISE_STD = 0.1
"""Standard deviation of the pixel noise, on 0-1 pixel values."""
MEAN, STD = 0.27, 0.22
"""What :func:`normalized` maps 0-1 pixel values with (about the set's mean and spread)."""
SEEDS = {"train": 1, "val": 2, "test": 3}

_GLYPHS = {
    "disc": [".####.", "######", "######", "######", "######", ".####."],
    "ring": [".####.", "##..##", "#....#", "#....#", "##..##", ".####."],
    "plus": ["..##..", "..##..", "######", "######", "..##..", "..##.."],
    "T": ["######", "######", "..##..", "..##..", "..##..", "..##.."],
    "checker": ["##..##", "##..##", "..##..", "..##..", "##..##", "##..##"],
    "L": ["##....", "##....", "##....", "##....", "######", "######"],
    "triangle": ["#.....", "##....", "###...", "####..", "#####.", "######"],
    "arrow": ["...#..", "...##.", "######", "######", "...##.", "...#.."],
    "F": ["######", "######", "##....", "#####.", "##....", "##...."],
    "P": ["#####.", "##..##", "##..##", "#####.", "##....", "##...."],
}


def glyph_masks() -> torch.Tensor:
    """The ten glyphs as 6x6 masks of 0 and 1, in :data:`CLASSES` order."""
    return torch.tensor([[[float(cell == "#") for cell in row] for row in _GLYPHS[name]]
                         for name in CLASSES])


def generate(count: int, seed: int, *, varied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images as uint8 ``(count, 3, 32, 32)`` and their labels, balanced over
    the classes; ``varied``: the glyph anywhere it fits and mirrored half the time (the
    held-out images), else near the centre and never mirrored (the training images)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    def integers(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=generator))

    masks = glyph_masks()
    labels = torch.arange(count) % len(CLASSES)
    labels = labels[torch.randperm(count, generator=generator)]
    images = torch.empty(count, 3, SIZE, SIZE)
    for index, label in enumerate(labels.tolist()):
        background, foreground, distractor = uniform(3, 3, 1, 1).unbind(0)
        background, foreground = 0.4 * background, 0.6 + 0.4 * foreground
        image = background.expand(3, SIZE, SIZE).clone()
        square = integers(3, 5)
        top, left = integers(0, SIZE - square), integers(0, SIZE - square)
        image[:, top:top + square, left:left + square] = distractor
        width = integers(*GLYPH_SIZES)
        glyph = F.interpolate(masks[label][None, None], size=(width, width),
                              mode="bilinear", align_corners=False)[0]
        if varied and integers(0, 1):
            glyph = glyph.flip(-1)
        centre = (SIZE - width) // 2
        reach = (SIZE - width) // 2 if varied else min(TRAIN_SHIFT, (SIZE - width) // 2)
        top, left = centre + integers(-reach, reach), centre + integers(-reach, reach)
        region = image[:, top:top + width, left:left + width]
        image[:, top:top + width, left:left + width] = region * (1 - glyph) + foreground * glyph
        images[index] = image
    images += NOISE_STD * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


@functools.cache
def split(part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images and labels (``train``, ``val`` or ``test``), generated once per
    process."""
    counts = {"train": TRAIN_SAMPLES, "val": VAL_SAMPLES, "test": TEST_SAMPLES}
    return generate(counts[part], SEEDS[part], varied=part != "train")


def normalized(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32, mapped by :data:`MEAN` and :data:`STD`."""
    return (images.float() / 255 - MEAN) / STD


def augmentation():
    """The CIFAR-10 training augmentation, torchvision's v2 transforms on uint8 images."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(SIZE, padding=4), v2.RandomHorizontalFlip()])


class Shapes(torch.utils.data.Dataset):
    """One split as a map-style Dataset: each item ``(image, label)``, the image
    augmented (:func:`augmentation`) when ``augment``, then normalised, on every read."""

    classes = CLASSES

    def __init__(self, part: str, augment: bool = False) -> None:
        self.images, self.labels = split(part)
        self.transform = augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return normalized(image), self.labels[index]
