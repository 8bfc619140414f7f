"""Methods that need neither gradients nor extra forwards: the original CAM and
Eigen-CAM. Both run one forward under ``no_grad`` (inference mode is fine)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from netsight.cam.base import BaseCAM, RawMaps, Reshape, TargetSpec, resolve_targets
from netsight.cam.projection import principal_projection
from netsight.capture import LayerSpec, resolve_layers

__all__ = ["CAM", "EigenCAM"]


class CAM(BaseCAM):
    """The original CAM (Zhou et al., 2016) for networks ending in global average
    pooling and one linear layer: ``sum_k W[c, k] A_k`` with ``W`` the weight of
    that linear layer (the last ``nn.Linear`` unless ``fc_layer=`` names it).

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
        weight = self.fc.weight.detach()
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


def _linear_head(model: nn.Module, fc_layer: str | nn.Module | None) -> tuple[str, nn.Linear]:
    if fc_layer is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"CAM needs a final nn.Linear layer; {type(model).__name__} has none (use GradCAM)"
            )
        return linears[-1]
    ((name, module),) = resolve_layers(model, fc_layer).items()
    if not isinstance(module, nn.Linear):
        raise TypeError(f"fc_layer: {name!r} is a {type(module).__name__}, not an nn.Linear")
    return name, module


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations (positions x channels,
    centred per channel) projected on their first principal direction. It does not
    depend on the target class.

    The sign of a principal direction is arbitrary (pytorch-grad-cam keeps whatever
    its SVD returns); netsight picks the sign whose projection correlates positively
    with the channel sum of the activations, so the map highlights where the layer
    is active (:func:`~netsight.cam.projection.principal_projection`). The map is a
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
