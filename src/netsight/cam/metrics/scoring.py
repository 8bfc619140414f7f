"""Scoring one batch: the target probabilities, the deletion and insertion curves
and their AUCs, the pointing game, average drop and increase and, when asked for,
ROAD, for every method and for the baseline maps (random, centred Gaussian), into
the totals."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netsight.cam.base import BaseCAM, check_classes
from netsight.cam.metrics.data import (
    check_images,
    check_labels,
    describe_value,
    region_masks,
    split_batch,
)
from netsight.cam.metrics.reduction import Totals
from netsight.cam.metrics.road import impute
from netsight.hooks import model_device, preserve_state
from netsight.images import minmax_scale
from netsight.options import Baseline, RemovalBaseline, TargetMode


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
    road_seeds: list[int]


class Scorer:
    def __init__(
        self,
        *,
        model: nn.Module,
        mode: str,
        steps: int,
        chunk_size: int,
        deletion_baseline: RemovalBaseline,
        insertion_baseline: RemovalBaseline,
        blur_sigma: float | None,
        tolerance: float,
        seed: int,
        road_percentages: tuple[float, ...] = (),
        road_noise: float = 0.0,
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
        self.road_percentages = road_percentages
        self.road_noise = road_noise
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
                f"{type(self.model).__name__} returned {describe_value(logits)}"
            )
        probs = torch.softmax(logits.float(), dim=1)
        return probs.gather(1, classes[: x.shape[0], None].to(probs.device))[:, 0]

    def run(
        self,
        batch: Any,
        keep: list[bool] | None,
        indices: list[int] | None,
        cams: dict[str, BaseCAM],
        baselines: Sequence[Baseline],
        targets: TargetMode,
        totals: Totals,
    ) -> None:
        images, labels, regions = split_batch(batch)
        if isinstance(images, torch.Tensor) and images.shape[0] == 0:
            return
        x = check_images(images)
        device = model_device(self.model, default=x.device)
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
        label_tensor = check_labels(labels, batch_len, device)
        region = region_masks(regions, batch_len, size, device)

        with preserve_state(self.model, self.mode), self._no_grad():
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError(
                f"evaluate needs a model that returns (batch, classes) logits; "
                f"{type(self.model).__name__} returned {describe_value(logits)}"
            )
        if label_tensor is not None and targets == TargetMode.LABELS:
            classes = label_tensor
            check_classes(classes.tolist(), logits.shape[1], name="data", noun="label")
        else:
            classes = logits.argmax(1)
        p0 = torch.softmax(logits.float(), 1).gather(1, classes[:, None])[:, 0].double()

        sigma = self.blur_sigma or max(1.0, max(size) / 45)
        removals = (self.deletion_baseline, self.insertion_baseline)
        blurred = _blur(x, sigma) if RemovalBaseline.BLUR in removals else x
        deleted = torch.zeros_like(x) if self.deletion_baseline == RemovalBaseline.ZERO else blurred
        start = torch.zeros_like(x) if self.insertion_baseline == RemovalBaseline.ZERO else blurred
        p_deleted = self.probs(deleted, classes)
        p_start = self.probs(start, classes)

        road_seeds = (
            [_image_seed(image, seed=self.seed, salt="road") for image in x]
            if self.road_percentages
            else []
        )
        shared = _BatchContext(
            x, classes, p0, deleted, p_deleted, start, p_start, region, road_seeds
        )
        for name, cam in cams.items():
            began = time.perf_counter()
            maps = cam.explain(x, classes).maps.detach()
            self._score(name, maps, shared, totals, time.perf_counter() - began)
        for name in baselines:
            if name == Baseline.RANDOM:
                maps = _random_maps(x, self.seed).to(device)
            else:
                maps = _center_maps(batch_len, size).to(device)
            self._score(name, maps, shared, totals, 0.0)
        totals.add_images(batch_len, 0 if region is None else int(region[1].sum()), indices)

    def _score(
        self, name: str, maps: torch.Tensor, batch: _BatchContext, totals: Totals, seconds: float
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

        scaled, _ = minmax_scale(maps)
        p_masked = self.probs(x * scaled[:, None], classes)
        drop = torch.where(p0 > 0, (p0 - p_masked).clamp(min=0) / p0, torch.zeros_like(p0))
        increase = (p_masked > p0).double()

        pointing = torch.full_like(p0, math.nan)
        if region is not None:
            masks, present = region
            hits = _pointing(maps, masks, self.tolerance).double()
            pointing = torch.where(present, hits, pointing)
        values = {
            "deletion": del_auc,
            "insertion": ins_auc,
            "pointing": pointing,
            "drop": drop,
            "increase": increase,
        }
        road = None
        if self.road_percentages:
            road = self._road(ranks, batch)
            values["road_morf"] = road[:, 0].mean(1)
            values["road_lerf"] = road[:, 1].mean(1)
        totals.add(name, values, del_curve, ins_curve, seconds, road)

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

    def road_counts(self) -> list[int]:
        """Pixels removed at each ROAD percentage: the nearest whole number (halves
        up), at most all but one (the imputation needs a kept pixel)."""
        n = self.pixels
        return [min(n - 1, math.floor(q * n / 100 + 0.5)) for q in self.road_percentages]

    def _road(self, ranks: torch.Tensor, batch: _BatchContext) -> torch.Tensor:
        """``(B, 2, P)`` target probabilities after ROAD's noisy linear imputation of
        the most (``[:, 0]``) and least (``[:, 1]``) salient pixels, at each of the
        ``P`` percentages. Pairs (image, order, percentage) are imputed and run
        ``chunk_size`` at a time; each pair's noise comes from its own generator
        (seeded by ``seed``, the image's bytes and the pair), so the numbers do not
        depend on the batching, the chunking or the sharding, and all methods see
        the same noise on the same image."""
        x, classes = batch.x, batch.classes
        images, points = x.shape[0], len(self.road_percentages)
        pixels = ranks.shape[1]
        counts = torch.tensor(self.road_counts(), device=ranks.device)
        out = torch.empty(images, 2, points, dtype=torch.float64, device=batch.p0.device)
        pairs = [(i, order, j) for i in range(images) for order in (0, 1) for j in range(points)]
        with preserve_state(self.model, self.mode), self._no_grad():
            for lo in range(0, len(pairs), self.chunk_size):
                chunk = pairs[lo : lo + self.chunk_size]
                image = torch.tensor([i for i, _, _ in chunk], device=ranks.device)
                order = torch.tensor([o for _, o, _ in chunk], device=ranks.device)
                count = counts[torch.tensor([j for _, _, j in chunk], device=ranks.device)]
                rank = ranks[image]
                # most salient first: ranks 0 .. count-1; least: the last `count` ranks
                removed = torch.where(
                    order[:, None] == 0, rank < count[:, None], rank >= pixels - count[:, None]
                ).view(len(chunk), *x.shape[-2:])
                noise = None
                if self.road_noise > 0:
                    noise = torch.stack(
                        [self._road_noise(batch.road_seeds[i], o, j, x) for i, o, j in chunk]
                    ).to(x.device)
                imputed = impute(x[image], removed, noise=noise)
                probs = self._target_probs(imputed, classes[image])
                out[image.to(out.device), order.to(out.device), [j for _, _, j in chunk]] = (
                    probs.double().to(out.device)
                )
        return out

    def _road_noise(self, seed: int, order: int, point: int, x: torch.Tensor) -> torch.Tensor:
        pair = 2 * len(self.road_percentages) * seed + 2 * point + order
        generator = torch.Generator().manual_seed(pair & ((1 << 63) - 1))
        shape = x.shape[1:]
        return self.road_noise * torch.randn(shape, generator=generator, dtype=x.dtype)


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


def _image_seed(image: torch.Tensor, seed: int, salt: str = "") -> int:
    data = image.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=f"{salt}{seed}".encode()).digest()
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
