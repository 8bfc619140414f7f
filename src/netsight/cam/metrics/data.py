"""What comes in: the batches this rank scores and their parts.

:class:`Stream` turns a ``Dataset``, a ``DataLoader`` or any iterable of batches
into this rank's batches (sharding a ``Dataset`` across ranks, recognising a
``DistributedSampler``'s padded repeats, refusing a loader that would give every
rank every image); the ``_check_*`` helpers and :func:`region_masks` take a batch
apart and validate its images, labels and boxes or masks; :func:`rank_and_world` is this
process's rank and the number of processes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Stream:
    """The batches this rank scores, with which images to keep (padding dropped)
    and their dataset indices when known."""

    batches: Iterable[Any]
    total: int | None
    positions: list[int] | None = None  # this rank's dataset indices, in order
    keep: list[bool] | None = None  # per position: not a padded repeat

    @classmethod
    def make(cls, data: Any, batch_size: int, rank: int, world: int) -> Stream:
        if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            size = _length(data)
            indices = list(range(rank, size, world))
            # Its own generator: a DataLoader iterator draws a base seed, which would
            # otherwise move the global RNG.
            loader: DataLoader[Any] = DataLoader(
                data, batch_size=batch_size, sampler=indices, generator=torch.Generator()
            )
            return cls(loader, math.ceil(len(indices) / batch_size), indices, None)
        if isinstance(data, IterableDataset):
            loader = DataLoader(data, batch_size=batch_size, generator=torch.Generator())
            return cls(loader, None)
        if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
            raise TypeError(
                f"data: expected an iterable of batches (e.g. a DataLoader) or a Dataset, "
                f"got {type(data).__name__}"
            )
        total = len(data) if isinstance(data, Sized) else None
        if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
            sampler = data.sampler
            inner = getattr(data.batch_sampler, "sampler", None)
            if isinstance(inner, DistributedSampler):
                sampler = inner
            if isinstance(sampler, DistributedSampler):
                return cls._distributed(data, total, sampler)
            if world > 1 and isinstance(sampler, (SequentialSampler, RandomSampler)):
                raise ValueError(
                    f"data: a DataLoader with a {type(sampler).__name__} gives every one of "
                    f"the {world} ranks every image; pass the Dataset itself (netsight "
                    f"shards it) or use a DistributedSampler"
                )
        return cls(data, total)

    @classmethod
    def _distributed(
        cls, loader: DataLoader[Any], total: int | None, sampler: DistributedSampler[Any]
    ) -> Stream:
        size = _length(loader.dataset)
        positions = [int(i) for i in sampler]
        replicas, rank = sampler.num_replicas, sampler.rank
        if sampler.drop_last and size % replicas:
            warnings.warn(
                f"data: the DistributedSampler has drop_last=True, so "
                f"{size - replicas * len(positions)} of the {size} images are never scored",
                stacklevel=4,
            )
        # DistributedSampler deals the padded index list round-robin: position j of
        # rank r is entry r + j * replicas; entries past the dataset are repeats.
        keep = [rank + j * replicas < size for j in range(len(positions))]
        return cls(loader, total, positions, keep)

    def __iter__(self) -> Iterator[tuple[Any, list[bool] | None, list[int] | None]]:
        start = 0
        for batch in self.batches:
            count = _batch_size(batch)
            keep = indices = None
            if self.positions is not None:
                indices = self.positions[start : start + count]
                if len(indices) != count:
                    raise ValueError(
                        "data: the DataLoader yielded more images than its sampler holds"
                    )
            if self.keep is not None:
                keep = self.keep[start : start + count]
            start += count
            yield batch, keep, indices


def _length(dataset: Any) -> int:
    try:
        return len(dataset)
    except TypeError as exc:
        raise TypeError(
            f"data: the {type(dataset).__name__} has no len(); pass a DataLoader instead"
        ) from exc


def split_batch(batch: Any) -> tuple[Any, Any, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        items = [*batch, None, None]
        return items[0], items[1], items[2]
    raise ValueError(
        f"data: each batch must be images, (images, labels) or (images, labels, "
        f"boxes_or_masks); got {describe_value(batch)}"
    )


def _batch_size(batch: Any) -> int:
    images = split_batch(batch)[0]
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else 0


def describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            f"data: expected images as a (B, C, H, W) tensor, got {describe_value(images)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"data: expected floating-point images, got {images.dtype}")
    return images


def check_labels(labels: Any, batch: int, device: torch.device) -> torch.Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"data: labels must be (B,) class indices, got {describe_value(labels)}"
            ) from exc
    if labels.shape != (batch,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"data: expected labels as a ({batch},) integer tensor, got {describe_value(labels)}"
        )
    checked: torch.Tensor = labels.to(device=device, dtype=torch.long)
    return checked


def region_masks(
    regions: Any, batch: int, size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(B, H, W)`` bool masks and a ``(B,)`` flag of images that have a region."""
    if regions is None:
        return None
    height, width = size
    expected = (
        f"expected ({batch}, 4) boxes (x0, y0, x1, y1), ({batch}, K, 4) boxes, boolean "
        f"({batch}, {height}, {width}) masks or a list of {batch} of those (or None)"
    )
    if isinstance(regions, torch.Tensor):
        if regions.dtype == torch.bool:
            masks = regions[:, 0] if regions.dim() == 4 and regions.shape[1] == 1 else regions
            if tuple(masks.shape) != (batch, height, width):
                raise ValueError(f"data: masks: {expected}; got {describe_value(regions)}")
            masks = masks.to(device)
            return masks, masks.flatten(1).any(1)
        boxes = regions[:, None] if regions.dim() == 2 else regions
        if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
            raise ValueError(f"data: boxes: {expected}; got {describe_value(regions)}")
        per_image: list[Any] = list(boxes)
    elif isinstance(regions, (tuple, list)) and len(regions) == batch:
        per_image = list(regions)
    else:
        raise ValueError(f"data: boxes: {expected}; got {describe_value(regions)}")
    masks = torch.zeros(batch, height, width, dtype=torch.bool)
    for i, region in enumerate(per_image):
        if region is None:
            continue
        if isinstance(region, torch.Tensor) and region.dtype == torch.bool:
            if tuple(region.shape) != (height, width):
                raise ValueError(
                    f"data: the mask of image {i}: {expected}; got {describe_value(region)}"
                )
            masks[i] = region.cpu()
            continue
        boxes = torch.as_tensor(region, dtype=torch.float64).cpu()
        if boxes.dim() == 1:
            boxes = boxes[None]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"data: the boxes of image {i}: {expected}; got {describe_value(boxes)}"
            )
        for box in boxes:
            if bool(box.isnan().all()):
                continue  # padding row
            x0, y0, x1, y1 = box.tolist()
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                raise ValueError(f"data: image {i} has a non-finite box {box.tolist()}")
            cols = range(max(0, math.ceil(x0)), min(width, math.ceil(x1)))
            rows = range(max(0, math.ceil(y0)), min(height, math.ceil(y1)))
            if not cols or not rows:
                raise ValueError(
                    f"data: image {i} has the box (x0, y0, x1, y1) = {tuple(box.tolist())}, "
                    f"which holds no pixel of the {height} x {width} image (boxes need "
                    f"x0 < x1 and y0 < y1, half-open like mask[y0:y1, x0:x1])"
                )
            masks[i, rows.start : rows.stop, cols.start : cols.stop] = True
    masks = masks.to(device)
    return masks, masks.flatten(1).any(1)
