"""The runs under a log directory, read back from their plain files.

A *run* is a directory holding a ``scalars.csv`` written by
:class:`~netsight.monitor.TrainingMonitor`. Everything here is read from that file
and ``diagnostics.jsonl``; TensorBoard's event files are not needed.

Example:
    >>> for run in list_runs("runs"):
    ...     print(run.name, run.steps, run.epochs, run.metrics.get("val_loss"))
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsight.monitor.sinks import read_scalars

__all__ = ["RunInfo", "list_runs", "metric_columns", "read_diagnostics", "read_run"]

#: Metrics shown first, in this order, when a run has them; others follow sorted.
METRIC_ORDER = ("train_loss", "train_accuracy", "val_loss", "val_acc", "val_accuracy")


@dataclass(frozen=True)
class RunInfo:
    """What one run's files say about it.

    Attributes:
        name: the run directory's path relative to the log directory (``"."`` for
            the log directory itself).
        path: the run directory.
        steps: training steps logged (the last logged step + 1; 0 when none).
        epochs: epochs finished (``epoch_end`` calls).
        metrics: the last finished epoch's metrics (``train_loss``, ``val_loss``,
            ``val_acc``, ...), without the ``epoch/`` prefix.
        last_loss: the last logged ``train/loss`` (a step's loss), if any.
        diagnostics: how many diagnostics of each kind the run recorded.
        updated: the wall time of the last scalar (seconds since the epoch), if any.
    """

    name: str
    path: Path
    steps: int
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)
    last_loss: float | None = None
    diagnostics: dict[str, int] = field(default_factory=dict)
    updated: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become ``None``)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "steps": self.steps,
            "epochs": self.epochs,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "last_loss": _finite(self.last_loss),
            "diagnostics": dict(self.diagnostics),
            "updated": self.updated,
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def read_run(run_dir: str | os.PathLike[str], name: str | None = None) -> RunInfo:
    """Read one run directory.

    Args:
        run_dir: a directory with a ``scalars.csv``.
        name: what to call it (default: the directory's name).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``scalars.csv``.
    """
    path = Path(run_dir)
    scalars = path / "scalars.csv"
    if not scalars.is_file():
        raise FileNotFoundError(
            f"{path} is not a run: expected a scalars.csv written by TrainingMonitor in it"
        )
    rows = read_scalars(scalars)
    steps = max((r["step"] for r in rows), default=-1) + 1
    by_epoch: dict[int, dict[str, float]] = {}
    last_loss: tuple[int, float] | None = None
    for row in rows:
        tag = row["tag"]
        if tag.startswith("epoch/"):
            by_epoch.setdefault(row["epoch"], {})[tag.removeprefix("epoch/")] = row["value"]
        elif tag == "train/loss" and (last_loss is None or row["step"] >= last_loss[0]):
            last_loss = (row["step"], row["value"])
    metrics = by_epoch[max(by_epoch)] if by_epoch else {}
    return RunInfo(
        name=name if name is not None else path.name,
        path=path,
        steps=steps,
        epochs=len(by_epoch),
        metrics=metrics,
        last_loss=last_loss[1] if last_loss is not None else None,
        diagnostics=_count_diagnostics(path / "diagnostics.jsonl"),
        updated=max((r["wall_time"] for r in rows), default=None),
    )


def read_diagnostics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a run's ``diagnostics.jsonl`` (``[]`` when there is none);
    a torn last line (a killed writer) is skipped.

    Example:
        >>> [(d["step"], d["kind"]) for d in read_diagnostics("runs/exp/diagnostics.jsonl")]
        [(44, 'dead_units'), (89, 'dead_units')]
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _count_diagnostics(path: Path) -> dict[str, int]:
    """Diagnostics by kind."""
    counts: Counter[str] = Counter(
        r["kind"] for r in read_diagnostics(path) if isinstance(r.get("kind"), str)
    )
    return dict(sorted(counts.items()))


def list_runs(logdir: str | os.PathLike[str]) -> list[RunInfo]:
    """Every run under ``logdir`` (at any depth, as TensorBoard finds them), sorted by name.

    Example:
        >>> [(r.name, r.steps, r.metrics.get("val_acc")) for r in list_runs("runs")]
        [('exp1', 44, 0.947)]

    Args:
        logdir: the directory given to ``TrainingMonitor(logdir=...)``, or one run's
            directory.

    Returns:
        One :class:`RunInfo` per directory holding a ``scalars.csv``.

    Raises:
        NotADirectoryError: ``logdir`` does not exist or is not a directory.
    """
    root = Path(logdir)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise NotADirectoryError(f"logdir {root} {what}; expected a directory of runs")
    found = sorted({p.parent for p in root.rglob("scalars.csv") if p.is_file()})
    return [read_run(d, name=d.relative_to(root).as_posix()) for d in found]


def metric_columns(runs: list[RunInfo]) -> list[str]:
    """The metric names of ``runs``, the usual ones first (for tables)."""
    names = {k for run in runs for k in run.metrics}
    known = [k for k in METRIC_ORDER if k in names]
    return known + sorted(names - set(known))
