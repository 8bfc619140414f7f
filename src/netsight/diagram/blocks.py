"""A layered 3D-box picture drawn with matplotlib: no LaTeX, no Graphviz.

The same stages, sizes, arrows, skip arcs and captions as the TikZ drawing
(:mod:`netsight.diagram.stages`), rendered with matplotlib's Agg (PNG) or SVG
backend without pyplot, for a quick look in a notebook or a report.

Example:
    >>> png = block_picture(torchvision.models.resnet18(), input_size=(1, 3, 224, 224))
    >>> Path("resnet18.png").write_bytes(png)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Polygon
from matplotlib.path import Path as MplPath
from torch import nn

from netsight.diagram.stages import (
    COLORS,
    KIND_LABELS,
    PAGE_WIDTH,
    Layout,
    extract,
    fmt_size,
    layout,
)

__all__ = ["SMALLEST_FONT_PT", "block_picture", "render_blocks"]

_FORMATS = ("png", "svg")
_CM = 1 / 2.54  # inches per centimetre
_FONT = {"tiny": 5.0, "small": 7.0}
#: The smallest text of a block picture, in points (``size_pt * dpi / 72`` pixels).
SMALLEST_FONT_PT = min(_FONT.values())
_ANCHORS = {
    "north": ("center", "top"),
    "north west": ("left", "top"),
    "south": ("center", "bottom"),
    "south west": ("left", "bottom"),
    "west": ("left", "center"),
}


def _mix(color: str, other: str, amount: float) -> tuple[float, float, float]:
    """``amount`` of ``color`` and the rest of ``other`` (TikZ's ``color!amount!other``)."""
    a, b = to_rgb(color), to_rgb(other)
    r, g, bl = (amount * x + (1 - amount) * y for x, y in zip(a, b, strict=True))
    return (r, g, bl)


def render_blocks(
    lay: Layout, *, format: str = "png", title: str | None = None, dpi: int = 150
) -> bytes:
    """Draw a :class:`~netsight.diagram.stages.Layout` as PNG or SVG bytes."""
    if format not in _FORMATS:
        raise ValueError(f"format: expected 'png' or 'svg', got {format!r}")
    net = lay.network
    if title is None:
        title = net.model_type
        if net.stages and net.stages[0].shape:
            title += f", input {fmt_size(net.stages[0].shape)}"
    pad = 0.4
    x0, x1 = lay.xmin - pad, lay.xmax + pad
    y0, y1 = lay.ymin - 0.7, lay.ymax + 1.0
    fig = Figure(figsize=((x1 - x0) * _CM, (y1 - y0) * _CM), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")
    edge = _mix("#000000", "#ffffff", 0.7)
    z = 1.0

    def polygon(points: list[tuple[float, float]], fill: tuple[float, float, float]) -> None:
        nonlocal z
        ax.add_patch(
            Polygon(points, closed=True, facecolor=fill, edgecolor=edge, lw=0.45, zorder=z)
        )
        z += 1

    arrows = {round(a[1][0], 6): a for a in lay.arrows}
    for box in lay.boxes:
        arrow = arrows.get(round(box.x, 6))
        if arrow is not None and box.stage > 0:
            (ax0, ay), (ax1, _ay) = arrow
            mid = (ax0 + ax1) / 2 + 0.12
            ax.plot([ax0, ax1], [ay, ay], color="#404040", lw=0.8, zorder=z, solid_capstyle="butt")
            ax.add_patch(
                FancyArrowPatch(
                    (mid - 0.2, ay),
                    (mid, ay),
                    arrowstyle="-|>",
                    mutation_scale=7,
                    color="#404040",
                    lw=0.8,
                    zorder=z + 0.5,
                )
            )
            z += 1
        color = COLORS[box.kind]
        faces = dict(box.faces())
        polygon(faces["front"], to_rgb(color))
        polygon(faces["top"], _mix(color, "#ffffff", 0.55))
        polygon(faces["side"], _mix(color, "#000000", 0.8))
        if box.band:
            band = type(box)(
                box.stage, "relu", box.x + box.w - box.band, box.band, box.h, box.d, 0.0
            )
            band_faces = dict(band.faces())
            polygon(band_faces["front"], to_rgb(COLORS["relu"]))
            polygon(band_faces["top"], _mix(COLORS["relu"], "#ffffff", 0.55))

    skip_color = COLORS["skip"]
    for arc in lay.arcs:
        (sx, sy), (ex, ey) = arc.start, arc.end
        path = MplPath(
            [(sx, sy), (sx, arc.control), (ex, arc.control), (ex, ey)],
            [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4],
        )
        ax.add_patch(
            FancyArrowPatch(
                path=path,
                arrowstyle="-|>",
                mutation_scale=8,
                color=skip_color,
                lw=1.0,
                linestyle="--" if arc.dashed else "-",
                zorder=z,
            )
        )
        if arc.label:
            ax.text(
                (sx + ex) / 2,
                arc.apex + 0.05,
                arc.label,
                ha="center",
                va="bottom",
                fontsize=_FONT["tiny"],
                color=skip_color,
                zorder=z,
            )
        z += 1

    for label in lay.labels:
        ha, va = _ANCHORS.get(label.anchor, ("center", "center"))
        text = label.text if len(label.text) <= 28 else label.text[:25] + "..."
        ax.text(
            *label.at,
            text,
            ha=ha,
            va=va,
            fontsize=_FONT[label.size],
            fontweight="bold" if label.bold else "normal",
            zorder=z,
        )
    ax.text(lay.xmin, lay.ymax + 0.45, title, ha="left", va="bottom", fontsize=9, fontweight="bold")

    handles: list[Any] = []
    for kind in lay.kinds:
        if kind == "skip":
            handles.append(Line2D([], [], color=skip_color, lw=1.0, label=KIND_LABELS[kind]))
        else:
            handles.append(
                Patch(facecolor=COLORS[kind], edgecolor=edge, lw=0.45, label=KIND_LABELS[kind])
            )
    ax.legend(
        handles=handles,
        loc="lower left",
        bbox_to_anchor=(0.0, 0.0),
        ncol=len(handles) or 1,
        frameon=False,
        fontsize=_FONT["small"],
        handlelength=1.2,
        columnspacing=1.4,
    )
    buffer = io.BytesIO()
    metadata = {"Date": None} if format == "svg" else {}
    # SVG text stays text (searchable, small); matplotlib escapes it for XML
    with rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format=format, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def block_picture(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    *,
    format: str = "png",
    title: str | None = None,
    dpi: int = 150,
    width: float = PAGE_WIDTH,
    dtypes: Sequence[torch.dtype] | None = None,
    mode: str = "eval",
    execution: str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
) -> bytes:
    """A layered 3D-box picture of ``model`` (the visualkeras look) as PNG or SVG.

    Boxes follow the TikZ drawing's rules: thickness grows with channels,
    height and depth with spatial size, pools are thin slabs, fully connected
    layers and softmax bars; arrows join blocks, residual shortcuts are arcs;
    captions give channels and spatial size; a legend names the colours.

    Args:
        model: the network (one traced pass; it leaves as it came).
        input_size: a shape with the batch dimension, e.g. ``(1, 3, 224, 224)``.
        input_data: real input instead of ``input_size``.
        format: ``"png"`` (default) or ``"svg"``.
        dtypes, mode, execution, forward_kwargs: how the model runs, as in
            :func:`netsight.diagram.graph.record_dataflow`.
        title: the heading (default: the model's class and input size).
        dpi: resolution of a PNG.
        width: centimetres for the row of boxes (default: an A4 landscape page).
            The text keeps its size (:data:`SMALLEST_FONT_PT` and up), so a narrower
            picture reads better on a screen: at ``dpi`` 150 a width of 17 cm is about
            1,000 px with text of at least 10 px.

    Returns:
        The image file's bytes.

    Raises:
        TraceError: the model cannot run on this input; the message names the layer.

    Example:
        >>> png = block_picture(netsight.zoo.Vgg16Net(), input_size=(1, 1, 32, 32))
    """
    if format not in _FORMATS:
        raise ValueError(f"format: expected 'png' or 'svg', got {format!r}")
    return render_blocks(
        layout(
            extract(
                model,
                input_size,
                input_data,
                dtypes=dtypes,
                mode=mode,
                execution=execution,
                forward_kwargs=forward_kwargs,
            ),
            width=width,
        ),
        format=format,
        title=title,
        dpi=dpi,
    )
