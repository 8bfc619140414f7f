"""Feature maps and layer statistics: what the tutorials draw after grabbing
intermediate outputs with hooks, as functions that return figures, tensors and
tables.

Example:
    >>> with netsight.capture(model, layers=nn.Conv2d) as cap:
    ...     model(x)
    >>> fig = netsight.plot_feature_maps(cap["features.0"], max_channels=32)
    >>> fig = netsight.plot_mean_maps(cap, image=x)   # the input, then each layer's mean map
    >>> stats = netsight.layer_stats(model, loader)    # sparsity, dead channels, per layer
    >>> print(stats.trend_text())                      # the verdict and what it rests on

Every figure here passes :func:`netsight._figures.audit_figure` at 90 dpi: a title,
a colour bar for every heatmap, text at :data:`~netsight._figures.FONT_PT` sizes.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from netsight._progress import ProgressBar
from netsight.capture import Capture, LayerSpec, capture, resolve_layers
from netsight.hooks import HookSet, StopForward, preserve_state, unwrap_compiled
from netsight.images import MapGrid, map_grid
from netsight.options import Normalization
from netsight.trace import runner
from netsight.trace.recorder import FrameRecorder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEAD_MIN_SAMPLES",
    "TREND_MIN_POINTS",
    "LayerStat",
    "LayerStats",
    "feature_grid",
    "layer_stats",
    "mean_maps",
    "plot_feature_maps",
    "plot_layer_stats",
    "plot_mean_maps",
    "top_channels",
]


def _maps_of(activation: torch.Tensor, index: int) -> torch.Tensor:
    """(C, H, W) maps of one batch item from a layer output."""
    if not isinstance(activation, torch.Tensor):
        raise TypeError(f"activation: expected a tensor, got {type(activation).__name__}")
    if activation.device.type == "meta":
        raise ValueError("activation: a meta tensor has no values to draw")
    x = activation.detach()
    if x.dim() == 4:  # (B, C, H, W)
        if not -x.shape[0] <= index < x.shape[0]:
            raise IndexError(f"index: the batch has {x.shape[0]} items, got index {index}")
        return x[index]
    if x.dim() == 3:  # (C, H, W), or (B, C, L) of a 1-d conv: treat as one image's maps
        return x
    if x.dim() == 5:  # (B, C, D, H, W): middle depth slice
        return x[index][:, x.shape[2] // 2]
    raise ValueError(
        f"activation: expected a feature map (B, C, H, W) or (C, H, W), got shape "
        f"{list(x.shape)}; a layer without spatial dimensions has no feature maps to draw"
    )


def top_channels(
    activation: torch.Tensor, k: int = 8, *, index: int = 0, by: str = "mean"
) -> list[tuple[int, float]]:
    """The ``k`` most active channels of one image: ``[(channel, score), ...]``.

    Args:
        activation: a layer output ``(B, C, H, W)`` or ``(C, H, W)``.
        k: how many.
        index: which batch item.
        by: ``"mean"`` (average activation) or ``"max"`` (peak activation).
    """
    maps = _maps_of(activation, index).float()
    flat = torch.nan_to_num(maps.reshape(maps.shape[0], -1), nan=-math.inf)
    if by == "mean":
        scores = flat.mean(dim=1)
    elif by == "max":
        scores = flat.amax(dim=1)
    else:
        raise ValueError(f"by: expected 'mean' or 'max', got {by!r}")
    k = min(k, scores.numel())
    values, channels = torch.topk(scores, k)
    return [(int(c), float(v)) for c, v in zip(channels, values, strict=True)]


def feature_grid(
    activation: torch.Tensor,
    *,
    index: int = 0,
    channels: Sequence[int] | None = None,
    max_channels: int = 64,
    normalize: str = "each",
    value_range: tuple[float, float] | None = None,
    cmap: str = "viridis",
    nrow: int | None = None,
    upscale: int | None = None,
) -> MapGrid:
    """A grid image of a layer's channels for one image (via ``make_grid``), as RGB
    pixels for ``SummaryWriter.add_image``. It carries no colour bar, so each tile's
    scale cannot be read from it: for a figure, use :func:`plot_feature_maps`.

    Args:
        activation: a layer output ``(B, C, H, W)`` or ``(C, H, W)``.
        index: which batch item.
        channels: which channels (default: the first ``max_channels``).
        max_channels: cap on tiles; the grid's ``note`` says what was left out.
        normalize: ``"each"`` (per channel), ``"shared"`` (one scale) or ``"none"``.
        value_range: fixed ``(low, high)`` instead.
        cmap: a matplotlib colormap name.
        nrow: tiles per row (default: about square).
        upscale: integer zoom (default: so that small maps are at least ~32 px).

    Returns:
        A :class:`~netsight.images.MapGrid`; ``grid.image`` is ``(3, H, W)`` in
        ``[0, 1]``, ready for ``SummaryWriter.add_image``.
    """
    maps = _maps_of(activation, index)
    total = maps.shape[0]
    if channels is None:
        chosen = list(range(min(total, max_channels)))
    else:
        chosen = [int(c) for c in channels]
        bad = [c for c in chosen if not 0 <= c < total]
        if bad:
            raise IndexError(f"channels: the layer has {total} channels, got {bad}")
        chosen = chosen[:max_channels]
    if upscale is None:
        upscale = max(1, math.ceil(32 / max(1, min(maps.shape[-2:]))))
    return map_grid(
        maps,
        indices=chosen,
        normalize=normalize,
        value_range=value_range,
        cmap=cmap,
        nrow=nrow,
        upscale=upscale,
    )


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _channel_span(chosen: Sequence[int], total: int) -> str:
    """``"channels 0-31 of 512"``, ``"channel 7 of 64"`` or ``"5 chosen channels of 64"``."""
    if len(chosen) == 1:
        return f"channel {chosen[0]} of {total}"
    if list(chosen) == list(range(chosen[0], chosen[0] + len(chosen))):
        return f"channels {chosen[0]}-{chosen[-1]} of {total}"
    return f"{len(chosen)} chosen channels of {total}"


def plot_feature_maps(
    activation: torch.Tensor,
    *,
    title: str | None = None,
    index: int = 0,
    channels: Sequence[int] | None = None,
    max_channels: int = 64,
    normalize: str = "shared",
    value_range: tuple[float, float] | None = None,
    cmap: str | None = None,
    nrow: int | None = None,
) -> Figure:
    """A matplotlib Figure of a layer's channels for one image, each tile numbered,
    all on one colour scale explained by one colour bar.

    The maps are tiled as scalars with ``torchvision.utils.make_grid`` and drawn
    with ``imshow`` (nearest neighbour): a diverging colormap centred at 0 when the
    values have both signs, a sequential one when they are never negative (after a
    ReLU). Each tile is numbered above it; tiles too small for a number get row
    (first channel) and column (+offset) labels instead. The title names the layer
    (``title``), the map shape and which channels are shown; NaN/Inf values are
    drawn in magenta and counted. Nothing is shown or saved: call ``fig.savefig``.

    Args:
        activation: a layer output ``(B, C, H, W)`` or ``(C, H, W)``.
        title: the layer's name, for the title.
        index: which batch item.
        channels: which channels (default: the first ``max_channels``).
        max_channels: cap on tiles; the title says what was left out.
        normalize: ``"shared"`` (default: one scale for the layer), ``"each"``
            (each tile divided by its own largest ``|value|``: shapes only, sizes
            cannot be compared; the title and colour bar say so) or ``"none"``
            (the fixed ``value_range``, or ``[0, 1]``).
        value_range: a fixed ``(low, high)`` for the colour scale (wins over
            ``normalize``).
        cmap: a matplotlib colormap (default: ``RdBu_r`` for signed values,
            ``viridis`` for non-negative ones).
        nrow: tiles per row (default: about square).

    Example:
        >>> fig = plot_feature_maps(cap["layer4.1.conv2"], title="layer4.1.conv2")
        >>> fig.savefig("layer4.png", dpi=90)
    """
    from netsight._figures import FONT_PT
    from netsight.images import (
        color_scale,
        draw_tiles,
        label_rows_and_columns,
        plan_tiles,
        scaled_each,
        titled_figure,
    )

    scaling = Normalization.parse(normalize, "normalize")
    if max_channels < 1:
        raise ValueError(f"max_channels: expected >= 1, got {max_channels}")
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow: expected >= 1 or None, got {nrow}")
    maps = _maps_of(activation, index)
    chosen = _chosen_channels(maps.shape[0], channels, max_channels)
    selected = maps[chosen].detach().float().cpu()
    if selected.dim() == 2:  # (C, L) of a 1-d conv: one-pixel-high tiles
        selected = selected.unsqueeze(1)
    nonfinite = int((~torch.isfinite(selected)).sum())
    total = int(maps.shape[0])
    shape = "x".join(str(d) for d in maps.shape)
    if value_range is not None:
        scale = color_scale(selected, cmap=cmap, value_range=value_range)
        how = f"colour scale fixed at {value_range[0]:g} to {value_range[1]:g}"
        bar_label = "activation"
    elif scaling == Normalization.EACH:
        selected, negative = scaled_each(selected)
        scale = color_scale(selected, cmap=cmap, value_range=(-1.0, 1.0) if negative else (0, 1))
        how = "each tile on its own scale (shapes only: sizes cannot be compared)"
        bar_label = "value / the tile's largest |value|"
    elif scaling == Normalization.NONE:
        scale = color_scale(selected, cmap=cmap, value_range=(0.0, 1.0))
        how = "colour scale fixed at 0 to 1"
        bar_label = "activation"
    else:
        scale = color_scale(selected, cmap=cmap)
        how = "one colour scale for all tiles" if len(chosen) > 1 else "values on the colour bar"
        bar_label = "activation" + ("" if scale.diverging else " (never negative)")
    plan = plan_tiles(
        len(chosen),
        (int(selected.shape[-2]), int(selected.shape[-1])),
        ncol=nrow,
        max_tile_in=3.5 if len(chosen) == 1 else 2.2,
    )
    width, height = plan.size_in
    extra_w = 1.4 + (0.0 if plan.labelled else 0.6)
    extra_h = 0.3 + (0.0 if plan.labelled else 0.4)
    heading = f"{title}: " if title else "feature maps: "
    what = f"{heading}{shape} output of image {index}, {_channel_span(chosen, total)}"
    if len(chosen) < total:
        what += f" ({total - len(chosen)} left out)"
    text = f"{what}\n{how}"
    if nonfinite:
        text += f"; {nonfinite} NaN/Inf values in magenta"
    fig = titled_figure(max(4.5, width + extra_w), max(2.0, height + extra_h), text)
    ax = fig.add_subplot()
    image = draw_tiles(
        ax,
        selected,
        plan,
        scale,
        labels=[str(c) for c in chosen],
        font_pt=FONT_PT["small"],
    )
    if not plan.labelled:
        label_rows_and_columns(ax, plan, chosen, "channel")
    bar = fig.colorbar(image, ax=ax, shrink=0.8 if height > 2 else 1.0, aspect=25)
    bar.set_label(bar_label, fontsize=FONT_PT["label"])
    bar.ax.tick_params(labelsize=FONT_PT["small"])
    return fig


def _chosen_channels(total: int, channels: Sequence[int] | None, cap: int) -> list[int]:
    if channels is None:
        return list(range(min(total, cap)))
    chosen = [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < total]
    if bad:
        raise IndexError(f"channels: the layer has {total} channels, got {bad}")
    if not chosen:
        raise ValueError("channels: expected at least one channel, got none")
    return chosen[:cap]


def mean_maps(
    activations: Mapping[str, torch.Tensor] | Capture, *, index: int = 0
) -> dict[str, torch.Tensor]:
    """One channel-averaged map ``(H, W)`` per layer, for one image."""
    source = activations.activations if isinstance(activations, Capture) else activations
    result = {}
    for name, activation in source.items():
        try:
            maps = _maps_of(activation, index)
        except ValueError:
            continue  # a layer without spatial maps (a Linear, say) has no mean map
        result[name] = maps.float().mean(dim=0)
    if not result:
        raise ValueError("mean maps: none of the given layers produced spatial feature maps")
    return result


def _input_picture(
    image: torch.Tensor,
    index: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> np.ndarray:
    """The input as an ``(H, W, 3)`` RGB array in ``[0, 1]`` (a photo, not a heatmap)."""
    from netsight.images import denormalize

    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a tensor, got {type(image).__name__}")
    x = image.detach().float().cpu()
    if x.dim() == 4:
        if not -x.shape[0] <= index < x.shape[0]:
            raise IndexError(f"index: the image batch has {x.shape[0]} items, got {index}")
        x = x[index]
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(
            f"image: expected (B, C, H, W), (C, H, W) or (H, W) with 1 or 3 channels, "
            f"got shape {list(image.shape)}"
        )
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if mean is not None or std is not None:
        x = denormalize(x, mean, std)
    else:  # the range it has: as load_image's normalisation undone, up to scale
        low, high = float(x.min()), float(x.max())
        x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def plot_mean_maps(
    activations: Mapping[str, torch.Tensor] | Capture,
    *,
    index: int = 0,
    ncols: int = 5,
    cmap: str | None = None,
    title: str | None = None,
    image: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """The tutorials' figure: the input image, then one channel-averaged map per
    layer, side by side, each with its own colour bar (layers differ in scale).

    A map with both signs is drawn with a diverging colormap centred at 0, a
    non-negative one with a sequential colormap; NaN/Inf pixels are magenta and
    counted in the panel's title.

    Args:
        activations: ``{layer: output}`` or a :class:`~netsight.Capture`.
        index: which batch item.
        ncols: panels per row.
        cmap: one colormap for every map (default: by sign, as above).
        title: the figure's title (default: says what the maps are).
        image: the input, ``(B, C, H, W)`` or ``(C, H, W)`` with 1 or 3 channels,
            drawn first (item ``index`` of a batch).
        mean, std: the normalisation ``image`` carries, undone for display; without
            them the image is stretched to its own range.

    Example:
        >>> fig = plot_mean_maps(cap, image=x, title="VGG-16: mean feature maps")
    """
    from netsight._figures import FONT_PT
    from netsight.images import color_scale, draw_map, titled_figure

    maps = mean_maps(activations, index=index)
    picture = _input_picture(image, index, mean, std) if image is not None else None
    n = len(maps) + (picture is not None)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    heading = title or (
        f"mean feature maps of image {index}: each layer's channels averaged, "
        f"each map on its own colour scale"
    )
    fig = titled_figure(min(11.5, 2.3 * ncols), 2.5 * nrows, heading)
    small = FONT_PT["small"]
    panel = 0
    if picture is not None:
        ax = fig.add_subplot(nrows, ncols, 1)
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(f"input\n{picture.shape[0]}x{picture.shape[1]}", fontsize=small)
        ax.set_axis_off()
        panel = 1
    for i, (name, m) in enumerate(maps.items()):
        ax = fig.add_subplot(nrows, ncols, panel + i + 1)
        data = m.cpu().numpy()
        finite = np.isfinite(data)
        scale = color_scale(data, cmap=cmap)
        shown = draw_map(ax, data, scale)
        flag = "" if finite.all() else f", {int((~finite).sum())} NaN/Inf"
        ax.set_title(f"{name}\n{m.shape[0]}x{m.shape[1]}{flag}", fontsize=small)
        ax.set_axis_off()
        bar = fig.colorbar(shown, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=small)
    return fig


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LayerStat:
    """Statistics of one layer's output over the data seen.

    ``sparsity`` is the fraction of exact zeros; ``dead_channels`` counts the
    channels that never had a positive value on any input seen (called *dead* only
    over at least :data:`DEAD_MIN_SAMPLES` inputs: a channel silent on a few images
    may fire on the next).
    """

    name: str
    type_name: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    sparsity: float
    channels: int
    dead_channels: int
    nonfinite: int
    samples: int

    @property
    def part(self) -> str:
        """``"convolutional"`` for an output with spatial dimensions, ``"classifier"``
        for a flat one (``(features,)``, the fully connected head)."""
        return "convolutional" if len(self.shape) >= 2 else "classifier"


#: Fewest inputs over which a channel that was never positive is called *dead*.
DEAD_MIN_SAMPLES = 100
#: Smallest change of sparsity across a part of the network (percentage points, from
#: a straight-line fit over depth) that :meth:`LayerStats.trend_text` calls a trend.
TREND_MIN_POINTS = 10.0
#: Smallest Spearman correlation (in size) that it calls a trend.
TREND_MIN_RHO = 0.5


def _spearman(values: Sequence[float]) -> float | None:
    if len(values) < 3:
        return None
    x = np.arange(len(values), dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    # average ranks of ties
    vals = np.asarray(values, dtype=np.float64)
    for v in np.unique(vals):
        tie = vals == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    if np.std(ranks) == 0:
        return None
    return float(np.corrcoef(x, ranks)[0, 1])


def _fitted_change(values: Sequence[float]) -> float:
    """The change from first to last layer of a straight line fitted to ``values``
    over depth, in percentage points (values are fractions)."""
    if len(values) < 2:
        return 0.0
    x = np.arange(len(values), dtype=np.float64)
    slope = float(np.polyfit(x, np.asarray(values, dtype=np.float64), 1)[0])
    return 100.0 * slope * (len(values) - 1)


def _verdict(values: Sequence[float]) -> str | None:
    """``"rises"``, ``"falls"``, ``"flat"`` (no trend, and all within
    :data:`TREND_MIN_POINTS` of each other), ``"no trend"`` (they spread wider, but
    not in order of depth) or ``None`` (fewer than 3 layers)."""
    if len(values) < 3:
        return None
    rho = _spearman(values)
    change = _fitted_change(values)
    if rho is None or abs(rho) < TREND_MIN_RHO or abs(change) < TREND_MIN_POINTS:
        spread = 100.0 * (max(values) - min(values))
        return "flat" if spread < TREND_MIN_POINTS else "no trend"
    return "rises" if change > 0 else "falls"


@dataclass(frozen=True)
class LayerStats:
    """Per-layer statistics, in model order, with text/HTML/JSON renderings.

    The verdict (:meth:`trend_text`) says what it rests on: how many inputs, and
    the convolutional part (outputs with spatial dimensions) apart from the
    classifier (flat outputs), since one very sparse classifier layer can carry a
    rank correlation over the whole network. A trend is called only when the
    correlation is clear (``|rho| >= 0.5``) *and* a straight line over depth
    changes by at least :data:`TREND_MIN_POINTS` percentage points; a channel is
    called dead only over at least :data:`DEAD_MIN_SAMPLES` inputs.
    """

    layers: tuple[LayerStat, ...]
    batches: int
    samples: int

    def __getitem__(self, name: str) -> LayerStat:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no statistics for layer {name!r}")

    @property
    def sparsity_trend(self) -> float | None:
        """Spearman rank correlation between layer order and sparsity over all the
        layers (None if < 3 layers or constant): positive means activations get
        sparser with depth. See :meth:`parts` for the parts taken apart."""
        return _spearman([layer.sparsity for layer in self.layers])

    @property
    def dead_claimed(self) -> bool:
        """Whether the data seen is enough (:data:`DEAD_MIN_SAMPLES`) to call a
        channel that was never positive *dead*."""
        return self.samples >= DEAD_MIN_SAMPLES

    def parts(self) -> list[dict[str, Any]]:
        """The sparsity of each part (convolutional, classifier) in model order:
        ``{"part", "layers", "first", "last", "low", "high", "rho", "change_points",
        "verdict", "driven_by"}``. ``verdict`` is ``"rises"``, ``"falls"``,
        ``"flat"``, ``"no trend"`` or ``None`` (fewer than 3 layers; see
        :func:`_verdict`); ``driven_by`` names the one layer without which a rise
        or fall would be no trend."""
        found: list[dict[str, Any]] = []
        for part in ("convolutional", "classifier"):
            layers = [s for s in self.layers if s.part == part]
            if not layers:
                continue
            values = [s.sparsity for s in layers]
            verdict = _verdict(values)
            driven_by = None
            if verdict in ("rises", "falls") and len(values) >= 4:
                for i, layer in enumerate(layers):
                    if _verdict(values[:i] + values[i + 1 :]) in ("flat", "no trend"):
                        driven_by = layer.name
                        break
            found.append(
                {
                    "part": part,
                    "layers": [s.name for s in layers],
                    "first": values[0],
                    "last": values[-1],
                    "low": min(values),
                    "high": max(values),
                    "rho": _spearman(values),
                    "change_points": _fitted_change(values),
                    "verdict": verdict,
                    "driven_by": driven_by,
                }
            )
        return found

    def trend_text(self) -> str:
        """The sparsity verdict in one paragraph, with what it rests on.

        Example: ``"sparsity (fraction of zeros) over 360 images: convolutional part
        (13 layers): roughly flat 49.5-56.0 % (a straight line over depth changes by
        +6.5 points, under the 10 a trend needs; Spearman rho = +0.93); classifier
        (2 layers): fc.1 80.1 %, fc.4 94.8 %; over all 15 layers rho = +0.95, which
        rests on the classifier"``.
        """
        parts = self.parts()
        sentences = []
        for part in parts:
            layers = part["layers"]
            label = f"{part['part']} part ({_count(len(layers), 'layer')})"
            if len(parts) == 1:
                label = _count(len(layers), "layer")
            verdict = part["verdict"]
            if verdict is None:
                named = ", ".join(f"{name} {100 * self[name].sparsity:.1f} %" for name in layers)
                sentences.append(f"{label}, too few for a trend: {named}")
                continue
            rho = part["rho"]
            rho_text = (
                "Spearman rho undefined (all equal)"
                if rho is None
                else (f"Spearman rho = {rho:+.2f}")
            )
            change = part["change_points"]
            if verdict in ("flat", "no trend"):
                why = (
                    f"a straight line over depth changes by {change:+.1f} points, under the "
                    f"{TREND_MIN_POINTS:g} a trend needs"
                    if abs(change) < TREND_MIN_POINTS
                    else f"{change:+.1f} points, but without a clear order"
                )
                said = "roughly flat" if verdict == "flat" else "no trend with depth, spread over"
                sentences.append(
                    f"{label}: {said} {100 * part['low']:.1f}-{100 * part['high']:.1f} % "
                    f"({why}; {rho_text})"
                )
            else:
                text = (
                    f"{label}: {verdict} with depth, {100 * part['first']:.1f} % -> "
                    f"{100 * part['last']:.1f} % ({change:+.1f} points on a straight line "
                    f"over depth; {rho_text})"
                )
                if part["driven_by"]:
                    text += f", but without {part['driven_by']} there is no trend"
                sentences.append(text)
        if len(parts) == 2:
            overall = _verdict([s.sparsity for s in self.layers])
            rho = self.sparsity_trend
            conv = parts[0]["verdict"]
            if overall in ("rises", "falls") and conv not in ("rises", "falls") and rho is not None:
                sentences.append(
                    f"over all {len(self.layers)} layers rho = {rho:+.2f}, which rests on "
                    f"the classifier"
                )
        basis = f"sparsity (fraction of zeros) over {_count(self.samples, 'input')}: "
        return basis + "; ".join(sentences)

    def dead_text(self) -> str:
        """What the dead-channel column means for the data seen."""
        if self.dead_claimed:
            return f"dead channels: never positive on any of the {self.samples} inputs"
        return (
            f"channels never positive on all {_count(self.samples, 'input')}: not called "
            f"dead, {self.samples} < {DEAD_MIN_SAMPLES} inputs (a channel silent on these "
            f"may fire on others)"
        )

    def _dead_header(self) -> str:
        return "Dead ch." if self.dead_claimed else f"Never >0 ({self.samples})"

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["Layer", "Type", "Shape", "Mean", "Std", "Min", "Max", "Zeros"]
        header.append(self._dead_header())
        rows = []
        for s in self.layers:
            dead = f"{s.dead_channels}/{s.channels}"
            rows.append(
                [
                    s.name,
                    s.type_name,
                    "x".join(str(d) for d in s.shape),
                    f"{s.mean:.4g}",
                    f"{s.std:.4g}",
                    f"{s.min:.4g}",
                    f"{s.max:.4g}",
                    f"{100 * s.sparsity:.1f}%",
                    dead + (f" ({s.nonfinite} NaN/Inf)" if s.nonfinite else ""),
                ]
            )
        return header, rows

    def to_text(self) -> str:
        """The table, then the dead-channel basis, then the verdict (the last line)."""
        header, rows = self._rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines.append(self.dead_text())
        lines.append(self.trend_text())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def to_html(self) -> str:
        header, rows = self._rows()
        e = html.escape
        out = ['<table class="netsight-stats"><thead><tr>']
        out += [f"<th>{e(h)}</th>" for h in header]
        out.append("</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        out.append(f"</tbody></table><p>{e(self.dead_text())}</p><p>{e(self.trend_text())}</p>")
        return "".join(out)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (schema ``netsight.layer_stats/1``; fields are only ever added).

        ``verdict`` is :meth:`trend_text`, ``parts`` is :meth:`parts`,
        ``dead_claimed`` says whether ``dead_channels`` may be read as dead
        (at least ``dead_min_samples`` inputs), and each layer has its ``part``.
        """
        return {
            "schema": "netsight.layer_stats/1",
            "batches": self.batches,
            "samples": self.samples,
            "sparsity_trend": self.sparsity_trend,
            "verdict": self.trend_text(),
            "parts": self.parts(),
            "dead_claimed": self.dead_claimed,
            "dead_min_samples": DEAD_MIN_SAMPLES,
            "trend_min_points": TREND_MIN_POINTS,
            "layers": [{**asdict(s), "shape": list(s.shape), "part": s.part} for s in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def plot(self) -> Figure:
        """The bar chart of :func:`plot_layer_stats`."""
        return plot_layer_stats(self)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def plot_layer_stats(stats: LayerStats) -> Figure:
    """Bar chart: percentage of zeros and of never-positive ("dead" over enough
    inputs) channels per layer, in model order, the convolutional part and the
    classifier marked apart, titled with :meth:`LayerStats.trend_text`.

    Sized for a page (at most 12.5 in wide; layer names thinned when there are
    too many to read), text at netsight's sizes (:data:`FONT_PT`).
    """
    from netsight._figures import FONT_PT
    from netsight.images import thinned, titled_figure

    small, label = FONT_PT["small"], FONT_PT["label"]
    n = len(stats.layers)
    width = min(12.5, max(6.5, 0.32 * n + 2.5))
    fig = titled_figure(width, 4.4, stats.trend_text())
    ax = fig.add_subplot()
    x = np.arange(n)
    sparsity = [100 * s.sparsity for s in stats.layers]
    dead = [100 * s.dead_channels / s.channels if s.channels else 0.0 for s in stats.layers]
    dead_label = (
        "dead channels"
        if stats.dead_claimed
        else f"channels never > 0 on all {_count(stats.samples, 'input')}"
    )
    ax.bar(x - 0.2, sparsity, width=0.4, label="zeros (sparsity)", color="#4c72b0")
    ax.bar(x + 0.2, dead, width=0.4, label=dead_label, color="#dd8452")
    keep = thinned(n, (width - 1.5) / max(n, 1), 0.17)
    ax.set_xticks(
        [int(x[i]) for i in keep],
        [stats.layers[i].name for i in keep],
        rotation=60,
        ha="right",
        fontsize=small,
    )
    ax.tick_params(axis="y", labelsize=small)
    ax.set_ylim(0, 125)
    ax.set_yticks([0, 20, 40, 60, 80, 100])
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("% of values / of channels", fontsize=label)
    parts = [s.part for s in stats.layers]
    if "convolutional" in parts and "classifier" in parts:
        split = parts.index("classifier")
        ax.axvline(split - 0.5, color="0.4", linestyle="--", linewidth=1)
        ax.text(split - 0.6, 104, "convolutional", ha="right", va="bottom", fontsize=small)
        ax.text(split - 0.4, 104, "classifier", ha="left", va="bottom", fontsize=small)
    ax.legend(fontsize=small, loc="upper left", ncols=2, frameon=False)
    return fig


class _Accumulator:
    __slots__ = (
        "channel_max",
        "count",
        "max",
        "min",
        "nonfinite",
        "shape",
        "sum",
        "sumsq",
        "zeros",
    )

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.zeros = 0
        self.nonfinite = 0
        self.min = math.inf
        self.max = -math.inf
        self.channel_max: torch.Tensor | None = None
        self.shape: tuple[int, ...] = ()

    @torch.no_grad()
    def add(self, output: torch.Tensor) -> None:
        x = output.detach()
        if not x.is_floating_point():
            x = x.float()
        self.shape = tuple(x.shape[1:])
        norm = float(torch.linalg.vector_norm(x.float()))
        if math.isfinite(norm):  # no NaN or Inf (the usual case): one pass each, no masks
            self.count += x.numel()
            self.sum += float(x.sum(dtype=torch.float64))
            self.sumsq += norm * norm
            self.zeros += x.numel() - int(torch.count_nonzero(x))
            if x.numel():
                low, high = torch.aminmax(x)
                self.min = min(self.min, float(low))
                self.max = max(self.max, float(high))
            if x.dim() >= 2:
                others = [d for d in range(x.dim()) if d != 1]
                self._channels(x.amax(dim=others).cpu())
            return
        finite = torch.isfinite(x)
        self.nonfinite += int((~finite).sum())
        xf = torch.where(finite, x, torch.zeros_like(x)).double()
        self.count += int(finite.sum())
        self.sum += float(xf.sum())
        self.sumsq += float((xf * xf).sum())
        self.zeros += int(((x == 0) & finite).sum())
        if finite.any():
            self.min = min(self.min, float(x[finite].min()))
            self.max = max(self.max, float(x[finite].max()))
        if x.dim() >= 2:
            per_channel = torch.where(finite, x, torch.full_like(x, -math.inf))
            self._channels(per_channel.transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1).cpu())

    def _channels(self, per_channel: torch.Tensor) -> None:
        if self.channel_max is None:
            self.channel_max = per_channel
        else:
            self.channel_max = torch.maximum(self.channel_max, per_channel)

    def result(self, name: str, type_name: str, samples: int) -> LayerStat:
        n = max(self.count, 1)
        mean = self.sum / n
        var = max(self.sumsq / n - mean * mean, 0.0)
        channels = int(self.channel_max.numel()) if self.channel_max is not None else 0
        dead = int((self.channel_max <= 0).sum()) if self.channel_max is not None else 0
        total = self.count + self.nonfinite
        return LayerStat(
            name=name,
            type_name=type_name,
            shape=self.shape,
            mean=mean,
            std=math.sqrt(var),
            min=self.min if self.count else math.nan,
            max=self.max if self.count else math.nan,
            sparsity=self.zeros / total if total else 0.0,
            channels=channels,
            dead_channels=dead,
            nonfinite=self.nonfinite,
            samples=samples,
        )


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.PReLU)


def _default_layers(model: nn.Module) -> list[type[nn.Module]]:
    if any(isinstance(m, _ACTIVATIONS) for m in model.modules()):
        return [t for t in _ACTIVATIONS if any(isinstance(m, t) for m in model.modules())]
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [t for t in convs if any(isinstance(m, t) for m in model.modules())] or [nn.Conv2d]


def _batches(data: Any) -> Iterable[Any]:
    if isinstance(data, torch.Tensor):
        return [data]
    return data  # type: ignore[no-any-return]


def _first_input(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return batch


def layer_stats(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    max_batches: int | None = None,
    mode: str = "eval",
    progress: bool = False,
) -> LayerStats:
    """Mean, std, range, sparsity and dead channels of layer outputs over data.

    Statistics are accumulated batch by batch inside the hooks, so a dataset of
    any size costs the memory of one batch.

    Args:
        model: the network (left as it came: hooks removed, modes restored).
        data: one input batch, or an iterable of batches (a DataLoader; for
            ``(x, y)`` batches the first element is used).
        layers: which layers (default: every activation module, ReLU and kin,
            since sparsity is a property of post-activation outputs; convolutions
            when the model has none).
        max_batches: stop after this many batches.
        mode: ``"eval"`` (default), ``"train"`` or ``"same"``.
        progress: show a progress bar (the CLI does).

    Returns:
        :class:`LayerStats`; ``stats.trend_text()`` says whether sparsity rises with depth.
    """
    chosen = resolve_layers(model, layers if layers is not None else _default_layers(model))
    # One accumulator per (layer, call within a forward): a module called several
    # times (ResNet's shared ReLU: after bn1, bn2 and the addition) is several
    # positions in the network, with their own shapes and statistics. Kept in the
    # order the calls first ran, which is depth order.
    accumulators: dict[tuple[str, int], _Accumulator] = {}
    calls: dict[str, int] = {}
    batches = samples = 0
    iterable = _batches(data)
    total = None
    if max_batches is not None:
        total = max_batches
    elif isinstance(iterable, Sized):
        total = len(iterable)
    with preserve_state(model, mode), HookSet() as hooks, torch.no_grad():
        for name, module in chosen.items():

            def hook(m: nn.Module, args: Any, output: Any, name: str = name) -> None:
                call = calls.get(name, 0)
                calls[name] = call + 1
                if isinstance(output, torch.Tensor):
                    key = (name, call)
                    acc = accumulators.get(key)
                    if acc is None:
                        acc = accumulators[key] = _Accumulator()
                    acc.add(output)

            hooks.add(module.register_forward_hook(hook))
        bar = ProgressBar(progress, total, "layer statistics")
        try:
            for batch in iterable:
                if max_batches is not None and batches >= max_batches:
                    break
                x = _first_input(batch)
                calls.clear()
                model(x)
                batches += 1
                samples += int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() else 1
                bar.advance()
        finally:
            bar.close()
    if batches == 0:
        raise ValueError("layer_stats: the data yielded no batch")
    results = []
    for (name, call), acc in accumulators.items():
        label = name if call == 0 else f"{name} (call {call + 1})"
        results.append(acc.result(label, type(chosen[name]).__name__, samples))
    if not results:
        raise ValueError(f"layer_stats: none of the layers ran: {', '.join(chosen)}")
    return LayerStats(tuple(results), batches, samples)


def run_forward(model: nn.Module, x: Any) -> Any:
    """Run ``model(x)`` under ``no_grad``; if it fails, re-run it through netsight's
    runner (:func:`netsight.trace.runner.run`, a real pass watching module calls)
    so that the error is a :class:`~netsight.trace.TraceError` naming the layer that
    failed, its input shapes, the call stack and the layers that ran before it.

    A :class:`~netsight.hooks.StopForward` raised by a hook is no failure: it
    passes through unchanged, and when the re-run ends with one, the re-run got
    as far as the hook needed, so the original error is raised.
    """
    model = unwrap_compiled(model)
    try:
        with torch.no_grad():
            return model(x)
    except StopForward:
        raise
    except Exception:
        with contextlib.suppress(StopForward):
            runner.run(model, _calls_only, input_data=x, execution="real", mode="same")
        raise  # the watched pass succeeded where the plain one failed: show the original


def _calls_only() -> FrameRecorder:
    """A recorder of module calls only: enough to name a failure."""
    return FrameRecorder(count=False)


def export_features(
    model: nn.Module,
    x: torch.Tensor,
    out_dir: str | Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    max_channels: int = 64,
    cmap: str | None = None,
    index: int = 0,
) -> list[Any]:
    """Write feature-map grids (one PNG per layer, :func:`plot_feature_maps`), the
    mean-map figure with the input first (:func:`plot_mean_maps`), and the
    layer-statistics table (text, JSON, HTML, PNG) for one input to ``out_dir``.
    ``cmap`` is passed to both figures (default: by the values' signs).

    Every file is written whole or not at all; a ``manifest.json`` lists them.
    A figure that cannot be drawn (a layer without spatial maps, such as a
    ``Linear``, has no grid; with no such layer at all there is no mean-map figure)
    is left out with a ``UserWarning`` naming the reason, and the manifest's
    ``skipped`` lists each one as ``{"file", "layer", "reason"}`` (``layer`` is
    ``None`` for the mean-map figure).

    Returns:
        The paths written.
    """
    from pathlib import Path

    from netsight._io import atomic_write_text, safe_filename, save_figure
    from netsight._version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    chosen = layers
    if chosen is None:
        chosen = [t for t in conv_types if any(isinstance(m, t) for m in model.modules())]
        if not chosen:
            raise ValueError(f"{type(model).__name__} has no convolution; pass layers=...")
    written: list[Path] = []
    with preserve_state(model, "eval"), capture(model, layers=chosen) as cap:
        run_forward(model, x)
    never_ran = [name for name, calls in cap.calls.items() if not calls]
    skipped: list[dict[str, str | None]] = []

    def skip(file: str, layer: str | None, reason: str) -> None:
        skipped.append({"file": file, "layer": layer, "reason": reason})
        warnings.warn(f"export_features: {file} not written: {reason}", stacklevel=3)

    used_names: set[str] = set()
    for name, activation in cap.activations.items():
        stem = safe_filename(name)
        while stem in used_names:
            stem += "_"
        used_names.add(stem)
        try:
            fig = plot_feature_maps(
                activation, title=name, index=index, max_channels=max_channels, cmap=cmap
            )
        except ValueError as error:
            # no spatial maps (a Linear layer was selected, say): no grid, no mean map
            skip(f"features_{stem}.png", name, f"layer {name!r}: {error}")
            continue
        written.append(save_figure(fig, out / f"features_{stem}.png"))
    try:
        fig = plot_mean_maps(
            cap,
            index=index,
            cmap=cmap,
            image=x if x.dim() in (3, 4) and x.shape[-3] in (1, 3) else None,
            title=f"{type(model).__name__}: the input and each layer's mean feature map "
            f"(channels averaged; each map on its own colour scale)",
        )
    except ValueError as error:
        skip("mean_maps.png", None, str(error))
    else:
        written.append(save_figure(fig, out / "mean_maps.png"))
    stats = layer_stats(model, x)
    written.append(atomic_write_text(out / "layer_stats.txt", stats.to_text() + "\n"))
    written.append(atomic_write_text(out / "layer_stats.json", stats.to_json() + "\n"))
    written.append(atomic_write_text(out / "layer_stats.html", stats.to_html() + "\n"))
    written.append(save_figure(stats.plot(), out / "layer_stats.png"))
    manifest = {
        "schema": "netsight.features/1",
        "netsight_version": __version__,
        "torch_version": torch.__version__,
        "model": type(model).__name__,
        "input_shape": list(x.shape),
        "layers": list(cap.activations),
        "never_ran": never_ran,
        "skipped": skipped,
        "sparsity_trend": stats.sparsity_trend,
        "files": [p.name for p in written],
    }
    written.append(atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n"))
    return written
