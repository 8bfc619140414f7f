"""How faithful and how well placed class activation maps are, over a dataset.

:func:`evaluate` runs one or several CAM methods over batches of images and scores
each map four ways, next to two maps that know nothing (a seeded random map and a
centred Gaussian):

* **Deletion and insertion AUC** (RISE, Petsiuk et al. 2018). Pixels are taken in
  the order of the map's saliency (most salient first, ties in row-major order) in
  ``steps`` equal steps. Deletion replaces them with a baseline (zeros, or the
  blurred image) and follows the target class's softmax probability as it falls;
  insertion starts from the blurred (or zero) image and puts the original pixels
  back. The area under each curve is a trapezoid over the fraction of pixels, so it
  lies in ``[0, 1]``: a faithful map gives a low deletion and a high insertion AUC.
* **Pointing game** (Zhang et al. 2016): whether the map's maximum (the first one
  in row-major order) falls inside the ground-truth box or mask, up to a pixel
  ``tolerance``.
* **Average drop and increase in confidence** (Chattopadhay et al. 2018, Grad-CAM++):
  the target probability on ``image * map`` (the map min-max scaled to ``[0, 1]``)
  against the probability on the image; average drop is the mean of
  ``max(0, p - p_masked) / p``, increase the share of images with
  ``p_masked > p``.

Every perturbed image is made in chunks of ``chunk_size`` and run under
``torch.inference_mode()``, so memory is bounded by the chunk; the curve ends that
do not depend on the map (the image, the fully deleted image, the blurred start)
are computed once per batch and shared by all methods.

With ``torch.distributed`` initialised every rank scores its own part of the data
and the sums and counts are all-reduced, so every rank returns the totals of one
process on the whole dataset (see :func:`evaluate` for how the data is split).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from netsight._markdown import markdown_escape
from netsight._progress import ProgressBar
from netsight.cam.base import BaseCAM, check_classes
from netsight.hooks import preserve_state

__all__ = ["BASELINES", "CAMEvaluation", "MethodScores", "evaluate"]

#: Maps that know nothing about the image, scored next to the methods.
BASELINES = ("random", "center")

_DELETION_BASELINES = ("zero", "blur")
_TARGET_MODES = ("labels", "predicted")
# Per-image quantities kept for every method, in this order in the all-reduce.
_PER_IMAGE = ("deletion", "insertion", "pointing", "drop", "increase")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class MethodScores:
    """One method's scores over the dataset (means over images).

    Attributes:
        name: the method's name in the evaluation (``"gradcam"``, ``"random"``, ...).
        deletion: mean deletion AUC in ``[0, 1]`` (lower is better).
        insertion: mean insertion AUC in ``[0, 1]`` (higher is better).
        pointing: share of images with a box or mask whose map maximum hits it
            (higher is better); ``None`` when no image had one.
        average_drop: mean relative drop of the target probability on
            ``image * map``, in ``[0, 1]`` (lower is better; the paper's % / 100).
        increase: share of images whose target probability rose on ``image * map``
            (higher is better).
        deletion_curve: ``(steps + 1,)`` mean probability after deleting each
            fraction of the pixels (``fractions`` of :class:`CAMEvaluation`).
        insertion_curve: ``(steps + 1,)`` the same for insertion.
        per_image: ``{"deletion", "insertion", "pointing", "drop", "increase"}`` ->
            ``(images,)`` float64 values; ``pointing`` is 1.0 (hit), 0.0 (miss) or
            NaN (no box), ``increase`` 1.0 or 0.0.
        seconds: time spent computing the maps (summed over ranks).
    """

    name: str
    deletion: float
    insertion: float
    pointing: float | None
    average_drop: float
    increase: float
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    per_image: dict[str, torch.Tensor]
    seconds: float


@dataclass(frozen=True)
class CAMEvaluation:
    """What :func:`evaluate` measured.

    Attributes:
        methods: name -> :class:`MethodScores`, the methods first (in the order
            given), then the baselines.
        images: number of images scored.
        pointing_images: how many of them had a box or mask.
        steps: deletion/insertion steps.
        fractions: ``(steps + 1,)`` fraction of pixels removed (or inserted) at each
            point of the curves.
        indices: ``(images,)`` the dataset index of each image when netsight knew it
            (a ``Dataset``, or a ``DataLoader`` with a ``DistributedSampler``); the
            per-image arrays are then in dataset order. ``None`` otherwise (arrays in
            the order the images came, rank after rank).
        settings: the options that shape the numbers (baselines, tolerance, seed ...).
        world_size: number of processes that shared the work.
    """

    methods: dict[str, MethodScores]
    images: int
    pointing_images: int
    steps: int
    fractions: torch.Tensor
    indices: torch.Tensor | None
    settings: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1

    def table(self, style: str = "text") -> str:
        """The scores as a table: ``style="text"`` (aligned columns) or ``"markdown"``."""
        return render_table(self, style)

    def __str__(self) -> str:
        return self.table("text")


_COLUMNS = (
    ("method", "method"),
    ("pointing", "pointing ↑"),
    ("deletion", "deletion AUC ↓"),
    ("insertion", "insertion AUC ↑"),
    ("average_drop", "avg drop ↓"),
    ("increase", "increase ↑"),
    ("seconds", "map time (s)"),
)


def render_table(evaluation: CAMEvaluation, style: str = "text") -> str:
    """Render a :class:`CAMEvaluation` as text or markdown (one row per method).

    Pointing, average drop and increase are shown as percentages, the AUCs as
    fractions; the baselines' map time is ``-``.
    """
    if style not in ("text", "markdown"):
        raise ValueError(f"style: expected 'text' or 'markdown', got {style!r}")
    rows = []
    for name, scores in evaluation.methods.items():
        pointing = "n/a" if scores.pointing is None else f"{100 * scores.pointing:.1f}%"
        rows.append(
            [
                name,
                pointing,
                f"{scores.deletion:.3f}",
                f"{scores.insertion:.3f}",
                f"{100 * scores.average_drop:.1f}%",
                f"{100 * scores.increase:.1f}%",
                "-" if name in BASELINES else f"{scores.seconds:.2f}",
            ]
        )
    header = [title for _, title in _COLUMNS]
    footer = (
        f"{evaluation.images} images ({evaluation.pointing_images} with boxes), "
        f"{evaluation.steps} steps"
    )
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 6) + "|"]
        lines += ["| " + " | ".join(markdown_escape(cell) for cell in row) + " |" for row in rows]
        return "\n".join([*lines, "", footer]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    text = [line(header), "  ".join("-" * w for w in widths)]
    text += [line(row) for row in rows]
    return "\n".join([*text, footer]) + "\n"


# --------------------------------------------------------------------------- evaluate
def evaluate(
    cams: BaseCAM | Mapping[str, BaseCAM],
    data: Iterable[Any] | Dataset[Any],
    *,
    steps: int = 20,
    targets: str = "labels",
    deletion_baseline: str = "zero",
    insertion_baseline: str = "blur",
    blur_sigma: float | None = None,
    tolerance: float = 0.0,
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
    batch_size: int = 32,
    chunk_size: int = 128,
    progress: bool = True,
) -> CAMEvaluation:
    """Score CAM methods over a dataset: deletion/insertion AUC, pointing game,
    average drop and increase in confidence, next to random and centre baselines.

    Args:
        cams: a CAM (named by its registry name) or ``{name: cam}``; all must wrap
            the same model with the same ``mode``. The model must return
            ``(B, classes)`` logits; it is left exactly as it came.
        data: an iterable of batches (a ``DataLoader``, a list ...) or a map-style
            ``Dataset`` of samples (batched here with ``batch_size``). A batch is
            ``images``, ``(images, labels)`` or ``(images, labels, regions)``, where
            ``labels`` is ``(B,)`` class indices or ``None`` and ``regions`` is
            ``(B, 4)`` boxes ``(x0, y0, x1, y1)``, ``(B, K, 4)`` boxes (rows of NaN
            are padding), boolean ``(B, H, W)`` masks, or a list of one of those (or
            ``None``) per image. A box holds the pixels ``x0 <= col < x1`` and
            ``y0 <= row < y1`` (like ``mask[y0:y1, x0:x1]``).
        steps: deletion/insertion steps (the curves have ``steps + 1`` points).
        targets: ``"labels"``: explain and score each image's label, or its top-1
            class when the batch has no labels; ``"predicted"``: always the top-1
            class of the unchanged image.
        deletion_baseline: what deleted pixels become: ``"zero"`` (zeros in the
            model's input space, as RISE) or ``"blur"`` (the blurred image).
        insertion_baseline: the image insertion starts from: ``"blur"`` or ``"zero"``.
        blur_sigma: Gaussian blur sigma in pixels; default ``max(1, side / 45)``
            (5 px at 224 px), ``side`` the longer image side.
        tolerance: pointing-game slack in pixels: a hit when the maximum is at most
            this far (Euclidean) from a pixel of the region. Default 0: the maximum
            itself must be inside. Zhang et al. use 15 px at 224 px, i.e.
            ``tolerance=15 * side / 224``.
        baselines: which of ``"random"`` (i.i.d. uniform pixels, seeded by ``seed``
            and a hash of the image's bytes, so the same image gets the same map
            whatever the batching, order or sharding) and ``"center"`` (a Gaussian
            at the image centre with sigma a quarter of each side) to score too.
        seed: seed of the random baseline.
        batch_size: images per batch when ``data`` is a ``Dataset``.
        chunk_size: perturbed images per forward (bounds memory).
        progress: show a progress bar (rank 0 only).

    Returns:
        A :class:`CAMEvaluation`; ``str()`` or ``.table("markdown")`` renders it.

    Distributed: when ``torch.distributed`` is initialised, every rank must call
    ``evaluate`` with the same arguments; the sums and counts are all-reduced and
    the per-image values gathered, so every rank returns the same result, equal to
    one process's on the whole dataset. How the data is split:

    * a ``Dataset``: netsight shards it itself (rank ``r`` takes indices ``r, r +
      world, ...``), so every image is scored exactly once;
    * a ``DataLoader`` with a ``DistributedSampler``: the sampler pads the last
      round by repeating indices when the dataset size does not divide by the
      world size; those padded repeats are recognised from the sampler's layout and
      skipped, so totals are exact (with ``drop_last=True`` the sampler leaves
      images out, which is warned about);
    * a ``DataLoader`` with a plain sequential or random sampler is refused (every
      rank would score every image);
    * any other iterable (or sampler) is taken to be this rank's own shard, without
      overlap; the per-image arrays then come rank after rank.

    An error on one rank leaves the others waiting in the final all-reduce, as with
    any collective.

    Raises:
        ValueError: bad options, an empty dataset, malformed batches (labels,
            boxes or masks of the wrong shape, an empty box), or cams on different
            models.
        TypeError: the model does not return a ``(B, classes)`` logits tensor.

    Example:
        >>> model = ...  # a classifier
        >>> result = netsight.cam.evaluate(
        ...     {"gradcam": GradCAM(model), "layercam": LayerCAM(model)}, loader
        ... )
        >>> print(result.table("markdown"))
        >>> result.methods["gradcam"].pointing
    """
    named = _named_cams(cams)
    model, mode = _shared_model(named)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if targets not in _TARGET_MODES:
        raise ValueError(f"targets: expected 'labels' or 'predicted', got {targets!r}")
    for what, value in (
        ("deletion_baseline", deletion_baseline),
        ("insertion_baseline", insertion_baseline),
    ):
        if value not in _DELETION_BASELINES:
            raise ValueError(f"{what}: expected 'zero' or 'blur', got {value!r}")
    if blur_sigma is not None and not blur_sigma > 0:
        raise ValueError(f"blur_sigma: expected a positive number, got {blur_sigma!r}")
    if not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown or isinstance(baselines, str):
        raise ValueError(f"baselines: expected a subset of {list(BASELINES)}, got {baselines!r}")
    clash = [name for name in named if name in baselines]
    if clash:
        raise ValueError(f"cams: the name(s) {clash} are taken by the baselines; rename them")
    for what, count in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if count < 1:
            raise ValueError(f"{what}: expected >= 1, got {count}")

    rank, world = _world()
    stream = _Stream.make(data, batch_size, rank, world)
    names = [*named, *baselines]
    scorer = _Scorer(
        model=model,
        mode=mode,
        steps=steps,
        chunk_size=chunk_size,
        deletion_baseline=deletion_baseline,
        insertion_baseline=insertion_baseline,
        blur_sigma=blur_sigma,
        tolerance=float(tolerance),
        seed=seed,
    )
    totals = _Totals(names, steps)
    bar = ProgressBar(progress and rank == 0, stream.total, "CAM evaluation")
    try:
        for batch, keep, indices in stream:
            scorer.run(batch, keep, indices, named, baselines, targets, totals)
            bar.advance()
    finally:
        bar.close()
    return totals.finish(
        scorer.fractions(),
        world,
        settings={
            "targets": targets,
            "deletion_baseline": deletion_baseline,
            "insertion_baseline": insertion_baseline,
            "blur_sigma": blur_sigma,
            "tolerance": float(tolerance),
            "seed": seed,
            "mode": mode,
        },
    )


def _named_cams(cams: BaseCAM | Mapping[str, BaseCAM]) -> dict[str, BaseCAM]:
    if isinstance(cams, BaseCAM):
        return {cams.method: cams}
    if not isinstance(cams, Mapping):
        raise TypeError(
            f"cams: expected a BaseCAM or a dict of name -> BaseCAM, got {type(cams).__name__}"
        )
    if not cams:
        raise ValueError("cams: the dict is empty; pass at least one CAM")
    for name, cam in cams.items():
        if not isinstance(name, str) or not isinstance(cam, BaseCAM):
            raise TypeError(
                f"cams: expected str -> BaseCAM, got {type(name).__name__} -> {type(cam).__name__}"
            )
    return dict(cams)


def _shared_model(cams: dict[str, BaseCAM]) -> tuple[nn.Module, str]:
    first = next(iter(cams.values()))
    for name, cam in cams.items():
        if cam.model is not first.model or cam.mode != first.mode:
            raise ValueError(
                f"cams: {name!r} wraps another model or mode ({type(cam.model).__name__}, "
                f"mode={cam.mode!r}) than the first ({type(first.model).__name__}, "
                f"mode={first.mode!r}); evaluate compares methods on one model"
            )
    return first.model, first.mode


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- data
@dataclass
class _Stream:
    """The batches this rank scores, with which images to keep (padding dropped)
    and their dataset indices when known."""

    batches: Iterable[Any]
    total: int | None
    positions: list[int] | None = None  # this rank's dataset indices, in order
    keep: list[bool] | None = None  # per position: not a padded repeat

    @classmethod
    def make(cls, data: Any, batch_size: int, rank: int, world: int) -> _Stream:
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
    ) -> _Stream:
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


def _split_batch(batch: Any) -> tuple[Any, Any, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        items = [*batch, None, None]
        return items[0], items[1], items[2]
    raise ValueError(
        f"data: each batch must be images, (images, labels) or (images, labels, "
        f"boxes_or_masks); got {_kind(batch)}"
    )


def _batch_size(batch: Any) -> int:
    images = _split_batch(batch)[0]
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else 0


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"data: expected images as a (B, C, H, W) tensor, got {_kind(images)}")
    if not images.is_floating_point():
        raise ValueError(f"data: expected floating-point images, got {images.dtype}")
    return images


def _check_labels(labels: Any, batch: int, device: torch.device) -> torch.Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"data: labels must be (B,) class indices, got {_kind(labels)}"
            ) from exc
    if labels.shape != (batch,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"data: expected labels as a ({batch},) integer tensor, got {_kind(labels)}"
        )
    checked: torch.Tensor = labels.to(device=device, dtype=torch.long)
    return checked


def _region_masks(
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
                raise ValueError(f"data: masks: {expected}; got {_kind(regions)}")
            masks = masks.to(device)
            return masks, masks.flatten(1).any(1)
        boxes = regions[:, None] if regions.dim() == 2 else regions
        if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
            raise ValueError(f"data: boxes: {expected}; got {_kind(regions)}")
        per_image: list[Any] = list(boxes)
    elif isinstance(regions, (tuple, list)) and len(regions) == batch:
        per_image = list(regions)
    else:
        raise ValueError(f"data: boxes: {expected}; got {_kind(regions)}")
    masks = torch.zeros(batch, height, width, dtype=torch.bool)
    for i, region in enumerate(per_image):
        if region is None:
            continue
        if isinstance(region, torch.Tensor) and region.dtype == torch.bool:
            if tuple(region.shape) != (height, width):
                raise ValueError(f"data: the mask of image {i}: {expected}; got {_kind(region)}")
            masks[i] = region.cpu()
            continue
        boxes = torch.as_tensor(region, dtype=torch.float64).cpu()
        if boxes.dim() == 1:
            boxes = boxes[None]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"data: the boxes of image {i}: {expected}; got {_kind(boxes)}")
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


# --------------------------------------------------------------------------- scoring
@dataclass
class _BatchContext:
    """What every method's scoring of one batch shares: the images, targets, the
    target probability on the image, the curves' map-independent ends and the
    regions (``(B, H, W)`` masks and which images have one)."""

    x: torch.Tensor
    classes: torch.Tensor
    p0: torch.Tensor
    deleted: torch.Tensor
    p_deleted: torch.Tensor
    start: torch.Tensor
    p_start: torch.Tensor
    region: tuple[torch.Tensor, torch.Tensor] | None


class _Scorer:
    def __init__(
        self,
        *,
        model: nn.Module,
        mode: str,
        steps: int,
        chunk_size: int,
        deletion_baseline: str,
        insertion_baseline: str,
        blur_sigma: float | None,
        tolerance: float,
        seed: int,
    ) -> None:
        self.model = model
        self.mode = mode
        self.steps = steps
        self.chunk_size = chunk_size
        self.deletion_baseline = deletion_baseline
        self.insertion_baseline = insertion_baseline
        self.blur_sigma = blur_sigma
        self.tolerance = tolerance
        self.seed = seed
        self.pixels = 0
        # Lazy modules first run inside inference_mode would keep inference tensors.
        self.lazy = any(
            isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()
        )

    def counts(self) -> list[int]:
        """Pixels removed (or inserted) at each of the ``steps + 1`` points."""
        n, s = self.pixels, self.steps
        return [(k * n + s // 2) // s for k in range(s + 1)]

    def fractions(self) -> torch.Tensor:
        if self.pixels == 0:
            return torch.linspace(0, 1, self.steps + 1, dtype=torch.float64)
        return torch.tensor(self.counts(), dtype=torch.float64) / self.pixels

    def _no_grad(self) -> AbstractContextManager[Any]:
        return torch.no_grad() if self.lazy else torch.inference_mode()

    def probs(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Target probability of each image; ``x`` is run in chunks."""
        out = []
        with preserve_state(self.model, self.mode), self._no_grad():
            for start in range(0, x.shape[0], self.chunk_size):
                out.append(self._target_probs(x[start : start + self.chunk_size], classes[start:]))
        return torch.cat(out).double()

    def _target_probs(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError(
                f"evaluate needs a model that returns (batch, classes) logits; "
                f"{type(self.model).__name__} returned {_kind(logits)}"
            )
        probs = torch.softmax(logits.float(), dim=1)
        return probs.gather(1, classes[: x.shape[0], None].to(probs.device))[:, 0]

    def run(
        self,
        batch: Any,
        keep: list[bool] | None,
        indices: list[int] | None,
        cams: dict[str, BaseCAM],
        baselines: Sequence[str],
        targets: str,
        totals: _Totals,
    ) -> None:
        images, labels, regions = _split_batch(batch)
        if isinstance(images, torch.Tensor) and images.shape[0] == 0:
            return
        x = _check_images(images)
        device = _device(self.model, x)
        if keep is not None and not all(keep):
            rows = torch.tensor(keep)
            x = x[rows]
            labels = labels[rows] if isinstance(labels, torch.Tensor) else labels
            if isinstance(regions, torch.Tensor):
                regions = regions[rows]
            elif isinstance(regions, (tuple, list)):
                regions = [r for r, k in zip(regions, keep, strict=True) if k]
            if isinstance(labels, (tuple, list)):
                labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
            if indices is not None:
                indices = [i for i, k in zip(indices, keep, strict=True) if k]
            if x.shape[0] == 0:
                return
        x = x.to(device)
        size = (x.shape[-2], x.shape[-1])
        self.pixels = size[0] * size[1]
        batch_len = x.shape[0]
        label_tensor = _check_labels(labels, batch_len, device)
        region = _region_masks(regions, batch_len, size, device)

        with preserve_state(self.model, self.mode), self._no_grad():
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError(
                f"evaluate needs a model that returns (batch, classes) logits; "
                f"{type(self.model).__name__} returned {_kind(logits)}"
            )
        if label_tensor is not None and targets == "labels":
            classes = label_tensor
            check_classes(classes.tolist(), logits.shape[1], name="data", noun="label")
        else:
            classes = logits.argmax(1)
        p0 = torch.softmax(logits.float(), 1).gather(1, classes[:, None])[:, 0].double()

        sigma = self.blur_sigma or max(1.0, max(size) / 45)
        blurred = (
            _blur(x, sigma) if "blur" in (self.deletion_baseline, self.insertion_baseline) else x
        )
        deleted = torch.zeros_like(x) if self.deletion_baseline == "zero" else blurred
        start = torch.zeros_like(x) if self.insertion_baseline == "zero" else blurred
        p_deleted = self.probs(deleted, classes)
        p_start = self.probs(start, classes)

        shared = _BatchContext(x, classes, p0, deleted, p_deleted, start, p_start, region)
        for name, cam in cams.items():
            began = time.perf_counter()
            maps = cam.explain(x, classes).maps.detach()
            self._score(name, maps, shared, totals, time.perf_counter() - began)
        for name in baselines:
            if name == "random":
                maps = _random_maps(x, self.seed).to(device)
            else:
                maps = _center_maps(batch_len, size).to(device)
            self._score(name, maps, shared, totals, 0.0)
        totals.add_images(batch_len, 0 if region is None else int(region[1].sum()), indices)

    def _score(
        self, name: str, maps: torch.Tensor, batch: _BatchContext, totals: _Totals, seconds: float
    ) -> None:
        x, classes, p0, region = batch.x, batch.classes, batch.p0, batch.region
        size = (x.shape[-2], x.shape[-1])
        maps = maps.float()
        if maps.dim() != 3 or maps.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected (B, H, W) maps, got shape {list(maps.shape)}")
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
            maps = maps[:, 0]
        maps = torch.nan_to_num(maps, nan=0.0)
        ranks = _ranks(maps)
        del_curve = self._curve(ranks, x, batch.deleted, classes, p0, batch.p_deleted)
        ins_curve = self._curve(ranks, batch.start, x, classes, batch.p_start, p0)
        fractions = self.fractions()
        del_auc = _trapezoid(del_curve, fractions)
        ins_auc = _trapezoid(ins_curve, fractions)

        scaled = _minmax(maps)
        p_masked = self.probs(x * scaled[:, None], classes)
        drop = torch.where(p0 > 0, (p0 - p_masked).clamp(min=0) / p0, torch.zeros_like(p0))
        increase = (p_masked > p0).double()

        pointing = torch.full_like(p0, math.nan)
        if region is not None:
            masks, present = region
            hits = _pointing(maps, masks, self.tolerance).double()
            pointing = torch.where(present, hits, pointing)
        totals.add(
            name,
            {
                "deletion": del_auc,
                "insertion": ins_auc,
                "pointing": pointing,
                "drop": drop,
                "increase": increase,
            },
            del_curve,
            ins_curve,
            seconds,
        )

    def _curve(
        self,
        ranks: torch.Tensor,
        first: torch.Tensor,
        last: torch.Tensor,
        classes: torch.Tensor,
        p_first: torch.Tensor,
        p_last: torch.Tensor,
    ) -> torch.Tensor:
        """``(B, steps + 1)`` target probabilities along the path from ``first`` to
        ``last``, taking pixels (all channels) in rank order; only the inner points
        need forwards."""
        batch = first.shape[0]
        counts = torch.tensor(self.counts(), device=ranks.device)
        curve = torch.empty(batch, self.steps + 1, dtype=torch.float64, device=p_first.device)
        curve[:, 0] = p_first
        curve[:, -1] = p_last
        inner = self.steps - 1
        if inner == 0:
            return curve
        pairs_image = torch.arange(batch, device=ranks.device).repeat_interleave(inner)
        pairs_step = torch.arange(1, self.steps, device=ranks.device).repeat(batch)
        shape = (1, *first.shape[-2:])
        with preserve_state(self.model, self.mode), self._no_grad():
            for lo in range(0, batch * inner, self.chunk_size):
                image = pairs_image[lo : lo + self.chunk_size]
                step = pairs_step[lo : lo + self.chunk_size]
                taken = (ranks[image] < counts[step][:, None]).view(-1, *shape)
                perturbed = torch.where(taken, last[image], first[image])
                probs = self._target_probs(perturbed, classes[image])
                curve[image.to(curve.device), step.to(curve.device)] = probs.double()
        return curve


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return x.device


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H * W)`` rank of every pixel, 0 the most salient; ties in row-major order."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def _trapezoid(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    widths = fractions.diff().to(curve.device)
    return ((curve[:, 1:] + curve[:, :-1]) / 2 * widths).sum(1)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    scaled = (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def _pointing(maps: torch.Tensor, masks: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(B,)`` whether each map's first maximum is within ``tolerance`` px of its mask."""
    width = maps.shape[-1]
    flat = maps.flatten(1).argmax(1)
    rows, cols = flat // width, flat % width
    if tolerance == 0:
        return masks[torch.arange(maps.shape[0], device=masks.device), rows, cols]
    yy = torch.arange(maps.shape[-2], device=masks.device)[None, :, None]
    xx = torch.arange(width, device=masks.device)[None, None, :]
    distance2 = (yy - rows[:, None, None]) ** 2 + (xx - cols[:, None, None]) ** 2
    return (masks & (distance2 <= tolerance**2)).flatten(1).any(1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (edges replicated), radius ``ceil(2 sigma)``."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    with torch.no_grad():
        out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        out = F.pad(out, (0, 0, radius, radius), mode="replicate")
        out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out


def _image_seed(image: torch.Tensor, seed: int) -> int:
    data = image.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _random_maps(x: torch.Tensor, seed: int) -> torch.Tensor:
    """I.i.d. uniform maps, one generator per image seeded by ``seed`` and its bytes."""
    height, width = x.shape[-2], x.shape[-1]
    maps = []
    for image in x:
        generator = torch.Generator().manual_seed(_image_seed(image, seed))
        maps.append(torch.rand(height, width, generator=generator))
    return torch.stack(maps)


def _center_maps(batch: int, size: tuple[int, int]) -> torch.Tensor:
    """A Gaussian at the image centre, sigma a quarter of each side."""
    height, width = size
    yy = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) / (height / 4)
    xx = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) / (width / 4)
    bump = torch.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / 2)
    return bump.expand(batch, height, width)


# --------------------------------------------------------------------------- totals
class _Totals:
    """Per-image values as they come, summed and gathered across ranks at the end."""

    def __init__(self, names: list[str], steps: int) -> None:
        self.names = names
        self.steps = steps
        self.values: dict[str, dict[str, list[torch.Tensor]]] = {
            name: {key: [] for key in _PER_IMAGE} for name in names
        }
        self.curves = {
            name: [torch.zeros(steps + 1, dtype=torch.float64) for _ in range(2)] for name in names
        }
        self.seconds = dict.fromkeys(names, 0.0)
        self.images = 0
        self.pointing_images = 0
        self.indices: list[int] | None = []

    def add(
        self,
        name: str,
        values: dict[str, torch.Tensor],
        deletion: torch.Tensor,
        insertion: torch.Tensor,
        seconds: float,
    ) -> None:
        for key, value in values.items():
            self.values[name][key].append(value.detach().double().cpu())
        self.curves[name][0] += deletion.sum(0).cpu()
        self.curves[name][1] += insertion.sum(0).cpu()
        self.seconds[name] += seconds

    def add_images(self, count: int, pointing: int, indices: list[int] | None) -> None:
        self.images += count
        self.pointing_images += pointing
        if indices is None:
            self.indices = None
        elif self.indices is not None:
            self.indices.extend(indices)

    def _local(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            name: {
                key: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
                for key, parts in per.items()
            }
            for name, per in self.values.items()
        }

    def finish(
        self, fractions: torch.Tensor, world: int, settings: dict[str, Any]
    ) -> CAMEvaluation:
        local = self._local()
        # One flat float64 vector of sums and counts (exact for counts below 2**53).
        parts: list[torch.Tensor] = [
            torch.tensor([self.images, self.pointing_images], dtype=torch.float64)
        ]
        for name in self.names:
            values = local[name]
            pointing = values["pointing"]
            parts.append(
                torch.stack(
                    [
                        values["deletion"].sum(),
                        values["insertion"].sum(),
                        pointing.nan_to_num(0.0).sum(),
                        values["drop"].sum(),
                        values["increase"].sum(),
                        torch.tensor(self.seconds[name], dtype=torch.float64),
                    ]
                )
            )
            parts.extend(self.curves[name])
        sums = torch.cat(parts)
        per_image, indices = local, self.indices
        if world > 1:
            sums = _all_reduce(sums)
            per_image, indices = _gather(local, self.indices)
        images, pointing_images = int(sums[0]), int(sums[1])
        if images == 0:
            raise ValueError("data: no images to evaluate (the dataset is empty)")
        index_tensor = None
        if indices is not None:
            index_tensor = torch.tensor(indices, dtype=torch.long)
            order = torch.argsort(index_tensor, stable=True)
            index_tensor = index_tensor[order]
            per_image = {
                name: {key: value[order] for key, value in per.items()}
                for name, per in per_image.items()
            }
        methods = {}
        offset = 2
        width = 6 + 2 * (self.steps + 1)
        for name in self.names:
            block = sums[offset : offset + width]
            offset += width
            curves = block[6:].view(2, self.steps + 1) / images
            methods[name] = MethodScores(
                name=name,
                deletion=float(block[0] / images),
                insertion=float(block[1] / images),
                pointing=float(block[2] / pointing_images) if pointing_images else None,
                average_drop=float(block[3] / images),
                increase=float(block[4] / images),
                deletion_curve=curves[0].clone(),
                insertion_curve=curves[1].clone(),
                per_image=per_image[name],
                seconds=float(block[5]),
            )
        return CAMEvaluation(
            methods=methods,
            images=images,
            pointing_images=pointing_images,
            steps=self.steps,
            fractions=fractions,
            indices=index_tensor,
            settings=settings,
            world_size=world,
        )


def _all_reduce(sums: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    reduced = sums.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.cpu()


def _gather(
    local: dict[str, dict[str, torch.Tensor]], indices: list[int] | None
) -> tuple[dict[str, dict[str, torch.Tensor]], list[int] | None]:
    """Every rank's per-image values (rank after rank) and dataset indices (``None``
    unless every rank knows its own)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, indices))
    merged = {
        name: {key: torch.cat([g[0][name][key] for g in gathered]) for key in per}
        for name, per in local.items()
    }
    if any(g[1] is None for g in gathered):
        return merged, None
    return merged, [i for g in gathered for i in g[1]]
