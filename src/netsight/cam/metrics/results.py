"""What :func:`~netsight.cam.metrics.evaluate` returns: each method's scores
(:class:`MethodScores`), the whole evaluation (:class:`CAMEvaluation`) and its
rendering as a text or Markdown table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from netsight._markdown import markdown_escape
from netsight.options import Baseline, TableStyle

__all__ = ["CAMEvaluation", "MethodScores", "render_table"]


@dataclass(frozen=True)
class MethodScores:
    """One method's scores over the dataset (means over images).

    Attributes:
        name: the method's name in the evaluation (``"gradcam"``, ``"random"``, ...).
        deletion: mean deletion AUC in ``[0, 1]`` (lower is better).
        insertion: mean insertion AUC in ``[0, 1]`` (higher is better).
        pointing: share of images with a box or mask whose map maximum hits it
            (higher is better); ``None`` when no image had one.
        average_drop: mean relative drop of the target probability on
            ``image * map``, in ``[0, 1]`` (lower is better; the paper's % / 100).
        increase: share of images whose target probability rose on ``image * map``
            (higher is better).
        deletion_curve: ``(steps + 1,)`` mean probability after deleting each
            fraction of the pixels (``fractions`` of :class:`CAMEvaluation`).
        insertion_curve: ``(steps + 1,)`` the same for insertion.
        per_image: ``{"deletion", "insertion", "pointing", "drop", "increase"}``
            (and ``"road_morf"``, ``"road_lerf"`` when ROAD was measured) ->
            ``(images,)`` float64 values; ``pointing`` is 1.0 (hit), 0.0 (miss) or
            NaN (no box), ``increase`` 1.0 or 0.0.
        seconds: time spent computing the maps (summed over ranks).
        road_morf: ROAD, most relevant first: the mean over images and over the
            percentages of the target probability once that share of the most
            salient pixels is imputed (lower is better); ``None`` when not measured.
        road_lerf: ROAD, least relevant first: the same with the least salient
            pixels imputed (higher is better); ``None`` when not measured.
        road_morf_curve: ``(P,)`` the mean probability at each of
            :attr:`CAMEvaluation.road_percentages` (most relevant first), or ``None``.
        road_lerf_curve: ``(P,)`` the same, least relevant first, or ``None``.
    """

    name: str
    deletion: float
    insertion: float
    pointing: float | None
    average_drop: float
    increase: float
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    per_image: dict[str, torch.Tensor]
    seconds: float
    road_morf: float | None = None
    road_lerf: float | None = None
    road_morf_curve: torch.Tensor | None = None
    road_lerf_curve: torch.Tensor | None = None

    @property
    def road(self) -> float | None:
        """ROAD's combined score ``(road_lerf - road_morf) / 2`` (pytorch-grad-cam's
        ``ROADCombined``; higher is better), or ``None``."""
        if self.road_morf is None or self.road_lerf is None:
            return None
        return (self.road_lerf - self.road_morf) / 2


@dataclass(frozen=True)
class CAMEvaluation:
    """What :func:`evaluate` measured.

    Attributes:
        methods: name -> :class:`MethodScores`, the methods first (in the order
            given), then the baselines.
        images: number of images scored.
        pointing_images: how many of them had a box or mask.
        steps: deletion/insertion steps.
        fractions: ``(steps + 1,)`` fraction of pixels removed (or inserted) at each
            point of the curves.
        indices: ``(images,)`` the dataset index of each image when netsight knew it
            (a ``Dataset``, or a ``DataLoader`` with a ``DistributedSampler``); the
            per-image arrays are then in dataset order. ``None`` otherwise (arrays in
            the order the images came, rank after rank).
        settings: the options that shape the numbers (baselines, tolerance, seed ...).
        world_size: number of processes that shared the work.
        road_percentages: the percentages of pixels ROAD imputed (empty when ROAD
            was not measured).
    """

    methods: dict[str, MethodScores]
    images: int
    pointing_images: int
    steps: int
    fractions: torch.Tensor
    indices: torch.Tensor | None
    settings: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    road_percentages: tuple[float, ...] = ()

    def table(self, style: str = "text") -> str:
        """The scores as a table: ``style="text"`` (aligned columns) or ``"markdown"``."""
        return render_table(self, style)

    def __str__(self) -> str:
        return self.table("text")


_COLUMNS = (
    ("method", "method"),
    ("pointing", "pointing ↑"),
    ("deletion", "deletion AUC ↓"),
    ("insertion", "insertion AUC ↑"),
    ("average_drop", "avg drop ↓"),
    ("increase", "increase ↑"),
    ("seconds", "map time (s)"),
)
_ROAD_COLUMNS = (("road_morf", "ROAD MoRF ↓"), ("road_lerf", "ROAD LeRF ↑"))


def render_table(evaluation: CAMEvaluation, style: str = "text") -> str:
    """Render a :class:`CAMEvaluation` as text or markdown (one row per method).

    Pointing, average drop and increase are shown as percentages, the AUCs and
    ROAD's mean probabilities as fractions; the baselines' map time is ``-``.
    """
    style = TableStyle.parse(style, "style")
    road = bool(evaluation.road_percentages)
    rows = []
    for name, scores in evaluation.methods.items():
        pointing = "n/a" if scores.pointing is None else f"{100 * scores.pointing:.1f}%"
        row = [
            name,
            pointing,
            f"{scores.deletion:.3f}",
            f"{scores.insertion:.3f}",
            f"{100 * scores.average_drop:.1f}%",
            f"{100 * scores.increase:.1f}%",
        ]
        if road:
            row += [f"{scores.road_morf:.3f}", f"{scores.road_lerf:.3f}"]
        row.append("-" if name in Baseline.values() else f"{scores.seconds:.2f}")
        rows.append(row)
    columns = [*_COLUMNS[:-1], *(_ROAD_COLUMNS if road else ()), _COLUMNS[-1]]
    header = [title for _, title in columns]
    footer = (
        f"{evaluation.images} images ({evaluation.pointing_images} with boxes), "
        f"{evaluation.steps} steps"
    )
    if road:
        shares = ", ".join(f"{q:g}" for q in evaluation.road_percentages)
        footer += f"; ROAD at {shares} % of the pixels"
    if style == TableStyle.MARKDOWN:
        align = ["---"] + ["---:"] * (len(header) - 1)
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(markdown_escape(cell) for cell in row) + " |" for row in rows]
        return "\n".join([*lines, "", footer]) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    text = [line(header), "  ".join("-" * w for w in widths)]
    text += [line(row) for row in rows]
    return "\n".join([*text, footer]) + "\n"
