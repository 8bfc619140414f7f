"""Watch training: TensorBoard runs, plain plots, gradient flow and diagnostics.

Example:
    >>> with netsight.TrainingMonitor(model, logdir="runs", probe=(x, y)) as mon:
    ...     for epoch in range(3):
    ...         for xb, yb in loader:
    ...             out = model(xb); loss = F.cross_entropy(out, yb); loss.backward()
    ...             mon.step(loss=loss, outputs=out, targets=yb)   # before opt.step()
    ...             opt.step(); opt.zero_grad()
    ...         mon.epoch_end(val_loss=..., val_acc=...)
"""

from __future__ import annotations

from netsight.monitor.diagnostics import Diagnostic, Thresholds, TrainingWarning
from netsight.monitor.lock import RunInUseError
from netsight.monitor.monitor import TrainingMonitor
from netsight.monitor.runs import RunInfo, list_runs
from netsight.monitor.sinks import MonitorWriteError, read_scalars
from netsight.monitor.stats import GradientStats, layer_groups

__all__ = [
    "Diagnostic",
    "GradientStats",
    "MonitorWriteError",
    "RunInUseError",
    "RunInfo",
    "Thresholds",
    "TrainingMonitor",
    "TrainingWarning",
    "layer_groups",
    "list_runs",
    "read_scalars",
]
