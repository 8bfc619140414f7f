"""Which dimension of a layer's output holds the channels, read from the model.

A CAM weighs the channels of a spatial map, so it must know the map's layout.
Convolutional layers give ``(B, C, H, W)``; timm's and torchvision's Swin, and
the inside of ConvNeXt blocks, keep channels last, ``(B, H, W, C)``; vision
transformers give token sequences ``(B, N, C)`` with some prefix tokens (class,
distillation, register tokens) before a grid of patch tokens. The shape alone
cannot tell ``(1, 7, 7, 768)`` from ``(1, 768, 7, 7)`` reliably, so the layout
comes from the model:

1. **Channel evidence.** The layer's channel count is the feature size of the
   module that produced its output: the layer itself when it has parameters, else
   the last module with parameters inside it (a block ends with its last
   projection or norm), else the last one with parameters before it in the
   model's module order (a ReLU after a convolution). The feature size is
   ``out_channels``, ``out_features``, ``num_features``, ``num_channels``,
   ``normalized_shape[-1]`` or ``embedding_dim``, or the length of a 1-D
   parameter (a layer scale). The output dimension of that size is the channel
   dimension: dim 1 means ``(B, C, H, W)``; dim 3 means ``(B, H, W, C)``; the last
   dim of a 3-D output means tokens.
2. **The input's size**, when the channel evidence matches both or neither
   dimension (a concatenation, as in Inception's blocks, has more channels than
   its last branch): a spatial dimension cannot be larger than the input image,
   so ``(1, 2048, 8, 8)`` from a 299 x 299 input is channels first.
3. **Tokens.** The number of prefix tokens is the model's own
   ``num_prefix_tokens`` (timm's ViT family: class, distillation and register
   tokens) or its ``class_token`` (torchvision's ViT); otherwise 0 or 1, whichever
   leaves a patch grid with the input's aspect ratio.

Where none of this decides, :func:`layer_layout` raises and says what to pass
(``reshape=`` or another ``target_layers=``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import nn

from netsight.errors import LayoutError

__all__ = ["LayerLayout", "Layout", "LayoutError", "layer_layout"]


class Layout(enum.StrEnum):
    """How a layer's output holds its channels."""

    NCHW = "nchw"  #: ``(B, C, H, W)``
    NHWC = "nhwc"  #: ``(B, H, W, C)``, channels last
    TOKENS = "tokens"  #: ``(B, N, C)``: ``prefix`` tokens, then an ``H x W`` grid


@dataclass(frozen=True)
class LayerLayout:
    """The layout of one layer's output and how to read it as ``(B, C, H, W)``.

    Attributes:
        layout: see :class:`Layout`.
        channels: the channel count.
        prefix: tokens before the patch grid (``TOKENS`` only).
        grid: the patch grid ``(h, w)`` (``TOKENS`` only).
        evidence: how the layout was decided, for messages.
    """

    layout: Layout
    channels: int
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)
    evidence: str = ""

    def to_nchw(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (any batch size, this layer's layout) as ``(B, C, H, W)``."""
        if self.layout is Layout.NCHW:
            return tensor
        if self.layout is Layout.NHWC:
            return tensor.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = tensor[:, self.prefix : self.prefix + h * w, :]
        return patches.reshape(tensor.shape[0], h, w, tensor.shape[-1]).permute(0, 3, 1, 2)


def _own_feature_size(module: nn.Module) -> int | None:
    """The feature size of what ``module`` itself produces, from its attributes."""
    if not module._parameters:
        return None
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    for param in module._parameters.values():
        if param is not None and param.dim() == 1:
            return int(param.shape[0])
    return None


def _evidence(
    model: nn.Module,
    module: nn.Module,
    name: str,
    order: list[tuple[str, nn.Module]] | None,
) -> tuple[int, str] | None:
    """(channel count, which module said so) for ``module``'s output, or None."""
    inside = list(module.named_modules(prefix=name))
    for sub_name, sub in reversed(inside):
        size = _own_feature_size(sub)
        if size is not None:
            return size, sub_name or "the model"
    if order is None:
        order = list(model.named_modules())
    position = next((i for i, (_, m) in enumerate(order) if m is module), None)
    if position is None:
        return None
    for sub_name, sub in reversed(order[:position]):
        size = _own_feature_size(sub)
        if size is not None:
            return size, sub_name or "the model"
    return None


def _prefix_tokens(model: nn.Module) -> int | None:
    """Prefix tokens the model declares (timm's ``num_prefix_tokens``, torchvision
    ViT's ``class_token``), or None."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    if isinstance(getattr(model, "class_token", None), torch.Tensor):
        return 1
    return None


def _unrolled_grid(model: nn.Module) -> tuple[int, int] | None:
    """The token grid from which on a model that reorders its tokens (timm's Hiera,
    whose ``Unroll`` puts mask units together) has them in raster order again: its
    last stage, where every unroll stride has been pooled away. None for models
    that keep raster order throughout."""
    for module in model.modules():
        if type(module).__name__ != "Unroll":
            continue
        size, schedule = getattr(module, "size", None), getattr(module, "schedule", None)
        if not isinstance(size, (list, tuple)) or not isinstance(schedule, (list, tuple)):
            continue
        dims = [int(d) for d in size]
        for strides in schedule:
            dims = [d // int(s) for d, s in zip(dims, strides, strict=False)]
        if len(dims) == 2:
            return dims[0], dims[1]
    return None


def _grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    """An ``h x w`` grid of ``count`` cells with the input's aspect ratio."""
    if count < 2 or height <= 0 or width <= 0:
        return None
    h = round(math.sqrt(count * height / width))
    for cand in (h, h - 1, h + 1):
        if cand > 0 and count % cand == 0:
            w = count // cand
            # the input's aspect ratio, give or take one cell of rounding
            if abs(cand / w - height / width) <= height / width / min(cand, w):
                return cand, w
    return None


def _refuse(name: str, shape: list[int], why: str) -> LayoutError:
    return LayoutError(
        f"cannot tell the layout of layer {name!r} (output {shape}): {why}; pass "
        f"reshape= (a function returning (B, C, H, W)) or choose another target_layers="
    )


def layer_layout(
    model: nn.Module,
    module: nn.Module,
    name: str,
    output: torch.Tensor,
    input_hw: tuple[int, int],
    *,
    order: list[tuple[str, nn.Module]] | None = None,
) -> LayerLayout:
    """The layout of ``module``'s ``output`` (see the module docstring).

    Args:
        model: the whole network (for the evidence before the layer and its
            prefix tokens).
        module: the layer.
        name: its qualified name, for messages.
        output: one of its outputs (any batch size).
        input_hw: the height and width of the input image.
        order: ``list(model.named_modules())``, when the caller has it already.

    Raises:
        LayoutError: the layout cannot be told; the message says what to pass.
    """
    shape = list(output.shape)
    found = _evidence(model, module, name, order)
    channels, source = found if found is not None else (None, "")
    height, width = input_hw
    if output.dim() == 4:
        first, last = shape[1] == channels, shape[3] == channels
        if first != last:
            layout = Layout.NCHW if first else Layout.NHWC
            return LayerLayout(layout, shape[1] if first else shape[3], evidence=source)
        fits_first = shape[2] <= height and shape[3] <= width
        fits_last = shape[1] <= height and shape[2] <= width
        if fits_first != fits_last:
            layout = Layout.NCHW if fits_first else Layout.NHWC
            what = "spatial sizes no larger than the input"
            return LayerLayout(layout, shape[1] if fits_first else shape[3], evidence=what)
        why = (
            f"its channel count ({channels}, from {source!r}) matches both dimension 1 and 3"
            if first
            else "neither dimension 1 nor 3 matches the channel count of the module that "
            f"produced it ({channels}, from {source!r})"
            if channels is not None
            else "no module with parameters produced it"
        )
        raise _refuse(name, shape, why)
    if output.dim() == 3:
        count, width_c = shape[1], shape[2]
        if channels is not None and shape[1] == channels and shape[2] != channels:
            raise _refuse(name, shape, "it is a 1-D map (B, C, L), channels first, not tokens")
        if channels is not None and width_c != channels:
            raise _refuse(
                name,
                shape,
                f"its last dimension is not the channel count ({channels}, from {source!r})",
            )
        declared = _prefix_tokens(model)
        options = [declared] if declared is not None else [0, 1]
        for prefix in options:
            grid = _grid(count - prefix, height, width)
            if grid is not None:
                raster = _unrolled_grid(model)
                if raster is not None and grid != raster:
                    raise _refuse(
                        name,
                        shape,
                        f"the model reorders its tokens into mask units ({type(model).__name__}'s "
                        f"Unroll) until its last stage, whose grid is {raster[0]} x {raster[1]}; "
                        f"this layer's {grid[0]} x {grid[1]} tokens are not in raster order "
                        f"(choose a layer of the last stage)",
                    )
                return LayerLayout(Layout.TOKENS, width_c, prefix, grid, evidence=source)
        tried = f"{declared} prefix tokens" if declared is not None else "0 or 1 prefix tokens"
        raise _refuse(
            name,
            shape,
            f"{count} tokens minus {tried} do not make a patch grid with the input's "
            f"aspect ratio ({height} x {width})",
        )
    raise _refuse(name, shape, "it is not a (B, C, H, W), (B, H, W, C) or (B, N, C) tensor")
