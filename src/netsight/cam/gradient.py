"""Gradient methods: Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM,
Eigen-Grad-CAM, element-wise Grad-CAM, Shapley-CAM, Finer-CAM and the input-gradient
saliency baseline.

Each method combines the target layer's activations ``A`` (``(B, C, h, w)``) with
the gradient ``G = d score / d A`` of each image's own target score. The
gradient of the summed batch scores is taken in one ``torch.autograd.grad`` call:
in eval mode the images do not interact, so each image's part of it is the
gradient of its own score. Only the part of the model after the target layer
builds a graph (see :mod:`netsight.cam.base`).

The :class:`GradientCAM` subclasses need nothing but ``A`` and ``G`` (so their maps
can also be made from tensors taken elsewhere, :meth:`GradientCAM.maps_from`).
Shapley-CAM also needs a second-order term, and Finer-CAM a score that compares
classes; both are built on the same gradient step.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from netsight.cam.base import (
    BaseCAM,
    ForwardRecord,
    RawMaps,
    Reshape,
    Targets,
    TargetSpec,
    check_classes,
    noise_generator,
    resolve_targets,
)
from netsight.cam.projection import principal_projection
from netsight.cam.targets import Contrast
from netsight.capture import LayerSpec
from netsight.hooks import HookSet

__all__ = [
    "GRADIENT_METHODS",
    "EigenGradCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradientCAM",
    "HiResCAM",
    "InputGradient",
    "LayerCAM",
    "Saliency",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "XGradCAM",
    "input_gradient",
]

_SPATIAL = (2, 3)

#: ``(targets=, model output, batch size) -> Targets``: how a method reads its targets.
Resolver: TypeAlias = Callable[[TargetSpec, Any, int], Targets]


@dataclass
class _Gradients:
    record: ForwardRecord
    targets: Targets
    scores: torch.Tensor
    #: ``{layer: d (summed scores) / d (kept output)}``, with a graph when asked.
    grads: dict[str, torch.Tensor]


def _target_gradients(
    cam: BaseCAM,
    x: torch.Tensor,
    targets: TargetSpec,
    layers: dict[str, nn.Module],
    *,
    resolve: Resolver = resolve_targets,
    create_graph: bool = False,
) -> _Gradients:
    """One forward that builds a graph after the target layers only, and the
    gradient of the summed target scores at each layer (with its own graph when
    ``create_graph``, for a second derivative)."""
    record = cam._forward(x, layers, grad=True)
    with torch.enable_grad():
        resolved = resolve(targets, record.output, x.shape[0])
        scores = resolved.scores(record.output)
        total = scores.sum()
        kept = list(record.activations.values())
        if not total.requires_grad:
            raise ValueError(
                f"the target scores do not depend on the target layer(s) "
                f"{', '.join(map(repr, record.activations))}; choose layers the output uses"
            )
        found = torch.autograd.grad(total, kept, allow_unused=True, create_graph=create_graph)
    grads = {}
    for name, grad in zip(list(record.activations), found, strict=True):
        if grad is None and name in record.sources and len(record.activations) > 1:
            # a pyramid level the target does not read (a detector's RPN-only level)
            del record.activations[name]
            continue
        if grad is None:
            raise ValueError(
                f"layer {name!r} does not influence the target score, so it has no "
                f"gradient; choose a layer on the path to the output"
            )
        grads[name] = grad
    if not grads:
        raise ValueError(
            f"no level of {', '.join(sorted(set(record.sources.values())))} influences the "
            f"target score; choose a layer on the path to the output"
        )
    return _Gradients(record, resolved, scores.detach(), grads)


def _detached(output: Any) -> Any:
    return output.detach() if isinstance(output, torch.Tensor) else output


@dataclass(frozen=True)
class InputGradient:
    """What :func:`input_gradient` returns.

    Attributes:
        gradient: ``(B, C, H, W)`` gradient of each image's target score at the input.
        output: the model output (detached).
        targets: the resolved targets.
        scores: ``(B,)`` the target scores (detached).
    """

    gradient: torch.Tensor
    output: Any
    targets: Targets
    scores: torch.Tensor


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    targets: TargetSpec = None,
    *,
    hooks: Callable[[HookSet], None] | None = None,
) -> InputGradient:
    """The gradient of each image's target score at the input: one forward with
    grad on and one ``torch.autograd.grad`` to a detached copy of ``x``, so no
    ``.grad`` is written. The forward of saliency, guided backpropagation and FullGrad.

    Runs the model as it is (its mode set by the caller).

    Example:
        >>> found = input_gradient(model.eval(), x, 3)
        >>> found.gradient.shape == x.shape
        True

    Args:
        model: the network.
        x: ``(B, C, H, W)`` input on the model's device.
        targets: as for :meth:`BaseCAM.explain <netsight.cam.base.BaseCAM.explain>`.
        hooks: adds module hooks for the forward only (removed after it, also when
            it raises); tensor hooks they put on outputs stay with the graph and
            fire in the backward.

    Raises:
        ValueError: the target scores do not depend on the input.
    """
    leaf = x.detach().requires_grad_()
    with torch.enable_grad():
        with HookSet() as handles:
            if hooks is not None:
                hooks(handles)
            output = model(leaf)
        resolved = resolve_targets(targets, output, x.shape[0])
        scores = resolved.scores(output)
        total = scores.sum()
        if not total.requires_grad:
            raise ValueError("the target scores do not depend on the input")
        (gradient,) = torch.autograd.grad(total, leaf)
    return InputGradient(gradient, _detached(output), resolved, scores.detach())


class GradientCAM(BaseCAM):
    """A method computed from activations and their gradients; a subclass defines
    :meth:`weighted_activations` (or, for a map that is not a channel sum,
    :meth:`combine`) and ``method``, its registry name."""

    needs_gradients = True

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        """The ``(B, C, h, w)`` weighted activations whose channel sum is the map."""
        raise NotImplementedError

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The signed ``(B, h, w)`` map from ``(B, C, h, w)`` activations and gradients:
        the channel sum of :meth:`weighted_activations` (their first principal
        component with ``eigen_smooth=True``)."""
        return self.reduce_channels(self.weighted_activations(activations, gradients))

    def maps_from(
        self,
        activations: Mapping[str, torch.Tensor],
        gradients: Mapping[str, torch.Tensor],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """The ``(B, H, W)`` maps from activations and gradients taken elsewhere (for
        example from an autograd graph kept since an earlier forward), made exactly as
        :meth:`explain` makes them (ReLU, resize to ``size``, normalise, fuse), without
        running the model.

        Args:
            activations: ``{layer: output}`` of the target layer(s).
            gradients: ``{layer: d score / d output}``, the same keys.
            size: the input's ``(H, W)``.
        """
        missing = [name for name in activations if name not in gradients]
        if missing or not activations:
            raise ValueError(f"gradients: missing for {missing or 'every layer'}")
        raw = {
            name: self.combine(
                self.spatial(name, a.detach()), self.spatial(name, gradients[name].detach())
            )
            for name, a in activations.items()
        }
        return self._maps(raw, size, quiet=False)

    def gradient_maps(
        self,
        x: torch.Tensor,
        targets: TargetSpec,
        layers: dict[str, nn.Module],
        *,
        resolve: Resolver = resolve_targets,
    ) -> RawMaps:
        """The signed maps of ``x`` at ``layers`` (what :meth:`explain` computes
        before resizing and normalising), with the targets read by ``resolve``:
        how :class:`FinerCAM` explains its own score with any gradient method."""
        found = _target_gradients(self, x, targets, layers, resolve=resolve)
        maps = {
            name: self.combine(
                self.spatial(name, activation.detach()), self.spatial(name, found.grads[name])
            )
            for name, activation in found.record.activations.items()
        }
        return RawMaps(maps, _detached(found.record.output), found.targets, found.scores)

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        return self.gradient_maps(x, targets, layers)


class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient,
    ``sum_k mean(G_k) A_k``."""

    method = "gradcam"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        return gradients.mean(dim=_SPATIAL, keepdim=True) * activations


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018), with the closed-form alpha of the
    paper's eq. 19 (an exponential output assumed), as pytorch-grad-cam computes it:
    ``alpha = G^2 / (2 G^2 + sum(A) G^3)``, zero where ``G = 0``, and weights
    ``sum(alpha * relu(G))``."""

    method = "gradcam++"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum(dim=_SPATIAL, keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum(dim=_SPATIAL, keepdim=True)
        return weights * activations


class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al., 2020): weights ``sum(G_k A_k) / sum(A_k)``."""

    method = "xgradcam"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        total = activations.sum(dim=_SPATIAL, keepdim=True)
        weights = (gradients * activations).sum(dim=_SPATIAL, keepdim=True) / (total + 1e-7)
        return weights * activations


class HiResCAM(GradientCAM):
    """HiRes-CAM (Draelos & Carin, 2020): the element-wise product summed over
    channels, ``sum_k G_k * A_k``. Its faithfulness guarantee (the map sums to the
    score's first-order change) does not hold with ``eigen_smooth=True``."""

    method = "hirescam"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        return gradients * activations


class LayerCAM(GradientCAM):
    """Layer-CAM (Jiang et al., 2021): ``sum_k relu(G_k) * A_k``; works on early
    layers too, and fuses well over several."""

    method = "layercam"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        return gradients.clamp(min=0) * activations


class GradCAMElementWise(GradientCAM):
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): the
    positive part of the element-wise product, summed over channels,
    ``sum_k relu(G_k * A_k)``. Unlike HiRes-CAM, a channel whose activation and
    gradient disagree in sign cannot cancel another's evidence."""

    method = "gradcamelementwise"

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        return (gradients * activations).clamp(min=0)


class EigenGradCAM(GradientCAM):
    """Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``): Eigen-CAM of the
    gradient-weighted activations ``G * A``, i.e. their first principal component
    (positions x channels, centred per channel), so it depends on the class.

    The sign of a principal direction is arbitrary (pytorch-grad-cam keeps what its
    SVD returns); netsight's is the sign that correlates positively with the channel
    sum ``sum_k G_k A_k`` (HiRes-CAM's map), as
    :func:`~netsight.cam.projection.principal_projection` picks it. The map is a
    projection already, so ``eigen_smooth=True`` is refused.
    """

    method = "eigengradcam"
    supports_eigen_smooth = False

    def weighted_activations(
        self, activations: torch.Tensor, gradients: torch.Tensor
    ) -> torch.Tensor:
        return gradients * activations

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weighted = self.weighted_activations(activations, gradients)
        return principal_projection(weighted).to(weighted.dtype)


#: Registry name -> the :class:`GradientCAM` classes (what :class:`FinerCAM` can use).
GRADIENT_METHODS: dict[str, type[GradientCAM]] = {
    cls.method: cls
    for cls in (
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        HiResCAM,
        LayerCAM,
        GradCAMElementWise,
        EigenGradCAM,
    )
}


class ShapleyCAM(BaseCAM):
    """Shapley-CAM (Cai, arXiv 2501.06261): Grad-CAM's weights with a second-order
    term, ``sum_k mean(G_k - H_k / 2) A_k`` where ``H = (d^2 score / d A^2) A`` is the
    Hessian-vector product of the score with the activations. It approximates each
    channel's Shapley value by a second-order expansion of the score between ``A``
    and zero, ``f(A) - f(0) ~ G.A - A.H/2``; pytorch-grad-cam's ``ShapleyCAM``.

    The Hessian-vector product is a second ``torch.autograd.grad`` through the
    graph of the first (``create_graph=True``), built after the target layer only;
    no parameter's ``.grad`` is written. Where the score is piecewise linear in the
    layer (a logit after ReLUs, pooling and linear layers) ``H`` is zero and the map
    is Grad-CAM's; the paper pairs the method with a score that curves, such as
    :class:`~netsight.cam.targets.ClassAgainstRest`. Attention runs on PyTorch's
    math kernel here (the fused ones have no second derivative), so transformers
    work too.

    Example:
        >>> maps = ShapleyCAM(model, "layer4")(x, targets.ClassAgainstRest(281))
    """

    method = "shapleycam"
    needs_gradients = True

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        # The fused attention kernels have no second derivative (on the CPU:
        # "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
        # is not implemented"); the math kernel computes the same attention and has.
        with sdpa_kernel(SDPBackend.MATH):
            found = _target_gradients(self, x, targets, layers, create_graph=True)
        maps = {}
        for name, activation in found.record.activations.items():
            grad = found.grads[name]
            hvp = None
            if grad.requires_grad:  # else the gradient does not depend on A: H = 0
                with torch.enable_grad():
                    (hvp,) = torch.autograd.grad(
                        grad,
                        activation,
                        grad_outputs=activation.detach(),
                        retain_graph=True,
                        allow_unused=True,
                    )
            a = self.spatial(name, activation.detach())
            g = self.spatial(name, grad.detach())
            if hvp is not None:
                g = g - 0.5 * self.spatial(name, hvp)
            weights = g.mean(dim=_SPATIAL, keepdim=True)
            maps[name] = self.reduce_channels(weights * a)
        return RawMaps(maps, _detached(found.record.output), found.targets, found.scores)


class FinerCAM(BaseCAM):
    """Finer-CAM (Zhang et al., CVPR 2025): explain what sets a class apart from the
    classes the model finds most like it. The score is
    :class:`~netsight.cam.targets.Contrast`: the class's logit minus ``alpha`` times
    each compared class's logit, averaged with their softmax probabilities as
    weights; a gradient method (Grad-CAM by default) explains it. The compared
    classes are those whose logits are nearest the explained class's logit (by
    ``|z_k - z_c|``) on the unchanged input; pytorch-grad-cam's ``FinerCAM``.

    ``targets=`` names the explained classes as usual (``None``: each image's top
    class); :attr:`CAMResult.classes <netsight.cam.CAMResult.classes>` reports them.

    Example:
        >>> maps = FinerCAM(model, "layer4", alpha=0.6)(x)      # top class vs the 3 nearest
        >>> maps = FinerCAM(model, "layer4", compare_with=[282])(x, 281)

    Args:
        base_method: the gradient method that explains the score: a registry name
            or a class of :data:`GRADIENT_METHODS` (default ``"gradcam"``).
        alpha: how strongly the compared classes' logits are subtracted (``0``:
            the base method on the logit).
        ranks: which similar classes to compare with, by rank of similarity (``1``:
            the most similar other class); default ``(1, 2, 3)``, as
            pytorch-grad-cam's ``comparison_categories``. Ranks past the number
            of other classes are dropped.
        compare_with: class indices to compare with instead (the same for every
            image; the explained class itself is left out); not with ``ranks``.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "finercam"
    needs_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        base_method: str | type[GradientCAM] = "gradcam",
        alpha: float = 1.0,
        ranks: Sequence[int] | None = None,
        compare_with: Sequence[int] | None = None,
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
        if isinstance(base_method, str):
            if base_method not in GRADIENT_METHODS:
                raise ValueError(
                    f"base_method: expected one of {', '.join(GRADIENT_METHODS)}, "
                    f"got {base_method!r}"
                )
            base_cls = GRADIENT_METHODS[base_method]
        elif isinstance(base_method, type) and issubclass(base_method, GradientCAM):
            base_cls = base_method
        else:
            raise TypeError(
                f"base_method: expected a registry name or a GradientCAM subclass, got "
                f"{base_method!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha: expected a number, got {alpha!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
        if ranks is not None and compare_with is not None:
            raise ValueError("ranks and compare_with: give one of them, not both")
        self.ranks = _ranks(ranks if ranks is not None else (1, 2, 3))
        self.compare_with = (
            None
            if compare_with is None
            else tuple(check_classes(compare_with, None, name="compare_with"))
        )
        self.alpha = float(alpha)
        # mode="same": this explainer's explain() already set and restores the mode
        self.base = base_cls(self.model, reshape=reshape, eigen_smooth=eigen_smooth, mode="same")

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        return self.base.gradient_maps(x, targets, layers, resolve=self._contrast)

    def _contrast(self, targets: TargetSpec, output: Any, batch: int) -> Targets:
        """Each image's :class:`~netsight.cam.targets.Contrast`, with the compared
        classes read from ``output`` (targets already resolved are kept: the
        augmented inputs of ``aug_smooth`` compare with the unchanged input's)."""
        if isinstance(targets, Targets) and targets.fns is not None:
            return targets
        main = resolve_targets(targets, output, batch)
        if main.classes is None:
            raise TypeError(
                "finercam compares classes: expected class indices (or None for each "
                "image's top class) as targets, got callables"
            )
        logits = output.detach()
        classes = logits.shape[1]
        chosen = main.classes.tolist()
        if self.compare_with is not None:
            check_classes(list(self.compare_with), classes, name="compare_with")
            others = [tuple(k for k in self.compare_with if k != c) for c in chosen]
        else:
            distance = (logits - logits.gather(1, main.classes.view(-1, 1))).abs()
            distance[torch.arange(batch), main.classes] = math.inf  # not the class itself
            order = distance.argsort(dim=1, stable=True).tolist()
            positions = [rank - 1 for rank in self.ranks if rank < classes]
            others = [tuple(order[i][p] for p in positions) for i in range(batch)]
        empty = [i for i, found in enumerate(others) if not found]
        if empty:
            raise ValueError(
                f"finercam: no class to compare image(s) {empty} with (the model has "
                f"{classes} classes; ranks={self.ranks}, compare_with={self.compare_with})"
            )
        fns = tuple(Contrast(c, k, self.alpha) for c, k in zip(chosen, others, strict=True))
        return Targets(classes=main.classes, fns=fns)


def _ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(ranks, Sequence) or isinstance(ranks, str) or not ranks:
        raise TypeError(f"ranks: expected a non-empty sequence of ints >= 1, got {ranks!r}")
    found = []
    for rank in ranks:
        try:
            if isinstance(rank, bool):
                raise TypeError
            value = operator.index(rank)
        except TypeError:
            raise TypeError(f"ranks: expected ints >= 1, got {rank!r}") from None
        if value < 1:
            raise ValueError(f"ranks: expected ints >= 1 (1: the most similar class), got {value}")
        found.append(value)
    return tuple(found)


class Saliency(BaseCAM):
    """The input-gradient baseline (Simonyan et al., 2014): ``|d score / d x|``, the
    maximum over input channels. No target layer; the raw map is ``raw["input"]``."""

    method = "saliency"
    needs_gradients = True
    uses_layers = False
    supports_eigen_smooth = False

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        found = input_gradient(self.model, x, targets)
        maps = {"input": found.gradient.abs().amax(1)}
        return RawMaps(maps, found.output, found.targets, found.scores)


class SmoothGradCAMpp(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ whose derivatives are
    averaged over ``n = num_samples`` noisy copies ``x + delta`` of the input,
    ``delta ~ N(0, std^2)`` (SmoothGrad). With ``G_s = d score / d A`` on copy
    ``s`` and ``D_p = mean_s(G_s^p)``::

        alpha = D_2 / (2 D_2 + sum(A) D_3 + 1e-8)   (0 where D_2 = 0)
        w_k   = sum_ij alpha * relu(D_1)
        map   = sum_k w_k A_k

    where ``A`` is the target layer's output on the unchanged input and the
    targets are those of the unchanged input. All copies run as one batch (in
    chunks of ``batch_size`` images) and, as in every gradient method here, the
    graph starts at the target layer and no parameter's ``.grad`` is written.

    Against torchcam 0.5's ``SmoothGradCAMpp`` (which netsight matches on the same
    noise where it agrees with the paper; tests/test_cam_reference_torchcam.py):

    * numerator ``D_2``, as torchcam ("a personal correction" there): the paper
      writes ``D_1``, which does not reduce to Grad-CAM++'s closed form (its
      eq. 19, the form the paper starts from) when ``std = 0``;
    * ``sum(A) D_3`` at each position, as the paper and Grad-CAM++ (and
      :class:`GradCAMPlusPlus`); torchcam sums ``A * D_3`` over positions;
    * ``relu(D_1)``, the averaged gradient, as the paper; torchcam uses the last
      noisy copy's gradient;
    * the map from the unchanged input's activations, as the paper; torchcam's
      activation hook keeps the last noisy copy's.

    Randomness: copy ``s`` draws one tensor of standard normals of the input's shape times
    ``std``, in copy order, from ``generator=``, from a new generator seeded with
    ``seed=`` (the same maps on every call), or else from torch's global RNG's next
    numbers, drawn from a copy that leaves it unmoved (torchcam's order: with the global
    RNG seeded alike, both draw the same noise).

    Args:
        num_samples: noisy copies ``n`` (torchcam's default 4).
        std: the noise's standard deviation, in input units (default 0.3).
        seed: seed of a private generator.
        generator: a ``torch.Generator`` on the input's device.
        batch_size: images per forward (whole copies of the batch, at least one).
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "smoothgradcam++"
    needs_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        num_samples: int = 4,
        std: float = 0.3,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 32,
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
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
            raise ValueError(f"std: expected a number >= 0, got {std!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
        noise_generator(seed, generator, device)  # the argument checks
        self.num_samples = num_samples
        self.std = float(std)
        self.seed = seed
        self.generator = generator
        self.batch_size = batch_size

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        batch = x.shape[0]
        clean = self._forward(x, layers, grad=False)
        with torch.no_grad():
            resolved = resolve_targets(targets, clean.output, batch)
            scores = resolved.scores(clean.output)
        generator = noise_generator(self.seed, self.generator, x.device)
        per_chunk = max(1, self.batch_size // batch)
        sums: dict[str, list[torch.Tensor]] = {}
        for start in range(0, self.num_samples, per_chunk):
            copies = min(per_chunk, self.num_samples - start)
            noisy = torch.cat(
                [
                    x
                    + torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                    * self.std
                    for _ in range(copies)
                ]
            )
            record = self._forward(noisy, layers, grad=True)
            owners = torch.arange(batch, device=x.device).repeat(copies)
            with torch.enable_grad():
                total = resolved.scores(record.output, owners).sum()
            kept = list(record.activations.values())
            if not total.requires_grad:
                raise ValueError(
                    f"the target scores do not depend on the target layer(s) "
                    f"{', '.join(map(repr, record.activations))}; choose layers the output uses"
                )
            grads = torch.autograd.grad(total, kept, allow_unused=True)
            for name, grad in zip(record.activations, grads, strict=True):
                if grad is None:
                    raise ValueError(
                        f"layer {name!r} does not influence the target score, so it has no "
                        f"gradient; choose a layer on the path to the output"
                    )
                g = self.spatial(name, grad.detach())
                g = g.reshape(copies, batch, *g.shape[1:])
                g2 = g * g
                moments = [g.sum(0), g2.sum(0), (g2 * g).sum(0)]
                if name in sums:
                    for acc, value in zip(sums[name], moments, strict=True):
                        acc += value
                else:
                    sums[name] = moments
            del record, grads, noisy
        maps = {}
        for name, activation in clean.activations.items():
            d1, d2, d3 = (m / self.num_samples for m in sums[name])
            a = self.spatial(name, activation.detach())
            total_a = a.sum(dim=_SPATIAL, keepdim=True)
            alpha = d2 / (2 * d2 + total_a * d3 + 1e-8)
            alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
            weights = (alpha * d1.clamp(min=0)).sum(dim=_SPATIAL, keepdim=True)
            maps[name] = self.reduce_channels(weights * a)
        return RawMaps(maps, _detached(clean.output), resolved, scores.detach())
