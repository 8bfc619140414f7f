"""Gradient-free and factorisation methods: KPCA-CAM, FEM, Seg-Eigen-CAM, SESS, and
Deep Feature Factorization (concepts, not a class map).

Each follows pytorch-grad-cam 1.5.7 (``grad-cam`` on PyPI), which netsight's tests
compare it with (``tests/test_cam_reference_factor.py``); where netsight differs,
the class says so and why. None of them needs scikit-learn or OpenCV: the kernel
PCA, the non-negative matrix factorisation, the resizing and the blur are done in
torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from netsight.cam.base import (
    BaseCAM,
    RawMaps,
    Reshape,
    Targets,
    TargetSpec,
    resolve_targets,
)
from netsight.cam.gradient import GradientCAM
from netsight.cam.projection import orient_to_activity
from netsight.capture import LayerSpec
from netsight.hooks import preserve_state
from netsight.images import minmax_scale, to_pil
from netsight.options import Kernel, PatchFusion

__all__ = [
    "FEM",
    "KPCACAM",
    "SESS",
    "Factorization",
    "SegEigenCAM",
    "deep_feature_factorization",
    "kernel_projection",
]


# --------------------------------------------------------------------------- KPCA-CAM
class KPCACAM(BaseCAM):
    """KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA. The activations
    of each image (positions x channels, centred per channel) are mapped through a
    kernel, the ``P x P`` kernel matrix is centred, and the map is the first kernel
    principal component: its top eigenvector times the square root of its
    eigenvalue, as scikit-learn's ``KernelPCA(n_components=1)`` (which
    pytorch-grad-cam's ``KPCA_CAM`` calls) computes it. It does not depend on the
    target class.

    netsight computes the kernel and its eigenvectors in float64 with torch (no
    scikit-learn); the cost is an eigendecomposition of a ``P x P`` matrix per
    image (``P`` positions: 49 for a 7x7 layer, about 0.1 s for 28x28). The sign of
    the component is arbitrary: scikit-learn makes the largest entry positive;
    netsight orients it as :class:`~netsight.cam.EigenCAM` does, to correlate
    positively with the channel sum of the activations.

    Args:
        kernel: ``"sigmoid"`` (default, as pytorch-grad-cam), ``"rbf"``, ``"poly"``,
            ``"linear"`` (plain PCA: Eigen-CAM) or ``"cosine"``.
        gamma: the kernel's scale; default ``1 / channels`` (scikit-learn's).
        degree: the degree of the ``"poly"`` kernel.
        coef0: the constant of the ``"poly"`` and ``"sigmoid"`` kernels.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "kpcacam"
    supports_eigen_smooth = False  # the map is a (kernel) projection already

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        self.kernel = Kernel.parse(kernel, "kernel")
        if gamma is not None and (isinstance(gamma, bool) or not gamma > 0):
            raise ValueError(f"gamma: expected None or a number > 0, got {gamma!r}")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree: expected an int >= 1, got {degree!r}")
        self.gamma = gamma
        self.degree = degree
        self.coef0 = float(coef0)

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=False)
        resolved = resolve_targets(targets, record.output, x.shape[0])
        maps = {
            name: kernel_projection(
                self.spatial(name, activation),
                self.kernel,
                gamma=self.gamma,
                degree=self.degree,
                coef0=self.coef0,
            )
            for name, activation in record.activations.items()
        }
        return RawMaps(maps, record.output, resolved, resolved.scores(record.output))


def kernel_projection(
    activations: torch.Tensor,
    kernel: str = "sigmoid",
    *,
    gamma: float | None = None,
    degree: int = 3,
    coef0: float = 1.0,
) -> torch.Tensor:
    """``(B, C, h, w)`` activations as ``(B, h, w)`` first kernel principal
    components (see :class:`KPCACAM`), oriented to agree with the activation sum.
    Computed in float64, returned in the activations' dtype (float32 at least)."""
    kind = Kernel.parse(kernel, "kernel")
    batch, channels, height, width = activations.shape
    rows = torch.nan_to_num(activations.double(), nan=0.0).flatten(2).transpose(1, 2)
    centred = rows - rows.mean(1, keepdim=True)  # (B, P, C)
    scale = 1.0 / channels if gamma is None else float(gamma)
    dots = centred @ centred.transpose(1, 2)
    if kind is Kernel.LINEAR:
        k = dots
    elif kind is Kernel.POLY:
        k = (scale * dots + coef0) ** degree
    elif kind is Kernel.SIGMOID:
        k = torch.tanh(scale * dots + coef0)
    elif kind is Kernel.RBF:
        k = torch.exp(-scale * torch.cdist(centred, centred).square())
    else:  # cosine; an all-zero row stays zero, as in scikit-learn
        norms = centred.norm(dim=2, keepdim=True)
        unit = centred / torch.where(norms > 0, norms, torch.ones_like(norms))
        k = unit @ unit.transpose(1, 2)
    # centre in feature space (scikit-learn's KernelCenterer)
    k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)
    top = values[:, -1].clamp(min=0)
    projection = vectors[:, :, -1] * top.sqrt()[:, None]
    projection = orient_to_activity(projection, centred)
    dtype = torch.promote_types(activations.dtype, torch.float32)
    return projection.view(batch, height, width).to(dtype)


# --------------------------------------------------------------------------- FEM
class FEM(BaseCAM):
    """FEM, the Feature Explanation Method (Fuad et al., 2020), as pytorch-grad-cam
    computes it. Each channel ``A_k`` is thresholded at ``T_k = mean(A_k) + k *
    std(A_k)`` (over its positions; the k-sigma rule), the channel's weight is the
    fraction of its positions above ``T_k``, and the map is ``sum_k w_k A_k``. It
    does not depend on the target class.

    Another reading of the paper (Xplique's ``FEM``) sums the binary masks
    ``1(A_k >= T_k)`` weighted by the channel means instead; netsight follows
    pytorch-grad-cam, and its maps are compared with it.

    Args:
        k: how many standard deviations above the mean a position must be.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "fem"
    supports_eigen_smooth = False  # as pytorch-grad-cam's FEM, which ignores it

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        k: float = 2.0,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
            raise ValueError(f"k: expected a finite number, got {k!r}")
        self.k = float(k)

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=False)
        resolved = resolve_targets(targets, record.output, x.shape[0])
        maps = {}
        for name, activation in record.activations.items():
            a = self.spatial(name, activation)
            flat = a.flatten(2)
            threshold = flat.mean(2, keepdim=True) + self.k * flat.std(
                2, keepdim=True, correction=0
            )
            weights = (flat > threshold).to(a.dtype).mean(2)  # (B, C)
            maps[name] = torch.einsum("bc,bchw->bhw", weights, a)
        return RawMaps(maps, record.output, resolved, resolved.scores(record.output))


# --------------------------------------------------------------------------- Seg-Eigen-CAM
class SegEigenCAM(GradientCAM):
    """Seg-Eigen-CAM (Chung & Ying, 2025), for semantic segmentation and classifiers
    alike: the activations weighted element-wise by the absolute gradient of the
    target score, ``|G| * A`` (the paper's eq. 10), projected on their first
    principal direction (centred per channel, as Eigen-CAM), and negated when the
    projection's smallest value is larger in magnitude than its largest (eq. 13),
    so that the salient region is positive. This sign rule is the paper's (and
    pytorch-grad-cam's), not Eigen-CAM's in netsight.

    For a segmentation model pass a target such as
    ``netsight.cam.targets.Segmentation(category)``.
    """

    method = "segeigencam"
    supports_eigen_smooth = False  # the map is a projection already

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weighted = torch.nan_to_num(gradients.abs() * activations, nan=0.0)
        batch, _, height, width = weighted.shape
        rows = weighted.flatten(2).transpose(1, 2).double()  # (B, positions, C)
        centred = rows - rows.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        projection = (centred @ vh[:, 0, :, None])[..., 0]
        flip = projection.amin(1).abs() > projection.amax(1).abs()
        projection = torch.where(flip[:, None], -projection, projection)
        dtype = torch.promote_types(activations.dtype, torch.float32)
        return projection.view(batch, height, width).to(dtype)


# --------------------------------------------------------------------------- SESS
class SESS(BaseCAM):
    """SESS, Saliency Enhancing with Scaling and Sliding (Tursun et al., 2022), as
    pytorch-grad-cam defines it: a base method's maps of many patches, fused.

    The image is resized so that its shorter side is each of ``scales`` (default
    ``num_scales`` sizes from the window size up, in steps of ``scale_step_ratio``
    x the window: 224, 288, ... for a 224 px input); a ``window_size`` window
    (default the shorter side) slides over each with stride ``step_size`` (default
    the window; windows past the border are moved back inside). Each patch's map
    (the base method's normalised map, for the image's own target) is multiplied
    by the patch's score (the softmax probability of the target, or the raw score
    with ``softmax_scores=False``, clipped at 0) over the image's best patch score,
    pasted back where it came from, resized to the image, and fused: the mean over
    the patches whose map is above ``theta`` at each pixel (``fusion="mean"``) or
    the maximum (``"max"``). An 11x11 Gaussian blur (sigma 5, reflected borders)
    follows with ``smooth=True``. ``pre_filter_ratio`` drops that fraction of the
    lowest-scoring patches first.

    Faster than pytorch-grad-cam's at the same settings: the patches of all images
    run in shared batches of ``batch_size``, and without pre-filtering a patch's
    score is read from the base method's own forward instead of a separate one;
    with a gradient base method only the part of the model after the target layer
    builds a graph (see :mod:`netsight.cam.base`). The raw map is at input
    resolution (``raw`` is keyed ``"sess"``); ``upsample`` has no effect.

    Args:
        base: the method run on every patch: a registry name of
            :data:`netsight.cam.METHODS` or a :class:`BaseCAM` subclass (default
            ``"gradcam"``, as pytorch-grad-cam).
        base_options: keyword arguments for the base method (e.g. ``batch_size``
            of ``"scorecam"``).
        scales: the shorter-side sizes, each at least the window size.
        num_scales, scale_step_ratio: the default scales (see above).
        window_size, step_size: the sliding window and its stride, in pixels.
        pre_filter_ratio: in ``[0, 1)``.
        theta: the threshold of the mean fusion.
        fusion: ``"mean"`` or ``"max"``.
        smooth: blur the fused map.
        softmax_scores: weigh patches by the softmax probability of the target
            (the paper; needs a ``(B, classes)`` output) instead of the raw score.
        batch_size: patches per forward (bounds memory).
        **options: see :class:`~netsight.cam.base.BaseCAM`; ``reshape``, ``relu``
            and ``eigen_smooth`` are the base method's.

    Not offered in ``netsight explore`` (one base map per patch).
    """

    method = "sess"
    interactive = False  # a base map per patch: 122 patches for one 224 px image

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        base: str | type[BaseCAM] = "gradcam",
        base_options: dict[str, Any] | None = None,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        fusion: str = "mean",
        smooth: bool = True,
        softmax_scores: bool = True,
        batch_size: int = 32,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        base_cls = _base_class(base)
        # This instance has the base method's needs (saliency reads no layer); the
        # class attributes stay as they are.
        self.__dict__.update(
            needs_gradients=base_cls.needs_gradients,
            uses_layers=base_cls.uses_layers,
            supports_eigen_smooth=base_cls.supports_eigen_smooth,
        )
        super().__init__(
            model,
            target_layers,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        if base_options is not None and not isinstance(base_options, dict):
            raise TypeError(f"base_options: expected a dict, got {type(base_options).__name__}")
        self.base_cls = base_cls
        self.base_options = dict(base_options or {})
        self.fusion = PatchFusion.parse(fusion, "fusion")
        if not isinstance(pre_filter_ratio, (int, float)) or not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(
                f"pre_filter_ratio: expected a number in [0, 1), got {pre_filter_ratio!r}"
            )
        for name, value in (("num_scales", num_scales), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        for name, size in (("window_size", window_size), ("step_size", step_size)):
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 1
            ):
                raise ValueError(f"{name}: expected None or an int >= 1, got {size!r}")
        if scales is not None:
            scales = list(scales)
            if not scales or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in scales
            ):
                raise ValueError(f"scales: expected a non-empty list of ints >= 1, got {scales!r}")
        if not scale_step_ratio >= 0:
            raise ValueError(f"scale_step_ratio: expected a number >= 0, got {scale_step_ratio!r}")
        self.scales = scales
        self.num_scales = num_scales
        self.scale_step_ratio = float(scale_step_ratio)
        self.window_size = window_size
        self.step_size = step_size
        self.pre_filter_ratio = float(pre_filter_ratio)
        self.theta = float(theta)
        self.smooth = smooth
        self.softmax_scores = softmax_scores
        self.batch_size = batch_size
        self._bases: dict[tuple[str, ...], BaseCAM] = {}

    def _patch_method(self, layers: dict[str, nn.Module]) -> BaseCAM:
        """The base method for these layers (made once per layer set)."""
        key = tuple(layers)
        if key not in self._bases:
            self._bases[key] = self.base_cls(
                self.model,
                list(key) if self.uses_layers else None,
                reshape=self.reshape,
                relu=self.relu,
                eigen_smooth=self.eigen_smooth,
                **self.base_options,
            )
        return self._bases[key]

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        batch, _, height, width = x.shape
        base = self._patch_method(layers)
        with torch.no_grad():
            output = self.model(x)
        resolved = resolve_targets(targets, output, batch)
        scores = resolved.scores(output).detach()
        output = output.detach() if isinstance(output, torch.Tensor) else output
        if self.softmax_scores and not (isinstance(output, torch.Tensor) and output.dim() == 2):
            raise TypeError(
                "SESS weighs patches by the softmax of a (batch, classes) output, but the model "
                "returned something else; pass softmax_scores=False to weigh them by the raw "
                "target score"
            )
        window = self.window_size if self.window_size is not None else min(height, width)
        step = self.step_size if self.step_size is not None else window
        patches = self._patches(x, window, step)  # [(image, scale index, x1, y1, sw, sh)]
        scaled = self._scaled(x, window)
        owners = torch.tensor([p[0] for p in patches], dtype=torch.long)
        patch_scores: torch.Tensor | None = None
        keep = torch.ones(len(patches), dtype=torch.bool)
        if self.pre_filter_ratio > 0:
            patch_scores = self._patch_scores(scaled, patches, resolved, window)
            for image in range(batch):
                mine = (owners == image).nonzero().flatten()
                order = torch.argsort(patch_scores[mine], stable=True)
                drop = mine[order[: int(len(mine) * self.pre_filter_ratio)]]
                keep[drop] = False
        chosen = keep.nonzero().flatten().tolist()
        maps: list[torch.Tensor] = []
        found: list[torch.Tensor] = []
        for start in range(0, len(chosen), self.batch_size):
            part = chosen[start : start + self.batch_size]
            crops = _crops(scaled, [patches[i] for i in part], window)
            run = base._compute(crops, _subset(resolved, owners[part]), layers)
            maps.append(base._maps(run.maps, (window, window), quiet=True).detach())
            if patch_scores is None:
                found.append(self._scores_of(run.output, run.targets, run.scores))
        patch_scores = torch.cat(found) if patch_scores is None else patch_scores[chosen]
        cams = torch.cat(maps).to(torch.float32)
        fused = self._fuse(cams, patch_scores, [patches[i] for i in chosen], batch, (height, width))
        if self.smooth:
            fused = _gaussian_blur(fused, size=11, sigma=5.0)
        dtype = torch.promote_types(x.dtype, torch.float32)
        return RawMaps({"sess": fused.to(x.device, dtype)}, output, resolved, scores)

    # ------------------------------------------------------------------ steps
    def _scale_sizes(self, window: int) -> list[int]:
        if self.scales is not None:
            sizes = list(self.scales)
        else:
            stride = round(window * self.scale_step_ratio)
            sizes = [window + stride * i for i in range(self.num_scales)]
        small = [s for s in sizes if s < window]
        if small:
            raise ValueError(
                f"scales: every scale must be at least the window size {window}, got {small}"
            )
        return sizes

    def _scaled(self, x: torch.Tensor, window: int) -> list[torch.Tensor]:
        """The batch resized to every scale (its shorter side), as torchvision's
        ``resize`` does (bilinear, antialiased)."""
        height, width = x.shape[-2:]
        out = []
        for size in self._scale_sizes(window):
            shape = _resized_shape(height, width, size)
            if shape == (height, width):
                out.append(x)
            else:
                out.append(
                    F.interpolate(
                        x, size=shape, mode="bilinear", align_corners=False, antialias=True
                    )
                )
        return out

    def _patches(self, x: torch.Tensor, window: int, step: int) -> list[tuple[int, ...]]:
        height, width = x.shape[-2:]
        found: list[tuple[int, ...]] = []
        for image in range(x.shape[0]):
            for index, size in enumerate(self._scale_sizes(window)):
                sh, sw = _resized_shape(height, width, size)
                for y1 in _window_starts(sh, step, window):
                    for x1 in _window_starts(sw, step, window):
                        found.append((image, index, x1, y1, sw, sh))
        return found

    def _scores_of(self, output: Any, targets: Targets, raw: torch.Tensor) -> torch.Tensor:
        if self.softmax_scores:
            if not isinstance(output, torch.Tensor) or output.dim() != 2:
                raise TypeError("SESS: softmax_scores needs a (batch, classes) output")
            raw = targets.scores(torch.softmax(output.detach(), dim=-1))
        return raw.detach().float().clamp(min=0).cpu()

    def _patch_scores(
        self,
        scaled: list[torch.Tensor],
        patches: list[tuple[int, ...]],
        resolved: Targets,
        window: int,
    ) -> torch.Tensor:
        owners = torch.tensor([p[0] for p in patches], dtype=torch.long)
        values = []
        with torch.no_grad():
            for start in range(0, len(patches), self.batch_size):
                part = list(range(start, min(start + self.batch_size, len(patches))))
                crops = _crops(scaled, [patches[i] for i in part], window)
                out = self.model(crops)
                subset = _subset(resolved, owners[part])
                values.append(self._scores_of(out, subset, subset.scores(out)))
        return torch.cat(values)

    def _fuse(
        self,
        cams: torch.Tensor,
        scores: torch.Tensor,
        patches: list[tuple[int, ...]],
        batch: int,
        size: tuple[int, int],
    ) -> torch.Tensor:
        owners = torch.tensor([p[0] for p in patches], dtype=torch.long)
        weights = torch.ones_like(scores)
        for image in range(batch):
            mine = owners == image
            if bool(mine.any()):
                best = scores[mine].max()
                if float(best) > 0:
                    weights[mine] = scores[mine] / best
        cams = cams.cpu() * weights[:, None, None]
        total = torch.zeros((batch, *size), dtype=torch.float32)
        counts = torch.zeros((batch, *size), dtype=torch.float32)
        window = cams.shape[-1]
        # Patches of one scale share the pasted canvas size: resize them together,
        # a few at a time (bounded memory).
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, _, _, _, sw, sh) in enumerate(patches):
            groups.setdefault((sh, sw), []).append(i)
        for (sh, sw), members in groups.items():
            per_chunk = max(1, 4_000_000 // (sh * sw))
            for start in range(0, len(members), per_chunk):
                part = members[start : start + per_chunk]
                canvas = torch.zeros((len(part), 1, sh, sw), dtype=torch.float32)
                for row, i in enumerate(part):
                    _, _, x1, y1, _, _ = patches[i]
                    canvas[row, 0, y1 : y1 + window, x1 : x1 + window] = cams[i]
                pasted = F.interpolate(canvas, size=size, mode="bilinear", align_corners=False)
                for row, i in enumerate(part):
                    _, _, x1, y1, _, _ = patches[i]
                    # Zero exactly where no pixel of the patch has any weight: the
                    # float resize can leave rounding residues (1e-15) there, which
                    # the mean fusion would count as the patch covering the pixel.
                    rows = _support(size[0], sh, y1, window)
                    cols = _support(size[1], sw, x1, window)
                    pasted[row, 0] *= (rows[:, None] & cols[None, :]).to(pasted.dtype)
                pasted = pasted[:, 0]
                for row, i in enumerate(part):
                    image = patches[i][0]
                    if self.fusion is PatchFusion.MAX:
                        torch.maximum(total[image], pasted[row], out=total[image])
                    else:
                        mask = pasted[row] > self.theta
                        total[image] += torch.where(mask, pasted[row], 0.0)
                        counts[image] += mask
        if self.fusion is PatchFusion.MAX:
            return total
        return torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(total))


def _base_class(base: str | type[BaseCAM]) -> type[BaseCAM]:
    if isinstance(base, str):
        from netsight.cam import METHODS  # the registry lives in the package

        if base not in METHODS:
            raise ValueError(f"base: expected one of {', '.join(METHODS)}, got {base!r}")
        base = METHODS[base]
    if not isinstance(base, type) or not issubclass(base, BaseCAM):
        raise TypeError(f"base: expected a method name or a BaseCAM subclass, got {base!r}")
    if issubclass(base, SESS):
        raise ValueError("base: SESS cannot run on SESS")
    return base


def _resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``resize(img, size)``: the shorter side becomes ``size``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _window_starts(length: int, step: int, window: int) -> list[int]:
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _support(out: int, size: int, start: int, window: int) -> torch.Tensor:
    """Which of ``out`` pixels, resized bilinearly (half-pixel centres, as
    ``F.interpolate`` and OpenCV) from ``size`` pixels, take a non-zero weight
    from the source pixels ``[start, start + window)``; in integers, exactly."""
    i = torch.arange(out, dtype=torch.int64)
    numerator = ((2 * i + 1) * size - out).clamp(min=0)  # source = numerator / (2 out)
    low = numerator // (2 * out)
    exact = numerator % (2 * out) == 0
    high = torch.where(exact, low, (low + 1).clamp(max=size - 1))
    inside_low = (low >= start) & (low < start + window)
    inside_high = (high >= start) & (high < start + window)
    return inside_low | inside_high


def _crops(scaled: list[torch.Tensor], patches: list[tuple[int, ...]], window: int) -> torch.Tensor:
    return torch.stack(
        [
            scaled[index][image, :, y1 : y1 + window, x1 : x1 + window]
            for image, index, x1, y1, _, _ in patches
        ]
    )


def _subset(targets: Targets, owners: torch.Tensor) -> Targets:
    """The targets of the images ``owners`` (one per patch)."""
    if targets.classes is not None:
        return Targets(classes=targets.classes[owners.to(targets.classes.device)])
    assert targets.fns is not None
    return Targets(fns=tuple(targets.fns[int(i)] for i in owners))


def _gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(maps, (size, size), sigma)`` with its default border
    (reflected without repeating the edge), on ``(B, H, W)`` maps of any size."""
    half = size // 2
    offsets = torch.arange(size, dtype=torch.float64) - half
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = maps
    for dim in (1, 2):
        n = out.shape[dim]
        index = _reflect101(torch.arange(-half, n + half), n)
        padded = out.index_select(dim, index)
        windows = padded.unfold(dim, size, 1)  # (..., n, ..., size)
        out = (windows * kernel).sum(-1)
    return out


def _reflect101(index: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.abs() % period
    return torch.where(index >= n, period - index, index)


# --------------------------------------------------------------------------- DFF
@dataclass(frozen=True)
class Factorization:
    """What :func:`deep_feature_factorization` found.

    Attributes:
        maps: ``(B, k, H, W)`` concept maps, each in ``[0, 1]`` (at input
            resolution with ``upsample=True``).
        raw: ``(B, k, h, w)`` the factorisation's coefficients at layer resolution.
        concepts: ``(k, C)`` concept embeddings: one channel vector per concept.
        scores: ``(k, classes)`` what ``classifier`` gives each concept embedding,
            or ``None`` without one.
        layer: the layer factorised.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    concepts: torch.Tensor
    scores: torch.Tensor | None
    layer: str

    def overlay(
        self,
        image: Image.Image | torch.Tensor,
        index: int = 0,
        *,
        image_weight: float = 0.5,
        colors: Sequence[Sequence[float]] | None = None,
    ) -> Image.Image:
        """Image ``index``'s concepts over its picture, one colour each (as
        pytorch-grad-cam's ``show_factorization_on_image``): every pixel takes the
        colour of its strongest concept, as bright as that concept's map there.

        Args:
            image: a PIL image or a ``(C, H, W)`` tensor in ``[0, 1]``.
            index: which image of the batch.
            image_weight: the picture's share of the blend.
            colors: one RGB triple in ``[0, 1]`` per concept (default: matplotlib's
                ``gist_rainbow``, evenly spaced).
        """
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight: expected a value in [0, 1], got {image_weight}")
        maps = self.maps[index].detach().float().cpu()
        count = maps.shape[0]
        if colors is None:
            from matplotlib import colormaps

            cmap = colormaps["gist_rainbow"]
            colors = [cmap(i / count)[:3] for i in range(count)]
        if len(colors) != count:
            raise ValueError(f"colors: {len(colors)} colours for {count} concepts")
        palette = torch.tensor([list(c)[:3] for c in colors], dtype=torch.float32)
        palette = palette / palette.amax(1, keepdim=True).clamp(min=1e-8)  # full brightness
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            base = torch.from_numpy(array.transpose(2, 0, 1).copy())
        else:
            base = image.detach().float().cpu().clamp(0, 1)
            base = base.expand(3, -1, -1) if base.shape[0] == 1 else base
        size = (base.shape[1], base.shape[2])
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
        strength, winner = maps.clamp(0, 1).max(0)
        painted = palette[winner].permute(2, 0, 1) * strength
        return to_pil(image_weight * base + (1 - image_weight) * painted)


def deep_feature_factorization(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 5,
    *,
    layer: LayerSpec | None = None,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reshape: Reshape | None = None,
    upsample: bool = True,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
) -> Factorization:
    """Deep Feature Factorization (Collins et al., 2018): the activations of a layer
    over the whole batch, ``C`` channels x ``B h w`` positions, factorised by
    non-negative matrix factorisation into ``k`` concepts, as pytorch-grad-cam's
    ``DeepFeatureFactorization`` does: each channel is shifted by its minimum, then
    ``A ~ W H`` with ``W`` (``C x k``, plus the shift: the concept embeddings) and
    ``H`` (``k x B h w``: the concept maps).

    The factorisation is scikit-learn's ``NMF(init="random", random_state=seed)``
    computed with torch: the same random start (numpy's generator), the same
    coordinate-descent solver (Cichocki & Phan's HALS, scikit-learn's ``"cd"``)
    and stopping rule, so the concepts match scikit-learn's up to rounding.

    Example:
        >>> found = netsight.cam.deep_feature_factorization(model, x, 4, classifier=model.fc)
        >>> found.maps.shape, found.scores.softmax(-1).argmax(-1)   # (B, 4, H, W), a class each
        >>> found.overlay(netsight.denormalize(x[0]))               # a PIL image

    Args:
        model: the network (left as it came; run in eval mode).
        x: ``(B, C, H, W)`` inputs.
        k: the number of concepts.
        layer: the layer to factorise (default: the last with a spatial map).
        classifier: run on the ``(k, C)`` concept embeddings (e.g. the model's
            final ``nn.Linear`` after global pooling) to name each concept.
        reshape: turns the layer's output into ``(B, C, h, w)``.
        upsample: resize the maps to the input size.
        seed: the random start of the factorisation.
        max_iter, tol: the solver's iteration limit and stopping tolerance.

    Returns:
        A :class:`Factorization`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    if layer is not None and isinstance(layer, (list, tuple)):
        raise TypeError("layer: expected one layer (a name, module or type)")
    reader = _ActivationReader(model, layer, reshape=reshape)
    name, activations = reader.read(x)
    batch, channels, height, width = activations.shape
    dtype = torch.promote_types(activations.dtype, torch.float32)
    data = torch.nan_to_num(activations.to(dtype), nan=0.0)
    matrix = data.transpose(0, 1).reshape(channels, -1)  # (C, B h w)
    offset = matrix.amin(1, keepdim=True)
    w, h = _nmf(matrix - offset, k, seed=seed, max_iter=max_iter, tol=tol)
    concepts = (w + offset).T.contiguous()  # (k, C)
    raw = h.reshape(k, batch, height, width).transpose(0, 1).contiguous()
    maps = raw
    if upsample:
        maps = F.interpolate(
            raw, size=(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False
        )
    flat = maps.flatten(0, 1)
    maps = minmax_scale(flat)[0].view_as(maps)
    scores = None
    if classifier is not None:
        if not callable(classifier):
            raise TypeError("classifier: expected a callable on (k, C) embeddings")
        kept = (
            preserve_state(classifier, "eval")
            if isinstance(classifier, nn.Module)
            else contextlib.nullcontext()
        )
        with torch.no_grad(), kept:
            out = classifier(concepts.to(activations.dtype))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"classifier: returned a {type(out).__name__}, not a tensor")
        scores = out.detach()
    return Factorization(maps=maps, raw=raw, concepts=concepts, scores=scores, layer=name)


class _ActivationReader(BaseCAM):
    """One forward that keeps a layer's output, with BaseCAM's checks, layer choice
    and layout handling; explains nothing."""

    method = "activations"

    def read(self, x: torch.Tensor) -> tuple[str, torch.Tensor]:
        x = self._check_input(x)
        with preserve_state(self.model, self.mode):
            layers = self._layers(x)
            if len(layers) != 1:
                raise ValueError(f"layer: expected one layer, got {len(layers)}: {list(layers)}")
            record = self._forward(x, layers, grad=False)
        ((name, activation),) = record.activations.items()
        return name, self.spatial(name, activation.detach())


def _nmf(
    x: torch.Tensor, k: int, *, seed: int, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative ``x ~ w @ h`` (``(n, k)``, ``(k, m)``), Frobenius loss, as
    scikit-learn's ``NMF(k, init="random", random_state=seed, solver="cd")``."""
    n, m = x.shape
    rng = np.random.RandomState(seed)
    avg = math.sqrt(float(x.mean()) / k)
    h0 = np.abs(avg * rng.standard_normal(size=(k, m)).astype(np.float32))
    w0 = np.abs(avg * rng.standard_normal(size=(n, k)).astype(np.float32))
    w = torch.from_numpy(w0).to(x.device, x.dtype)
    ht = torch.from_numpy(np.ascontiguousarray(h0.T)).to(x.device, x.dtype)
    first = 0.0
    for step in range(max_iter):  # scikit-learn's loop and stopping rule
        violation = float(_cd_sweep(x, w, ht) + _cd_sweep(x.T, ht, w))
        if step == 0:
            first = violation
        if first == 0 or violation / first <= tol:
            break
    return w, ht.T.contiguous()


def _cd_sweep(x: torch.Tensor, w: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
    """One pass of coordinate descent over the columns of ``w`` (in place), ``ht``
    fixed; returns the summed projected-gradient violation. The rows of a column
    are independent, so each column is one vector step (scikit-learn's Cython
    loop runs over them one by one)."""
    hht = ht.T @ ht
    xht = x @ ht
    hess = hht.diagonal().tolist()
    parts = []
    for t in range(w.shape[1]):
        column = w[:, t]
        grad = torch.addmv(xht[:, t], w, hht[:, t], beta=-1)  # (w @ hht - xht)[:, t]
        parts.append(torch.where(column > 0, grad.abs(), (-grad).clamp(min=0)).sum())
        if hess[t] != 0:
            column.add_(grad, alpha=-1.0 / hess[t]).clamp_(min=0)
    return torch.stack(parts).sum(dtype=torch.float64)
