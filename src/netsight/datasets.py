"""The bundled demo dataset: scikit-learn's 8x8 handwritten digits, upsampled.

No download: scikit-learn ships the 1,797 images. They are scaled to [0, 1],
resized to ``size`` x ``size`` (the tutorials' VGG-16 expects 32 x 32, like its
MNIST setup) and normalised with mean 0.5 and std 0.5.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "digits"]

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
    x = torch.nn.functional.interpolate(
        images.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    x = (x - DIGITS_MEAN[0]) / DIGITS_STD[0]
    if split == "all":
        return TensorDataset(x, labels)
    generator = torch.Generator().manual_seed(0)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(10):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test_mask[idx[: round(len(idx) * test_fraction)]] = True
    mask = test_mask if split == "test" else ~test_mask
    return TensorDataset(x[mask], labels[mask])
