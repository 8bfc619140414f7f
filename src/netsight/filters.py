"""Convolution kernels drawn as image grids (what the tutorials do with
``torchvision.utils.make_grid(layer.weight)``), with the chores done for you:
tiles are capped and the caption says what was left out, 3x3 kernels are zoomed
so they can be seen, NaN/Inf weights are drawn in magenta and counted, and
constant kernels never divide by zero.

Two outputs: :func:`filter_grid` is one RGB image (for TensorBoard, each tile
min-max scaled like ``make_grid``); :func:`plot_filters` is the figure for a page
or a projector: the weights on one colour scale centred at 0 with a colour bar,
numbered tiles, and ``"channels"`` as a filters x input-channels grid. The
tutorials' last picture, a kernel beside the feature map it produces, is
:func:`plot_kernel_and_map`.

Example:
    >>> grid = netsight.filter_grid(torchvision.models.resnet18(), "conv1")
    >>> grid.mode, grid.image.shape          # 64 colour tiles of the 7x7 RGB kernels
    ('rgb', torch.Size([3, 233, 233]))
    >>> writer.add_image("conv1", grid.image)  # SummaryWriter takes it as it is
    >>> fig = netsight.plot_filters(model, "layer1.0.conv1")
    >>> fig.savefig("filters.png")

How a layer is drawn (``mode``):

* ``"rgb"``: one colour tile per filter, its three input channels read as
  red, green and blue. Needs 3 input channels per group: the first layer of an
  RGB network.
* ``"channels"``: one grayscale (colormapped) tile per kernel, i.e. per
  (filter, input channel) pair. In :func:`filter_grid`'s image each grid row holds
  whole filters: with the
  default ``nrow`` a filter with ``C`` input channels takes ``C`` tiles (rows of at
  most 64 tiles; for more channels a filter spans several rows), and filters
  with few channels share a row so that the grid stays about square.
  Depthwise convolutions (one input channel per group) get one tile per filter.
* ``"mean"``: one tile per filter, its kernels averaged over the input channels.
* ``"auto"`` (default): ``"rgb"`` for an ungrouped layer with 3 input channels
  (a transposed one with 3 output channels); ``"channels"`` when every kernel
  fits in ``max_tiles``, and always for depthwise layers; otherwise ``"mean"``, so
  that a deep layer still shows (up to ``max_tiles``) *all* its filters rather
  than every kernel of only its first few filters. Ask for ``mode="channels"``
  to see single kernels of a deep layer.

Shapes: ``Conv1d`` kernels are drawn as tiles one pixel high (zoomed like any
other tile); ``Conv3d`` kernels ``(kt, kh, kw)`` are drawn at their middle depth
slice ``kt // 2`` (the caption says which). For transposed convolutions
(``ConvTranspose*``, weight ``(in, out / groups, ...)``) a grid row belongs to an
*input* channel and its tiles are the patterns it paints onto each output channel.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from netsight.capture import Capture, list_layers, resolve_layers
from netsight.images import NONFINITE_COLOR, check_colormap, colorize, normalize_maps
from netsight.options import FilterMode, Normalization

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CONV_TYPES",
    "MANIFEST",
    "SCHEMA",
    "FilterGrid",
    "filter_grid",
    "plot_filters",
    "plot_kernel_and_map",
    "save_filters",
]

#: The module types whose kernels can be drawn (their Lazy* variants included).
CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

#: The ``schema`` of the manifest :func:`save_filters` writes, and its file name.
SCHEMA = "netsight.filters/1"
MANIFEST = "filters.json"
#: Smallest tile side (in pixels) the automatic zoom aims for.
_MIN_TILE_PX = 24
#: Most tiles per grid row that ``"channels"`` puts side by side for one filter.
_MAX_ROW = 64


@dataclass(frozen=True)
class FilterGrid:
    """A grid image of a convolution's kernels and what it shows.

    Attributes:
        image: ``(3, H, W)`` float tensor in ``[0, 1]``, ready for
            ``SummaryWriter.add_image`` or :func:`netsight.images.to_pil`. Tiles are
            laid out by :func:`torchvision.utils.make_grid` (``padding`` pixels of
            white around and between them), also when there is only one tile.
        layer: the layer's qualified name.
        mode: the mode used (``"rgb"``, ``"channels"`` or ``"mean"``; never ``"auto"``).
        shown: tiles drawn.
        total: tiles there were (kernels in ``"channels"`` mode, filters otherwise).
        note: a one-line caption: the layer's shape, what is shown and left out,
            the zoom, the depth slice of a 3-d kernel, and NaN/Inf weights.
        nonfinite: NaN/Inf values in the layer's whole weight (the ones inside the
            drawn tiles are magenta; the note says how many were not drawn).
        nrow: tiles per grid row.
        upscale: the integer (nearest-neighbour) zoom of every tile.
    """

    image: torch.Tensor
    layer: str
    mode: str
    shown: int
    total: int
    note: str
    nonfinite: int
    nrow: int
    upscale: int


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layer, (str, nn.Module)):
        raise TypeError(
            f"layer: expected a layer name or a module of the model, got {type(layer).__name__}"
        )
    found = resolve_layers(model, layer)
    if len(found) != 1:
        names = ", ".join(list(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(
            f"layer: expected {layer!r} to name one layer, but it matches {len(found)}: {names}"
        )
    ((name, module),) = found.items()
    if not isinstance(module, CONV_TYPES):
        convs = list_layers(model, types=CONV_TYPES)
        if convs:
            listed = ", ".join(convs[:6]) + (
                f", ... ({len(convs)} in all)" if len(convs) > 6 else ""
            )
            where = f"convolutions in this model: {listed}"
        else:
            where = (
                "this model has no convolution (nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d) "
                "whose kernels could be drawn"
            )
        raise TypeError(f"layer {name!r} is a {type(module).__name__}, not a convolution; {where}")
    return name, module


def _weight_of(name: str, module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has not been initialised yet; "
            f"run one forward pass so the lazy layer creates its weight"
        )
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"layer {name!r}: expected a weight tensor, got {type(weight).__name__}")
    if weight.device.type == "meta":
        raise ValueError(
            f"layer {name!r} has its weight on the meta device ({list(weight.shape)}): there "
            f"are no values to draw; load real weights first (netsight.load_weights, or "
            f"model.to_empty(device='cpu') followed by load_state_dict)"
        )
    if weight.dim() not in (3, 4, 5):
        raise ValueError(
            f"layer {name!r}: expected a weight of 3 to 5 dimensions, got {list(weight.shape)}"
        )
    return weight.detach()


def _count_nonfinite(tensor: torch.Tensor) -> int:
    """NaN/Inf values in ``tensor``; a finite sum (one fast pass) proves there are none."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())  # a NaN/Inf, or a sum that overflowed


def _choose_mode(mode: str, per_group: int, groups: int, kernels: int, max_tiles: int) -> str:
    chosen = FilterMode.parse(mode, "mode")
    if chosen != FilterMode.AUTO:
        return chosen.value
    if per_group == 3 and groups == 1:
        return "rgb"
    if kernels <= max_tiles or per_group == 1:
        return "channels"
    return "mean"


def _default_channels_nrow(per_filter: int, filters: int) -> int:
    """Tiles per row for "channels": whole filters per row, about square overall."""
    if per_filter <= _MAX_ROW:
        together = max(1, round(math.sqrt(filters / per_filter)))
        return per_filter * min(together, filters)
    divisor = max(d for d in range(1, _MAX_ROW + 1) if per_filter % d == 0)
    return divisor if divisor >= _MAX_ROW // 4 else _MAX_ROW


@torch.no_grad()
def filter_grid(
    model: nn.Module,
    layer: str | nn.Module,
    *,
    mode: str = "auto",
    max_tiles: int = 256,
    nrow: int | None = None,
    normalize: bool = True,
    scale_each: bool = True,
    value_range: tuple[float, float] | None = None,
    cmap: str = "gray",
    padding: int = 1,
    upscale: int | None = None,
) -> FilterGrid:
    """Draw a convolution's kernels as one grid image.

    Args:
        model: the network; it is not changed (no hooks; the weight is read
            through a detached float copy on the CPU).
        layer: a qualified name (``"layer1.0.conv1"``; aliases and unique globs
            work, unknown names get close matches) or a module of ``model``.
        mode: ``"auto"``, ``"rgb"``, ``"channels"`` or ``"mean"`` (see the module
            docs; ``"auto"`` picks rgb / channels / mean in that order).
        max_tiles: never draw more tiles than this; the note says what was left
            out. ``"channels"`` keeps whole filters when it can (the first
            ``max_tiles // C`` filters), ``"rgb"``/``"mean"`` the first filters.
        nrow: tiles per grid row (default: a filter per row for ``"channels"``,
            about square otherwise).
        normalize: stretch values to ``[0, 1]``; ``False`` draws the raw weights,
            clipped to ``[0, 1]`` (``make_grid(normalize=False)`` as a viewer shows it).
        scale_each: each tile its own min/max (``make_grid(scale_each=True)``; an
            rgb tile is scaled over its three channels together); ``False``: one
            range over all the tiles drawn, so tiles can be compared.
        value_range: a fixed ``(low, high)`` mapped to ``[0, 1]`` instead (wins
            over ``normalize``/``scale_each``).
        cmap: matplotlib colormap of the one-channel modes (``"rgb"`` ignores it).
        padding: pixels of white around and between tiles.
        upscale: integer nearest-neighbour zoom of every tile (default: enough
            for the longer kernel side to reach about 24 px, so 3x3 becomes 24x24).

    Returns:
        A :class:`FilterGrid`; ``grid.image`` is ``(3, H, W)`` in ``[0, 1]``.

    Raises:
        KeyError: ``layer`` names nothing in the model (close matches listed).
        TypeError: the layer is not a convolution (the model's convolutions are
            listed) or the model has none.
        ValueError: weights on the meta device or not yet initialised, a mode
            that does not fit the layer, or an out-of-range option.

    Example:
        >>> grid = filter_grid(Vgg16Net(), "layer1.3", mode="channels", max_tiles=128)
        >>> grid.shown, grid.total
        (128, 4096)
        >>> print(grid.note)
        64 filters x 64 input channels = 4096 kernels; showing 128 (first 2 filters; 3968
        left out); 3x3 kernels; tiles zoomed 8x
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles: expected >= 1, got {max_tiles}")
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow: expected >= 1 or None, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding: expected >= 0, got {padding}")
    if upscale is not None and upscale < 1:
        raise ValueError(f"upscale: expected an integer >= 1 or None, got {upscale}")
    if value_range is not None and not float(value_range[0]) < float(value_range[1]):
        raise ValueError(f"value_range: expected (low, high) with low < high, got {value_range}")

    name, module, weight, kernel, chosen_mode = _layer_weights(model, layer, mode, max_tiles)
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    groups = int(getattr(module, "groups", 1))
    filters, per_group = int(weight.shape[0]), int(weight.shape[1])
    kernels = filters * per_group

    # Only the part that is drawn is copied (a 2048-channel layer stays cheap).
    if chosen_mode == "channels":
        if per_group >= max_tiles:
            n_filters, n_channels = 1, max_tiles
        else:
            n_filters, n_channels = min(filters, max_tiles // per_group), per_group
        part = weight[:n_filters, :n_channels]
    else:
        n_filters, n_channels = min(filters, max_tiles), per_group
        part = weight[:n_filters]
    part, depth_note = _planar(part, kernel)
    tiles = part.to(device="cpu", dtype=torch.float32, copy=True)  # (F, C, h, w)

    nonfinite = _count_nonfinite(weight)
    drawn_nonfinite = int((~torch.isfinite(tiles)).sum())
    height, width = int(tiles.shape[-2]), int(tiles.shape[-1])
    zoom = upscale if upscale is not None else max(1, math.ceil(_MIN_TILE_PX / max(height, width)))
    scaling = Normalization.EACH if scale_each else Normalization.SHARED
    if not normalize and value_range is None:
        scaling = Normalization.NONE

    if chosen_mode == "rgb":
        count = tiles.shape[0]
        scaled = normalize_maps(tiles.reshape(count, 3 * height, width), scaling, value_range)
        rgb = scaled.reshape(count, 3, height, width)
        bad = (~torch.isfinite(rgb)).any(dim=1, keepdim=True)
        flag = torch.tensor(NONFINITE_COLOR, dtype=torch.float32).view(1, 3, 1, 1)
        rgb = torch.where(bad, flag, rgb)
        shown, total = count, filters
    else:
        maps = tiles.mean(dim=1) if chosen_mode == "mean" else tiles.flatten(0, 1)
        rgb = colorize(normalize_maps(maps, scaling, value_range), cmap)
        shown = int(maps.shape[0])
        total = kernels if chosen_mode == "channels" else filters
    if zoom > 1:
        rgb = rgb.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)

    if nrow is None:
        if chosen_mode == "channels":
            nrow = _default_channels_nrow(n_channels, n_filters)
        else:
            nrow = max(1, math.ceil(math.sqrt(shown)))
    nrow = min(nrow, shown)
    if shown == 1:  # make_grid returns a lone tile without its padding
        image = nn.functional.pad(rgb[0], [padding] * 4, value=1.0)
    else:
        from torchvision.utils import make_grid  # slow to import: only when drawing

        image = make_grid(rgb, nrow=nrow, padding=padding, pad_value=1.0)

    note = _note(
        mode=chosen_mode,
        transposed=transposed,
        filters=filters,
        per_group=per_group,
        groups=groups,
        kernel=kernel,
        n_filters=n_filters,
        n_channels=n_channels,
        shown=shown,
        zoom=zoom,
        depth_note=depth_note,
        nonfinite=nonfinite,
        drawn_nonfinite=drawn_nonfinite,
    )
    return FilterGrid(
        image=image.clamp(0.0, 1.0),
        layer=name,
        mode=chosen_mode,
        shown=shown,
        total=total,
        note=note,
        nonfinite=nonfinite,
        nrow=nrow,
        upscale=zoom,
    )


def _note(
    *,
    mode: str,
    transposed: bool,
    filters: int,
    per_group: int,
    groups: int,
    kernel: tuple[int, ...],
    n_filters: int,
    n_channels: int,
    shown: int,
    zoom: int,
    depth_note: str,
    nonfinite: int,
    drawn_nonfinite: int,
) -> str:
    row_word, col_word = (
        ("input channel", "output channel") if transposed else ("filter", "input channel")
    )
    if groups == 1:
        grouping = ""
    elif per_group == 1 and not transposed:
        grouping = f" (depthwise, groups={groups})"
    else:
        grouping = f" per group (groups={groups})"
    kernels = filters * per_group
    head = (
        f"{_plural(filters, row_word)} x {_plural(per_group, col_word)}{grouping} "
        f"= {_plural(kernels, 'kernel')}"
    )
    if transposed:
        head = "transposed convolution: " + head
    parts = [head]
    if mode == "channels":
        if shown == kernels:
            parts.append(f"showing all {kernels}")
        elif n_channels < per_group:
            parts.append(
                f"showing {shown} (input channels 0-{n_channels - 1} of the first "
                f"{row_word}; {kernels - shown} left out)"
                if not transposed
                else f"showing {shown} (output channels 0-{n_channels - 1} of the first "
                f"input channel; {kernels - shown} left out)"
            )
        else:
            parts.append(
                f"showing {shown} (first {_plural(n_filters, row_word)}; "
                f"{kernels - shown} left out)"
            )
    else:
        what = "colour tiles" if mode == "rgb" else "tiles"
        if n_filters == filters:
            showing = f"showing all {_plural(filters, row_word)} as {what}"
        else:
            showing = (
                f"showing {n_filters} of {filters} {row_word}s as {what} "
                f"(first {n_filters}; {filters - n_filters} left out)"
            )
        if mode == "mean":
            showing += f", each averaged over its {_plural(per_group, col_word)}"
        parts.append(showing)
    if len(kernel) == 1:
        parts.append(f"length-{kernel[0]} kernels (1-d)")
    else:
        parts.append("x".join(str(k) for k in kernel) + " kernels")
    if depth_note:
        parts.append(depth_note)
    if zoom > 1:
        parts.append(f"tiles zoomed {zoom}x")
    if nonfinite:
        hidden = nonfinite - drawn_nonfinite
        flagged = f"{_plural(nonfinite, 'NaN/Inf weight')}"
        if hidden:
            flagged += f" ({drawn_nonfinite} drawn in magenta, {hidden} in parts not shown)"
        else:
            flagged += " drawn in magenta"
        parts.append(flagged)
    return "; ".join(parts)


#: Most filters (rows) and input channels (columns) the ``"channels"`` figure draws.
_GRID_MAX = 32


@dataclass(frozen=True)
class _Drawing:
    """What :func:`plot_filters` draws for one layer (the figure's own selection)."""

    layer: str
    mode: str
    transposed: bool
    tiles: torch.Tensor  # (N, h, w), or (N, 3, h, w) for "rgb"
    ids: tuple[int, ...]  # the filter of each tile ("rgb", "mean", one-channel "channels")
    rows: tuple[int, ...]  # "channels" grid: the filters (rows) ...
    cols: tuple[int, ...]  # ... and input channels (columns) drawn
    shown: int
    total: int
    nonfinite: int
    note: str


@torch.no_grad()
def _select(model: nn.Module, layer: str | nn.Module, mode: str, max_tiles: int) -> _Drawing:
    if max_tiles < 1:
        raise ValueError(f"max_tiles: expected >= 1, got {max_tiles}")
    name, module, weight, kernel, chosen_mode = _layer_weights(model, layer, mode, max_tiles)
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    groups = int(getattr(module, "groups", 1))
    filters, per_group = int(weight.shape[0]), int(weight.shape[1])
    kernels = filters * per_group
    grid = chosen_mode == "channels" and per_group > 1
    if grid:
        cols = min(
            per_group, _GRID_MAX, max(math.isqrt(max_tiles), max_tiles // min(filters, _GRID_MAX))
        )
        rows = min(filters, _GRID_MAX, max(1, max_tiles // cols))
        part = weight[:rows, :cols]
    else:
        rows, cols = min(filters, max_tiles), per_group
        part = weight[:rows]
    part, depth_note = _planar(part, kernel)
    part = part.to(device="cpu", dtype=torch.float32, copy=True)  # (F, C, h, w)
    nonfinite = _count_nonfinite(weight)
    drawn_nonfinite = int((~torch.isfinite(part)).sum())
    if chosen_mode == "rgb":
        tiles, shown, total = part, rows, filters
    elif chosen_mode == "mean":
        tiles, shown, total = part.mean(dim=1), rows, filters
    elif grid:
        tiles, shown, total = part.flatten(0, 1), rows * cols, kernels
    else:  # one input channel per filter: one tile per filter
        tiles, shown, total = part[:, 0], rows, kernels
    if grid:
        note = _grid_note(
            transposed=transposed,
            filters=filters,
            per_group=per_group,
            groups=groups,
            kernel=kernel,
            rows=rows,
            cols=cols,
            depth_note=depth_note,
            nonfinite=nonfinite,
            drawn_nonfinite=drawn_nonfinite,
        )
    else:
        note = _note(
            mode=chosen_mode,
            transposed=transposed,
            filters=filters,
            per_group=per_group,
            groups=groups,
            kernel=kernel,
            n_filters=rows,
            n_channels=1 if chosen_mode == "channels" else per_group,
            shown=shown,
            zoom=1,
            depth_note=depth_note,
            nonfinite=nonfinite,
            drawn_nonfinite=drawn_nonfinite,
        )
    return _Drawing(
        layer=name,
        mode=chosen_mode,
        transposed=transposed,
        tiles=tiles,
        ids=tuple(range(rows)),
        rows=tuple(range(rows)),
        cols=tuple(range(cols)) if grid else (),
        shown=shown,
        total=total,
        nonfinite=nonfinite,
        note=note,
    )


def _grid_note(
    *,
    transposed: bool,
    filters: int,
    per_group: int,
    groups: int,
    kernel: tuple[int, ...],
    rows: int,
    cols: int,
    depth_note: str,
    nonfinite: int,
    drawn_nonfinite: int,
) -> str:
    """The note of a filters x input-channels grid: the :func:`_note` of what is
    there, with what is shown said as rows and columns."""
    kernels = filters * per_group
    shown = rows * cols
    full = _note(
        mode="channels",
        transposed=transposed,
        filters=filters,
        per_group=per_group,
        groups=groups,
        kernel=kernel,
        n_filters=rows,
        n_channels=per_group,
        shown=kernels,
        zoom=1,
        depth_note=depth_note,
        nonfinite=nonfinite,
        drawn_nonfinite=drawn_nonfinite,
    )
    if shown == kernels:
        return full
    row_word, col_word = (
        ("input channels", "output channels") if transposed else ("filters", "input channels")
    )
    head, _, rest = full.partition("; showing all ")
    _, _, tail = rest.partition("; ")
    showing = (
        f"showing {shown} ({row_word} 0-{rows - 1} x {col_word} 0-{cols - 1}; "
        f"{kernels - shown} left out)"
    )
    return "; ".join(part for part in (head, showing, tail) if part)


def _tile_rgb(tiles: torch.Tensor, plan: Any) -> np.ndarray:
    """RGB tiles ``(N, 3, h, w)`` in ``[0, 1]`` as one ``(H, W, 3)`` mosaic, white padding."""
    from torchvision.utils import make_grid

    x = tiles
    if plan.upscale > 1:
        x = x.repeat_interleave(plan.upscale, dim=2).repeat_interleave(plan.upscale, dim=3)
    if x.shape[0] == 1:
        mosaic = nn.functional.pad(x[0], [plan.padding] * 4, value=1.0)
    else:
        mosaic = make_grid(x, nrow=plan.ncol, padding=plan.padding, pad_value=1.0)
    return mosaic.permute(1, 2, 0).numpy()


def _draw(
    drawing: _Drawing,
    *,
    scale_each: bool = False,
    value_range: tuple[float, float] | None = None,
    cmap: str | None = None,
    nrow: int | None = None,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_filters`."""
    from netsight._figures import FONT_PT
    from netsight.images import (
        color_scale,
        draw_tiles,
        label_rows_and_columns,
        plan_tiles,
        scaled_each,
        thinned,
        titled_figure,
    )

    small, label = FONT_PT["small"], FONT_PT["label"]
    tiles = drawing.tiles
    h, w = int(tiles.shape[-2]), int(tiles.shape[-1])
    grid = bool(drawing.cols)
    row_word, col_word = (
        ("input channel", "output channel") if drawing.transposed else ("filter", "input channel")
    )
    plan = plan_tiles(
        int(tiles.shape[0]),
        (h, w),
        ncol=len(drawing.cols) if grid else nrow,
        max_tile_in=1.6,
        labels=not grid,
    )
    width, height = plan.size_in
    labelled = plan.labelled or grid
    extra_w = 0.3 + (0.0 if drawing.mode == "rgb" else 1.3) + (0.0 if plan.labelled else 0.7)
    extra_h = 0.3 + (0.0 if plan.labelled else 0.45)
    heading = title if title is not None else drawing.layer
    if drawing.mode == "rgb":
        bound = _rgb_bound(tiles, scale_each)
        how = (
            "drawn in colour: each filter's 3 input-channel weights as red, green and blue "
            f"(grey = 0; full colour at ±{bound:.3g}"
            + (", each tile its own scale)" if scale_each else ", one scale for all tiles)")
        )
    elif scale_each:
        how = "each tile on its own scale (shapes only: sizes cannot be compared)"
    else:
        how = "one colour scale centred at 0 for all tiles"
    fig = titled_figure(
        max(4.5, width + extra_w), max(2.0, height + extra_h), f"{heading}\n{drawing.note}\n{how}"
    )
    ax = fig.add_subplot()
    ids = list(drawing.ids)
    if drawing.mode == "rgb":
        rgb = _rgb_tiles(tiles, scale_each)
        ax.imshow(_tile_rgb(rgb, plan), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if plan.labelled:
            for index, number in enumerate(ids):
                x, y = plan.origin(index)
                ax.text(x, y, str(number), ha="left", va="bottom", fontsize=small)
    else:
        values = tiles
        if scale_each:
            values, _ = scaled_each(tiles)
            scale = color_scale(values, cmap=cmap, value_range=(-1.0, 1.0))
            bar_label = "weight / the tile's largest |weight|"
        else:
            scale = color_scale(values, cmap=cmap, value_range=value_range, centred=True)
            bar_label = "weight" + (" (mean over input channels)" if drawing.mode == "mean" else "")
        image = draw_tiles(
            ax, values, plan, scale, labels=None if grid else [str(i) for i in ids], font_pt=small
        )
        bar = fig.colorbar(image, ax=ax, shrink=0.8 if height > 2 else 1.0, aspect=25)
        bar.set_label(bar_label, fontsize=label)
        bar.ax.tick_params(labelsize=small)
    if grid:
        row_in = (plan.tile[0] + plan.padding) * plan.unit_in
        col_in = (plan.tile[1] + plan.padding) * plan.unit_in
        rows = thinned(len(drawing.rows), row_in, 0.17)
        cols = thinned(len(drawing.cols), col_in, 0.3)
        ys, xs = plan.row_centres(), plan.col_centres()
        ax.set_yticks([ys[r] for r in rows], [str(drawing.rows[r]) for r in rows], fontsize=small)
        ax.set_xticks([xs[c] for c in cols], [str(drawing.cols[c]) for c in cols], fontsize=small)
        ax.tick_params(length=0, pad=1)
        ax.set_ylabel(row_word, fontsize=label)
        ax.set_xlabel(col_word, fontsize=label)
    elif not labelled:
        label_rows_and_columns(ax, plan, ids, row_word, font_pt=small, label_pt=label)
    return fig


def _rgb_bound(tiles: torch.Tensor, scale_each: bool) -> float:
    finite = tiles[torch.isfinite(tiles)]
    bound = float(finite.abs().max()) if finite.numel() else 0.0
    return bound if bound > 0 else 1.0


def _rgb_tiles(tiles: torch.Tensor, scale_each: bool) -> torch.Tensor:
    """RGB kernels ``(N, 3, h, w)`` as colours: ``0.5 + w / (2 * bound)``, grey at 0,
    the bound the largest ``|weight|`` (of each tile, or of them all); NaN/Inf magenta."""
    from netsight.images import NONFINITE_COLOR

    finite = torch.isfinite(tiles)
    clean = torch.where(finite, tiles, torch.zeros_like(tiles))
    if scale_each:
        bound = clean.abs().amax(dim=(1, 2, 3), keepdim=True)
        bound = torch.where(bound > 0, bound, torch.ones_like(bound))
    else:
        bound = torch.tensor(_rgb_bound(tiles, False))
    rgb = (0.5 + clean / (2 * bound)).clamp(0.0, 1.0)
    bad = (~finite).any(dim=1, keepdim=True)
    flag = torch.tensor(NONFINITE_COLOR, dtype=torch.float32).view(1, 3, 1, 1)
    return torch.where(bad, flag, rgb)


def _layer_weights(
    model: nn.Module, layer: str | nn.Module, mode: str, max_tiles: int
) -> tuple[str, nn.Module, torch.Tensor, tuple[int, ...], str]:
    """``(name, module, weight, kernel size, mode)`` of the convolution to draw; the
    mode is ``mode`` resolved for this layer (``"auto"`` chosen; ``"rgb"`` checked)."""
    name, module = _find_layer(model, layer)
    weight = _weight_of(name, module)
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    groups = int(getattr(module, "groups", 1))
    filters, per_group = int(weight.shape[0]), int(weight.shape[1])
    kernel = tuple(int(k) for k in weight.shape[2:])
    chosen = _choose_mode(mode, per_group, groups, filters * per_group, max_tiles)
    if chosen == "rgb" and per_group != 3:
        raise ValueError(
            f"mode='rgb' needs 3 {'output' if transposed else 'input'} channels per group, "
            f"but layer {name!r} has {per_group}; use mode='channels' or 'mean'"
        )
    return name, module, weight, kernel, chosen


def _planar(part: torch.Tensor, kernel: Sequence[int]) -> tuple[torch.Tensor, str]:
    """Kernels ``(F, C, *kernel)`` as 2-D tiles ``(F, C, h, w)``, and what was done:
    a 3-D kernel's middle depth slice, a 1-D kernel as tiles one pixel high."""
    if len(kernel) == 3:  # (kt, kh, kw): the middle depth slice
        middle = kernel[0] // 2
        return part[:, :, middle], f"middle depth slice {middle} of 0-{kernel[0] - 1} drawn"
    if len(kernel) == 1:  # (k,): tiles one pixel high
        return part.unsqueeze(2), ""
    return part, ""


def plot_filters(
    model: nn.Module,
    layer: str | nn.Module,
    *,
    mode: str = "auto",
    max_tiles: int = 256,
    nrow: int | None = None,
    normalize: bool = True,
    scale_each: bool = False,
    value_range: tuple[float, float] | None = None,
    cmap: str | None = None,
    padding: int = 1,
    upscale: int | None = None,
    title: str | None = None,
) -> Figure:
    """A matplotlib Figure of a convolution's kernels: the weights themselves, on one
    colour scale centred at 0 (a diverging colormap, blue below 0 and red above)
    explained by a colour bar, every tile numbered.

    * ``"channels"``: a grid with one row per filter and one column per input
      channel (at most 32 of each, and ``max_tiles`` in all; the title says what was
      left out), rows and columns labelled; a layer with one input channel per
      filter (depthwise, or a first layer on grey images) gets one numbered tile
      per filter.
    * ``"mean"``: one numbered tile per filter, averaged over its input channels.
    * ``"rgb"``: the first layer of an RGB network in colour, each filter's three
      input-channel weights as red, green and blue, grey at 0 (the title says so
      and gives the weight of full colour; no colour bar, the colours are the
      channels).
    * ``"auto"``: as :func:`filter_grid` chooses.

    The title names the layer (or ``title``), what is shown and left out, and how
    the colours are scaled. Built with the object-oriented API (no pyplot state):
    nothing is shown, call ``fig.savefig(...)`` or display it in a notebook.

    Args:
        model, layer, mode, max_tiles: as :func:`filter_grid`.
        nrow: tiles per row of the ``"mean"``/``"rgb"``/one-channel figures
            (default: about square); the ``"channels"`` grid has a row per filter.
        normalize, padding, upscale: shape :func:`filter_grid`'s image only; the
            figure always shows the weights on a colour bar and lays tiles out itself.
        scale_each: each tile on its own scale (divided by its largest ``|weight|``),
            shapes only; the default is one scale, so that tiles can be compared.
        value_range: a fixed ``(low, high)`` for the colour scale.
        cmap: a matplotlib colormap (default ``RdBu_r``).
        title: the heading (default: the layer's name).

    Example:
        >>> fig = plot_filters(torchvision.models.resnet18(), "layer4.1.conv2", mode="channels")
        >>> fig.savefig("layer4.png", dpi=90)       # filters 0-15 x input channels 0-15
    """
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow: expected >= 1 or None, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding: expected >= 0, got {padding}")
    if upscale is not None and upscale < 1:
        raise ValueError(f"upscale: expected an integer >= 1 or None, got {upscale}")
    if value_range is not None and not float(value_range[0]) < float(value_range[1]):
        raise ValueError(f"value_range: expected (low, high) with low < high, got {value_range}")
    if cmap is not None:
        check_colormap(cmap)
    drawing = _select(model, layer, mode, max_tiles)
    return _draw(
        drawing, scale_each=scale_each, value_range=value_range, cmap=cmap, nrow=nrow, title=title
    )


def save_filters(
    model: nn.Module,
    layers: str | nn.Module | Sequence[str | nn.Module] | None,
    directory: str | os.PathLike[str],
    *,
    mode: str = "auto",
    max_tiles: int = 256,
    spec: str | None = None,
    weights: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Draw the kernels of each layer (:func:`plot_filters`) and write the figures with a
    manifest into ``directory``, whole or not at all.

    One ``filters_LAYER.png`` per layer and ``filters.json``, the manifest: schema
    :data:`SCHEMA`, library versions, the settings, and per layer its file, the mode
    used, the tiles shown and the grid's note. Existing filters output (any of these
    files) is not replaced unless ``overwrite``.

    Example:
        >>> save_filters(model, ["layer1.0", "layer5.6"], "out/filters", max_tiles=64)
        [PosixPath('out/filters/filters_layer1.0.png'), ..., PosixPath('out/filters/filters.json')]

    Args:
        model: the network (not changed).
        layers: convolution names (or modules, or one of them); ``None``: the first
            convolution.
        directory: where the files go; created if missing.
        mode, max_tiles: as for :func:`filter_grid`.
        spec: how the model was named (``torchvision:resnet18``), for the manifest.
        weights: the checkpoint the model was loaded from, for the manifest.
        overwrite: replace filters output already in ``directory``.

    Returns:
        The paths written, the manifest last.

    Raises:
        ValueError: the model has no convolution (``layers=None``), or as :func:`filter_grid`.
        KeyError, TypeError: as :func:`filter_grid`.
        FileExistsError: ``directory`` holds filters output and ``overwrite`` is false.
    """
    from netsight._io import figure_bytes, unique_names, versions, write_directory

    if layers is None:
        convs = list_layers(model, types=[nn.Conv1d, nn.Conv2d, nn.Conv3d])
        if not convs:
            raise ValueError(f"{type(model).__name__} has no convolution layer to draw")
        chosen: list[str | nn.Module] = [convs[0]]
    elif isinstance(layers, (str, nn.Module)):
        chosen = [layers]
    else:
        chosen = list(layers)
    drawings = [_select(model, layer, mode, max_tiles) for layer in chosen]
    stems = unique_names((drawing.layer for drawing in drawings), default="layer")
    files: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    for drawing, stem in zip(drawings, stems, strict=True):
        name = f"filters_{stem}.png"
        files[name] = figure_bytes(_draw(drawing))
        entries.append(
            {
                "layer": drawing.layer,
                "file": name,
                "mode": drawing.mode,
                "shown": drawing.shown,
                "total": drawing.total,
                "nonfinite": drawing.nonfinite,
                "note": drawing.note,
            }
        )
    manifest = {
        "schema": SCHEMA,
        **versions(),
        "model": spec if spec is not None else type(model).__name__,
        "model_class": type(model).__name__,
        "weights": weights,
        "mode": FilterMode.parse(mode, "mode").value,
        "max_tiles": max_tiles,
        "layers": entries,
        "files": list(files),
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    return write_directory(directory, files, what="filters", overwrite=overwrite)


def plot_kernel_and_map(
    model: nn.Module,
    layer: str | nn.Module,
    activation: torch.Tensor | Capture,
    *,
    channels: int | Sequence[int] | None = None,
    index: int = 0,
    max_channels: int = 8,
    title: str | None = None,
) -> Figure:
    """The figure the tutorials end on: for each chosen output channel of a
    convolution, its kernel beside the feature map it produced, side by side.

    The kernel is the channel's weight averaged over its input channels (the single
    input channel when there is only one; in colour, grey at 0, for a first layer
    on RGB images); the title says which. Kernels share one colour scale centred
    at 0, maps share one colour scale (diverging at 0 when they have both signs),
    and each scale has its colour bar. Each panel is titled with its channel.

    Args:
        model: the network (not changed).
        layer: the convolution (a qualified name or the module).
        activation: the layer's output ``(B, C, H, W)`` (or ``(C, H, W)``), or a
            :class:`~netsight.Capture` holding it.
        channels: output channels to show (default: the first ``max_channels``).
        index: which batch item's maps.
        max_channels: cap on the channels shown.
        title: the heading (default: the layer's name).

    Example:
        >>> with netsight.capture(model, layers="features.0") as cap:
        ...     model(x)
        >>> fig = plot_kernel_and_map(model, "features.0", cap, channels=range(6))
    """
    from netsight._figures import FONT_PT
    from netsight.images import color_scale, draw_map, titled_figure

    name, module = _find_layer(model, layer)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        raise TypeError(
            f"layer {name!r} is a transposed convolution: its outputs mix several kernels "
            f"per output channel; plot_kernel_and_map draws forward convolutions"
        )
    weight = _weight_of(name, module).to(device="cpu", dtype=torch.float32)
    if isinstance(activation, Capture):
        if name not in activation.activations:
            held = ", ".join(activation.activations) or "nothing"
            raise KeyError(f"activation: the capture holds no output of {name!r} (it holds {held})")
        activation = activation.activations[name]
    if not isinstance(activation, torch.Tensor):
        raise TypeError(
            f"activation: expected a tensor or a Capture, got {type(activation).__name__}"
        )
    out = activation.detach()
    if out.device.type == "meta":
        raise ValueError("activation: a meta tensor has no values to draw")
    spatial = weight.dim() - 2
    if out.dim() == spatial + 2:
        if not -out.shape[0] <= index < out.shape[0]:
            raise IndexError(f"index: the batch has {out.shape[0]} items, got index {index}")
        out = out[index]
    if out.dim() != spatial + 1 or out.shape[0] != weight.shape[0]:
        raise ValueError(
            f"activation: expected the output of {name!r}, (B, {weight.shape[0]}, ...) with "
            f"{spatial} spatial dimensions, got shape {list(activation.shape)}"
        )
    maps = out.float().cpu()
    kernels = weight
    if spatial == 3:  # middle depth slices
        maps, kernels = maps[:, maps.shape[1] // 2], kernels[:, :, kernels.shape[2] // 2]
    elif spatial == 1:
        maps, kernels = maps.unsqueeze(1), kernels.unsqueeze(2)
    total = int(weight.shape[0])
    if channels is None:
        chosen = list(range(min(total, max_channels)))
    else:
        chosen = [channels] if isinstance(channels, int) else [int(c) for c in channels]
        bad = [c for c in chosen if not 0 <= c < total]
        if bad or not chosen:
            raise IndexError(f"channels: {name} has {total} output channels, got {bad or chosen}")
        chosen = chosen[:max_channels]
    per_group, groups = int(weight.shape[1]), int(getattr(module, "groups", 1))
    rgb = per_group == 3 and groups == 1
    if rgb:
        shown_kernels = _rgb_tiles(kernels[chosen], scale_each=False)
        bound = _rgb_bound(kernels[chosen], False)
        kernel_how = (
            f"kernels in colour: input channels as red, green, blue; grey = 0, ±{bound:.3g}"
        )
    elif per_group == 1:
        shown_kernels = kernels[chosen, 0]
        kernel_how = "kernels of the single input channel"
    else:
        shown_kernels = kernels[chosen].mean(dim=1)
        kernel_how = f"kernels averaged over their {per_group} input channels"
    shown_maps = maps[chosen]
    kernel_scale = None if rgb else color_scale(shown_kernels, value_range=None, centred=True)
    map_scale = color_scale(shown_maps)
    count = len(chosen)
    pairs = min(count, 4)
    rows = math.ceil(count / pairs)
    map_h, map_w = int(shown_maps.shape[-2]), int(shown_maps.shape[-1])
    panel = 1.25
    map_shape = "x".join(str(d) for d in maps.shape[1:])
    heading = (
        f"{title if title is not None else name}: kernel and the map it produces "
        f"(image {index}, {map_shape} maps)\n{kernel_how}; maps on one colour scale"
    )
    fig = titled_figure(
        2 * pairs * panel + 2.4, rows * (panel * max(0.4, map_h / map_w) + 0.45), heading
    )
    axes = fig.subplots(rows, 2 * pairs, squeeze=False)
    small, label = FONT_PT["small"], FONT_PT["label"]
    kernel_image = map_image = None
    for slot, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        pair, side = divmod(slot, 2)
        if pair >= count:
            ax.set_axis_off()
            continue
        channel = chosen[pair]
        if side == 0:
            tile = shown_kernels[pair]
            if rgb:
                ax.imshow(tile.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                assert kernel_scale is not None
                kernel_image = ax.imshow(
                    tile.numpy(),
                    cmap=kernel_scale.cmap,
                    norm=kernel_scale.norm,
                    interpolation="nearest",
                )
            ax.set_title(f"kernel {channel}", fontsize=small)
        else:
            map_image = draw_map(ax, shown_maps[pair].numpy(), map_scale)
            ax.set_title(f"map {channel}", fontsize=small)
    used = [ax for ax in axes.flat if ax.axison]
    for image, where, text in (
        (kernel_image, "left", "kernel weight"),
        (map_image, "right", "activation"),
    ):
        if image is not None:
            bar = fig.colorbar(image, ax=used, shrink=0.8, location=where, aspect=30, pad=0.01)
            bar.set_label(text, fontsize=label)
            bar.ax.tick_params(labelsize=small)
    return fig
