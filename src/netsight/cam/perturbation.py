"""Perturbation methods: Score-CAM and Ablation-CAM.

Both weigh each channel by how the target score reacts when the input or the
layer is changed along that channel, with one extra forward per (image, channel)
pair. The forwards run in chunks of ``batch_size`` under ``torch.no_grad()``, so
memory is bounded by the chunk, not by the channel count, and channels whose
perturbation is known in advance are skipped:

* Score-CAM: a constant channel (all zeros, typically) gives an all-zero mask,
  so every such channel shares one forward of a zero image.
* Ablation-CAM: zeroing an all-zero channel changes nothing, so its weight is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netsight.cam.base import (
    BaseCAM,
    RawMaps,
    Reshape,
    Targets,
    TargetSpec,
    resolve_targets,
)
from netsight.capture import LayerSpec
from netsight.hooks import HookSet

__all__ = ["AblationCAM", "ScoreCAM"]


class _PerturbationCAM(BaseCAM):
    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
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
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = batch_size

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        record = self._forward(x, layers, grad=False)
        resolved = resolve_targets(targets, record.output, x.shape[0])
        with torch.no_grad():
            scores = resolved.scores(record.output)
            maps = {}
            for name, activation in record.activations.items():
                if record.calls[name] > 1:
                    raise ValueError(
                        f"layer {name!r} ran {record.calls[name]} times in one forward; "
                        f"{self.method} needs a target layer that runs once"
                    )
                a = self.spatial(name, activation)
                weights = self.channel_weights(x, name, layers[name], activation, resolved, scores)
                maps[name] = (weights[:, :, None, None] * a).sum(1)
        return RawMaps(maps, record.output, resolved, scores)

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        """``(B, C)`` channel weights."""
        raise NotImplementedError


class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al., 2020), as pytorch-grad-cam defines it: each channel
    is upsampled to the input size (bilinear, corners aligned), min-max normalised
    to a mask, the input is multiplied by it, and the target score of the masked
    input is read; the weights are the softmax of those scores over channels.

    Args:
        batch_size: masked inputs per forward (bounds memory).
        **options: see :class:`~netsight.cam.base.BaseCAM`.

    A constant channel's mask is taken as exactly zero (pytorch-grad-cam divides a
    rounding residue by ``1e-8`` there).
    """

    method = "scorecam"

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        flat = a.flatten(2)
        constant = flat.amax(2) == flat.amin(2)  # (B, C): all-zero masks
        channel_scores = torch.zeros(a.shape[:2], dtype=scores.dtype, device=scores.device)
        if bool(constant.any()):
            zero_scores = _zero_image_scores(self.model, x, targets)  # (B,)
            owners = constant.nonzero()[:, 0]
            channel_scores[constant] = zero_scores[owners].to(channel_scores.dtype)
        pairs = (~constant).nonzero()  # (P, 2): image, channel
        size = (x.shape[-2], x.shape[-1])
        for chunk in torch.split(pairs, self.batch_size):
            images, channels = chunk[:, 0], chunk[:, 1]
            masks = _masks(a[images, channels], size)
            out = self.model(x[images] * masks)
            channel_scores[images, channels] = targets.scores(out, images).to(channel_scores.dtype)
        return torch.softmax(channel_scores, dim=1).to(a.dtype)


def _zero_image_scores(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Each image's target score on an all-zero input (one forward when the output
    is a tensor)."""
    out = model(torch.zeros_like(x[:1]))
    if isinstance(out, torch.Tensor):
        return targets.scores(out.expand(x.shape[0], *out.shape[1:]))
    return targets.scores(model(torch.zeros_like(x)))


def _masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, h, w)`` maps upsampled to ``(n, 1, H, W)`` masks in ``[0, 1]``."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)
    low = up.amin(dim=(1, 2, 3), keepdim=True)
    high = up.amax(dim=(1, 2, 3), keepdim=True)
    return (up - low) / (high - low + 1e-8)


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channel ``k`` weighs
    ``(y - y_k) / y``, where ``y`` is the target score and ``y_k`` the score with
    channel ``k`` of the target layer set to zero.

    Only the part of the model after the target layer is re-run: a forward hook
    replaces the layer's output for one image with a chunk of ablated copies, so
    the layers before it run once per chunk on a single image. Every chunk carries
    one unablated copy as a control; if its score differs from the plain forward
    (a model that mixes the batch, or reads the batch size before the layer), the
    whole input is repeated instead. All-zero channels are skipped (weight 0).

    pytorch-grad-cam ablates to zero only when the layer's minimum is 0 and
    otherwise to ``min - 1e7``; netsight always ablates to zero, as in the paper.

    Args:
        batch_size: ablated copies per forward (bounds memory).
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "ablationcam"

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        positions = self._channel_positions(name, activation)  # (C, P) flat indices
        active = a.flatten(2).ne(0).any(2)  # (B, C)
        ablated = scores[:, None].expand(a.shape[:2]).clone()
        chunk_size = max(1, self.batch_size - 1)  # room for the control copy
        for image in range(x.shape[0]):
            channels = active[image].nonzero().flatten()
            for chunk in torch.split(channels, chunk_size):
                ablated[image, chunk] = self._ablated_scores(
                    x, image, module, activation, positions[chunk], targets, scores
                )
        base = scores[:, None]
        return ((base - ablated) / base).to(a.dtype)

    def _channel_positions(self, name: str, activation: torch.Tensor) -> torch.Tensor:
        """For each channel of the spatial map, its flat positions in one image's
        raw layer output (works through any reshape that only moves values)."""
        count = activation[0].numel()
        index = torch.arange(count, dtype=torch.float64, device=activation.device)
        grid = self.spatial(name, index.view(1, *activation.shape[1:]))
        return grid[0].flatten(1).long()

    def _ablated_scores(
        self,
        x: torch.Tensor,
        image: int,
        module: nn.Module,
        activation: torch.Tensor,
        positions: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        n = positions.shape[0]
        copies = activation[image].expand(n + 1, *activation.shape[1:]).clone()
        rows = torch.arange(n, device=copies.device)[:, None].expand_as(positions)
        copies.view(n + 1, -1)[rows, positions] = 0  # the last copy is the control
        owners = torch.full((n + 1,), image, dtype=torch.long, device=scores.device)
        fast = _suffix_scores(self.model, x[image : image + 1], module, copies, targets, owners)
        if fast is not None and _close(fast[-1], scores[image]):
            return fast[:-1]
        repeated = x[image : image + 1].expand(n + 1, *x.shape[1:])
        full = _suffix_scores(self.model, repeated, module, copies, targets, owners)
        if full is None or not _close(full[-1], scores[image]):
            raise RuntimeError(
                f"{type(self.model).__name__}: replacing the target layer's output with its own "
                f"value changed the target score; the model is not deterministic in eval mode, "
                f"so Ablation-CAM cannot be computed"
            )
        return full[:-1]


def _suffix_scores(
    model: nn.Module,
    x: torch.Tensor,
    module: nn.Module,
    copies: torch.Tensor,
    targets: Targets,
    owners: torch.Tensor,
) -> torch.Tensor | None:
    """Target scores of ``model(x)`` with ``module``'s output replaced by ``copies``;
    ``None`` when the model cannot run that way."""

    def replace(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return copies
        return type(output)([copies, *output[1:]])

    with HookSet() as hooks:
        hooks.add(module.register_forward_hook(replace))
        try:
            out = model(x)
            result = targets.scores(out, owners)
        except (RuntimeError, IndexError, ValueError):
            return None
    return result if result.shape[0] == copies.shape[0] else None


def _close(value: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool(torch.isclose(value, expected.to(value.dtype), rtol=1e-4, atol=1e-5))
