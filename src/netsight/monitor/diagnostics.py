"""Checks that notice a training run going wrong, and the records they leave.

Each check reads numbers the monitor already has (per-layer gradient statistics,
update ratios, the probe batch's activations, epoch metrics) and returns
:class:`Diagnostic` records; the monitor turns the first of each kind (per layer)
into a Python warning and keeps every one in ``monitor.diagnostics``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from netsight.errors import TrainingWarning
from netsight.monitor.stats import GradientStats

__all__ = [
    "Diagnostic",
    "Thresholds",
    "TrainingWarning",
    "check_dead_units",
    "check_gradients",
    "check_overfitting",
    "check_updates",
]


@dataclass(frozen=True)
class Diagnostic:
    """One finding.

    Attributes:
        kind: ``"no_gradients"``, ``"nonfinite_loss"``, ``"nonfinite_gradient"``,
            ``"vanishing_gradients"``, ``"exploding_gradients"``, ``"dead_units"`` or
            ``"overfitting"``.
        step: the global step it was found at.
        epoch: the epoch it was found in.
        message: what was found and what to try, in words.
        layer: the layer it concerns, when one does.
        value: the measured number behind it (a ratio, a norm, a fraction).
    """

    kind: str
    step: int
    epoch: int
    message: str
    layer: str | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """When a check fires. The defaults stay quiet on healthy runs of the demo and
    the test models and fire on the textbook failures (see ``tests/test_monitor.py``).

    Attributes:
        vanishing_ratio: a layer whose mean ``|grad|`` is below this fraction of the
            largest layer's mean ``|grad|`` has a vanishing gradient.
        exploding_norm: a total gradient norm above this is exploding.
        exploding_growth: so is one more than this many times the median of the
            first ``baseline_steps`` logged norms.
        baseline_steps: logged steps that set the reference norm.
        update_ratio: an optimizer step that moves a layer by more than this fraction
            of its norm (``||dw|| / ||w||``) is too large (healthy: about 1e-3).
        dead_fraction: a ReLU layer where more than this fraction of the units
            (channels) are zero on every probe image is reported. Not 0.5: at random
            initialisation a fully connected layer fed by similar images (one
            dataset) has about half its units silent on a small probe (measured on
            the demo's VGG-16: up to 49 % on 16 digits), which is not a failure.
        overfit_epochs: validation loss rising and training loss falling over this
            many consecutive epochs is reported.
    """

    vanishing_ratio: float = 1e-4
    exploding_norm: float = 1e4
    exploding_growth: float = 1e3
    baseline_steps: int = 5
    update_ratio: float = 0.5
    dead_fraction: float = 0.6
    overfit_epochs: int = 3


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def check_gradients(
    stats: GradientStats,
    *,
    step: int,
    epoch: int,
    baseline: Sequence[float],
    thresholds: Thresholds,
) -> list[Diagnostic]:
    """Non-finite, vanishing and exploding gradients at one logging step.

    ``baseline`` holds the total gradient norms of the first logged steps.
    """
    found: list[Diagnostic] = []
    bad = stats.first_nonfinite()
    if bad is not None:
        count = sum(stats.nonfinite)
        found.append(
            Diagnostic(
                "nonfinite_gradient",
                step,
                epoch,
                f"NaN or Inf in the gradient of {count} of {len(stats.layers)} layer(s); it first "
                f"appears (in backward order) at {bad!r}: the layers after it have finite "
                f"gradients. Check that layer's operations (sqrt, log, division near 0), the "
                f"loss and the learning rate, or clip gradients",
                layer=bad,
            )
        )
        return found  # the other checks are meaningless on non-finite numbers
    means = [m for m in stats.grad_mean if m > 0.0]
    if len(means) >= 2:
        top = max(stats.grad_mean)
        small = [
            (name, mean)
            for name, mean in zip(stats.layers, stats.grad_mean, strict=True)
            if mean < thresholds.vanishing_ratio * top
        ]
        if small:
            name, mean = small[0]
            found.append(
                Diagnostic(
                    "vanishing_gradients",
                    step,
                    epoch,
                    f"vanishing gradients: {len(small)} of {len(stats.layers)} layers have a "
                    f"mean |grad| below {_fmt(thresholds.vanishing_ratio)} x the largest "
                    f"({_fmt(top)}); first {name!r} at {_fmt(mean)}. Saturating activations "
                    f"(sigmoid, tanh) in a deep stack do this: try ReLU, normalisation layers "
                    f"or residual connections",
                    layer=name,
                    value=mean / top if top else 0.0,
                )
            )
    total = stats.total_grad_norm
    reference = sorted(baseline)[len(baseline) // 2] if baseline else None
    grown = (
        reference is not None and reference > 0 and total > thresholds.exploding_growth * reference
    )
    if total > thresholds.exploding_norm or grown:
        why = (
            f"{_fmt(total / reference)} x the norm of the first logged steps ({_fmt(reference)})"
            if grown and reference
            else f"above {_fmt(thresholds.exploding_norm)}"
        )
        found.append(
            Diagnostic(
                "exploding_gradients",
                step,
                epoch,
                f"exploding gradients: total gradient norm {_fmt(total)}, {why}; lower the "
                f"learning rate or clip gradients (torch.nn.utils.clip_grad_norm_)",
                value=total,
            )
        )
    return found


def check_updates(
    ratios: dict[str, float], *, step: int, epoch: int, thresholds: Thresholds
) -> list[Diagnostic]:
    """Optimizer steps that moved a layer by a large fraction of its norm."""
    large = [(n, r) for n, r in ratios.items() if r > thresholds.update_ratio or math.isnan(r)]
    if not large:
        return []
    name, ratio = max(large, key=lambda item: item[1] if not math.isnan(item[1]) else math.inf)
    return [
        Diagnostic(
            "exploding_gradients",
            step,
            epoch,
            f"one optimizer step moved {len(large)} layer(s) by more than "
            f"{_fmt(thresholds.update_ratio)} of their norm, {name!r} by {_fmt(ratio)} "
            f"(healthy: about 1e-3); the learning rate is too large for these gradients",
            layer=name,
            value=ratio,
        )
    ]


def check_dead_units(
    alive: dict[str, tuple[int, int]],
    *,
    step: int,
    epoch: int,
    thresholds: Thresholds,
    samples: int | None = None,
    flat: frozenset[str] | set[str] = frozenset(),
    reported: dict[str, float] | None = None,
) -> list[Diagnostic]:
    """ReLU layers where most units never fire on the probe batch.

    ``alive`` maps a layer to ``(units that fired at least once, units)``;
    ``samples`` is the probe batch's size (what the finding rests on); ``flat`` names
    the layers whose output has no spatial dimensions (a classifier head's Linear +
    ReLU, where many silent units are common, unlike a convolution going dark).
    With ``reported`` (layer -> dead fraction last reported, updated here), a layer
    is reported once and again only when its fraction moves by 10 points or more, not
    every epoch.
    """
    found = []
    for name, (fired, units) in alive.items():
        dead = units - fired
        if not units or dead / units <= thresholds.dead_fraction:
            continue
        fraction = dead / units
        if reported is not None:
            last = reported.get(name)
            if last is not None and abs(fraction - last) < 0.1:
                continue
            reported[name] = fraction
        basis = f"every one of the {samples} probe images" if samples else "every probe image"
        if name in flat:
            advice = (
                "common in a classifier head (a Linear + ReLU, often before dropout) and "
                "harmless while the accuracy is good; worth a look if it keeps growing"
            )
        else:
            advice = (
                "a layer with spatial maps going dark is a problem: a large negative bias or "
                "a too-large learning rate does this; try a smaller learning rate, LeakyReLU "
                "or normalisation"
            )
        found.append(
            Diagnostic(
                "dead_units",
                step,
                epoch,
                f"dead units: {dead} of {units} units of {name!r} ({fraction:.0%}) are zero "
                f"on {basis}; {advice}",
                layer=name,
                value=fraction,
            )
        )
    return found


def check_overfitting(
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    *,
    step: int,
    epoch: int,
    thresholds: Thresholds,
) -> list[Diagnostic]:
    """Validation loss rising while training loss falls, over the last epochs."""
    n = thresholds.overfit_epochs
    if n < 2 or len(train_loss) < n or len(val_loss) < n:
        return []
    t, v = list(train_loss[-n:]), list(val_loss[-n:])
    falling = all(b < a for a, b in itertools.pairwise(t))
    rising = all(b > a for a, b in itertools.pairwise(v))
    if not (falling and rising):
        return []
    return [
        Diagnostic(
            "overfitting",
            step,
            epoch,
            f"overfitting: over the last {n} epochs the validation loss rose "
            f"({_fmt(v[0])} -> {_fmt(v[-1])}) while the training loss fell "
            f"({_fmt(t[0])} -> {_fmt(t[-1])}); consider early stopping, more data or "
            f"regularisation",
            value=v[-1] - v[0],
        )
    ]
