"""Methods that need neither gradients nor extra forwards: the original CAM and
Eigen-CAM. Both run one forward under ``no_grad`` (inference mode is fine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from netsight.cam.base import BaseCAM, RawMaps, Reshape, TargetSpec, resolve_targets
from netsight.cam.projection import principal_projection
from netsight.capture import LayerSpec, resolve_layers
from netsight.hooks import HookSet

__all__ = ["CAM", "EigenCAM"]


class CAM(BaseCAM):
    """The original CAM (Zhou et al., 2016) for networks ending in global average
    pooling and one linear layer: ``sum_k W[c, k] A_k`` with ``W`` the weight of
    that linear layer (the last ``nn.Linear`` unless ``fc_layer=`` names it).

    A classifier made of a 1x1 convolution (SqueezeNet, network-in-network heads:
    the convolution, then global pooling) is the same thing in another order; its
    weight ``W[c, k, 0, 0]`` is used. Without ``fc_layer=`` such a head is taken
    when the model has no ``nn.Linear``; without ``target_layers=`` the target is
    then the layer whose output the head convolution reads (found with one probe
    forward).

    On such networks Grad-CAM gives the same map up to a positive factor.

    Raises:
        ValueError: (at call time) the linear layer's inputs do not match the target
            layer's channels, i.e. the model is not global-pool + linear.
    """

    method = "cam"

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        fc_layer: str | nn.Module | None = None,
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
        self.fc_name, self.fc = _linear_head(model, fc_layer)

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=False)
        resolved = resolve_targets(targets, record.output, x.shape[0])
        if resolved.classes is None:
            raise TypeError("CAM reads the linear weights of a class: pass class indices")
        weight = self.fc.weight.detach().flatten(1)  # a 1x1 convolution's too
        rows = weight[resolved.classes.to(weight.device)]  # (B, C)
        maps = {}
        for name, activation in record.activations.items():
            a = self.spatial(name, activation)
            if a.shape[1] != weight.shape[1]:
                raise ValueError(
                    f"CAM needs global average pooling followed by one linear layer: "
                    f"{self.fc_name!r} takes {weight.shape[1]} features but layer {name!r} "
                    f"has {a.shape[1]} channels; use GradCAM (equal to CAM on such models) "
                    f"or pass fc_layer="
                )
            maps[name] = self.reduce_channels(rows.to(a.dtype)[:, :, None, None] * a)
        return RawMaps(maps, record.output, resolved, resolved.scores(record.output))

    def _layers(self, x: torch.Tensor) -> dict[str, nn.Module]:
        if self._spec is None and isinstance(self.fc, nn.Conv2d):
            return resolve_layers(self.model, _head_input(self.model, self.fc, x))
        return super()._layers(x)


def _is_pointwise(module: nn.Module) -> bool:
    """A 1x1 convolution without groups: a classifier applied at every position."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
        and tuple(module.stride) == (1, 1)
    )


def _linear_head(
    model: nn.Module, fc_layer: str | nn.Module | None
) -> tuple[str, nn.Linear | nn.Conv2d]:
    if fc_layer is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1]
        pointwise = [(n, m) for n, m in model.named_modules() if _is_pointwise(m)]
        if pointwise:
            name, module = pointwise[-1]
            assert isinstance(module, nn.Conv2d)
            return name, module
        raise ValueError(
            f"CAM needs a final nn.Linear layer (or a 1x1 convolution before global "
            f"pooling); {type(model).__name__} has neither (use GradCAM)"
        )
    ((name, module),) = resolve_layers(model, fc_layer).items()
    if isinstance(module, nn.Linear):
        return name, module
    if isinstance(module, nn.Conv2d) and _is_pointwise(module):
        return name, module
    raise TypeError(
        f"fc_layer: {name!r} is a {type(module).__name__}, not an nn.Linear or a 1x1 nn.Conv2d"
    )


def _head_input(model: nn.Module, head: nn.Module, x: torch.Tensor) -> str:
    """The first layer (in the order they finish) whose output is the tensor the
    ``head`` convolution reads, found with one probe forward of ``x[:1]``."""
    names = {id(m): n for n, m in model.named_modules()}
    finished: list[tuple[str, torch.Tensor]] = []
    read: list[torch.Tensor] = []

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor) and module is not model:
            finished.append((names[id(module)], output))

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and not read:
            read.append(args[0])

    with HookSet() as hooks:
        for module in model.modules():
            if module is not model:
                hooks.add(module.register_forward_hook(post))
        hooks.add(head.register_forward_pre_hook(pre))
        with torch.no_grad():
            model(x[:1])
    if read:
        for name, output in finished:
            if output is read[0]:
                return name
    raise ValueError(
        f"CAM: no layer's output is what {names.get(id(head), 'the head')!r} reads (it is "
        f"computed outside a module); pass target_layers="
    )


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations (positions x channels,
    centred per channel) projected on their first principal direction. It does not
    depend on the target class.

    The sign of a principal direction is arbitrary: pytorch-grad-cam keeps whatever
    numpy's SVD returns, which on a random torchvision vgg11 (``features.9``, 64 px)
    is the direction anti-correlated with the activations for every image, so its
    map marks where the layer is least active (r = -0.74 against netsight's map;
    ``tests/test_cam_reference_factor.py``). netsight's rule: the projection is
    negated when needed so that it correlates positively with the channel sum of
    the activations at each position, so the map highlights where the layer is
    active (:func:`~netsight.cam.projection.orient_to_activity`). The map is a
    projection already, so ``eigen_smooth=True`` is refused.
    """

    method = "eigencam"
    supports_eigen_smooth = False

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=False)
        resolved = resolve_targets(targets, record.output, x.shape[0])
        maps = {
            name: principal_projection(self.spatial(name, activation))
            for name, activation in record.activations.items()
        }
        return RawMaps(maps, record.output, resolved, resolved.scores(record.output))
