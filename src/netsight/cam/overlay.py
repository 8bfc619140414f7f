"""Draw a class activation map over its image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from netsight.images import colorize, to_pil

__all__ = ["overlay"]


def overlay(
    image: Image.Image | torch.Tensor,
    cam_map: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Image.Image:
    """Blend a map, coloured with a matplotlib colormap, over an image.

    Args:
        image: a PIL image, or a ``(C, H, W)`` float tensor in ``[0, 1]`` with 1 or 3
            channels (use :func:`netsight.denormalize` on a normalised input first).
        cam_map: a ``(h, w)`` (or ``(1, h, w)``) map in ``[0, 1]``, e.g. ``maps[0]``;
            resized bilinearly to the image, NaN drawn as 0.
        alpha: weight of the heat map (0: only the image, 1: only the map).
        cmap: matplotlib colormap name.

    Returns:
        An RGB PIL image of the image's size.

    Raises:
        ValueError: shapes that are not an image and a 2-D map, or alpha outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    base = _image_tensor(image)
    heat = torch.as_tensor(cam_map).detach().float().cpu()
    if heat.dim() == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.dim() != 2:
        raise ValueError(f"cam_map: expected an (H, W) map, got shape {list(heat.shape)}")
    heat = torch.nan_to_num(heat, nan=0.0).clamp(0, 1)
    size = (base.shape[1], base.shape[2])
    if tuple(heat.shape) != size:
        heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[
            0, 0
        ]
    colored = colorize(heat[None].clamp(0, 1), cmap)[0]
    return to_pil((1.0 - alpha) * base + alpha * colored)


def _image_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` float in ``[0, 1]`` on the CPU."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array.transpose(2, 0, 1).copy())
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a PIL image or a tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"image: expected a (C, H, W) tensor with 1 or 3 channels, got {list(image.shape)} "
            f"(pass one image of a batch, e.g. x[0])"
        )
    tensor = torch.nan_to_num(image.detach().float().cpu(), nan=0.0).clamp(0, 1)
    return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor
