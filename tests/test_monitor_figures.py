"""The training monitor's figures read well (title, colour bars, text of 10 px and up
at the 100 dpi they are saved at), the loss goes to a log scale when one value would
flatten the rest, and a dead-unit finding is reported once, with what it rests on."""

from __future__ import annotations

import torch

from netsight._figures import audit_figure
from netsight.monitor.diagnostics import Thresholds, check_dead_units
from netsight.monitor.plots import (
    plot_curves,
    plot_gradient_flow,
    plot_gradient_heatmap,
    plot_probe,
)

DPI = 100  # what the monitor saves at


def _ok(fig: object) -> None:
    audit = audit_figure(fig, DPI)
    assert audit.problems() == [], audit


def test_every_monitor_figure_passes_the_audit() -> None:
    history = [
        {"train_loss": 1.9, "val_loss": 13.9, "train_accuracy": 0.3, "val_acc": 0.35},
        {"train_loss": 0.7, "val_loss": 0.5, "train_accuracy": 0.8, "val_acc": 0.9},
        {"train_loss": 0.3, "val_loss": 0.14, "train_accuracy": 0.9, "val_acc": 0.96},
    ]
    _ok(plot_curves(history))
    layers = [f"block{i}.conv" for i in range(40)]
    grads = [10.0 ** -(i % 7) for i in range(40)]
    _ok(plot_gradient_flow(layers, grads, [g * 10 for g in grads], title="Gradient flow"))
    _ok(plot_gradient_heatmap(layers, [grads, grads[::-1], grads]))
    images = torch.rand(16, 1, 32, 32)
    _ok(plot_probe(images, list(range(10)) + [0] * 6, list(range(16)), columns=8))


def test_a_loss_spanning_a_decade_is_drawn_on_a_log_scale() -> None:
    spread = [{"train_loss": 1.9, "val_loss": 13.9}, {"train_loss": 0.3, "val_loss": 0.14}]
    loss_ax = plot_curves(spread).axes[0]
    assert loss_ax.get_yscale() == "log" and "log scale" in loss_ax.get_ylabel()
    close = [{"train_loss": 1.9, "val_loss": 1.5}, {"train_loss": 0.9, "val_loss": 0.8}]
    assert plot_curves(close).axes[0].get_yscale() == "linear"


def test_dead_units_are_reported_once_with_their_basis_and_what_they_mean() -> None:
    thresholds = Thresholds()
    reported: dict[str, float] = {}
    alive = {"fc.1": (120, 512), "features.3": (10, 64)}
    first = check_dead_units(
        alive,
        step=10,
        epoch=1,
        thresholds=thresholds,
        samples=16,
        flat={"fc.1"},
        reported=reported,
    )
    messages = {d.layer: d.message for d in first}
    assert "on every one of the 16 probe images" in messages["fc.1"]
    assert "common in a classifier head" in messages["fc.1"]
    assert "spatial maps going dark is a problem" in messages["features.3"]
    # the next epoch, about the same: nothing new to say
    again = {"fc.1": (110, 512), "features.3": (12, 64)}
    assert check_dead_units(again, step=20, epoch=2, thresholds=thresholds, reported=reported) == []
    # a change of 10 points or more is news
    worse = {"fc.1": (40, 512), "features.3": (12, 64)}
    (news,) = check_dead_units(worse, step=30, epoch=3, thresholds=thresholds, reported=reported)
    assert news.layer == "fc.1"
