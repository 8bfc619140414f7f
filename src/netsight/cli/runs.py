"""``netsight runs``: the training runs a TrainingMonitor wrote."""

from __future__ import annotations

import argparse
import sys

from netsight.cli import common

__all__ = ["COMMAND"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "logdir",
        metavar="DIR",
        help="the log directory given to TrainingMonitor(logdir=...), or one run's directory",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a table, or JSON with every field (default: table)",
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.console import Console
    from rich.table import Table

    from netsight.monitor.runs import list_runs, metric_columns

    runs = list_runs(args.logdir)
    if args.format == "json":
        common.emit(json.dumps([run.to_dict() for run in runs], indent=2, allow_nan=False), None)
        return 0
    if not runs:
        print(
            f"netsight: no runs in {args.logdir} (a run is a directory with the scalars.csv "
            f"that TrainingMonitor writes)",
            file=sys.stderr,
        )
        return 0
    metrics = metric_columns(runs)
    table = Table(title=f"runs in {args.logdir}", title_justify="left")
    table.add_column("run", overflow="fold")
    for column in ("steps", "epochs", "last loss", *metrics):
        table.add_column(column, justify="right")
    table.add_column("diagnostics", overflow="fold")
    table.add_column("updated")
    for run in runs:
        diagnostics = ", ".join(f"{kind} {n}" for kind, n in run.diagnostics.items())
        updated = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated))
            if run.updated is not None
            else ""
        )
        table.add_row(
            run.name,
            str(run.steps),
            str(run.epochs),
            _number(run.last_loss),
            *(_number(run.metrics.get(m)) for m in metrics),
            diagnostics or "none",
            updated,
        )
    # a pipe or file gets the whole table; a terminal gets rich's fit to its width
    width = None if sys.stdout.isatty() else 200
    Console(file=sys.stdout, width=width).print(table)
    return 0


COMMAND = common.Command(
    "runs",
    "list the training runs a TrainingMonitor wrote under a directory",
    configure,
    run,
    description="List the runs under DIR (directories with a scalars.csv written by "
    "TrainingMonitor): steps, epochs, the last loss, the last epoch's metrics and the "
    "diagnostics by kind.",
)
