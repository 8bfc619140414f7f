"""One self-contained HTML page about one model: everything netsight shows.

:func:`report` runs netsight's pieces on a model and a batch of images and puts
what they found on one page: the layer summary, the dataflow diagram,
convolution filters, filter patterns (activation maximisation), feature maps,
layer statistics, class activation maps
and, given a :class:`~netsight.TrainingMonitor` run directory, the training
curves, gradient flow and diagnostics. Pictures are embedded as PNG data, so
the file can be mailed or opened anywhere; every name that comes from the
model is escaped. A section that cannot be made for this model (no
convolution, no Graphviz, a CAM method that does not apply) says why in its
place instead of stopping the report.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netsight._io import atomic_write_text
from netsight._progress import ProgressBar

__all__ = ["Report", "Section", "report"]

#: CAM methods shown by default: the gradient family, one pass each.
DEFAULT_CAM_METHODS = ("gradcam", "gradcam++", "layercam")
_DPI = 90
_MAX_CAM_IMAGES = 8
_MAX_MEAN_MAP_LAYERS = 15


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


def _figure_uri(fig: Any, dpi: int = _DPI) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return _data_uri(buffer.getvalue())


def _image_uri(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def _img(uri: str, alt: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<img{cls} src="{uri}" alt="{html.escape(alt)}">'


def _figure(uri: str, caption: str, css: str = "") -> str:
    picture = _img(uri, caption, css)
    return f"<figure>{picture}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "data") -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _display_images(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1] for showing: de-normalised, or scaled per image."""
    from netsight.images import denormalize, normalize_maps

    x = images.detach().float().cpu()
    if mean is not None or std is not None:
        return denormalize(x, mean, std)
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
    filter_layers: list[str] | None
    feature_layers: list[str] | None
    run: Path | None
    diagram: bool
    diagram_depth: int
    faithfulness_steps: int
    pattern_layers: list[str] | None
    pattern_steps: int
    mean: Sequence[float] | None
    std: Sequence[float] | None
    depth: int
    probabilities: torch.Tensor | None = None

    def class_name(self, index: int | None) -> str:
        if index is None:
            return "-"
        if self.class_names is not None and 0 <= index < len(self.class_names):
            name = self.class_names[index]
            return str(index) if name == str(index) else f"{index} ({name})"
        return str(index)


class _Skip(Exception):
    """A section that cannot be made for this model; the message says why."""


def _overview(ctx: _Context, summary: Any) -> str:
    trace = summary.trace
    facts = [
        ("model", trace.model_type),
        ("parameters", f"{summary.total_params:,} ({summary.trainable_params:,} trainable)"),
        ("mult-adds, one image", f"{summary.total_mult_adds:,}"),
        ("input batch", " x ".join(map(str, ctx.images.shape))),
        ("traced on", trace.execution),
    ]
    parts = [_table(["", ""], facts, css="facts")]
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
        parts.append("<h3>Predictions</h3>")
        parts.append(_table(["image", "label", "predicted", "probability", ""], rows))
    return "".join(parts)


def _summary_section(ctx: _Context, summary: Any) -> str:
    return str(summary.to_html())


def _architecture(ctx: _Context) -> str:
    from netsight.diagram import GraphvizNotFoundError, diagram

    if not ctx.diagram:
        raise _Skip("turned off (diagram=False)")
    d = diagram(ctx.model, input_data=ctx.images[:1], depth=ctx.diagram_depth)
    try:
        svg = d.render("svg")
    except GraphvizNotFoundError as exc:
        raise _Skip(f"{exc} (the DOT text is in Diagram.dot)") from exc
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in d.notes)
    return (
        f'<div class="diagram">{_img(_data_uri(svg, "image/svg+xml"), "dataflow graph")}</div>'
        + notes
    )


def _filters(ctx: _Context) -> str:
    from netsight.filters import plot_filters

    names = ctx.filter_layers
    if names is None:
        convs = _conv_names(ctx.model)
        if not convs:
            raise _Skip("the model has no nn.Conv2d")
        names = list(dict.fromkeys([convs[0], convs[-1]]))
    parts = []
    for name in names:
        fig = plot_filters(ctx.model, name, max_tiles=64)
        parts.append(_figure(_figure_uri(fig), f"{name}: kernels"))
    return '<div class="row">' + "".join(parts) + "</div>"


def _patterns(ctx: _Context) -> str:
    """Activation maximisation for the last convolution (or ``pattern_layers``)."""
    from netsight.patterns import maximize

    if ctx.pattern_steps <= 0:
        raise _Skip("turned off (pattern_steps=0)")
    names = ctx.pattern_layers
    if names is None:
        convs = _conv_names(ctx.model)
        if not convs:
            raise _Skip("the model has no nn.Conv2d (pass pattern_layers=[...])")
        names = [convs[-1]]
    side = min(int(ctx.images.shape[-2]), int(ctx.images.shape[-1]), 128)
    colour = int(ctx.images.shape[1])
    parts = []
    for name in names:
        found = maximize(
            ctx.model,
            name,
            size=side,
            steps=ctx.pattern_steps,
            in_channels=colour,
            mean=ctx.mean,
            std=ctx.std,
            max_channels=8,
        )
        gain = (found.activation - found.start).mean()
        caption = (
            f"{name}: the input each of channels {found.channels[0]}-{found.channels[-1]} "
            f"likes best ({ctx.pattern_steps} steps; mean activation +{float(gain):.3g})"
        )
        parts.append(_figure(_figure_uri(found.plot()), caption))
    return "".join(parts) + (
        "<p class=note>activation maximisation: each picture is optimised, from faint "
        "noise, to raise one channel's mean activation (a 1/f-scaled spectrum through a "
        "sigmoid, shifted and rescaled at random every step).</p>"
    )


def _features(ctx: _Context) -> str:
    from netsight.capture import capture
    from netsight.features import plot_feature_maps, plot_mean_maps
    from netsight.hooks import preserve_state

    names = ctx.feature_layers if ctx.feature_layers is not None else _conv_names(ctx.model)
    if not names:
        raise _Skip("the model has no nn.Conv2d (pass feature_layers=[...])")
    names = _spread(names, _MAX_MEAN_MAP_LAYERS)
    with (
        preserve_state(ctx.model, "eval"),
        torch.no_grad(),
        capture(ctx.model, names, batch=0, to_cpu=True) as cap,
    ):
        ctx.model(ctx.images[:1])
    found = [n for n in names if n in cap.activations]
    if not found:
        raise _Skip("none of the layers ran on the input")
    parts = [
        _figure(_figure_uri(plot_mean_maps(cap, ncols=5)), "channel-averaged maps, layer by layer")
    ]
    row = []
    for name in dict.fromkeys([found[0], found[-1]]):
        fig = plot_feature_maps(cap.activations[name], max_channels=32, title=name)
        row.append(_figure(_figure_uri(fig), f"{name}: the first 32 channels"))
    parts.append('<div class="row">' + "".join(row) + "</div>")
    return "".join(parts)


def _statistics(ctx: _Context) -> str:
    from netsight.features import layer_stats

    stats = layer_stats(ctx.model, ctx.images)
    return (
        stats.to_html()
        + _figure(_figure_uri(stats.plot()), "sparsity and dead channels by depth")
        + f"<p class=note>over the {ctx.images.shape[0]} images of this report</p>"
    )


def _cams(ctx: _Context) -> str:
    from netsight.cam import CAMWarning, compare, overlay
    from netsight.images import to_pil

    if not ctx.cam_methods:
        raise _Skip("no methods asked for")
    count = min(len(ctx.images), _MAX_CAM_IMAGES)
    try:
        found = compare(
            ctx.model,
            ctx.images[:count],
            ctx.cam_methods,
            layer=ctx.cam_layer,
            faithfulness_steps=ctx.faithfulness_steps,
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
        label = ctx.class_name(ctx.labels[i]) if ctx.labels is not None else ""
        first = _img(_image_uri(to_pil(ctx.shown[i])), f"image {i}", css="cam")
        caption = f"<div>{html.escape(label)}</div>" if label else ""
        row = [f"<td>{first}{caption}</td>"]
        for method in found.methods:
            picture = overlay(ctx.shown[i], found.maps[method][i])
            text = f"{method}, class {ctx.class_name(found.targets[i])}, {where[method]}"
            row.append(f"<td>{_img(_image_uri(picture), text, css='cam')}</td>")
        rows.append("<tr>" + "".join(row) + "</tr>")
    notes = f"<p class=note>skipped {html.escape(_reasons(problems))}</p>" if problems else ""
    return (
        f'<table class="cams"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"<p class=note>each map explains the top-1 class at the layer named in its "
        f"column; red is where the class score rises most.</p>" + notes + _faithfulness(found)
    )


def _reasons(problems: dict[str, list[str]]) -> str:
    return "; ".join(f"{', '.join(methods)}: {reason}" for reason, methods in problems.items())


def _faithfulness(found: Any) -> str:
    """Deletion/insertion AUC, average drop and increase of the shown maps, next to
    a random map and a centred Gaussian (measured by :func:`netsight.cam.compare`)."""
    if found.evaluation_error is not None:
        return f"<p class=note>faithfulness not measured: {html.escape(found.evaluation_error)}</p>"
    scores = found.evaluation
    if scores is None:
        return ""
    rows = [
        [
            name,
            f"{m.deletion:.3f}",
            f"{m.insertion:.3f}",
            f"{100 * m.average_drop:.1f}%",
            f"{100 * m.increase:.1f}%",
        ]
        for name, m in scores.methods.items()
    ]
    header = ["map", "deletion AUC (lower is better)", "insertion AUC (higher is better)"]
    header += ["average drop (lower is better)", "increase (higher is better)"]
    return (
        "<h3>Faithfulness</h3>"
        + _table(header, rows)
        + f"<p class=note>over the {scores.images} images above, {scores.steps} steps: the "
        "top-1 probability as the most important pixels are deleted (set to zero) or "
        "inserted into a blurred copy, and on image x map; 'random' and 'center' are maps "
        "that know nothing about the image. A method is informative where it beats "
        "both.</p>"
    )


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
    row = []
    for file, caption in _RUN_PICTURES:
        path = ctx.run / file
        if path.is_file():
            row.append(_figure(_data_uri(path.read_bytes()), caption))
    parts.append('<div class="row">' + "".join(row) + "</div>")
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
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
  padding: 0 1.5em 3em; color: #1d1d1f; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .5em 0; }
nav a { margin-right: 1em; color: #0b63c5; text-decoration: none; }
nav a.skipped { color: #999; }
section { border-bottom: 1px solid #eee; padding: 1em 0; overflow-x: auto; }
h1 { margin: .6em 0 .2em; } h2 { margin: .2em 0 .6em; }
table.data, table.facts, .netsight-summary table, table.netsight-stats {
  border-collapse: collapse; font-size: 12px; }
table.data td, table.data th, table.facts td, .netsight-summary td, .netsight-summary th,
table.netsight-stats td, table.netsight-stats th {
  border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
table.cams td { vertical-align: top; text-align: center; font-size: 11px; padding: 3px; }
img.cam { width: 112px; height: 112px; image-rendering: pixelated; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0 0 1em; } figure img { max-width: 100%; }
.row figure { max-width: 48%; }
figcaption, .note { color: #666; font-size: 12px; }
.diagram img { max-width: 100%; }
.skipped-note { color: #8a5a00; }
footer { color: #666; font-size: 12px; margin-top: 1em; }
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
    faithfulness_steps: int = 10,
    filter_layers: Sequence[str] | None = None,
    feature_layers: Sequence[str] | None = None,
    pattern_layers: Sequence[str] | None = None,
    pattern_steps: int = 64,
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
        faithfulness_steps: deletion/insertion steps of the faithfulness table
            (:func:`netsight.cam.evaluate` on the shown images); 0 leaves it out.
            It costs about ``(methods + 2) * images * 2 * (steps + 1)`` image
            forwards, the bulk of a report on a large model.
        filter_layers: convolutions whose kernels are drawn (default: the first
            and the last ``nn.Conv2d``).
        pattern_layers: layers whose channels get activation-maximisation
            pictures (default: the last ``nn.Conv2d``; 8 channels each).
        pattern_steps: optimisation steps of those pictures; 0 leaves them out.
        feature_layers: layers whose outputs are shown (default: every
            ``nn.Conv2d``, at most 15 evenly spaced for the mean maps).
        run: a :class:`~netsight.TrainingMonitor` run directory: its curves,
            gradient flow, metrics and diagnostics join the page.
        diagram: draw the dataflow graph (needs Graphviz's ``dot``).
        diagram_depth: how deep the graph goes (deeper modules fold into
            their ancestor; repeated blocks roll into "x N").
        depth: depth of the summary table.
        progress: show a progress bar over the sections.

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
    if isinstance(pattern_steps, bool) or not isinstance(pattern_steps, int) or pattern_steps < 0:
        raise ValueError(f"pattern_steps: expected 0 (off) or more, got {pattern_steps!r}")
    for given in (cam_layer, filter_layers, feature_layers, pattern_layers):
        if given is not None:
            resolve_layers(model, given if isinstance(given, str) else list(given))
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
    )
    summary = make_summary(model, input_data=images[:1], depth=depth)
    with preserve_state(model, "eval"), torch.no_grad():
        output = model(images)
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        if checked_labels is not None:
            check_classes(checked_labels, output.shape[1], name="labels", noun="label")
        ctx.probabilities = output.float().softmax(dim=1).cpu()

    makers: list[tuple[str, str, Callable[[], str]]] = [
        ("overview", "Overview", lambda: _overview(ctx, summary)),
        ("summary", "Layer summary", lambda: _summary_section(ctx, summary)),
        ("architecture", "Architecture", lambda: _architecture(ctx)),
        ("filters", "Filters", lambda: _filters(ctx)),
        ("patterns", "Filter patterns", lambda: _patterns(ctx)),
        ("features", "Feature maps", lambda: _features(ctx)),
        ("statistics", "Layer statistics", lambda: _statistics(ctx)),
        ("cam", "Class activation maps", lambda: _cams(ctx)),
        ("training", "Training", lambda: _training(ctx)),
    ]
    sections = []
    bar = ProgressBar(progress, len(makers), "report")
    try:
        for anchor, heading, make in makers:
            started = time.perf_counter()
            try:
                body, skipped = make(), None
            except _Skip as why:
                body, skipped = "", str(why)
            except Exception as exc:  # one failing picture must not cost the whole page
                if anchor in ("overview", "summary"):
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
    return Report(page_title, tuple(sections), page)
