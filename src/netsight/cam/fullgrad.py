"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the input gradient times the input,
plus the gradient of the score at every bias of the network times that bias.

For a network of ReLUs, pooling, convolutions and BatchNorm in eval mode (an affine
map per channel: ``y = s x + b'`` with the implicit bias
``b' = bias - running_mean * weight / sqrt(running_var + eps)``) these parts add up
to the score exactly: ``f(x) = sum(x * df/dx) + sum_layers sum_c b'_c sum(df/dy_c)``
(+ the biases of any linear layers, which FullGrad leaves out of the map).
:meth:`FullGrad.decompose` returns the parts.

The map follows the paper (eq. 5) as pytorch-grad-cam's ``FullGrad`` computes it:
every part is made ``|.|`` and each channel map rescaled to ``[0, 1]`` on its own,
``(m - min) / (max - min + 1e-7)`` (the ``1e-7`` keeps a channel whose gradient is
rounding noise small), then resized to the input (bilinear) and all are summed.
The official implementation (idiap/fullgrad-saliency) rescales each layer's
channels jointly instead.

The biased layers are the ``nn.Conv2d`` with a bias and the ``nn.BatchNorm2d`` with
an affine bias and running statistics, matched by exact type as pytorch-grad-cam
does (subclasses such as timm's ``BatchNormAct2d`` return their output after an
activation, which is not the affine map's). A layer called several times
contributes once per call. The gradients at the layers' outputs come from tensor
hooks put on those outputs during the forward (they belong to its graph) and one
``torch.autograd.grad`` to the input: no ``.grad`` is written, and the module
hooks are removed on every path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netsight.cam.base import BaseCAM, RawMaps, Targets, TargetSpec
from netsight.cam.gradient import input_gradient
from netsight.cam.projection import principal_projection
from netsight.hooks import HookSet, preserve_state

__all__ = ["BiasGradient", "FullGrad", "FullGradients"]


@dataclass(frozen=True)
class BiasGradient:
    """One call of one biased layer.

    Attributes:
        layer: the layer's qualified name.
        bias: ``(C,)`` its bias (BatchNorm: the implicit bias in eval mode).
        gradient: ``(B, C, h, w)`` the gradient of the score at its output.
    """

    layer: str
    bias: torch.Tensor
    gradient: torch.Tensor


@dataclass(frozen=True)
class FullGradients:
    """The full-gradient decomposition of each image's target score.

    Attributes:
        input_gradient: ``(B, C, H, W)`` gradient of the score at the input.
        biases: one :class:`BiasGradient` per call of a biased layer, in call order.
        targets: the resolved targets.
        scores: ``(B,)`` the target scores.
        output: the model output (detached).
    """

    input_gradient: torch.Tensor
    biases: tuple[BiasGradient, ...]
    targets: Targets
    scores: torch.Tensor
    output: Any


def _implicit_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a layer adds, or ``None`` for a layer FullGrad does not read."""
    if type(module) is nn.Conv2d:
        return None if module.bias is None else module.bias.detach()
    if type(module) is nn.BatchNorm2d:
        if module.bias is None or module.weight is None or module.running_mean is None:
            return None
        assert module.running_var is not None
        scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
        return module.bias.detach() - module.running_mean * scale
    return None


def _rescale(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(..., h, w)`` map to ``[0, 1]``: ``(m - min) / (max - min + 1e-7)``."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + 1e-7)


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, K, h, w)`` maps resized bilinearly to ``size``."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret, 2019): ``|x * df/dx|`` plus ``|b * df/db|`` of
    every bias, each channel rescaled, resized and summed (see
    :mod:`netsight.cam.fullgrad`); pytorch-grad-cam's ``FullGrad``. No target
    layer: every biased ``Conv2d`` and ``BatchNorm2d`` takes part. The raw map
    ``raw["input"]`` is the sum at input resolution (all ``>= 0``).

    With ``eigen_smooth=True``, as pytorch-grad-cam: the input's channel maps and
    each layer's summed map are rescaled again, resized to an eighth of the input,
    and replaced by their first principal component (signed: the raw map, at that
    size, before ReLU; netsight's ReLU then applies, pytorch-grad-cam has none here).

    Example:
        >>> maps = FullGrad(model)(x, targets=[281, 7])
        >>> parts = FullGrad(model).decompose(x, 281)   # they add up to the score
    """

    method = "fullgrad"
    needs_gradients = True
    uses_layers = False

    def decompose(self, x: torch.Tensor, targets: TargetSpec = None) -> FullGradients:
        """The input gradient and every bias gradient of each image's target score.

        Args:
            x: ``(B, C, H, W)`` input batch.
            targets: as for :meth:`explain`.
        """
        x = self._check_input(x)
        with preserve_state(self.model, self.mode):
            return self._decompose(x, targets)

    def _decompose(self, x: torch.Tensor, targets: TargetSpec) -> FullGradients:
        biased = []
        for name, module in self.model.named_modules():
            bias = _implicit_bias(module)
            if bias is not None:
                biased.append((name, module, bias))
        # (layer, bias, its output's gradient once the backward has run) per call
        calls: list[tuple[str, torch.Tensor, list[torch.Tensor]]] = []

        def make_hook(name: str, bias: torch.Tensor) -> Any:
            def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.requires_grad:
                    store: list[torch.Tensor] = []
                    calls.append((name, bias, store))
                    output.register_hook(store.append)  # type: ignore[no-untyped-call]

            return keep

        def install(hooks: HookSet) -> None:
            for name, module, bias in biased:
                hooks.add(module.register_forward_hook(make_hook(name, bias)))

        found = input_gradient(self.model, x, targets, hooks=install)
        parts = tuple(
            BiasGradient(name, bias, store[0]) for name, bias, store in calls if store
        )  # an output off the score's path gets no gradient
        return FullGradients(found.gradient, parts, found.targets, found.scores, found.output)

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        parts = self._decompose(x, targets)
        size = (x.shape[-2], x.shape[-1])
        wide = torch.promote_types(x.dtype, torch.float32)
        # The input's channels stay apart (eigen_smooth projects them one by one);
        # a layer's channels are summed before resizing, which is linear, so this
        # equals resizing each channel and summing.
        maps = [_rescale((parts.input_gradient * x).abs().to(wide))]
        for part in parts.biases:
            weighted = (part.bias[None, :, None, None] * part.gradient).abs().to(wide)
            maps.append(_resize(_rescale(weighted).sum(1, keepdim=True), size))
        stack = torch.cat(maps, dim=1)  # (B, C_in + calls, H, W)
        if self.eigen_smooth:
            small = (max(size[0] // 8, 1), max(size[1] // 8, 1))
            raw = principal_projection(_resize(_rescale(stack), small))
        else:
            raw = stack.sum(1)
        return RawMaps({"input": raw}, parts.output, parts.targets, parts.scores)
