"""The entry point, :func:`evaluate`: its argument checks and the loop that streams
the batches through the scorer into the totals."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from netsight._progress import ProgressBar
from netsight.cam.base import BaseCAM
from netsight.cam.metrics.data import Stream, rank_and_world
from netsight.cam.metrics.reduction import Totals
from netsight.cam.metrics.results import CAMEvaluation
from netsight.cam.metrics.road import ROAD_PERCENTAGES
from netsight.cam.metrics.scoring import Scorer
from netsight.options import Baseline, RemovalBaseline, TargetMode

__all__ = ["BASELINES", "evaluate"]

#: Maps that know nothing about the image, scored next to the methods
#: (:class:`~netsight.options.Baseline`'s values).
BASELINES = Baseline.values()


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
    road: bool = False,
    road_percentages: Sequence[float] = ROAD_PERCENTAGES,
    road_noise: float = 0.01,
) -> CAMEvaluation:
    """Score CAM methods over a dataset: deletion/insertion AUC, pointing game,
    average drop and increase in confidence and, with ``road=True``, ROAD, next to
    random and centre baselines.

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
        road: also measure ROAD (RemOve And Debias, Rong et al. 2022): for each
            percentage ``q`` of ``road_percentages``, the ``q`` % most salient
            pixels (MoRF), and separately the ``q`` % least salient (LeRF), are
            replaced by the noisy linear imputation (:mod:`netsight.cam.metrics.road`:
            each removed pixel the weighted mean of its 8 neighbours, plus Gaussian
            noise of standard deviation ``road_noise``) and the target's softmax
            probability is read; ``road_morf`` (lower is better) and ``road_lerf``
            (higher is better) are its means over the percentages and the images.
            It costs ``2 x len(road_percentages)`` forwards and imputations per
            image and method. Pixels are taken in the deletion curve's order (ties
            in row-major order); ``q`` % of ``n`` pixels is ``q n / 100`` rounded
            (halves up), at most ``n - 1``.
            pytorch-grad-cam's ``percentile`` is the share *kept*: it keeps the
            pixels strictly below ``np.percentile(map, p)``, so
            ``ROADMostRelevantFirst(percentile=80)`` removes the 20 % most relevant
            and ``ROADLeastRelevantFirst(percentile=20)`` the 80 % least relevant
            (and a map with ties at the threshold loses them all); its scores are,
            by default, the change from the unperturbed image. netsight follows the
            paper: ``q`` is the share removed, ties are ordered, and the score is
            the probability itself. The default percentages are symmetric, so both
            average over the same shares.
        road_percentages: the shares of pixels ROAD removes, each strictly between
            0 and 100 (default the paper's 10, 20, ..., 90).
        road_noise: standard deviation of ROAD's imputation noise, in the model's
            input space (the paper's 0.01); the noise of each (image, order,
            percentage) is seeded by ``seed`` and the image's bytes, like the random
            baseline, and is the same for every method.

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
    target_mode = TargetMode.parse(targets, "targets")
    deletion = RemovalBaseline.parse(deletion_baseline, "deletion_baseline")
    insertion = RemovalBaseline.parse(insertion_baseline, "insertion_baseline")
    if blur_sigma is not None and not blur_sigma > 0:
        raise ValueError(f"blur_sigma: expected a positive number, got {blur_sigma!r}")
    if not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    if isinstance(baselines, str):
        raise ValueError(f"baselines: expected a subset of {list(BASELINES)}, got {baselines!r}")
    chosen = [Baseline.parse(b, "baselines") for b in baselines]
    clash = [name for name in named if name in chosen]
    if clash:
        raise ValueError(f"cams: the name(s) {clash} are taken by the baselines; rename them")
    for what, count in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if count < 1:
            raise ValueError(f"{what}: expected >= 1, got {count}")
    percentages = _road_percentages(road_percentages) if road else ()
    if isinstance(road_noise, bool) or not (
        isinstance(road_noise, numbers.Real) and 0 <= road_noise < math.inf
    ):
        raise ValueError(f"road_noise: expected a finite number >= 0, got {road_noise!r}")

    rank, world = rank_and_world()
    stream = Stream.make(data, batch_size, rank, world)
    names = [*named, *(b.value for b in chosen)]
    scorer = Scorer(
        model=model,
        mode=mode,
        steps=steps,
        chunk_size=chunk_size,
        deletion_baseline=deletion,
        insertion_baseline=insertion,
        blur_sigma=blur_sigma,
        tolerance=float(tolerance),
        seed=seed,
        road_percentages=percentages,
        road_noise=float(road_noise),
    )
    totals = Totals(names, steps, len(percentages))
    bar = ProgressBar(progress and rank == 0, stream.total, "CAM evaluation")
    try:
        for batch, keep, indices in stream:
            scorer.run(batch, keep, indices, named, chosen, target_mode, totals)
            bar.advance()
    finally:
        bar.close()
    return totals.finish(
        scorer.fractions(),
        world,
        settings={
            "targets": target_mode.value,
            "deletion_baseline": deletion.value,
            "insertion_baseline": insertion.value,
            "blur_sigma": blur_sigma,
            "tolerance": float(tolerance),
            "seed": seed,
            "mode": mode,
            **({"road_noise": float(road_noise)} if road else {}),
        },
        road_percentages=percentages,
    )


def _road_percentages(values: Sequence[float]) -> tuple[float, ...]:
    expected = "road_percentages: expected a non-empty list of numbers strictly between 0 and 100"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{expected}, got {values!r}")
    listed = list(values)
    if not listed:
        raise ValueError(f"{expected}, got {values!r}")
    for value in listed:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 100:
            raise ValueError(f"{expected}, got {value!r} in {listed!r}")
    return tuple(float(v) for v in listed)


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
