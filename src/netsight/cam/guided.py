"""Guided backpropagation (Springenberg et al., 2015) and Guided Grad-CAM
(Selvaraju et al., 2017).

Guided backpropagation is the input gradient with every ReLU's backward changed
to pass only positive gradients where its input was positive:
``grad_in = grad_out * (in > 0) * (grad_out > 0)``. pytorch-grad-cam swaps the
model's ``nn.ReLU`` modules for a guided copy and back (its
``GuidedBackpropReLUModel``, which leaves plain, not in-place, ReLUs behind).
netsight replaces nothing: a forward hook on every ``nn.ReLU`` module puts a hook
on the output tensor of each call that clamps the gradient arriving there at 0;
the ReLU's own backward then multiplies by ``in > 0``. The tensor hooks belong to
that forward's autograd graph and go with it; the module hooks are removed on
every path. Both in-place ReLUs and a ReLU module called several times per
forward (torchvision's ResNet blocks call one module twice) are handled: each call
gets its own tensor hook.

ReLUs called as functions inside ``forward()`` (``F.relu``, ``torch.relu``,
``x.relu()``) have no module to hook, so their backward stays plain: a model
whose ReLUs are all functional gets the plain input gradient, with a
:class:`~netsight.errors.CAMWarning`. Other activations (``ReLU6``, ``GELU``)
are left alone, as pytorch-grad-cam leaves them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from netsight.cam.base import BaseCAM, RawMaps, Reshape, TargetSpec
from netsight.cam.gradient import GradCAM, InputGradient, input_gradient
from netsight.capture import LayerSpec
from netsight.errors import CAMWarning
from netsight.hooks import HookSet

__all__ = ["GuidedBackprop", "GuidedGradCAM", "guided_gradient"]


def _clamp(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def guided_gradient(model: nn.Module, x: torch.Tensor, targets: TargetSpec = None) -> InputGradient:
    """The guided-backpropagation gradient of each image's target score at the input.

    Runs the model as it is (set its mode first; :class:`GuidedBackprop` does) with
    the ReLU hooks described in :mod:`netsight.cam.guided`; no ``.grad`` is written
    and no hook stays.

    Example:
        >>> found = guided_gradient(model.eval(), x, 3)
        >>> found.gradient.shape == x.shape
        True

    Args:
        model: the network.
        x: ``(B, C, H, W)`` input on the model's device.
        targets: as for :meth:`BaseCAM.explain <netsight.cam.base.BaseCAM.explain>`.

    Raises:
        ValueError: the target scores do not depend on the input.
    """
    calls = 0

    def guide(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        nonlocal calls
        calls += 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(_clamp)  # type: ignore[no-untyped-call]

    def install(hooks: HookSet) -> None:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                hooks.add(module.register_forward_hook(guide))

    found = input_gradient(model, x, targets, hooks=install)
    if calls == 0:
        warnings.warn(
            f"guided backpropagation: no torch.nn.ReLU module ran in the forward of "
            f"{type(model).__name__} (ReLUs called as functions, F.relu or torch.relu, "
            f"cannot be hooked), so the gradient is the plain input gradient",
            CAMWarning,
            stacklevel=4,
        )
    return found


class GuidedBackprop(BaseCAM):
    """Guided backpropagation (Springenberg et al., 2015): the input gradient of the
    target score with every ``nn.ReLU`` passing back only positive gradients (see
    :mod:`netsight.cam.guided`); pytorch-grad-cam's ``GuidedBackpropReLUModel``,
    for a whole batch and without replacing modules.

    The map is ``|gradient|``, the maximum over input channels (as
    :class:`~netsight.cam.gradient.Saliency`), also in ``raw["input"]``; the
    ``(B, C, H, W)`` gradient itself is :attr:`CAMResult.attribution
    <netsight.cam.CAMResult.attribution>` (pytorch-grad-cam shows it with its
    ``deprocess_image``). No target layer.

    Example:
        >>> result = GuidedBackprop(model).explain(x, 3)
        >>> result.attribution.shape == x.shape
        True
    """

    method = "guidedbackprop"
    needs_gradients = True
    uses_layers = False
    supports_eigen_smooth = False

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        found = guided_gradient(self.model, x, targets)
        maps = {"input": found.gradient.abs().amax(1)}
        return RawMaps(maps, found.output, found.targets, found.scores, attribution=found.gradient)


class GuidedGradCAM(BaseCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the
    Grad-CAM map upsampled to the input, ``cam * gradient`` per channel; what
    pytorch-grad-cam's README makes as ``deprocess_image(cam_mask * gb)``.

    The Grad-CAM part is :class:`~netsight.cam.gradient.GradCAM` at the target
    layer (with this explainer's ``relu``, ``normalize`` and ``eigen_smooth``),
    computed with the ordinary gradient; the guided gradient comes from a second,
    full forward with the guided ReLUs (the two gradients differ after the layer,
    so one backward cannot serve both). :attr:`CAMResult.attribution
    <netsight.cam.CAMResult.attribution>` is the ``(B, C, H, W)`` product; the map
    (and ``raw["input"]``) is its ``|value|``, the maximum over input channels. The
    Grad-CAM map itself is :class:`~netsight.cam.gradient.GradCAM`'s.

    Example:
        >>> result = GuidedGradCAM(model, "layer4").explain(x, 3)
        >>> result.attribution.shape == x.shape
        True

    Raises:
        ValueError: ``upsample=False`` (the product lives at input resolution).
    """

    method = "guidedgradcam"
    needs_gradients = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        if not upsample:
            raise ValueError(
                "guidedgradcam: expected upsample=True (the map is a product with the input "
                "gradient, at input resolution), got upsample=False"
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
        # mode="same": this explainer's explain() already set and restores the mode
        self.gradcam = GradCAM(self.model, reshape=reshape, eigen_smooth=eigen_smooth, mode="same")

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        run = self.gradcam.gradient_maps(x, targets, layers)
        gradient = guided_gradient(self.model, x, run.targets).gradient
        cam = self._maps(run.maps, (x.shape[-2], x.shape[-1]), quiet=True)
        product = cam[:, None].to(gradient.dtype) * gradient
        maps = {"input": product.abs().amax(1)}
        return RawMaps(maps, run.output, run.targets, run.scores, attribution=product)
