"""Matplotlib figures of a training run: the tutorials' loss-and-accuracy figure,
gradient flow per layer, and a layers-by-epochs gradient heatmap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from netsight._figures import FONT_PT

_SMALL, _LABEL, _TITLE = FONT_PT["small"], FONT_PT["label"], FONT_PT["title"]

__all__ = ["plot_curves", "plot_gradient_flow", "plot_gradient_heatmap", "plot_probe"]


def plot_curves(history: Sequence[Mapping[str, float]]) -> Figure:
    """Loss (left) and accuracy (right) per epoch, training and validation where known.

    ``history`` holds one mapping per epoch with keys such as ``train_loss``,
    ``val_loss``, ``train_accuracy``, ``val_acc``. A loss that spans more than a
    decade (one early validation loss of 13.9 above losses of 0.1, say) is drawn on
    a log scale, so it does not flatten the rest; the axis says so.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    fig.suptitle("Loss and accuracy by epoch", fontsize=_TITLE)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = np.arange(1, len(history) + 1)
    keys = sorted({k for row in history for k in row})
    for ax, word in ((loss_ax, "loss"), (acc_ax, "acc")):
        drawn: list[float] = []
        for key in keys:
            if word not in key:
                continue
            values = [row.get(key, np.nan) for row in history]
            ax.plot(epochs, values, marker="o", label=key)
            drawn += [v for v in values if np.isfinite(v)]
        label = "loss" if word == "loss" else "accuracy"
        positive = [v for v in drawn if v > 0]
        spans_a_decade = bool(positive) and max(positive) / min(positive) > 10
        if word == "loss" and len(positive) == len(drawn) and spans_a_decade:
            ax.set_yscale("log")
            label = "loss (log scale)"
        ax.set_xlabel("epoch", fontsize=_LABEL)
        ax.set_ylabel(label, fontsize=_LABEL)
        ax.set_title("Loss" if word == "loss" else "Accuracy", fontsize=_TITLE)
        ax.tick_params(labelsize=_SMALL)
        ax.grid(alpha=0.3)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        if drawn:
            ax.legend(fontsize=_SMALL)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_gradient_flow(
    layers: Sequence[str],
    mean: Sequence[float],
    maximum: Sequence[float],
    *,
    title: str = "Gradient flow",
) -> Figure:
    """The tutorials' gradient-flow bar chart, on a log scale and with the max too:
    mean and max ``|grad|`` per layer, input side on the left."""
    fig = Figure(figsize=(min(12.5, max(6.0, 0.3 * len(layers) + 2)), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(layers))
    floor = 1e-12
    ax.bar(
        x,
        np.maximum(np.asarray(maximum, dtype=float), floor),
        color="tab:cyan",
        alpha=0.5,
        label="max |grad|",
    )
    ax.bar(
        x,
        np.maximum(np.asarray(mean, dtype=float), floor),
        color="tab:blue",
        alpha=0.8,
        label="mean |grad|",
    )
    ax.set_yscale("log")
    ax.set_xticks(x, list(layers), rotation=90, fontsize=_SMALL)
    ax.set_xlim(-1, len(layers))
    ax.set_xlabel("layer (input side on the left)", fontsize=_LABEL)
    ax.set_ylabel("|gradient|", fontsize=_LABEL)
    ax.set_title(title, fontsize=_TITLE)
    ax.tick_params(axis="y", labelsize=_SMALL)
    ax.legend(fontsize=_SMALL)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_gradient_heatmap(layers: Sequence[str], epochs: Sequence[Sequence[float]]) -> Figure:
    """Mean ``|grad|`` as a layers (rows) by epochs (columns) heatmap, log colour scale;
    ``epochs[e][l]`` is layer ``l`` at epoch ``e`` (NaN where not measured)."""
    data = np.asarray(epochs, dtype=float).T if epochs else np.zeros((len(layers), 0))
    fig = Figure(
        figsize=(max(5.0, 0.5 * data.shape[1] + 3), max(3.0, 0.2 * len(layers) + 1.5)),
        layout="constrained",
    )
    ax = fig.subplots()
    positive = data[np.isfinite(data) & (data > 0)]
    if positive.size:
        norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
        image = ax.imshow(
            np.where(data > 0, data, np.nan),
            aspect="auto",
            cmap="viridis",
            norm=norm,
            interpolation="nearest",
        )
        bar = fig.colorbar(image, ax=ax)
        bar.set_label("mean |grad|", fontsize=_LABEL)
        bar.ax.tick_params(labelsize=_SMALL)
    ax.set_yticks(np.arange(len(layers)), list(layers), fontsize=_SMALL)
    ax.set_xticks(np.arange(data.shape[1]), [str(e + 1) for e in range(data.shape[1])])
    ax.tick_params(axis="x", labelsize=_SMALL)
    ax.set_xlabel("epoch", fontsize=_LABEL)
    ax.set_title("Gradient flow by epoch", fontsize=_TITLE)
    return fig


def plot_probe(
    images: torch.Tensor,
    labels: Sequence[int] | None,
    predictions: Sequence[int] | None,
    *,
    class_names: Sequence[str] | None = None,
    columns: int = 8,
) -> Figure:
    """The probe images (already de-normalised to ``[0, 1]``) as one ``make_grid``
    picture, each tile captioned with label and prediction: green when they agree,
    red when not. One axes, so it draws in milliseconds, not seconds."""
    from torchvision.utils import make_grid

    count = images.shape[0]
    columns = max(1, min(columns, count))
    height, width = images.shape[-2:]
    pad = max(2, round(0.5 * height))  # white bands between tiles hold the captions
    grid = make_grid(
        images.detach().float().cpu().clamp(0, 1), nrow=columns, padding=pad, pad_value=1.0
    )
    tile_h, tile_w = height + pad, width + pad
    zoom = max(1.0, 64.0 / width)  # screen pixels per image pixel: small inputs get bigger
    picture_h = grid.shape[1] * zoom / 100  # inches at 100 dpi
    head = 0.4  # inches for the title
    fig = Figure(figsize=(max(grid.shape[2] * zoom / 100, 3.0), picture_h + head))
    fig.suptitle(
        "Probe batch: y = label, p = prediction (green right, red wrong)",
        fontsize=_LABEL,
        y=1.0 - 0.08 / (picture_h + head),
        va="top",
    )
    ax = fig.add_axes((0.0, 0.0, 1.0, picture_h / (picture_h + head)))
    picture = grid.permute(1, 2, 0).numpy()
    ax.imshow(picture, interpolation="nearest")
    fontsize = max(_SMALL, min(9.0, 0.5 * pad * zoom))

    def name(index: int) -> str:
        return class_names[index] if class_names and 0 <= index < len(class_names) else str(index)

    for i in range(count):
        parts = []
        if labels is not None:
            parts.append(f"y={name(labels[i])}")
        if predictions is not None:
            parts.append(f"p={name(predictions[i])}")
        if not parts:
            continue
        right = labels is None or predictions is None or labels[i] == predictions[i]
        row, col = divmod(i, columns)
        ax.text(
            pad + col * tile_w + width / 2 - 0.5,
            pad + row * tile_h - 1.0,
            " ".join(parts),
            ha="center",
            va="bottom",
            fontsize=fontsize,
            color="green" if right else "red",
        )
    ax.axis("off")
    return fig
