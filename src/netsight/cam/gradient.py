"""Gradient methods: Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM and the
input-gradient saliency baseline.

Each method combines the target layer's activations ``A`` (``(B, C, h, w)``) with
the gradient ``G = d score / d A`` of each image's own target score. The
gradient of the summed batch scores is taken in one ``torch.autograd.grad`` call:
in eval mode the images do not interact, so each image's part of it is the
gradient of its own score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netsight.cam.base import BaseCAM, RawMaps, TargetSpec, resolve_targets

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "HiResCAM",
    "LayerCAM",
    "Saliency",
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
