"""Gradient methods: Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM and the
input-gradient saliency baseline.

Each method combines the target layer's activations ``A`` (``(B, C, h, w)``) with
the gradient ``G = d score / d A`` of each image's own target score. The
gradient of the summed batch scores is taken in one ``torch.autograd.grad`` call:
in eval mode the images do not interact, so each image's part of it is the
gradient of its own score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netsight.cam.base import (
    BaseCAM,
    RawMaps,
    Reshape,
    TargetSpec,
    noise_generator,
    resolve_targets,
)
from netsight.capture import LayerSpec

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "HiResCAM",
    "LayerCAM",
    "Saliency",
    "SmoothGradCAMpp",
    "XGradCAM",
]

_SPATIAL = (2, 3)


class GradientCAM(BaseCAM):
    """A method computed from activations and their gradients; a subclass only
    defines :meth:`combine` (and ``method``, its registry name)."""

    needs_gradients = True

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The signed ``(B, h, w)`` map from ``(B, C, h, w)`` activations and gradients."""
        raise NotImplementedError

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

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=True)
        with torch.enable_grad():
            resolved = resolve_targets(targets, record.output, x.shape[0])
            scores = resolved.scores(record.output)
            total = scores.sum()
        kept = list(record.activations.values())
        if not total.requires_grad:
            raise ValueError(
                f"the target scores do not depend on the target layer(s) "
                f"{', '.join(map(repr, record.activations))}; choose layers the output uses"
            )
        grads = torch.autograd.grad(total, kept, allow_unused=True)
        maps = {}
        for (name, activation), grad in zip(record.activations.items(), grads, strict=True):
            if grad is None and name in record.sources and len(record.activations) > 1:
                continue  # a pyramid level the target does not read (a detector's RPN-only level)
            if grad is None:
                raise ValueError(
                    f"layer {name!r} does not influence the target score, so it has no "
                    f"gradient; choose a layer on the path to the output"
                )
            a = self.spatial(name, activation.detach())
            g = self.spatial(name, grad)
            maps[name] = self.combine(a, g)
        if not maps:
            raise ValueError(
                f"no level of {', '.join(sorted(set(record.sources.values())))} influences the "
                f"target score; choose a layer on the path to the output"
            )
        return RawMaps(maps, _detached(record.output), resolved, scores.detach())


def _detached(output: Any) -> Any:
    return output.detach() if isinstance(output, torch.Tensor) else output


class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient,
    ``sum_k mean(G_k) A_k``."""

    method = "gradcam"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=_SPATIAL, keepdim=True)
        return (weights * activations).sum(1)


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay et al., 2018), with the closed-form alpha of the
    paper's eq. 19 (an exponential output assumed), as pytorch-grad-cam computes it:
    ``alpha = G^2 / (2 G^2 + sum(A) G^3)``, zero where ``G = 0``, and weights
    ``sum(alpha * relu(G))``."""

    method = "gradcam++"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum(dim=_SPATIAL, keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum(dim=_SPATIAL, keepdim=True)
        return (weights * activations).sum(1)


class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al., 2020): weights ``sum(G_k A_k) / sum(A_k)``."""

    method = "xgradcam"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=_SPATIAL, keepdim=True)
        weights = (gradients * activations).sum(dim=_SPATIAL, keepdim=True) / (total + 1e-7)
        return (weights * activations).sum(1)


class HiResCAM(GradientCAM):
    """HiRes-CAM (Draelos & Carin, 2020): the element-wise product summed over
    channels, ``sum_k G_k * A_k``."""

    method = "hirescam"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients * activations).sum(1)


class LayerCAM(GradientCAM):
    """Layer-CAM (Jiang et al., 2021): ``sum_k relu(G_k) * A_k``; works on early
    layers too, and fuses well over several."""

    method = "layercam"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients.clamp(min=0) * activations).sum(1)


class Saliency(BaseCAM):
    """The input-gradient baseline (Simonyan et al., 2014): ``|d score / d x|``, the
    maximum over input channels. No target layer; the raw map is ``raw["input"]``."""

    method = "saliency"
    needs_gradients = True
    uses_layers = False

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        leaf = x.detach().requires_grad_()
        with torch.enable_grad():
            output = self.model(leaf)
            resolved = resolve_targets(targets, output, x.shape[0])
            scores = resolved.scores(output)
            total = scores.sum()
        if not total.requires_grad:
            raise ValueError("the target scores do not depend on the input")
        (grad,) = torch.autograd.grad(total, leaf)
        return RawMaps({"input": grad.abs().amax(1)}, _detached(output), resolved, scores.detach())


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
            maps[name] = (weights * a).sum(1)
        return RawMaps(maps, _detached(clean.output), resolved, scores.detach())
