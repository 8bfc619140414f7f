"""The first principal component of a stack of channel maps: Eigen-CAM's map, and
the ``eigen_smooth=True`` option of every channel-weighting method."""

from __future__ import annotations

import torch

__all__ = ["orient_to_activity", "principal_projection"]


def principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` maps projected on their first principal direction.

    Each image's positions are the samples and its channels the features; the
    features are centred per channel (as pytorch-grad-cam's ``get_2d_projection``
    does) and the centred samples are projected on the first right singular vector.

    The sign of a principal direction is arbitrary (pytorch-grad-cam keeps whatever
    its SVD returns). netsight picks the sign whose projection correlates
    positively with the channel sum ``activations.sum(1)``: for Eigen-CAM the map
    highlights where the layer is active; for ``eigen_smooth=True`` the smoothed map
    agrees with the map it smooths (the channel sum of the weighted activations).

    Example:
        >>> principal_projection(torch.randn(2, 8, 7, 7)).shape
        torch.Size([2, 7, 7])

    Args:
        activations: ``(B, C, h, w)``; NaN values count as 0.

    Returns:
        ``(B, h, w)`` float32 maps (float64 for float64 input).
    """
    batch, _, height, width = activations.shape
    wide = torch.promote_types(activations.dtype, torch.float32)
    a = torch.nan_to_num(activations.to(wide), nan=0.0)
    rows = a.flatten(2).transpose(1, 2)  # (B, positions, C)
    centred = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None])[..., 0]  # (B, positions)
    result: torch.Tensor = orient_to_activity(projection, rows).view(batch, height, width)
    return result


def orient_to_activity(projection: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(B, P)`` projections, each negated where needed so that it correlates
    non-negatively with the channel sum of ``rows``, the ``(B, P, C)`` activations
    (positions x channels): where the layer is more active, the map is higher.

    The rule of every netsight map that is a principal (or kernel principal)
    component, whose sign is otherwise arbitrary (:func:`principal_projection`,
    :class:`~netsight.cam.KPCACAM`).
    """
    total = rows.sum(2).to(projection.dtype)
    agreement = ((total - total.mean(1, keepdim=True)) * projection).sum(1, keepdim=True)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return projection * sign
