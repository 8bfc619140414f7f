"""One self-contained HTML page about one model: everything netsight shows.

:func:`report` runs netsight's pieces on a model and a batch of images and puts
what they found on one page, in the order a teacher would show it:

1. **Overview**: the result first (accuracy on the images, the training run's
   final metrics and curves), the model drawn as blocks, the facts, the predictions;
2. **Structure**: the layer summary and the dataflow graph (folded);
3. **Layer by layer**: the input beside its channel-averaged maps, then every
   convolution (folded): its kernels and the feature maps they produce, each on
   one scale with a colour bar and channel numbers; the layer statistics with a
   verdict that says what it rests on; filter patterns (activation maximisation);
4. **Where it looks**: class activation maps with the predicted class and its
   probability, a colour bar and, when measured, a verdict in words against a
   random and a centred map (on another model and images if the report's own
   cannot be judged, :class:`CAMInputs`);
5. **Training**, given a :class:`~netsight.TrainingMonitor` run directory: curves,
   gradient flow and diagnostics.

Pictures are embedded as PNG data, so the file can be mailed or opened anywhere;
every name that comes from the model is escaped. A section that cannot be made for
this model (no convolution, no Graphviz, a CAM method that does not apply) says why
in its place instead of stopping the report. Every matplotlib figure on the page is
measured by :func:`netsight._figures.audit_figure` (``Report.figures``).

Example:
    >>> r = netsight.report(model, images, mean=MEAN, std=STD, run="runs/exp")
    >>> r.save("report.html")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import inf
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from netsight._figures import FigureAudit, audit_figure
from netsight._io import atomic_write_text
from netsight._progress import ProgressBar

if TYPE_CHECKING:
    from netsight.features import LayerStats

__all__ = ["CAMInputs", "FigureRecord", "Report", "Section", "report"]

#: CAM methods shown by default: the gradient family, one pass each.
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")
_DPI = 90
_MAX_CAM_IMAGES = 8
_MAX_MEAN_MAP_LAYERS = 15
#: Convolutions drawn one by one (kernels and maps); more are spread evenly.
_MAX_LAYER_DETAILS = 16
#: Filter patterns at the defaults: this many optimisation steps ...
DEFAULT_PATTERN_STEPS = 64
#: ... when they cost at most this many mult-adds (forward and backward, every step,
#: every channel; about 10 s on two laptop cores). Larger models get the section
#: only when ``pattern_steps`` asks for it.
PATTERN_BUDGET = 1e11
_PATTERN_CHANNELS = 8


@dataclass(frozen=True)
class CAMInputs:
    """What the CAM section explains when the report's own model and images cannot
    show where a network looks.

    A class activation map can only be judged where the object's place is known and
    varies: a 2 x 2 map of digits centred on 32 x 32 px says nothing. The demo shows
    its VGG-16 everywhere else and, here, :class:`netsight.zoo.CanvasNet` on
    :func:`netsight.datasets.digit_canvases` (digits pasted off-centre, with boxes).

    Attributes:
        model: the classifier to explain (left as it came).
        images: a normalised ``(B, C, H, W)`` batch; the first ``shown`` are drawn,
            faithfulness (when asked for) is measured on all of them.
        labels: the true class of each image, or ``None``.
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` around each image's object:
            drawn on the maps and scored by the pointing game.
        class_names: names of the classes.
        mean, std: the normalisation of ``images`` (``None``: shown as they are).
        shown: how many images the table draws.
        description: one paragraph saying what these images and this model are.
    """

    model: nn.Module
    images: torch.Tensor
    labels: Sequence[int] | None = None
    boxes: torch.Tensor | None = None
    class_names: Sequence[str] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    shown: int = 8
    description: str = ""


@dataclass(frozen=True)
class FigureRecord:
    """One matplotlib figure on the page and what :func:`audit_figure` measured on it.

    Attributes:
        section: the id of the section it is in.
        caption: its caption on the page.
        audit: title, colour bars and smallest text at the page's resolution.
    """

    section: str
    caption: str
    audit: FigureAudit


@dataclass(frozen=True)
class Section:
    """One part of a report.

    Attributes:
        id: the anchor (``#summary``, ...).
        title: the heading.
        html: the body, built with every model-derived string escaped.
        skipped: why the section has no content, or ``None``.
        seconds: how long it took to make.
    """

    id: str
    title: str
    html: str
    skipped: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Report:
    """A finished report: :attr:`html` is the whole page.

    Example:
        >>> r = netsight.report(model, images)
        >>> [s.id for s in r.sections if s.skipped]   # what could not be shown, and why
        >>> r.save("out/report.html")
    """

    title: str
    sections: tuple[Section, ...]
    html: str
    figures: tuple[FigureRecord, ...] = ()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page (whole or not at all); returns the path."""
        return atomic_write_text(path, self.html)

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        made = [s.title for s in self.sections if s.skipped is None]
        skipped = [f"{s.title} ({s.skipped})" for s in self.sections if s.skipped]
        text = f"{self.title}: {', '.join(made)}"
        return text + (f"; skipped: {'; '.join(skipped)}" if skipped else "")


# --------------------------------------------------------------------------- pictures


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _png(fig: Any, dpi: int = _DPI) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return _data_uri(buffer.getvalue())


def _image_uri(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def _img(uri: str, alt: str, css: str = "", font_px: float | None = None) -> str:
    cls = f' class="{css}"' if css else ""
    # the smallest text of a figure, in pixels of the PNG: with the drawn width, a
    # browser test can tell how large that text is on the screen
    font = f' data-font-px="{font_px:.1f}"' if font_px is not None and font_px != inf else ""
    return f'<img{cls}{font} src="{uri}" alt="{html.escape(alt)}">'


def _figure_html(uri: str, caption: str, css: str = "", font_px: float | None = None) -> str:
    picture = _img(uri, caption, css, font_px)
    return f"<figure>{picture}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "data") -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fold(summary: str, body: str, *, open_: bool = False) -> str:
    """A folded block: ``summary`` (HTML) is always shown, ``body`` on a click."""
    state = " open" if open_ else ""
    return f"<details{state}><summary>{summary}</summary>{body}</details>"


def _display_images(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1] for showing: de-normalised, or scaled per image."""
    from netsight.images import denormalize, normalize_maps

    x = images.detach().float().cpu()
    if mean is not None or std is not None:
        return denormalize(x, mean, std)
    if float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return x  # already a picture
    # each image, all its channels together, as one (1, C*H*W) "map"
    return normalize_maps(x.reshape(x.shape[0], 1, -1)).reshape(x.shape)


def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _spread(names: list[str], most: int) -> list[str]:
    """At most ``most`` names, evenly spaced, first and last kept."""
    if len(names) <= most:
        return names
    step = (len(names) - 1) / (most - 1)
    return [names[round(i * step)] for i in range(most)]


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


# --------------------------------------------------------------------------- sections


@dataclass
class _Context:
    model: nn.Module
    images: torch.Tensor
    shown: torch.Tensor
    labels: list[int] | None
    class_names: list[str] | None
    cam_methods: tuple[str, ...]
    cam_layer: str | None
    cam_target: Any
    cams: CAMInputs | None
    filter_layers: list[str] | None
    feature_layers: list[str] | None
    run: Path | None
    diagram: bool
    diagram_depth: int
    faithfulness_steps: int
    pattern_layers: list[str] | None
    pattern_steps: int | None
    mean: Sequence[float] | None
    std: Sequence[float] | None
    depth: int
    progress: bool
    statistics: LayerStats | None = None
    mult_adds: int = 0
    probabilities: torch.Tensor | None = None
    section: str = ""
    figures: list[FigureRecord] = field(default_factory=list)

    def class_name(self, index: int | None, names: Sequence[str] | None = None) -> str:
        if index is None:
            return "-"
        names = self.class_names if names is None else names
        if names is not None and 0 <= index < len(names):
            name = str(names[index])
            return str(index) if name == str(index) else f"{index} ({name})"
        return str(index)

    def figure(self, fig: Any, caption: str, css: str = "") -> str:
        """``fig`` as an embedded PNG with its caption; its audit is recorded."""
        audit = audit_figure(fig, _DPI)
        self.figures.append(FigureRecord(self.section, caption, audit))
        return _figure_html(_png(fig), caption, css, audit.min_font_px)


class _Skip(Exception):
    """A section that cannot be made for this model; the message says why."""


def _lead(ctx: _Context) -> str:
    """The result, in one or two sentences: accuracy on the images, the run's end."""
    said = []
    if ctx.probabilities is not None and ctx.labels is not None:
        top = ctx.probabilities.argmax(dim=1).tolist()
        right = sum(int(k == label) for k, label in zip(top, ctx.labels, strict=True))
        said.append(f"{right} of {len(top)} images classified correctly")
    if ctx.run is not None:
        from netsight.monitor.runs import read_run

        info = read_run(ctx.run)
        metrics = info.metrics
        facts = []
        for key, words in (("val_acc", "validation accuracy"), ("train_acc", "training accuracy")):
            if key in metrics:
                facts.append(f"{words} {_percent(metrics[key])}")
        for key, words in (("val_loss", "validation loss"), ("train_loss", "training loss")):
            if key in metrics:
                facts.append(f"{words} {metrics[key]:.3g}")
        if facts:
            said.append(f"after {info.epochs} epochs of training: " + ", ".join(facts))
    if not said:
        return ""
    text = "; ".join(said)
    return f'<p class="lead">{html.escape(text[0].upper() + text[1:])}.</p>'


def _overview(ctx: _Context, summary: Any) -> str:
    trace = summary.trace
    facts = [
        ("model", trace.model_type),
        ("parameters", f"{summary.total_params:,} ({summary.trainable_params:,} trainable)"),
        ("mult-adds, one image", f"{summary.total_mult_adds:,}"),
        ("input batch", " x ".join(map(str, ctx.images.shape))),
        ("traced on", trace.execution),
    ]
    parts = [_lead(ctx)]
    row = [_table(["", ""], facts, css="facts")]
    if ctx.run is not None and (ctx.run / "curves.png").is_file():
        curves = _data_uri((ctx.run / "curves.png").read_bytes())
        row.append(_figure_html(curves, "training: loss and accuracy", css="curves"))
    parts.append('<div class="row">' + "".join(row) + "</div>")
    parts.append(_blocks(ctx))
    if ctx.probabilities is not None:
        probs = ctx.probabilities
        top = probs.argmax(dim=1).tolist()
        rows = []
        for i, k in enumerate(top):
            label = ctx.labels[i] if ctx.labels is not None else None
            verdict = "" if label is None else ("right" if label == k else "wrong")
            rows.append(
                [i, ctx.class_name(label), ctx.class_name(k), f"{float(probs[i, k]):.3f}", verdict]
            )
        table = _table(["image", "label", "predicted", "probability", ""], rows)
        parts.append(
            _fold(f"<h3>Predictions ({len(rows)} images)</h3>", table, open_=len(rows) <= 8)
        )
    return "".join(parts)


def _blocks(ctx: _Context) -> str:
    """The model drawn as blocks (PlotNeuralNet's style, no LaTeX), or why not."""
    from netsight.diagram.blocks import SMALLEST_FONT_PT, render_blocks
    from netsight.diagram.stages import extract, layout

    dpi = 150
    try:
        network = extract(ctx.model, None, ctx.images[:1])
        # 17 cm at 150 dpi is about 1,000 px, drawn unscaled with text of 10 px and up;
        # a long row of stages needs the full 25 cm for its captions (and scrolls)
        width = 17.0 if len(network.stages) <= 12 else 25.0
        picture = render_blocks(layout(network, width=width), dpi=dpi)
    except Exception as exc:  # a drawing is a bonus: say why it is missing, go on
        return f"<p class=note>no block drawing: {html.escape(f'{type(exc).__name__}: {exc}')}</p>"
    caption = "the model drawn: one block per stage, sized by its output"
    font_px = SMALLEST_FONT_PT * dpi / 72
    return f'<div class="blocks">{_figure_html(_data_uri(picture), caption, font_px=font_px)}</div>'


def _structure(ctx: _Context, summary: Any) -> str:
    rows = len(summary.layers)
    table = str(summary.to_html())
    parts = [_fold(f"<h3>Layer summary ({rows} rows, depth {ctx.depth})</h3>", table)]
    parts.append(_architecture(ctx))
    return "".join(parts)


def _architecture(ctx: _Context) -> str:
    from netsight.diagram import GraphvizNotFoundError, diagram

    heading = "<h3>Dataflow graph</h3>"
    if not ctx.diagram:
        return "<p class=note>dataflow graph: turned off (diagram=False)</p>"
    d = diagram(ctx.model, input_data=ctx.images[:1], depth=ctx.diagram_depth)
    try:
        svg = d.render("svg")
    except GraphvizNotFoundError as exc:
        why = f"{exc} (the DOT text is in Diagram.dot)"
        return f"<p class=note>dataflow graph: {html.escape(why)}</p>"
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in d.notes)
    body = (
        f'<div class="diagram">{_img(_data_uri(svg, "image/svg+xml"), "dataflow graph")}</div>'
        + notes
    )
    return _fold(heading, body)


def _layers(ctx: _Context) -> str:
    """The input beside its mean maps, then every convolution: kernels and maps."""
    from netsight.capture import capture
    from netsight.features import plot_feature_maps, plot_mean_maps
    from netsight.filters import plot_filters, plot_kernel_and_map
    from netsight.hooks import preserve_state

    convs = _conv_names(ctx.model)
    names = ctx.feature_layers if ctx.feature_layers is not None else convs
    if not names:
        raise _Skip("the model has no nn.Conv2d (pass feature_layers=[...])")
    with (
        preserve_state(ctx.model, "eval"),
        torch.no_grad(),
        capture(ctx.model, names, batch=0, to_cpu=True) as cap,
    ):
        ctx.model(ctx.images[:1])
    found = [n for n in names if n in cap.activations]
    if not found:
        raise _Skip("none of the layers ran on the input")
    modules = dict(ctx.model.named_modules())
    parts = []
    mean_names = _spread(found, _MAX_MEAN_MAP_LAYERS)
    means = {n: cap.activations[n] for n in mean_names}
    mean_caption = "the input and the mean of all channels of each layer's output" + (
        f" ({len(mean_names)} of {len(found)} layers, evenly spaced)"
        if len(mean_names) < len(found)
        else ""
    )
    fig = plot_mean_maps(
        means,
        ncols=5,
        title="the input and what each layer makes of it (mean over channels)",
        image=ctx.images[:1],
        mean=ctx.mean,
        std=ctx.std,
    )
    parts.append(ctx.figure(fig, mean_caption))
    detailed = _spread(found, _MAX_LAYER_DETAILS)
    if len(detailed) < len(found):
        parts.append(
            f"<p class=note>{len(detailed)} of {len(found)} layers drawn one by one, evenly "
            "spaced; pass feature_layers=[...] for others.</p>"
        )
    kernel_layers = set(ctx.filter_layers) if ctx.filter_layers is not None else None
    for i, name in enumerate(detailed):
        module = modules.get(name)
        activation = cap.activations[name]
        shape = "x".join(str(d) for d in activation.shape[1:])
        what = type(module).__name__ if module is not None else "layer"
        if isinstance(module, nn.Conv2d):
            k = "x".join(str(d) for d in module.kernel_size)
            what = f"Conv2d {module.in_channels}→{module.out_channels}, {k}"
        body = []
        if isinstance(module, nn.Conv2d) and (kernel_layers is None or name in kernel_layers):
            fig = plot_filters(ctx.model, name, max_tiles=64)
            body.append(ctx.figure(fig, f"{name}: kernels"))
        fig = plot_feature_maps(activation, max_channels=32, title=name)
        body.append(ctx.figure(fig, f"{name}: the maps it produces (first 32 channels)"))
        if isinstance(module, nn.Conv2d) and (kernel_layers is None or name in kernel_layers):
            fig = plot_kernel_and_map(ctx.model, name, activation, max_channels=4)
            body.append(ctx.figure(fig, f"{name}: each kernel beside the map it makes"))
        summary = (
            f"<b>{html.escape(name)}</b> <span class=note>{html.escape(what)} → {shape}</span>"
        )
        parts.append(_fold(summary, '<div class="row">' + "".join(body) + "</div>", open_=i == 0))
    return "".join(parts)


def _patterns(ctx: _Context) -> str:
    """Activation maximisation for the last convolution (or ``pattern_layers``)."""
    from netsight.patterns import maximize

    if ctx.pattern_steps == 0:
        raise _Skip("turned off (pattern_steps=0)")
    side = min(int(ctx.images.shape[-2]), int(ctx.images.shape[-1]), 128)
    steps = ctx.pattern_steps
    if steps is None:  # the default: only when it is cheap
        steps = DEFAULT_PATTERN_STEPS
        area = side * side / (int(ctx.images.shape[-2]) * int(ctx.images.shape[-1]))
        cost = ctx.mult_adds * area * _PATTERN_CHANNELS * 3 * steps
        if cost > PATTERN_BUDGET:
            raise _Skip(
                f"not made at the defaults: {steps} steps on this model cost about "
                f"{cost:.1e} mult-adds, over the default budget of {PATTERN_BUDGET:.0e} "
                f"(minutes on a CPU); ask for them with pattern_steps={steps} "
                f"(netsight report --pattern-steps {steps})"
            )
    names = ctx.pattern_layers
    if names is None:
        convs = _conv_names(ctx.model)
        if not convs:
            raise _Skip("the model has no nn.Conv2d (pass pattern_layers=[...])")
        names = [convs[-1]]
    colour = int(ctx.images.shape[1])
    parts = []
    for name in names:
        found = maximize(
            ctx.model,
            name,
            size=side,
            steps=steps,
            in_channels=colour,
            mean=ctx.mean,
            std=ctx.std,
            max_channels=_PATTERN_CHANNELS,
            progress=ctx.progress,
        )
        gain = (found.activation - found.start).mean()
        caption = (
            f"{name}: the input each of channels {found.channels[0]}-{found.channels[-1]} "
            f"likes best ({steps} steps; mean activation +{float(gain):.3g})"
        )
        parts.append(ctx.figure(found.plot(), caption))
    return "".join(parts) + (
        "<p class=note>activation maximisation: each picture is optimised, from faint "
        "noise, to raise one channel's mean activation (a 1/f-scaled spectrum through a "
        "sigmoid, shifted and rescaled at random every step).</p>"
    )


def _statistics(ctx: _Context) -> str:
    from netsight.features import layer_stats

    stats = ctx.statistics
    basis = f"measured over {stats.samples} inputs given with statistics=" if stats else ""
    if stats is None:
        stats = layer_stats(ctx.model, ctx.images)
        basis = f"measured over the {stats.samples} images of this report"
    return (
        ctx.figure(stats.plot(), "the share of zeros in each layer's output, by depth")
        + stats.to_html()
        + f"<p class=note>{html.escape(basis)}</p>"
    )


def _cam_colorbar(ctx: _Context, cmap: str = "jet") -> str:
    """The scale of the overlays: one horizontal colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from netsight._figures import FONT_PT

    fig = Figure(figsize=(4.6, 1.05), layout="constrained")
    ax = fig.add_subplot()
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), cax=ax, orientation="horizontal")
    bar.set_label("0 = no evidence, 1 = the map's own maximum", fontsize=FONT_PT["label"])
    bar.ax.tick_params(labelsize=FONT_PT["small"])
    fig.suptitle("colour scale of every map", fontsize=FONT_PT["title"])
    return ctx.figure(fig, "each map is scaled to its own maximum", css="colorbar")


def _cam_picture(picture: Any, box: Sequence[int] | None, peak: tuple[int, int] | None) -> Any:
    """``picture`` enlarged (nearest) so thin marks stay crisp, with the object's box
    (white) and the map's maximum (a cross: green inside the box, red outside)."""
    from PIL import Image, ImageDraw

    width, height = picture.size
    scale = max(1, 192 // max(width, height))
    if scale > 1:
        picture = picture.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    inside = None
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        draw.rectangle(
            [x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline="white", width=2
        )
        if peak is not None:
            inside = x0 <= peak[1] < x1 and y0 <= peak[0] < y1
    if peak is not None:
        cy, cx = (peak[0] + 0.5) * scale, (peak[1] + 0.5) * scale
        colour = {True: "#00e000", False: "#ff2020", None: "white"}[inside]
        arm = max(6, 4 * scale)
        for fill, width in (("black", 6), (colour, 3)):  # a dark edge on any colour
            draw.line([cx - arm, cy, cx + arm, cy], fill=fill, width=width)
            draw.line([cx, cy - arm, cx, cy + arm], fill=fill, width=width)
    return picture


def _peak(cam_map: torch.Tensor, size: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of the map's maximum at the image's resolution (as the pointing game)."""
    heat = torch.nan_to_num(cam_map.float(), nan=-1.0)
    if heat.dim() != 2:
        return None
    if tuple(heat.shape) != size:
        heat = torch.nn.functional.interpolate(
            heat[None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0]
    index = int(heat.flatten().argmax())
    return index // size[1], index % size[1]


def _explained(found: Any) -> str:
    """What the CAM section's maps explain, for its closing note."""
    if found.target is None:
        return "the predicted class" if found.predicted[0] is not None else "the top detection"
    if isinstance(found.target, str):
        return found.target
    return "the class given"


def _cams(ctx: _Context) -> str:
    from netsight.cam import CAMWarning, compare, overlay
    from netsight.images import to_pil

    if not ctx.cam_methods:
        raise _Skip("no methods asked for")
    source = ctx.cams
    if source is not None:
        model, images, labels = source.model, source.images, source.labels
        names, boxes = source.class_names, source.boxes
        shown_images = _display_images(images, source.mean, source.std)
        count = min(len(images), max(1, source.shown))
        measured = images  # faithfulness over all of them
    else:
        model, images, labels = ctx.model, ctx.images, ctx.labels
        names, boxes = ctx.class_names, None
        shown_images = ctx.shown
        count = min(len(images), _MAX_CAM_IMAGES)
        measured = images[:count]
    regions = boxes[: len(measured)] if boxes is not None else None
    try:
        found = compare(
            model,
            measured,
            ctx.cam_methods,
            ctx.cam_target,
            layer=ctx.cam_layer if source is None else None,
            faithfulness_steps=ctx.faithfulness_steps,
            regions=regions,
            progress=ctx.progress,
        )
    except (RuntimeError, TypeError, ValueError) as exc:  # no method can run on this model
        raise _Skip(f"{', '.join(ctx.cam_methods)}: {exc}") from exc
    for method in found.methods:  # a constant map, NaN values: the caller hears of them
        for note in dict.fromkeys(n for notes in found.notes[method] for n in notes):
            warnings.warn(note, CAMWarning, stacklevel=2)
    problems: dict[str, list[str]] = {}  # reason -> the methods it stopped
    for method, reason in found.skipped.items():
        problems.setdefault(reason, []).append(method)
    if not found.methods:
        raise _Skip(_reasons(problems))
    where = {m: ", ".join(found.layers[m][0]) for m in found.methods}
    head = "<th>image</th>" + "".join(
        f"<th>{html.escape(m)}<div class=note>{html.escape(where[m])}</div></th>"
        for m in found.methods
    )
    rows = []
    for i in range(count):
        picture = to_pil(shown_images[i])
        size = (picture.size[1], picture.size[0])
        box = boxes[i].tolist() if boxes is not None else None
        k = found.predicted[i]
        said = [f"explains {found.target_label(i)}"] if found.targets[i] != k else []
        if k is not None:
            chance = found.probabilities[i]
            said.insert(0, f"predicted {ctx.class_name(k, names)}, p = {chance:.2f}")
        if labels is not None and k is not None:
            label = int(labels[i])
            said.insert(0, f"label {ctx.class_name(label, names)}")
            said.append("right" if label == k else "wrong")
        first = _img(_image_uri(_cam_picture(picture, box, None)), f"image {i}", css="cam")
        caption = "".join(f"<div>{html.escape(t)}</div>" for t in said)
        row = [f"<td>{first}{caption}</td>"]
        for method in found.methods:
            cam_map = found.maps[method][i]
            blended = overlay(shown_images[i], cam_map)
            drawn = _cam_picture(blended, box, _peak(cam_map, size))
            text = f"{method}, {found.target_label(i)}, {where[method]}"
            row.append(f"<td>{_img(_image_uri(drawn), text, css='cam')}</td>")
        rows.append("<tr>" + "".join(row) + "</tr>")
    notes = f"<p class=note>skipped {html.escape(_reasons(problems))}</p>" if problems else ""
    marks = (
        "The white box is where the object is; the cross is each map's maximum, green "
        "inside the box, red outside (the pointing game). "
        if boxes is not None
        else "The cross is each map's maximum. "
    )
    intro = (
        f"<p>{html.escape(source.description)}</p>"
        if source is not None and source.description
        else ""
    )
    verdicts, numbers = _faithfulness(found)
    return (
        intro
        + verdicts
        + _cam_colorbar(ctx)
        + f'<table class="cams"><thead><tr>{head}</tr></thead>'
        + f"<tbody>{''.join(rows)}</tbody></table>"
        + f"<p class=note>Each map explains {html.escape(_explained(found))} at the layer "
        f"named in its column; red is where that score rises most. {html.escape(marks)}</p>"
        + notes
        + numbers
    )


def _reasons(problems: dict[str, list[str]]) -> str:
    return "; ".join(f"{', '.join(methods)}: {reason}" for reason, methods in problems.items())


_BASELINES = ("random", "center")


def _verdict(name: str, scores: Any, base: dict[str, Any]) -> str:
    """One sentence: does ``name`` beat both baselines on deletion (and pointing)?"""
    # compared as printed (3 decimals, 0.1 %): a difference the page cannot show is a tie
    judged = []
    deletion = [b for b in _BASELINES if round(scores.deletion, 3) < round(base[b].deletion, 3)]
    judged.append(("deletion", deletion))
    if scores.pointing is not None and all(base[b].pointing is not None for b in _BASELINES):
        pointing = [b for b in _BASELINES if round(scores.pointing, 3) > round(base[b].pointing, 3)]
        judged.append(("pointing", pointing))
    won = [what for what, beaten in judged if len(beaten) == len(_BASELINES)]
    lost = [what for what, beaten in judged if len(beaten) < len(_BASELINES)]
    if not lost:
        return f"{name} beats both baselines on {' and '.join(won)}."
    parts = []
    for what, beaten in judged:
        if len(beaten) == len(_BASELINES):
            parts.append(f"beats both on {what}")
        elif beaten:
            missed = [b for b in _BASELINES if b not in beaten]
            parts.append(f"on {what} beats the {beaten[0]} map but not the {missed[0]} one")
        else:
            parts.append(f"on {what} beats neither baseline")
    return (
        f"{name} "
        + "; ".join(parts)
        + (": its maps say little more than a map that ignores the image." if not won else ".")
    )


def _faithfulness(found: Any) -> tuple[str, str]:
    """``(verdicts, numbers)``: a verdict per method in words, and the table of
    pointing, deletion/insertion AUC, average drop and increase of the maps next to a
    random map and a centred Gaussian."""
    if found.evaluation_error is not None:
        why = html.escape(found.evaluation_error)
        return "", f"<p class=note>faithfulness not measured: {why}</p>"
    scores = found.evaluation
    if scores is None:
        return "", (
            "<p class=note>Faithfulness not measured: it costs about (methods + 2) x images "
            "x 2 x (steps + 1) forwards; ask for it with faithfulness_steps=N "
            "(netsight report --faithfulness-steps N).</p>"
        )
    pointing = scores.pointing_images > 0
    rows = []
    for name, m in scores.methods.items():
        row = [name]
        if pointing:
            row.append("n/a" if m.pointing is None else _percent(m.pointing))
        row += [f"{m.deletion:.3f}", f"{m.insertion:.3f}"]
        row += [_percent(m.average_drop), _percent(m.increase)]
        rows.append(row)
    header = ["map"] + (["pointing (higher is better)"] if pointing else [])
    header += ["deletion AUC (lower is better)", "insertion AUC (higher is better)"]
    header += ["average drop (lower is better)", "increase (higher is better)"]
    base = {b: scores.methods[b] for b in _BASELINES if b in scores.methods}
    verdicts = ""
    methods = [n for n in scores.methods if n not in _BASELINES]
    if len(base) == len(_BASELINES) and methods:
        best = min(
            methods,
            key=lambda n: (scores.methods[n].deletion, -(scores.methods[n].pointing or 0.0)),
        )
        items = "".join(
            f"<li>{html.escape(_verdict(n, scores.methods[n], base))}</li>" for n in methods
        )
        b = scores.methods[best]
        rnd, ctr = base["random"], base["center"]
        lead = (
            f"Best on deletion: {best} ({b.deletion:.3f}; random {rnd.deletion:.3f}, "
            f"centre {ctr.deletion:.3f})"
        )
        if b.pointing is not None and pointing:
            lead += (
                f", pointing {_percent(b.pointing)} (random {_percent(rnd.pointing or 0.0)}, "
                f"centre {_percent(ctr.pointing or 0.0)})"
            )
        verdicts = (
            f'<p class="verdict">{html.escape(lead)}.</p><ul class="verdicts">{items}</ul>'
            "<p class=note>The numbers are under the maps (Faithfulness).</p>"
        )
    basis = (
        f"Over {scores.images} images"
        + (f" ({scores.pointing_images} with boxes)" if pointing else "")
        + f", {scores.steps} steps: pointing is the share of maps whose maximum lies in the "
        "object's box; deletion and insertion follow the class probability as the most "
        "important pixels are deleted (set to zero) or inserted into a blurred copy; average "
        "drop and increase compare the probability on image x map with the image's. 'random' "
        "and 'center' are maps that know nothing about the image: a method is informative "
        "where it beats both."
    )
    numbers = (
        "<h3>Faithfulness</h3>"
        + _table(header, rows, css="data faithfulness")
        + f"<p class=note>{html.escape(basis)}</p>"
    )
    return verdicts, numbers


_RUN_PICTURES = (
    ("curves.png", "loss and accuracy"),
    ("grad_flow.png", "gradient flow, last epoch"),
    ("grad_heatmap.png", "gradient flow by epoch"),
    ("probe.png", "probe batch: labels and predictions"),
)


def _training(ctx: _Context) -> str:
    from netsight.monitor.runs import read_diagnostics, read_run

    if ctx.run is None:
        raise _Skip("no training run given (run=DIR of a TrainingMonitor)")
    info = read_run(ctx.run)
    facts = [("run", str(ctx.run)), ("steps", info.steps), ("epochs", info.epochs)]
    facts += [(k, f"{v:.4g}") for k, v in sorted(info.metrics.items())]
    parts = [_table(["", ""], facts, css="facts")]
    for file, caption in _RUN_PICTURES:
        path = ctx.run / file
        if path.is_file():
            parts.append(_figure_html(_data_uri(path.read_bytes()), caption, css="wide"))
    diagnostics = [
        [item.get("step", ""), item.get("kind", ""), item.get("message", "")]
        for item in read_diagnostics(ctx.run / "diagnostics.jsonl")
    ]
    if diagnostics:
        parts.append(f"<h3>Diagnostics ({len(diagnostics)})</h3>")
        parts.append(_table(["step", "kind", "message"], diagnostics[:50]))
    else:
        parts.append("<p>The monitor found no problems.</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- page

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
  padding: 0 1.5em 3em; color: #1d1d1f; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .5em 0;
  z-index: 1; }
nav a { margin-right: 1em; color: #0b63c5; text-decoration: none; }
nav a.skipped { color: #999; }
section { border-bottom: 1px solid #eee; padding: 1em 0; overflow-x: auto; }
h1 { margin: .6em 0 .2em; } h2 { margin: .2em 0 .6em; } h3 { margin: .8em 0 .4em; font-size: 16px; }
details > summary { cursor: pointer; padding: .3em 0; }
details > summary h3 { display: inline; }
details[open] > summary { margin-bottom: .4em; }
.lead { font-size: 18px; margin: .2em 0 .8em; }
.verdict { font-weight: 600; }
table.data, table.facts, .netsight-summary table, table.netsight-stats {
  border-collapse: collapse; font-size: 13px; }
table.data td, table.data th, table.facts td, .netsight-summary td, .netsight-summary th,
table.netsight-stats td, table.netsight-stats th {
  border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
table.cams td { vertical-align: top; text-align: center; font-size: 12px; padding: 3px; }
table.cams th { font-size: 13px; }
img.cam { width: 128px; height: 128px; image-rendering: pixelated; }
img.input { width: 160px; image-rendering: pixelated; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0 0 1em; } figure img { max-width: 100%; }
figure img.wide { width: 100%; max-width: 1150px; }
.blocks { overflow-x: auto; } .blocks img { max-width: none; }
figcaption, .note { color: #555; font-size: 13px; }
.diagram img { max-width: 100%; }
.skipped-note { color: #8a5a00; }
footer { color: #555; font-size: 13px; margin-top: 1em; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="note">made by netsight {{ version }} with torch {{ torch_version }} on {{ when }}</p>
<nav>{% for s in sections -%}
<a href="#{{ s.id }}"{% if s.skipped %} class="skipped"{% endif %}>{{ s.title }}</a>
{%- endfor %}</nav>
{% for s in sections %}
<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
{% if s.skipped %}<p class="skipped-note">Not shown: {{ s.skipped }}</p>
{%- else %}{{ s.html | safe }}{% endif %}
</section>
{% endfor %}
<footer>{{ footer }}</footer>
<script>
window.addEventListener("load", function () {
  var broken = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!img.complete || img.naturalWidth === 0) { broken++; }
  }
  document.body.setAttribute("data-images", String(document.images.length));
  document.body.setAttribute("data-broken-images", String(broken));
  document.body.setAttribute("data-ready", "1");
});
</script>
</body></html>
"""


def report(
    model: nn.Module,
    images: torch.Tensor,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    cam_methods: Sequence[str] = DEFAULT_CAM_METHODS,
    cam_layer: str | None = None,
    cam_target: Any = None,
    cams: CAMInputs | None = None,
    faithfulness_steps: int = 0,
    filter_layers: Sequence[str] | None = None,
    feature_layers: Sequence[str] | None = None,
    pattern_layers: Sequence[str] | None = None,
    pattern_steps: int | None = None,
    statistics: LayerStats | None = None,
    run: str | os.PathLike[str] | None = None,
    diagram: bool = True,
    diagram_depth: int = 2,
    depth: int = 3,
    progress: bool = False,
) -> Report:
    """Everything netsight shows about ``model`` on ``images``, as one HTML page.

    Example:
        >>> page = netsight.report(model, images, labels=[3, 1], run="runs/exp")
        >>> page.save("report.html")
        >>> {s.id: s.skipped for s in page.sections if s.skipped}
        {}

    Args:
        model: the network; it is left exactly as it came (hooks removed, modes,
            ``requires_grad`` and weights unchanged).
        images: a ``(B, C, H, W)`` batch, prepared as the model expects
            (normalised): the feature maps use the first image, the statistics
            all of them, the CAMs the first eight.
        labels: the true class of each image, to mark predictions right or wrong
            (one int per image, each a class of the model).
        class_names: names of the classes, shown next to their indices.
        mean, std: the normalisation of ``images``, to show them as they were
            (otherwise each image is scaled to its own range for display).
        title: the page title (default: the model's class name).
        cam_methods: names from :data:`netsight.cam.METHODS`.
        cam_layer: the CAM target layer (default: chosen per model).
        cam_target: what the CAMs explain: a class for every image, or one of
            :mod:`netsight.cam.targets` (a segmentation class, a detected box, a
            concept embedding; ``parse_target("seg:15")``) (default: each image's
            top-1 class; a detector's most confident box).
        cams: explain another model or other images in the CAM section (see
            :class:`CAMInputs`: e.g. images where the object's place is known and
            varies, with boxes for the pointing game); ``cam_layer`` is then not used.
        faithfulness_steps: measure the maps' faithfulness with this many
            deletion/insertion steps (:func:`netsight.cam.evaluate` on the shown
            images, or on all of ``cams.images``) and say per method whether it beats
            a random and a centred map; 0 (the default) leaves it out: it costs
            about ``(methods + 2) * images * 2 * (steps + 1)`` forwards, the bulk of
            a report on a large model (10 steps on 4 ResNet-50 images: about
            1.5 minutes here).
        filter_layers: convolutions whose kernels are drawn in their layer's fold
            (default: every ``nn.Conv2d`` drawn one by one).
        pattern_layers: layers whose channels get activation-maximisation
            pictures (default: the last ``nn.Conv2d``; 8 channels each).
        pattern_steps: optimisation steps of those pictures; 0 leaves them out.
            The default (``None``) makes them with 64 steps when that costs at most
            :data:`PATTERN_BUDGET` mult-adds, and otherwise says in their place what
            they would cost (a ResNet-50: minutes).
        feature_layers: layers whose outputs are shown (default: every
            ``nn.Conv2d``; at most 16 drawn one by one and 15 mean maps, evenly
            spaced).
        statistics: a :class:`~netsight.features.LayerStats` measured elsewhere
            (e.g. over a whole test set with :func:`netsight.layer_stats`) instead
            of the statistics of ``images``.
        run: a :class:`~netsight.TrainingMonitor` run directory: its curves,
            gradient flow, metrics and diagnostics join the page.
        diagram: draw the dataflow graph (needs Graphviz's ``dot``).
        diagram_depth: how deep the graph goes (deeper modules fold into
            their ancestor; repeated blocks roll into "x N").
        depth: depth of the summary table.
        progress: show progress over the sections (and inside the long ones).

    Returns:
        A :class:`Report`; ``report.save(path)`` writes it.

    Raises:
        TypeError, ValueError: a malformed model, batch or option, or labels that
            are not one class of the model per image (checked before any section).
        netsight.TraceError: the model does not run on ``images``.
    """
    from netsight._version import __version__
    from netsight.hooks import preserve_state
    from netsight.summary import summary as make_summary

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a (B, C, H, W) tensor, got {got}")
    if isinstance(faithfulness_steps, bool) or not isinstance(faithfulness_steps, int):
        raise TypeError(f"faithfulness_steps: expected an int, got {faithfulness_steps!r}")
    if faithfulness_steps < 0:
        raise ValueError(f"faithfulness_steps: expected 0 (off) or more, got {faithfulness_steps}")
    from netsight.cam import METHODS
    from netsight.cam.base import check_classes

    # the range once the model's class count is known, below, before any section
    checked_labels = (
        check_classes(labels, None, name="labels", noun="label", count=images.shape[0])
        if labels is not None
        else None
    )

    unknown = [m for m in cam_methods if m not in METHODS]
    if unknown:
        raise ValueError(f"cam_methods: unknown {unknown}; choose from {sorted(METHODS)}")
    from netsight.capture import resolve_layers

    # Names the user gave fail here, with close matches, not inside a section.
    if pattern_steps is not None and (
        isinstance(pattern_steps, bool) or not isinstance(pattern_steps, int) or pattern_steps < 0
    ):
        raise ValueError(f"pattern_steps: expected 0 (off) or more, got {pattern_steps!r}")
    for given in (cam_layer, filter_layers, feature_layers, pattern_layers):
        if given is not None:
            resolve_layers(model, given if isinstance(given, str) else list(given))
    if cams is not None:
        _check_cam_inputs(cams)
    if statistics is not None:
        from netsight.features import LayerStats

        if not isinstance(statistics, LayerStats):
            raise TypeError(f"statistics: expected a LayerStats, got {type(statistics).__name__}")
    run_dir = Path(run) if run is not None else None
    if run_dir is not None and not (run_dir / "scalars.csv").is_file():
        raise FileNotFoundError(f"run: {run_dir} has no scalars.csv (not a TrainingMonitor run)")

    ctx = _Context(
        model=model,
        images=images,
        shown=_display_images(images, mean, std),
        labels=checked_labels,
        class_names=[str(c) for c in class_names] if class_names is not None else None,
        cam_methods=tuple(cam_methods),
        cam_layer=cam_layer,
        cam_target=cam_target,
        cams=cams,
        filter_layers=list(filter_layers) if filter_layers is not None else None,
        feature_layers=list(feature_layers) if feature_layers is not None else None,
        run=run_dir,
        diagram=diagram,
        diagram_depth=diagram_depth,
        faithfulness_steps=faithfulness_steps,
        pattern_layers=list(pattern_layers) if pattern_layers is not None else None,
        pattern_steps=pattern_steps,
        mean=mean,
        std=std,
        depth=depth,
        progress=progress,
        statistics=statistics,
    )
    summary = make_summary(model, input_data=images[:1], depth=depth)
    ctx.mult_adds = int(summary.total_mult_adds)
    with preserve_state(model, "eval"), torch.no_grad():
        output = model(images)
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        if checked_labels is not None:
            check_classes(checked_labels, output.shape[1], name="labels", noun="label")
        ctx.probabilities = output.float().softmax(dim=1).cpu()

    makers: list[tuple[str, str, Callable[[], str]]] = [
        ("overview", "Overview", lambda: _overview(ctx, summary)),
        ("structure", "Structure", lambda: _structure(ctx, summary)),
        ("layers", "Layer by layer", lambda: _layers(ctx)),
        ("statistics", "Layer statistics", lambda: _statistics(ctx)),
        ("patterns", "Filter patterns", lambda: _patterns(ctx)),
        ("cam", "Where it looks: class activation maps", lambda: _cams(ctx)),
        ("training", "Training", lambda: _training(ctx)),
    ]
    sections = []
    bar = ProgressBar(progress, len(makers), "report")
    try:
        for anchor, heading, make in makers:
            ctx.section = anchor
            started = time.perf_counter()
            try:
                body, skipped = make(), None
            except _Skip as why:
                body, skipped = "", str(why)
            except Exception as exc:  # one failing picture must not cost the whole page
                if anchor in ("overview", "structure"):
                    raise
                body, skipped = "", f"failed: {type(exc).__name__}: {exc}"
                warnings.warn(
                    f"report: the {heading} section failed ({type(exc).__name__}: {exc}); "
                    f"the page says so in its place",
                    RuntimeWarning,
                    stacklevel=2,
                )
            seconds = time.perf_counter() - started
            sections.append(Section(anchor, heading, body, skipped, seconds))
            bar.advance(heading)
    finally:
        bar.close()

    import jinja2

    page_title = title or f"{type(model).__name__}: netsight report"
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(_PAGE).render(
        title=page_title,
        version=__version__,
        torch_version=torch.__version__,
        when=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        sections=sections,
        footer=(
            f"{len(sections)} sections, "
            f"{sum(s.seconds for s in sections):.1f} s; "
            "pictures are embedded, nothing is loaded from elsewhere"
        ),
    )
    return Report(page_title, tuple(sections), page, tuple(ctx.figures))


def _check_cam_inputs(cams: CAMInputs) -> None:
    """``cams`` is well formed: checked before any section runs."""
    from netsight.cam.base import check_classes

    if not isinstance(cams, CAMInputs):
        raise TypeError(f"cams: expected a CAMInputs, got {type(cams).__name__}")
    if not isinstance(cams.model, nn.Module):
        raise TypeError(f"cams.model: expected a torch.nn.Module, got {type(cams.model).__name__}")
    images = cams.images
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"cams.images: expected a (B, C, H, W) tensor, got {got}")
    count = int(images.shape[0])
    if cams.labels is not None:
        check_classes(cams.labels, None, name="cams.labels", noun="label", count=count)
    if cams.boxes is not None:
        boxes = cams.boxes
        if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (count, 4):
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"cams.boxes: expected a ({count}, 4) tensor of boxes, got {got}")
