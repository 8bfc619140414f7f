"""Several CAM methods on the same images, side by side, and the files that show them.

:func:`compare` runs each method on each image (a method the model cannot run is
skipped with its reason), optionally measures faithfulness, and returns a frozen
:class:`CAMComparison`; :meth:`CAMComparison.save` writes the overlays, the maps as
``.npy``, the comparison grid and ``cam.json`` into a directory, whole or not at all.
This is what ``netsight cam`` does and what the report's CAM section shows.

Example:
    >>> found = netsight.cam.compare(model, x, ["gradcam", "scorecam"], targets=3)
    >>> found.methods, found.skipped           # what ran, and why the others did not
    (('gradcam', 'scorecam'), {})
    >>> found.maps["gradcam"][0].shape         # one (H, W) map in [0, 1] per image
    torch.Size([224, 224])
    >>> found.save("out/cam")                  # overlays, maps, grid.png, cam.json
"""

from __future__ import annotations

import difflib
import inspect
import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netsight._io import figure_bytes, unique_names, versions, write_directory
from netsight._progress import ProgressBar
from netsight.cam.base import (
    BaseCAM,
    ScoreTarget,
    check_classes,
    is_detections,
    resolve_targets,
)
from netsight.cam.metrics import CAMEvaluation, evaluate
from netsight.cam.overlay import overlay
from netsight.cam.targets import describe
from netsight.capture import resolve_layers
from netsight.hooks import preserve_state

__all__ = ["ALL", "SCHEMA", "CAMComparison", "compare", "parse_methods"]

#: The ``schema`` of ``cam.json``.
SCHEMA = "netsight.cam/1"
#: What ``methods=`` says for every method the model supports.
ALL = "all"
#: The manifest's file name.
MANIFEST = "cam.json"
#: Size of one grid cell in inches (the grid PNG is ``columns * W`` by ``rows * H``
#: inches at :data:`_DPI`).
_CELL = (2.4, 2.9)
_DPI = 100
#: What a method raises when it cannot run on a model (recorded as a skip).
_METHOD_ERRORS = (ValueError, TypeError, RuntimeError)


def _registry() -> dict[str, type[BaseCAM]]:
    from netsight.cam import METHODS  # the registry lives in the package

    return METHODS


def parse_methods(methods: str | Sequence[str]) -> str | tuple[str, ...]:
    """What ``methods=`` asks for: :data:`ALL`, or registry names in order, once each.

    Args:
        methods: ``"gradcam,scorecam"``, a sequence of names, or ``"all"``.

    Raises:
        ValueError: an unknown name (close matches suggested), or no name at all.
        TypeError: something that is not names.
    """
    registry = _registry()
    items = methods.split(",") if isinstance(methods, str) else methods
    if not isinstance(items, Sequence):
        raise TypeError(f"methods: expected names, got {type(methods).__name__}")
    names: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise TypeError(f"methods: expected names, got {raw!r} ({type(raw).__name__})")
        name = raw.strip().lower()
        if not name:
            continue
        if name == ALL:
            return ALL
        if name not in registry:
            close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown method {raw.strip()!r}{hint} (expected names from: "
                f"{', '.join(registry)}, or {ALL})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"expected method names such as gradcam, got {methods!r}")
    return tuple(names)


@dataclass(frozen=True)
class CAMComparison:
    """What :func:`compare` found. Per-image tuples follow the order of the images.

    Attributes:
        model_class: the model's class name.
        requested: :data:`ALL` or the method names asked for.
        methods: the methods that ran, in the order asked.
        skipped: method -> why it could not run on this model.
        maps: method -> one ``(H, W)`` float map in ``[0, 1]`` per image, at the
            image's resolution, on the CPU.
        layers: method -> the layers each image's map was taken at.
        notes: method -> the warnings the method gave on each image (a constant map,
            NaN values); kept here, not raised.
        sources: where each image came from (``names=``), e.g. its file.
        names: each image's file-safe stem, unique (``cat``, ``cat_2``).
        shapes: each image's input shape, batch dimension included.
        pictures: each image as shown, ``(C, H, W)`` in ``[0, 1]`` (the input with
            ``mean`` and ``std`` undone).
        predicted: each image's top-1 class (``None`` when the model is no classifier).
        probabilities: the top-1 class's softmax probability (or ``None``).
        targets: the class each map explains (``None`` for a target that is not one
            class, e.g. a detection).
        scores: each image's target score on the unchanged input (the class's logit
            for a class).
        target: ``targets=`` as given (``None``: each image's top-1 class; a
            callable target as its description).
        target_labels: what each image's map explains, in words (``class 3``,
            ``box of class 2 at [10, 4, 80, 60]``; see
            :func:`netsight.cam.targets.describe`).
        layer: ``layer=`` as given (``None``: each method's default).
        mean, std: the normalisation the pictures were shown with.
        approx: ``approx=`` as given.
        seconds: method -> seconds spent computing its maps.
        evaluation: the faithfulness scores (``faithfulness_steps > 0``), or ``None``.
        evaluation_error: why faithfulness could not be measured, or ``None``.
        class_names: the name of each class index (``class_names=``), or ``None``.
    """

    model_class: str
    requested: str | tuple[str, ...]
    methods: tuple[str, ...]
    skipped: Mapping[str, str]
    maps: Mapping[str, tuple[torch.Tensor, ...]]
    layers: Mapping[str, tuple[tuple[str, ...], ...]]
    notes: Mapping[str, tuple[tuple[str, ...], ...]]
    sources: tuple[str, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    pictures: tuple[torch.Tensor, ...]
    predicted: tuple[int | None, ...]
    probabilities: tuple[float | None, ...]
    targets: tuple[int | None, ...]
    scores: tuple[float, ...]
    target: int | tuple[int, ...] | str | None
    layer: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    approx: int | None
    seconds: Mapping[str, float]
    evaluation: CAMEvaluation | None = None
    evaluation_error: str | None = None
    class_names: tuple[str, ...] | None = None
    target_labels: tuple[str, ...] = ()

    def class_name(self, index: int | None) -> str | None:
        """The name of class ``index``, or ``None`` without ``class_names``."""
        names = self.class_names
        if index is None or names is None or not 0 <= index < len(names):
            return None
        return names[index]

    def target_label(self, image: int) -> str:
        """What image ``image``'s maps explain, in words (``class 3 cat``)."""
        if image < len(self.target_labels):
            return self.target_labels[image]
        return f"class {self._class_label(self.targets[image])}"

    def _class_label(self, index: int | None) -> str:
        name = self.class_name(index)
        return f"{index} {_shorten(name, 20)}" if name is not None else str(index)

    def file_stem(self, image: int, method: str) -> str:
        """The stem of one overlay (and map) file: ``IMAGE__METHOD``."""
        slug = re.sub(r"[^A-Za-z0-9+._-]+", "_", method).strip("._") or "method"
        return f"{self.names[image]}__{slug}"

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        alpha: float = 0.5,
        colormap: str = "jet",
        maps: bool = True,
        spec: str | None = None,
        weights: str | None = None,
        title: str | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write the overlays, the maps, the grid and ``cam.json`` into ``directory``.

        One ``IMAGE__METHOD.png`` overlay per image and method, with ``maps`` also
        ``IMAGE__METHOD.npy`` (float32 ``(H, W)`` in ``[0, 1]``, saved without
        pickle), ``grid.png`` (rows: images; columns: the image, then each method) and
        ``cam.json``, the manifest (schema :data:`SCHEMA`, library versions, every
        setting and file). Everything is rendered first and written whole or not at
        all; existing cam output is not replaced unless ``overwrite``.

        Args:
            directory: where the files go; created if missing.
            alpha: heat-map weight in the overlays, 0 to 1.
            colormap: matplotlib colormap of the heat maps.
            maps: also write the maps as ``.npy``.
            spec: how the model was named (``torchvision:resnet18``, ``net.py:Net``),
                for the manifest and the grid's title (default: its class name).
            weights: the checkpoint the model was loaded from, for the manifest.
            title: the grid's title (default: the model's class and ``spec``).
            overwrite: replace cam output already in ``directory``.

        Returns:
            The paths written, ``cam.json`` last.

        Raises:
            ValueError: no method ran, alpha outside [0, 1] or an unknown colormap.
            FileExistsError: ``directory`` holds cam output and ``overwrite`` is false.
        """
        import numpy as np

        from netsight.images import check_colormap

        if not self.methods:
            raise ValueError(
                f"nothing to save: none of the methods ran ({', '.join(self.skipped)})"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
        check_colormap(colormap, "colormap")
        files: dict[str, bytes] = {}
        overlays: dict[tuple[int, str], Any] = {}
        records = []
        for index, name in enumerate(self.names):
            per_method: dict[str, dict[str, Any]] = {}
            for method in self.methods:
                stem = self.file_stem(index, method)
                heat = self.maps[method][index]
                picture = overlay(self.pictures[index], heat, alpha=alpha, cmap=colormap)
                overlays[(index, method)] = np.asarray(picture)
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG")
                files[f"{stem}.png"] = buffer.getvalue()
                map_file = None
                if maps:
                    buffer = io.BytesIO()
                    np.save(buffer, heat.numpy().astype(np.float32), allow_pickle=False)
                    map_file = f"{stem}.npy"
                    files[map_file] = buffer.getvalue()
                per_method[method] = {
                    "layers": list(self.layers[method][index]),
                    "overlay": f"{stem}.png",
                    "map": map_file,
                    "warnings": list(self.notes[method][index]),
                }
            records.append(
                {
                    "file": self.sources[index],
                    "name": name,
                    "input_shape": list(self.shapes[index]),
                    "predicted": None
                    if self.predicted[index] is None
                    else {
                        "class": self.predicted[index],
                        "name": self.class_name(self.predicted[index]),
                        "probability": _finite_or_none(self.probabilities[index] or 0.0),
                    },
                    "target": {
                        "class": self.targets[index],
                        "name": self.class_name(self.targets[index]),
                        "label": self.target_label(index),
                        "score": _finite_or_none(self.scores[index]),
                    },
                    "methods": per_method,
                }
            )
        if title is None:
            title = self.model_class + (f" ({spec})" if spec else "")
        grid = self._grid(overlays, _shorten(title, 100))
        files["grid.png"] = figure_bytes(grid, dpi=_DPI)
        manifest = {
            "schema": SCHEMA,
            **versions(),
            "model": spec if spec is not None else self.model_class,
            "model_class": self.model_class,
            "weights": weights,
            "requested": self.requested
            if isinstance(self.requested, str)
            else list(self.requested),
            "methods": list(self.methods),
            "skipped": dict(self.skipped),
            "target": list(self.target) if isinstance(self.target, tuple) else self.target,
            "layer": self.layer,
            "alpha": alpha,
            "colormap": colormap,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "images": records,
            "grid": {
                "file": "grid.png",
                "rows": len(self.names),
                "columns": 1 + len(self.methods),
                "column_titles": ["image", *self.methods],
            },
            "approx": self.approx,
            "faithfulness": self._faithfulness_record(),
            "files": list(files),
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        files[MANIFEST] = text.encode("utf-8")
        return write_directory(directory, files, what="cam", overwrite=overwrite)

    def _grid(self, overlays: Mapping[tuple[int, str], Any], title: str) -> Any:
        """The comparison figure: one row per image, the image then one column per method."""
        from matplotlib.figure import Figure

        rows, columns = len(self.names), 1 + len(self.methods)
        fig = Figure(figsize=(columns * _CELL[0], rows * _CELL[1]), dpi=_DPI, layout="constrained")
        fig.suptitle(title, fontsize=10)
        axes = fig.subplots(rows, columns, squeeze=False)
        for row in range(rows):
            picture = self.pictures[row].permute(1, 2, 0).numpy()
            what = _shorten(self.target_label(row), 40)
            said = f"{_shorten(Path(self.sources[row]).name)}\n{what}, score {self.scores[row]:.3g}"
            probability = self.probabilities[row]
            if self.predicted[row] is not None and probability is not None:
                said += f"\ntop-1 {self._class_label(self.predicted[row])} (p={probability:.2f})"
            cells: list[tuple[Any, str]] = [
                (picture[:, :, 0] if picture.shape[2] == 1 else picture, said)
            ]
            for method in self.methods:
                layers = _shorten(", ".join(self.layers[method][row]))
                cells.append((overlays[(row, method)], f"{method}\n{what}\n{layers}"))
            for ax, (image, label) in zip(axes[row], cells, strict=True):
                ax.imshow(image, cmap="gray" if getattr(image, "ndim", 3) == 2 else None)
                ax.set_title(label, fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
        return fig

    def _faithfulness_record(self) -> dict[str, Any] | None:
        found = self.evaluation
        if found is None:
            return None
        return {
            "images": found.images,
            "steps": found.steps,
            "settings": {k: v for k, v in found.settings.items() if not callable(v)},
            "methods": {
                name: {
                    "deletion_auc": _finite_or_none(m.deletion),
                    "insertion_auc": _finite_or_none(m.insertion),
                    "average_drop": _finite_or_none(m.average_drop),
                    "increase": _finite_or_none(m.increase),
                    **(
                        {
                            "road_morf": _finite_or_none(m.road_morf),
                            "road_lerf": _finite_or_none(m.road_lerf),
                        }
                        if m.road_morf is not None and m.road_lerf is not None
                        else {}
                    ),
                }
                for name, m in found.methods.items()
            },
            **(
                {"road_percentages": list(found.road_percentages)} if found.road_percentages else {}
            ),
        }


def _shorten(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _positive_or_none(value: int | None, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what}: expected an integer >= 1 or None, got {value!r}")
    return value


def _explainer(
    model: nn.Module, method: str, layer: str | None, batch_size: int | None, approx: int | None
) -> BaseCAM:
    """The explainer for ``method``; options it does not take are left out."""
    cls = _registry()[method]
    accepted = inspect.signature(cls).parameters
    options: dict[str, Any] = {}
    if batch_size is not None and "batch_size" in accepted:
        options["batch_size"] = batch_size
    if approx is not None and "approx" in accepted:
        options["approx"] = approx
    return cls(model, layer if cls.uses_layers else None, **options)


def _batches(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    items = [x] if isinstance(x, torch.Tensor) else list(x)
    if not items:
        raise ValueError("x: expected a (B, C, H, W) batch or a sequence of them, got none")
    for item in items:
        if not isinstance(item, torch.Tensor) or item.dim() != 4 or item.shape[0] < 1:
            got = list(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise ValueError(f"x: expected (B, C, H, W) batches with B >= 1, got {got}")
    return items


def compare(
    model: nn.Module,
    x: torch.Tensor | Sequence[torch.Tensor],
    methods: str | Sequence[str] = ("gradcam",),
    targets: int | Sequence[int] | ScoreTarget | Sequence[ScoreTarget] | None = None,
    *,
    layer: str | None = None,
    names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int | None = None,
    approx: int | None = None,
    faithfulness_steps: int = 0,
    road: bool = False,
    regions: torch.Tensor | Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    progress: bool = False,
) -> CAMComparison:
    """Run several CAM methods on the same images and keep what each one found.

    Example:
        >>> found = compare(model, [cat, dog], "all", names=["cat.png", "dog.png"])
        >>> found.skipped          # {'cam': 'CAM needs a final nn.Linear ...'}
        >>> found.save("out/cam", colormap="viridis")

    Args:
        model: the network (a classifier returning ``(batch, classes)`` logits unless
            ``targets`` are callables); it is left as it came.
        x: a normalised ``(B, C, H, W)`` batch, or a sequence of batches (images of
            different sizes, one batch each). Each method runs once per batch.
        methods: registry names (:data:`netsight.cam.METHODS`) as a sequence or
            ``"a,b"``, or ``"all"``: every method, the ones this model cannot run skipped.
        targets: the class to explain, for every image (an int) or per image (one
            int each); default each image's top-1 class (a detector's most
            confident box). Checked against the model's classes before any method
            runs. Or a target callable for every image, or one per image (see
            :mod:`netsight.cam.targets`: a segmentation class, a detected box, a
            concept embedding, one output element): for models that are not
            classifiers too. Faithfulness is measured for class targets only.
        layer: the target layer (name or glob) of the methods that take one
            (default: each method's own choice); saliency ignores it.
        names: where each image came from (file paths, say), for the manifest and
            the file names (default ``image_0``, ``image_1``, ...).
        mean, std: the normalisation of ``x``, undone for the pictures (default 0.5).
        batch_size: inputs per forward of the perturbation methods (scorecam,
            ablationcam; default: theirs).
        approx: scorecam and ablationcam: at most this many extra forwards per image
            (their documented approximation; default exact).
        faithfulness_steps: also measure faithfulness (:func:`netsight.cam.evaluate`
            of the methods that ran, on the same images and targets, each batch as
            given) with this many deletion/insertion steps; 0 does not.
        road: with ``faithfulness_steps``, measure ROAD too (``evaluate(road=True)``:
            2 x 9 imputations and forwards per image and method more).
        regions: where the object of each image is, for the pointing game of that
            measurement: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``, or one box, mask or
            ``None`` per image (the forms :func:`netsight.cam.evaluate` takes), in the
            order of the images across all batches.
        class_names: the name of each class index (e.g.
            :func:`netsight.models.class_names`), for ``cam.json`` and the grid.
        strict: raise a method's failure (and the evaluation's) instead of
            recording it in ``skipped`` (``evaluation_error``).
        progress: show a progress bar.

    Returns:
        A :class:`CAMComparison`; its ``save(directory)`` writes the files.

    Raises:
        ValueError: an unknown method, a target out of range or of the wrong count,
            names of the wrong count, or a bad option.
        KeyError: an unknown layer (close matches suggested).
        TypeError: the model is not a classifier and no callable targets were
            given, or targets that are neither ints nor callables.
    """
    from netsight.images import denormalize

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    requested = parse_methods(methods)
    chosen = tuple(_registry()) if requested == ALL else tuple(requested)
    batches = _batches(x)
    count = sum(int(b.shape[0]) for b in batches)
    sources = tuple(str(n) for n in names) if names is not None else None
    if sources is None:
        sources = tuple(f"image_{i}" for i in range(count))
    elif len(sources) != count:
        raise ValueError(f"names: {len(sources)} names for {count} images")
    batch_size = _positive_or_none(batch_size, "batch_size")
    approx = _positive_or_none(approx, "approx")
    if isinstance(faithfulness_steps, bool) or not isinstance(faithfulness_steps, int):
        raise TypeError(f"faithfulness_steps: expected an int, got {faithfulness_steps!r}")
    if faithfulness_steps < 0:
        raise ValueError(f"faithfulness_steps: expected 0 (off) or more, got {faithfulness_steps}")
    if road and not faithfulness_steps:
        raise ValueError("road: measured with the faithfulness; set faithfulness_steps too")
    if regions is not None and len(regions) != count:
        raise ValueError(f"regions: {len(regions)} regions for {count} images")
    if isinstance(class_names, str):
        raise TypeError("class_names: expected a sequence of names, got one string")
    if layer is not None:
        resolve_layers(model, layer)  # an unknown name fails here, with close matches

    # Which image is in which batch, and what the model says about each.
    spans: list[range] = []
    outputs: list[Any] = []
    for batch in batches:
        start = spans[-1].stop if spans else 0
        span = range(start, start + int(batch.shape[0]))
        spans.append(span)
        outputs.append(_run(model, batch))
    classifier = all(_is_logits(o) for o in outputs)
    predicted: list[int | None] = [None] * count
    top: list[float | None] = [None] * count
    every: torch.Tensor | None = None
    if classifier:
        every = torch.cat([o.detach().float().cpu() for o in outputs])
        predicted = [int(k) for k in every.argmax(1).tolist()]
        chance = every.softmax(1)
        top = [float(chance[i, k]) for i, k in enumerate(predicted)]
    elif targets is None and all(is_detections(o) for o in outputs):
        from netsight.cam.targets import Detection

        targets = Detection(0)  # a detector: each image's most confident box
    fns = _callables(targets, count)
    wanted: list[Any]
    scores: list[float]
    indices: list[int | None]
    given: int | tuple[int, ...] | str | None
    if fns is not None:  # ready-made or the user's own targets: bound per image
        wanted, scores, indices = [], [], []
        for output, span in zip(outputs, spans, strict=True):
            resolved = resolve_targets(list(fns[span.start : span.stop]), output, len(span))
            assert resolved.fns is not None
            with torch.no_grad():
                scores.extend(float(v) for v in resolved.scores(output).float().tolist())
            for fn in resolved.fns:
                category = getattr(fn, "category", None)
                indices.append(category if isinstance(category, int) else None)
            wanted.extend(resolved.fns)
        words = [describe(fn, class_names) for fn in wanted]
        given = describe(targets, class_names) if callable(targets) else "one target per image"
    else:
        if every is None:
            raise _not_a_classifier(model, outputs, sources, spans)
        classes = int(every.shape[1])
        if targets is None:
            wanted = list(predicted)
        elif isinstance(targets, int) and not isinstance(targets, bool):
            wanted = check_classes([targets], classes, name="targets") * count
        else:
            wanted = check_classes(targets, classes, name="targets", count=count)
        scores = [float(every[i, k]) for i, k in enumerate(wanted)]
        indices = list(wanted)
        words = [describe(k, class_names) for k in wanted]
        given = targets if targets is None or isinstance(targets, int) else tuple(wanted)
    stems = unique_names((Path(s).stem for s in sources), default="image")

    maps: dict[str, tuple[torch.Tensor, ...]] = {}
    layers: dict[str, tuple[tuple[str, ...], ...]] = {}
    notes: dict[str, tuple[tuple[str, ...], ...]] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    explainers: dict[str, BaseCAM] = {}

    def label(span: range) -> str:
        first = Path(sources[span.start]).name
        return first if len(span) == 1 else f"{first} (+{len(span) - 1})"

    steps = [f"{method}: {label(span)}" for method in chosen for span in spans]
    labels = iter([*steps[1:], "cam"])
    bar = ProgressBar(progress, len(steps), steps[0])
    try:
        for method in chosen:
            found_maps: list[torch.Tensor] = []
            found_layers: list[tuple[str, ...]] = []
            found_notes: list[tuple[str, ...]] = []
            started, done = time.perf_counter(), 0
            try:
                explainer = _explainer(model, method, layer, batch_size, approx)
                for batch, span in zip(batches, spans, strict=True):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        result = explainer.explain(batch, targets=wanted[span.start : span.stop])
                    said = tuple(str(w.message) for w in caught)
                    for row in range(len(span)):
                        found_maps.append(result.maps[row].detach().float().cpu())
                        found_layers.append(result.layers)
                        found_notes.append(said)
                    done += 1
                    bar.advance(next(labels))
            except _METHOD_ERRORS as exc:
                if strict:
                    raise
                skipped[method] = str(exc)
                for _ in range(len(spans) - done):
                    bar.advance(next(labels))
                continue
            seconds[method] = time.perf_counter() - started
            maps[method] = tuple(found_maps)
            layers[method] = tuple(found_layers)
            notes[method] = tuple(found_notes)
            explainers[method] = explainer
    finally:
        bar.close()

    evaluation, evaluation_error = None, None
    if faithfulness_steps and explainers and fns is not None:
        evaluation_error = (
            "faithfulness (deletion, insertion) is measured for class targets only; "
            f"these maps explain {words[0]}"
        )
    elif faithfulness_steps and explainers:
        data = [
            (batch, torch.tensor(wanted[span.start : span.stop]))
            if regions is None
            else (
                batch,
                torch.tensor(wanted[span.start : span.stop]),
                regions[span.start : span.stop],
            )
            for batch, span in zip(batches, spans, strict=True)
        ]
        try:
            evaluation = evaluate(
                explainers, data, steps=faithfulness_steps, road=road, progress=progress
            )
        except _METHOD_ERRORS as exc:
            if strict:
                raise
            evaluation_error = str(exc)

    pictures = tuple(
        picture
        for batch in batches
        for picture in denormalize(batch.detach().float().cpu(), mean, std)
    )
    return CAMComparison(
        model_class=type(model).__name__,
        requested=requested,
        methods=tuple(maps),
        skipped=skipped,
        maps=maps,
        layers=layers,
        notes=notes,
        sources=sources,
        names=tuple(stems),
        shapes=tuple((1, *b.shape[1:]) for b in batches for _ in range(int(b.shape[0]))),
        pictures=pictures,
        predicted=tuple(predicted),
        probabilities=tuple(top),
        targets=tuple(indices),
        scores=tuple(scores),
        target=given,
        layer=layer,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        approx=approx,
        seconds=seconds,
        evaluation=evaluation,
        evaluation_error=evaluation_error,
        class_names=tuple(str(n) for n in class_names) if class_names is not None else None,
        target_labels=tuple(words),
    )


def _run(model: nn.Module, batch: torch.Tensor) -> Any:
    """The model's output on ``batch``, in eval mode, the model left as it was."""
    from netsight.features import run_forward

    with preserve_state(model, "eval"):
        return run_forward(model, batch)


def _is_logits(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] > 0


def _callables(targets: Any, count: int) -> list[ScoreTarget] | None:
    """One callable target per image, or ``None`` for class targets."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return [targets] * count
    if (
        isinstance(targets, Sequence)
        and not isinstance(targets, str)
        and targets
        and all(callable(t) for t in targets)
    ):
        if len(targets) != count:
            raise ValueError(f"targets: {len(targets)} targets for {count} images")
        return list(targets)
    return None


def _not_a_classifier(
    model: nn.Module, outputs: list[Any], sources: Sequence[str], spans: list[range]
) -> TypeError:
    index = next(i for i, o in enumerate(outputs) if not _is_logits(o))
    output = outputs[index]
    got = (
        f"a tensor of shape {list(output.shape)}"
        if isinstance(output, torch.Tensor)
        else f"a {type(output).__name__}"
    )
    where = ", ".join(Path(s).name for s in sources[spans[index].start : spans[index].stop])
    return TypeError(
        f"the model returned {got} for {where}, not a (batch, classes) logits tensor, so "
        f"class indices cannot be explained ({type(model).__name__} is no classifier); pass "
        f"targets= one of netsight.cam.targets (Segmentation(15), Similarity(concept), "
        f"OutputElement(0), ...) or a callable (on the command line: --target seg:15, "
        f"concept:FILE.npy, output:0, box:0)"
    )
