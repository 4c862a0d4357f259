"""Fashion-MNIST 2x2 mosaics with positional captions: a caption-rich benchmark built from installed data.

With the 10 class names as captions most in-batch negatives share the positive's caption, so a global
contrastive loss has nothing to gain over the mini-batch one. A mosaic caption names the item in each of
the four cells ("top left a bag, top right a sneaker, ..."): 10^4 label tuples, nearly unique captions.

Splits (keys are row numbers, so they are stable for a seed):
- train: `train_size` mosaics of 4 items drawn at random from the Fashion-MNIST train images;
- test: `test_size` mosaics from the test images with pairwise distinct label tuples (retrieval);
- val: `val_size` mosaics with distinct label tuples from the train images no training mosaic uses
  (retrieval for choosing settings, so the test set is read once);
- zeroshot: single test items shown in all four cells, labelled with their class.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from evaluation.prompts import FASHION_MNIST_CLASSNAMES, MOSAIC_POSITIONS, mosaic_caption

CELLS = len(MOSAIC_POSITIONS)
NUM_TUPLES = len(FASHION_MNIST_CLASSNAMES) ** CELLS


@dataclass(frozen=True)
class Mosaic:
    """One sample: grey pixels [2h, 2w], its caption, the class and the source image index of each cell
    (row-major)."""

    pixels: np.ndarray
    caption: str
    labels: tuple[int, int, int, int]
    sources: tuple[int, int, int, int]


def compose(items: list[np.ndarray]) -> np.ndarray:
    """Four equally sized grey images -> one 2x2 grid, row-major."""
    if len(items) != CELLS:
        raise ValueError(f"a mosaic needs {CELLS} images, got {len(items)}")
    return np.block([[items[0], items[1]], [items[2], items[3]]])


def _caption(labels: tuple[int, ...], rng: random.Random) -> str:
    wording = tuple(rng.randrange(len(p)) for p in MOSAIC_POSITIONS)
    return mosaic_caption([FASHION_MNIST_CLASSNAMES[c] for c in labels], wording)


def random_mosaics(images: np.ndarray, labels: np.ndarray, count: int, seed: str) -> Iterator[Mosaic]:
    """`count` mosaics of items drawn uniformly (with replacement) from `images`."""
    rng = random.Random(seed)
    for _ in range(count):
        picks = [rng.randrange(len(images)) for _ in range(CELLS)]
        cell_labels = tuple(int(labels[i]) for i in picks)
        yield Mosaic(compose([images[i] for i in picks]), _caption(cell_labels, rng), cell_labels, tuple(picks))


def distinct_mosaics(
    images: np.ndarray, labels: np.ndarray, count: int, seed: str, exclude: frozenset[int] = frozenset()
) -> Iterator[Mosaic]:
    """`count` mosaics whose label tuples are pairwise distinct (a retrieval set with one right caption each),
    built from the images whose index is not in `exclude`."""
    if not 0 < count <= NUM_TUPLES:
        raise ValueError(f"a distinct-caption set holds 1..{NUM_TUPLES} mosaics, got {count}")
    rng = random.Random(seed)
    by_class = [
        [i for i in np.flatnonzero(labels == c).tolist() if i not in exclude]
        for c in range(len(FASHION_MNIST_CLASSNAMES))
    ]
    if empty := [FASHION_MNIST_CLASSNAMES[c] for c, members in enumerate(by_class) if not members]:
        raise ValueError(f"no image left for class(es) {empty} once {len(exclude)} images are excluded")
    for code in rng.sample(range(NUM_TUPLES), count):
        cell_labels = tuple(int(d) for d in f"{code:0{CELLS}d}")
        picks = [rng.choice(by_class[c]) for c in cell_labels]
        yield Mosaic(compose([images[i] for i in picks]), _caption(cell_labels, rng), cell_labels, tuple(picks))


def tiled_items(images: np.ndarray, labels: np.ndarray, count: int) -> Iterator[tuple[np.ndarray, int, str]]:
    """The first `count` items, each repeated in all four cells (zero-shot on single items at mosaic size),
    with their class and a caption naming it in every cell."""
    for i in range(min(count, len(images))):
        label = int(labels[i])
        text = mosaic_caption([FASHION_MNIST_CLASSNAMES[label]] * CELLS, (0,) * CELLS)
        yield compose([images[i]] * CELLS), label, text
