"""The bundled demo datasets, made from scikit-learn's 8x8 handwritten digits.

No download: scikit-learn ships the 1,797 images.

* :func:`digits`: the digits scaled to [0, 1], resized to ``size`` x ``size`` (the
  tutorials' VGG-16 expects 32 x 32, like its MNIST setup) and normalised with mean
  0.5 and std 0.5.
* :func:`digit_canvases`: a localisation set, where a class activation map can be
  judged: each digit, upscaled to 20-28 px, pasted at a random place on a 64 x 64
  canvas of noise next to 2-4 distractor strokes, with the box around its ink.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

__all__ = [
    "CANVAS_DIGIT_SIZES",
    "CANVAS_SIZE",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "digit_canvases",
    "digits",
]

DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)


def digits(split: str = "train", *, size: int = 32, test_fraction: float = 0.2) -> TensorDataset:
    """scikit-learn's digits as a ``TensorDataset`` of ``(1, size, size)`` images and labels.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``; the split is fixed (seeded), stratified
            by putting a seeded random ``test_fraction`` of each class into the test set.
        size: output height and width.
        test_fraction: the share of each class in the test split.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'netsight[demo]'``).
    """
    images, labels = _split(split, test_fraction, seed=0)
    x = torch.nn.functional.interpolate(
        images.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    x = (x - DIGITS_MEAN[0]) / DIGITS_STD[0]
    return TensorDataset(x, labels)


def _split(split: str, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 x 8 digits in [0, 1] ``(N, 8, 8)`` and their labels, of one split: a
    seeded random ``test_fraction`` of each class is the test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised without sklearn
        raise ImportError(
            "the digits demo dataset needs scikit-learn: pip install 'netsight[demo]'"
        ) from exc
    if split not in ("train", "test", "all"):
        raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # values 0..16
    labels = torch.tensor(bunch.target, dtype=torch.long)
    if split == "all":
        return images, labels
    generator = torch.Generator().manual_seed(seed)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(10):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test_mask[idx[: round(len(idx) * test_fraction)]] = True
    mask = test_mask if split == "test" else ~test_mask
    return images[mask], labels[mask]


# --------------------------------------------------------------------------- canvases

#: The side of a canvas, in pixels.
CANVAS_SIZE = 64
#: The smallest and largest side of a pasted digit, in pixels.
CANVAS_DIGIT_SIZES = (20, 28)


def digit_canvases(
    split: str = "test",
    count: int = 100,
    *,
    seed: int = 0,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> TensorDataset:
    """Digits pasted off-centre on noisy 64 x 64 canvases, with their boxes.

    Each canvas holds one digit of ``split`` (upscaled to a random 20-28 px square
    and pasted at a random place) on noise of mean 0.1, next to 2-4 distractor
    strokes (random lines and arcs as bright as the digits, outside the digit's
    square). Values are in [0, 1]; no normalisation (zero is black, the ink-free
    value, so deleting pixels to zero removes ink). A class activation map that
    points at the digit's box has found it; a centred map usually has not.

    Args:
        split: which digits are pasted: ``"train"``, ``"test"`` or ``"all"`` (the
            split of :func:`digits` when ``split_seed`` is 0).
        count: how many canvases (digits are drawn at random, with replacement).
        seed: the seed of the drawing (which digit, size, place, strokes, noise).
        split_seed: the seed of the train/test split of the digits.
        test_fraction: the share of each class in the test split.

    Returns:
        A ``TensorDataset`` of ``(count, 1, 64, 64)`` float images, ``(count,)``
        labels and ``(count, 4)`` long boxes ``(x0, y0, x1, y1)``: the tight box
        around the digit's ink, half-open (``image[y0:y1, x0:x1]``), the format
        :func:`netsight.cam.evaluate` takes for its pointing game.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    digits_, labels = _split(split, test_fraction, seed=split_seed)
    generator = torch.Generator().manual_seed(seed)
    # Drawing is thousands of tiny ops: one thread is much faster than several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, picked, boxes = _make_canvases(digits_, labels, count, generator)
    finally:
        torch.set_num_threads(threads)
    return TensorDataset(images, picked, boxes)


def _draw(canvas: torch.Tensor, segments: torch.Tensor, width: float, value: float) -> None:
    """Draw a stroke, anti-aliased, into ``canvas`` (max-composited): ``segments``
    (S, 4) as (x0, y0, x1, y1), ``width`` in px; only its bounding box is computed."""
    size = canvas.shape[-1]
    points = segments.view(-1, 2)
    lo = (points.amin(0) - width).floor().clamp(0, size).long().tolist()
    hi = (points.amax(0) + width + 1).ceil().clamp(0, size).long().tolist()
    if lo[0] >= hi[0] or lo[1] >= hi[1]:
        return
    ys = torch.arange(lo[1], hi[1], dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(lo[0], hi[0], dtype=torch.float32)[None, None, :] + 0.5
    ax, ay = segments[:, 0, None, None], segments[:, 1, None, None]
    dx, dy = segments[:, 2, None, None] - ax, segments[:, 3, None, None] - ay
    t = ((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp(min=1e-6)
    t = t.clamp(0, 1)
    distance = ((xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2).sqrt().amin(0)
    coverage = (width / 2 + 0.5 - distance).clamp(0, 1) * value
    window = canvas[lo[1] : hi[1], lo[0] : hi[0]]
    torch.maximum(window, coverage, out=window)


def _distractor(generator: torch.Generator, size: int) -> torch.Tensor:
    """Segments (S, 4) of one random line or arc, somewhere on the canvas."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    cx, cy = uniform(4, size - 4), uniform(4, size - 4)
    if float(torch.rand((), generator=generator)) < 0.5:
        length, angle = uniform(8, 22), uniform(0, math.pi)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        return torch.tensor([[cx - dx, cy - dy, cx + dx, cy + dy]])
    radius, start = uniform(4, 9), uniform(0, 2 * math.pi)
    span = uniform(math.pi / 2, 1.4 * math.pi)
    angles = torch.linspace(start, start + span, 13)
    points = torch.stack([cx + radius * angles.cos(), cy + radius * angles.sin()], 1)
    return torch.cat([points[:-1], points[1:]], 1)


def _make_canvases(
    digits_: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    size, (smallest, largest) = CANVAS_SIZE, CANVAS_DIGIT_SIZES
    images = torch.empty(count, 1, size, size)
    boxes = torch.empty(count, 4, dtype=torch.long)
    picks = torch.randint(len(digits_), (count,), generator=generator)
    for i, pick in enumerate(picks.tolist()):
        side = int(torch.randint(smallest, largest + 1, (), generator=generator))
        digit = torch.nn.functional.interpolate(
            digits_[pick][None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0].clamp(0, 1)
        x0 = int(torch.randint(0, size - side + 1, (), generator=generator))
        y0 = int(torch.randint(0, size - side + 1, (), generator=generator))
        strokes: list[torch.Tensor] = []
        wanted = int(torch.randint(2, 5, (), generator=generator))
        for _ in range(40):  # rejection sampling: strokes stay off the digit's square
            if len(strokes) == wanted:
                break
            segments = _distractor(generator, size)
            lo, hi = segments.view(-1, 2).amin(0) - 2, segments.view(-1, 2).amax(0) + 2
            overlaps = lo[0] < x0 + side and hi[0] > x0 and lo[1] < y0 + side and hi[1] > y0
            if not overlaps:
                strokes.append(segments)
        canvas = 0.1 + 0.05 * torch.randn(size, size, generator=generator)
        for segments in strokes:
            width, value = torch.rand(2, generator=generator).tolist()
            _draw(canvas, segments, 1.5 + width, 0.6 + 0.4 * value)
        window = canvas[y0 : y0 + side, x0 : x0 + side]
        canvas[y0 : y0 + side, x0 : x0 + side] = torch.maximum(window, digit)
        canvas += 0.05 * torch.randn(size, size, generator=generator)
        images[i, 0] = canvas.clamp(0, 1)
        ink = (digit > 0.2).nonzero()
        boxes[i] = torch.tensor(
            [
                x0 + int(ink[:, 1].min()),
                y0 + int(ink[:, 0].min()),
                x0 + int(ink[:, 1].max()) + 1,
                y0 + int(ink[:, 0].max()) + 1,
            ]
        )
    return images, labels[picks], boxes
