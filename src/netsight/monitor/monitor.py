"""The training monitor: three lines in a plain PyTorch loop.

Example:
    >>> with netsight.TrainingMonitor(model, logdir="runs", probe=(x_fixed, y_fixed),
    ...                               optimizer=opt) as mon:
    ...     for epoch in range(epochs):
    ...         for x, y in loader:
    ...             out = model(x); loss = crit(out, y); loss.backward()
    ...             mon.step(loss=loss, outputs=out, targets=y)   # before opt.step()
    ...             opt.step(); opt.zero_grad()
    ...         mon.epoch_end(val_loss=vl, val_acc=va)

What it costs: between logging steps, ``step()`` only keeps the detached loss and
the number of correct predictions as tensors (no device sync). Every
``log_every`` steps it reads all gradients in one fused pass (three
``torch._foreach_norm`` calls) and writes scalars; histograms every
``histogram_every`` steps; images, feature maps, dead-unit checks and plots once
per epoch, on the fixed probe batch. Nothing is registered on the model between
calls: the probe forward hooks live inside ``epoch_end`` only.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from netsight._io import atomic_write_bytes, atomic_write_text, safe_filename
from netsight.hooks import HookSet, preserve_state
from netsight.monitor.diagnostics import (
    Diagnostic,
    Thresholds,
    TrainingWarning,
    check_dead_units,
    check_gradients,
    check_overfitting,
    check_updates,
)
from netsight.monitor.lock import RunLock
from netsight.monitor.plots import (
    plot_curves,
    plot_gradient_flow,
    plot_gradient_heatmap,
    plot_probe,
)
from netsight.monitor.runs import read_diagnostics
from netsight.monitor.sinks import (
    AppendLog,
    EventWriter,
    MonitorWriteError,
    csv_line,
    file_errors,
    json_line,
    read_scalars,
    render_index,
    trim_torn_line,
)
from netsight.monitor.stats import (
    GradientStats,
    LayerGroups,
    layer_groups,
    snapshot_weights,
    unwrap_parallel,
    update_ratios,
)

__all__ = ["TrainingMonitor"]

_RELUS = (nn.ReLU, nn.ReLU6)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _new_run_dir(logdir: Path, name: str, resume: bool) -> Path:
    """``logdir/name``; when it exists and ``resume`` is false, ``name-2``, ``name-3``, ...

    Only names the directory (ranks other than 0 create nothing); rank 0 creates it
    with :func:`_create_run_dir`.
    """
    base = safe_filename(name, default="run")
    candidate = logdir / base
    if resume or not candidate.exists():
        return candidate
    n = 2
    while (logdir / f"{base}-{n}").exists():
        n += 1
    return logdir / f"{base}-{n}"


def _create_run_dir(logdir: Path, name: str, resume: bool) -> Path:
    """Create the run directory: ``logdir/name`` (kept as it is when ``resume``), else
    the first of ``name``, ``name-2``, ... that this call creates itself (``mkdir``
    without ``exist_ok`` is atomic: two processes starting a run of the same name at
    once get two directories)."""
    base = safe_filename(name, default="run")
    logdir.mkdir(parents=True, exist_ok=True)
    if resume:
        (logdir / base).mkdir(exist_ok=True)
        return logdir / base
    n = 1
    while True:
        candidate = logdir / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            n += 1
            continue
        return candidate


@dataclass
class _Epoch:
    """Running sums of the current epoch (tensors: no sync until the epoch ends)."""

    loss_sum: torch.Tensor | None = None
    samples: int = 0
    correct: torch.Tensor | None = None
    counted: int = 0
    steps: int = 0
    grad_mean: dict[str, list[float]] = field(default_factory=dict)
    grad_max: dict[str, list[float]] = field(default_factory=dict)


class TrainingMonitor:
    """Logs a training run to TensorBoard and plain files, and warns when it goes wrong.

    Example:
        >>> with TrainingMonitor(model, "runs", "exp1", probe=(x[:16], y[:16])) as mon:
        ...     out = model(x); loss = F.cross_entropy(out, y); loss.backward()
        ...     mon.step(loss=loss, outputs=out, targets=y)   # before optimizer.step()
        ...     mon.epoch_end(val_loss=0.4, val_acc=0.9)
        >>> mon.run_dir, mon.diagnostics                       # runs/exp1, []

    Args:
        model: the network being trained; nothing is registered on it between calls
            and its training flags are restored after every probe forward.
        logdir: the directory that holds runs; each run gets its own sub-directory.
        name: the run's name (default: a timestamp). An existing run directory is
            never overwritten: ``name-2``, ``name-3``, ... are used instead, unless
            ``resume=True``, which appends to it. A resumed run continues one step
            after the last step in its ``scalars.csv``; what a killed writer left
            beyond that point is dropped from every sink (a torn last line, later
            diagnostics, and later TensorBoard events via ``purge_step``), so no step
            is recorded twice.
        probe: a fixed ``(inputs, labels)`` batch (labels may be ``None``) shown once
            per epoch with predictions, used for feature maps and the dead-unit check,
            and for the summary and graph at the start.
        mean, std: the normalisation of the inputs, undone for display.
        optimizer: read for learning rates; optional.
        log_every: gradient statistics and scalars every this many steps.
        histogram_every: weight and gradient histograms every this many steps
            (``0``: never).
        feature_layers: layers whose probe feature maps are logged each epoch (names,
            globs or types as in :func:`netsight.capture`; default: the first and
            the last ``Conv2d``).
        flush_secs: at most this many seconds between writes to disk, so a killed run
            leaves readable logs up to then.
        tensorboard: write TensorBoard event files (needs the ``tensorboard`` package).
        plots: write PNG plots and ``index.html`` each epoch.
        summary: log the model summary (and graph, where ``torch.jit.trace`` can
            trace it) at the start; needs ``probe``.
        class_names: names for the probe's labels and predictions.
        thresholds: when the diagnostics fire.
        warn: turn the first diagnostic of each kind (per layer) into a
            :class:`TrainingWarning`.

    Under ``torchrun``: only rank 0 writes; a DDP wrapper is unwrapped, so gradient
    statistics are those of the synchronised gradients; ``train/loss`` and
    ``train/accuracy`` are rank 0's own batches (the monitor runs no collective of
    its own): reduce metrics yourself and pass them to :meth:`epoch_end` for
    global figures.

    One run directory takes one writer: the monitor holds an exclusive lock on it
    (``RUN_DIR/.netsight.lock``, with its PID, host and start time) from construction
    to :meth:`close` or the end of the ``with`` block. The lock is the kernel's
    (``flock``): a process killed with ``kill -9`` leaves no lock behind.

    Raises:
        MonitorWriteError: the run directory cannot be created or written.
        RunInUseError: another monitor (in this or another process) is writing to
            the run directory; the message names its PID and host.
    """

    def __init__(
        self,
        model: nn.Module,
        logdir: str | os.PathLike[str] = "runs",
        name: str | None = None,
        *,
        probe: tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        log_every: int = 10,
        histogram_every: int = 200,
        feature_layers: Any = None,
        flush_secs: float = 2.0,
        tensorboard: bool = True,
        plots: bool = True,
        summary: bool = True,
        graph: bool = True,
        class_names: Sequence[str] | None = None,
        thresholds: Thresholds | None = None,
        warn: bool = True,
        resume: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if log_every < 1:
            raise ValueError(f"log_every: expected >= 1, got {log_every}")
        if histogram_every < 0:
            raise ValueError(f"histogram_every: expected >= 0, got {histogram_every}")
        if flush_secs <= 0:
            raise ValueError(f"flush_secs: expected > 0, got {flush_secs}")
        # a DDP wrapper's forward runs collectives (a rank-0-only probe would hang)
        self.model = unwrap_parallel(model)
        self.optimizer = optimizer
        self.log_every = log_every
        self.histogram_every = histogram_every
        self.flush_secs = float(flush_secs)
        self.plots = plots
        self.class_names = list(class_names) if class_names is not None else None
        self.thresholds = thresholds or Thresholds()
        self.warn = warn
        self.mean, self.std = mean, std
        self.probe_x, self.probe_y = self._probe(probe)
        self._dead_reported: dict[str, float] = {}  # layer -> dead fraction last reported
        self.feature_layers = feature_layers
        self.rank = _rank()
        self.diagnostics: list[Diagnostic] = []
        self.history: list[dict[str, float]] = []
        self.global_step = 0
        self.epoch = 0
        self.closed = False
        self._warned: set[tuple[str, str | None]] = set()
        self._groups: LayerGroups = layer_groups(model)
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._correct: list[tuple[int, torch.Tensor, int]] = []
        self._epoch = _Epoch()
        self._baseline: list[float] = []
        self._before: list[torch.Tensor] | None = None
        self._last_flush = time.monotonic()
        self._last_log_time = time.perf_counter()
        self._samples_since_log = 0
        self._epoch_grad_mean: list[dict[str, float]] = []
        self._heat_layers: list[str] = []
        self._writer: Any = None
        self._scalars: AppendLog | None = None
        self._diag_log: AppendLog | None = None
        self._lock: RunLock | None = None
        name = name or time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = _new_run_dir(Path(logdir), name, resume)
        if self.rank != 0:
            return  # only rank 0 writes
        try:
            self._open(Path(logdir), name, resume, tensorboard)
            # a resumed run has its summary (and its step-0 text in TensorBoard)
            if summary and self.probe_x is not None and self.global_step == 0:
                self._log_model(graph)
        except BaseException:
            self.closed = True
            self._close_sinks(suppress=True)
            raise

    # ------------------------------------------------------------------ set-up
    def _probe(
        self, probe: tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if probe is None:
            return None, None
        if isinstance(probe, torch.Tensor):
            x, y = probe, None
        elif isinstance(probe, (tuple, list)) and len(probe) == 2:
            x, y = probe
        else:
            raise TypeError("probe: expected an inputs tensor or an (inputs, labels) pair")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError("probe: the inputs must be a batched tensor")
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]):
            raise ValueError("probe: the labels must be a tensor with one label per input")
        return x.detach(), (y.detach() if y is not None else None)

    def _open(self, logdir: Path, name: str, resume: bool, tensorboard: bool) -> None:
        try:
            self.run_dir = _create_run_dir(logdir, name, resume)
            probe_file = self.run_dir / ".netsight-write-check"
            probe_file.write_text("ok")
            probe_file.unlink()
            # one writer per run directory, from here until close() (or the process's end)
            self._lock = RunLock.acquire(self.run_dir)
        except OSError as error:
            raise MonitorWriteError(
                error.errno,
                f"logdir: cannot write the run directory {self.run_dir}: {error.strerror}; "
                f"choose a writable logdir",
            ) from error
        purge_step = self._resume_point() if resume else None
        scalars_path = self.run_dir / "scalars.csv"
        self._scalars = AppendLog(scalars_path, header="step,epoch,tag,value,wall_time")
        self._diag_log = AppendLog(self.run_dir / "diagnostics.jsonl")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # pragma: no cover - tensorboard is a dependency
                raise ImportError(
                    "TrainingMonitor(tensorboard=True) needs the tensorboard package: "
                    "pip install tensorboard (or pass tensorboard=False)"
                ) from error
            if purge_step is not None:
                _after_event_files(self.run_dir)
            self._writer = EventWriter(
                SummaryWriter(
                    log_dir=str(self.run_dir),
                    flush_secs=max(1, math.ceil(self.flush_secs)),
                    purge_step=purge_step,
                ),
                self.run_dir,
            )

    def _resume_point(self) -> int | None:
        """Where a resumed run continues: one step after the last step in
        ``scalars.csv``. Every sink is made to agree: a torn last line (a writer
        killed mid-write) is cut off the CSV and ``diagnostics.jsonl``, diagnostics
        at or after that step are dropped, and the returned step is TensorBoard's
        ``purge_step`` (its readers drop what earlier event files hold at or after
        it). ``None`` when there are no event files to purge.
        """
        scalars_path = self.run_dir / "scalars.csv"
        diag_path = self.run_dir / "diagnostics.jsonl"
        with file_errors(f"the run {self.run_dir} being resumed"):
            trim_torn_line(scalars_path)
            trim_torn_line(diag_path)
            rows = read_scalars(scalars_path) if scalars_path.is_file() else []
            if rows:
                self.global_step = max(r["step"] for r in rows) + 1
                self.history = _history_from_rows(rows)
                self.epoch = len(self.history)
            # (not a device: a test links it to /dev/full, which reads as endless zeros)
            records = read_diagnostics(diag_path) if diag_path.is_file() else []
            kept = [
                r
                for r in records
                if not (isinstance(r.get("step"), int) and r["step"] >= self.global_step)
            ]
            if len(kept) < len(records):
                atomic_write_text(diag_path, "".join(json_line(r) for r in kept))
        if not any(self.run_dir.glob("*tfevents*")):
            return None
        return self.global_step

    def _log_model(self, graph: bool) -> None:
        from netsight.summary import summary as summarize

        assert self.probe_x is not None
        example = self.probe_x[:1]
        try:
            text = summarize(self.model, input_data=example).to_text()
        except Exception as error:  # a summary is a nicety; training must go on
            text = f"(no summary: {type(error).__name__}: {error})"
        with file_errors(str(self.run_dir / "summary.txt")):
            atomic_write_text(self.run_dir / "summary.txt", text + "\n")
        if self._writer is not None:
            self._writer.add_text("model/summary", "```\n" + text + "\n```", 0)
            if graph:
                try:
                    with preserve_state(self.model, "eval"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self._writer.add_graph(self.model, example)
                except Exception as error:
                    self._writer.add_text(
                        "model/graph", f"not traceable: {type(error).__name__}: {error}", 0
                    )

    # ------------------------------------------------------------------ the loop
    def step(
        self,
        loss: torch.Tensor | float | None = None,
        outputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> None:
        """Record one training step; call it after ``loss.backward()`` and before
        ``optimizer.step()`` (the gradients are read here)."""
        self._check_open()
        step = self.global_step
        self.global_step += 1
        if self.rank != 0:
            return
        if batch_size is None:
            batch_size = int(outputs.shape[0]) if isinstance(outputs, torch.Tensor) else 1
        self._samples_since_log += batch_size
        e = self._epoch
        e.steps += 1
        if loss is not None:
            value = (
                loss.detach().float().reshape(())
                if isinstance(loss, torch.Tensor)
                else (torch.tensor(float(loss)))
            )
            self._losses.append((step, value))
            e.loss_sum = (
                value * batch_size if e.loss_sum is None else e.loss_sum + value * batch_size
            )
            e.samples += batch_size
        if outputs is not None and targets is not None:
            correct = self._count_correct(outputs, targets)
            if correct is not None:
                self._correct.append((step, correct, int(targets.shape[0])))
                e.correct = correct if e.correct is None else e.correct + correct
                e.counted += int(targets.shape[0])
        if self._before is not None:  # the optimizer has stepped since the last logging step
            ratios = update_ratios(self._groups, self._before)
            self._before = None
            self._write_layer_scalars("update_ratio", ratios, step)
            self._report(
                check_updates(ratios, step=step, epoch=self.epoch + 1, thresholds=self.thresholds)
            )
        if step % self.log_every == 0:
            self._log_step(step)
        if self.histogram_every and step % self.histogram_every == 0:
            self._histograms(step)
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def _count_correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if outputs.dim() != 2 or targets.dim() != 1 or outputs.shape[0] != targets.shape[0]:
            return None
        if targets.is_floating_point():
            return None
        with torch.no_grad():
            return (outputs.detach().argmax(1) == targets).sum()

    def _log_step(self, step: int) -> None:
        now = time.perf_counter()
        self._write_buffered()
        if self.optimizer is not None:
            for i, group in enumerate(self.optimizer.param_groups):
                lr = group.get("lr")
                if isinstance(lr, torch.Tensor):
                    lr = float(lr)
                if isinstance(lr, (int, float)):
                    self._scalar(f"lr/group{i}", float(lr), step)
        elapsed = now - self._last_log_time
        if step > 0 and elapsed > 0:
            self._scalar("train/samples_per_sec", self._samples_since_log / elapsed, step)
        self._last_log_time = now
        self._samples_since_log = 0
        stats = GradientStats.compute(self._groups)
        if stats is None:
            self._report(
                [
                    Diagnostic(
                        "no_gradients",
                        step,
                        self.epoch + 1,
                        "step() found no gradients: call it after loss.backward() and before "
                        "optimizer.zero_grad(); gradient statistics are skipped until then",
                    )
                ]
            )
            return
        self._log_gradients(stats, step)
        self._report(
            check_gradients(
                stats,
                step=step,
                epoch=self.epoch + 1,
                baseline=self._baseline,
                thresholds=self.thresholds,
            )
        )
        if len(self._baseline) < self.thresholds.baseline_steps and math.isfinite(
            stats.total_grad_norm
        ):
            self._baseline.append(stats.total_grad_norm)
        self._before = snapshot_weights(self._groups)

    def _log_gradients(self, stats: GradientStats, step: int) -> None:
        self._write_layer_scalars(
            "grad_mean", dict(zip(stats.layers, stats.grad_mean, strict=True)), step
        )
        self._write_layer_scalars(
            "grad_max", dict(zip(stats.layers, stats.grad_max, strict=True)), step
        )
        self._write_layer_scalars(
            "grad_norm", dict(zip(stats.layers, stats.grad_norm, strict=True)), step
        )
        self._write_layer_scalars(
            "weight_norm", dict(zip(stats.layers, stats.weight_norm, strict=True)), step
        )
        self._scalar("grad_norm/total", stats.total_grad_norm, step)
        e = self._epoch
        for name, mean, top in zip(stats.layers, stats.grad_mean, stats.grad_max, strict=True):
            e.grad_mean.setdefault(name, []).append(mean)
            e.grad_max.setdefault(name, []).append(top)

    def _histograms(self, step: int) -> None:
        if self._writer is None:
            return
        for name, param in zip(self._groups.param_names, self._groups.params, strict=True):
            data = param.detach()
            if data.isfinite().all():
                self._writer.add_histogram(f"weights/{name}", data, step)
            grad = param.grad
            if grad is not None and grad.isfinite().all():
                self._writer.add_histogram(f"grads/{name}", grad.detach(), step)

    def epoch_end(self, **metrics: float | torch.Tensor) -> dict[str, float]:
        """Close an epoch: log the epoch's training loss and accuracy and any metrics
        given (``val_loss=``, ``val_acc=``, ...), the probe images and feature maps,
        gradient flow, run the epoch-level checks and redraw the plots.

        Returns:
            The epoch's metrics as logged.
        """
        self._check_open()
        if self.rank != 0:
            self.epoch += 1
            self._epoch = _Epoch()
            return {}
        step = max(self.global_step - 1, 0)
        if self._losses or self._correct:
            self._write_buffered()
        e = self._epoch
        row: dict[str, float] = {}
        if e.loss_sum is not None and e.samples:
            row["train_loss"] = float(e.loss_sum) / e.samples
        if e.correct is not None and e.counted:
            row["train_accuracy"] = float(e.correct) / e.counted
        for key, value in metrics.items():
            number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            row[key] = number
        for key, value in row.items():
            self._scalar(f"epoch/{key}", value, step)
        self.history.append(row)
        epoch_mean = {n: sum(v) / len(v) for n, v in e.grad_mean.items()}
        epoch_max = {n: max(v) for n, v in e.grad_max.items()}
        self._epoch_grad_mean.append(epoch_mean)
        for name in epoch_mean:
            self._scalar(f"epoch_grad_mean/{name}", epoch_mean[name], step)
            self._scalar(f"epoch_grad_max/{name}", epoch_max[name], step)
        train = [r["train_loss"] for r in self.history if "train_loss" in r]
        val_key = next((k for k in ("val_loss", "valid_loss", "test_loss") if k in row), None)
        if val_key is not None:
            val = [r[val_key] for r in self.history if val_key in r]
            self._report(
                check_overfitting(
                    train, val, step=step, epoch=self.epoch + 1, thresholds=self.thresholds
                )
            )
        with file_errors(f"the plots and images in {self.run_dir}"):  # a full disk
            if self.probe_x is not None:
                self._probe_epoch(step)
            if self.plots:
                self._plots(epoch_mean, epoch_max, step)
        self._epoch = _Epoch()
        self.epoch += 1
        self.flush()
        return row

    def _write_buffered(self) -> None:
        """Write the losses and accuracies of every step since the last write (one
        device sync), and report non-finite losses."""
        if self._losses:
            values = torch.stack([v for _, v in self._losses]).tolist()
            for (s, _), v in zip(self._losses, values, strict=True):
                self._scalar("train/loss", v, s)
                if not math.isfinite(v):
                    self._report(
                        [
                            Diagnostic(
                                "nonfinite_loss",
                                s,
                                self.epoch + 1,
                                f"the loss is {v} at step {s}; logged, training goes on. "
                                f"Look for a division by zero, log(0), or a too-large "
                                f"learning rate",
                                value=v,
                            )
                        ]
                    )
            self._losses.clear()
        if self._correct:
            counts = torch.stack([c for _, c, _ in self._correct]).tolist()
            for (s, _, n), c in zip(self._correct, counts, strict=True):
                self._scalar("train/accuracy", c / n, s)
            self._correct.clear()

    # ------------------------------------------------------------------ the probe
    def _feature_modules(self) -> dict[str, nn.Module]:
        from netsight.capture import resolve_layers

        if self.feature_layers is not None:
            return resolve_layers(self.model, self.feature_layers)
        convs = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            return {}
        chosen = [convs[0]] if len(convs) == 1 else [convs[0], convs[-1]]
        return dict(chosen)

    def _probe_epoch(self, step: int) -> None:
        assert self.probe_x is not None
        device = next((p.device for p in self.model.parameters()), self.probe_x.device)
        x = self.probe_x.to(device)
        features = self._feature_modules()
        relus = {n: m for n, m in self.model.named_modules() if isinstance(m, _RELUS)}
        fired: dict[str, torch.Tensor] = {}
        flat: set[str] = set()
        kept: dict[str, torch.Tensor] = {}
        names = {id(m): n for n, m in self.model.named_modules()}

        def post(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            if not isinstance(out, torch.Tensor):
                return
            name = names[id(module)]
            if name in features and name not in kept:
                kept[name] = out.detach().clone()
            if isinstance(module, _RELUS) and out.dim() >= 2:
                if out.dim() == 2:
                    flat.add(name)
                units = (out.detach() > 0).transpose(0, 1).reshape(out.shape[1], -1).any(1)
                fired[name] = units if name not in fired else fired[name] | units

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            return None

        watched = list({id(m): m for m in [*features.values(), *relus.values()]}.values())
        with preserve_state(self.model, "eval"), HookSet() as hooks, torch.no_grad():
            hooks.add_forward_hooks(watched, pre, post)
            output = self.model(x)
        predictions = (
            output.argmax(1).tolist()
            if isinstance(output, torch.Tensor) and output.dim() == 2
            else None
        )
        alive = {n: (int(t.sum()), int(t.numel())) for n, t in fired.items()}
        self._report(
            check_dead_units(
                alive,
                step=step,
                epoch=self.epoch + 1,
                thresholds=self.thresholds,
                samples=int(x.shape[0]) if x.dim() else None,
                flat=flat,
                reported=self._dead_reported,
            )
        )
        for name, (on, units) in alive.items():
            # under "units/", after the loss and accuracy groups TensorBoard shows first
            self._scalar(
                f"units/dead_fraction/{name}", (units - on) / units if units else 0.0, step
            )
        self._probe_images(x, predictions, step)
        self._feature_images(kept, step)

    def _display(self, x: torch.Tensor) -> torch.Tensor:
        from netsight.images import denormalize

        if self.mean is None and self.std is None:
            low, high = float(x.min()), float(x.max())
            return (x - low) / (high - low) if high > low else torch.zeros_like(x)
        return denormalize(x.float(), self.mean, self.std)

    def _probe_images(self, x: torch.Tensor, predictions: list[int] | None, step: int) -> None:
        if x.dim() != 4:
            return
        from torchvision.utils import make_grid

        shown = self._display(x[:32].detach().cpu())
        labels = self.probe_y[:32].tolist() if self.probe_y is not None else None
        preds = predictions[:32] if predictions is not None else None
        if self._writer is not None:
            self._writer.add_image("probe/inputs", make_grid(shown, nrow=8, padding=2), step)
        fig = plot_probe(shown, labels, preds, class_names=self.class_names)
        self._emit(fig, ["probe.png"], "probe/predictions", step)

    def _feature_images(self, kept: Mapping[str, torch.Tensor], step: int) -> None:
        from netsight.features import feature_grid

        for name, activation in kept.items():
            if activation.dim() != 4:
                continue
            grid = feature_grid(activation.cpu(), index=0, max_channels=64)
            if self._writer is not None:
                self._writer.add_image(f"features/{name}", grid.image, step)
            if self.plots:
                from netsight.features import plot_feature_maps

                # the readable figure: one colour scale with its bar, channel numbers, a
                # title with the layer and the epoch (written whole or not at all)
                fig = plot_feature_maps(
                    activation.cpu(),
                    max_channels=32,
                    title=f"{name}, probe image 0, epoch {self.epoch + 1}",
                )
                self._emit(fig, [f"features_{safe_filename(name)}.png"], None, step)

    # ------------------------------------------------------------------ files
    def _plots(self, epoch_mean: dict[str, float], epoch_max: dict[str, float], step: int) -> None:
        self._emit(plot_curves(self.history), ["curves.png"], None, 0)
        if epoch_mean:
            layers = [n for n in self._groups.names if n in epoch_mean]
            fig = plot_gradient_flow(
                layers,
                [epoch_mean[n] for n in layers],
                [epoch_max[n] for n in layers],
                title=f"Gradient flow, epoch {self.epoch + 1}",
            )
            files = ["grad_flow.png", f"grad_flow_epoch_{self.epoch + 1}.png"]
            # at the global step like every other event (a resume purges by step)
            self._emit(fig, files, "gradients/flow", step)
        heat_layers = [n for n in self._groups.names if any(n in e for e in self._epoch_grad_mean)]
        if heat_layers:
            rows = [[e.get(n, math.nan) for n in heat_layers] for e in self._epoch_grad_mean]
            self._emit(plot_gradient_heatmap(heat_layers, rows), ["grad_heatmap.png"], None, 0)
        self._write_index("running")

    def _emit(self, fig: Any, files: Sequence[str], tag: str | None, step: int) -> None:
        """Render ``fig`` once: to each file (when plots are on) and to TensorBoard."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        data = buffer.getvalue()
        if self.plots:
            for file in files:
                atomic_write_bytes(self.run_dir / file, data)
        if tag is not None and self._writer is not None:
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def _write_index(self, status: str) -> None:
        images = [
            (title, file)
            for title, file in (
                ("Loss and accuracy", "curves.png"),
                ("Gradient flow (last epoch)", "grad_flow.png"),
                ("Gradient flow by epoch", "grad_heatmap.png"),
                ("Probe batch", "probe.png"),
            )
            if (self.run_dir / file).exists()
        ]
        images += [
            (f"Feature maps: {p.stem.removeprefix('features_')}", p.name)
            for p in sorted(self.run_dir.glob("features_*.png"))
        ]
        html = render_index(
            name=self.run_dir.name,
            logdir=str(self.run_dir.parent),
            epochs=self.epoch,
            steps=self.global_step,
            status=status,
            history=self.history,
            diagnostics=self.diagnostics,
            images=images,
        )
        atomic_write_text(self.run_dir / "index.html", html)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self._scalars is not None:
            self._scalars.append(
                csv_line([step, self.epoch + 1, tag, repr(float(value)), f"{time.time():.3f}"])
            )
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def _write_layer_scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self._scalar(f"{prefix}/{name}", value, step)

    def _report(self, found: Sequence[Diagnostic]) -> None:
        for d in found:
            self.diagnostics.append(d)
            if self._diag_log is not None:
                self._diag_log.append(json_line(d.to_dict()))
            key = (d.kind, d.layer)
            if key in self._warned:
                continue
            self._warned.add(key)
            if self._writer is not None:
                self._writer.add_text(f"diagnostics/{d.kind}", d.message, d.step)
            if self.warn:
                warnings.warn(d.message, TrainingWarning, stacklevel=4)

    def flush(self) -> None:
        """Write everything buffered to disk now."""
        self._last_flush = time.monotonic()
        for log in (self._scalars, self._diag_log):
            if log is not None:
                log.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self, status: str = "finished") -> None:
        """Flush and close every file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.rank == 0 and (self._losses or self._correct):
                self._write_buffered()
            if self.rank == 0 and self._scalars is not None:
                with contextlib.suppress(OSError):
                    if self.plots:
                        self._write_index(status)
        finally:
            self._close_sinks(suppress=False)

    def _close_sinks(self, *, suppress: bool) -> None:
        """Close every file, then let go of the run directory's lock; raise the first
        failure unless ``suppress``."""
        failure: OSError | None = None
        try:
            for sink in (self._scalars, self._diag_log, self._writer):
                try:
                    if sink is not None:
                        sink.close()
                except OSError as error:  # close the others too, then report the first
                    failure = failure or error
        finally:
            if self._lock is not None:
                self._lock.release()
        if failure is not None and not suppress:
            raise failure

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(
                "this TrainingMonitor is closed; create a new one (resume=True appends)"
            )

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        status = (
            "finished"
            if error is None
            else f"stopped by {kind.__name__ if kind else 'error'}: {error}"
        )
        if isinstance(error, MonitorWriteError):
            # already reported; the same cause failing again while closing adds nothing
            with contextlib.suppress(MonitorWriteError):
                self.close(status)
            return
        self.close(status)

    def __repr__(self) -> str:
        return (
            f"TrainingMonitor(run_dir={str(self.run_dir)!r}, step={self.global_step}, "
            f"epoch={self.epoch}, diagnostics={len(self.diagnostics)})"
        )


def _after_event_files(run_dir: Path) -> None:
    """Wait (at most 2 s) until the clock has passed the second in the newest event
    file's name (``events.out.tfevents.<seconds>.<host>.<pid>...``), so the next event
    file sorts after it: TensorBoard reads a run's files in name order, and a purge
    only drops events of the files read before it."""
    newest = 0
    for path in run_dir.glob("events.out.tfevents.*"):
        stamp = path.name.split(".")[3]
        if stamp.isdigit():
            newest = max(newest, int(stamp))
    deadline = time.monotonic() + 2.0
    while int(time.time()) <= newest and time.monotonic() < deadline:
        time.sleep(0.05)


def _history_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Epoch metrics of a resumed run, rebuilt from its ``scalars.csv``."""
    by_epoch: dict[int, dict[str, float]] = {}
    for row in rows:
        tag = row["tag"]
        if tag.startswith("epoch/"):
            by_epoch.setdefault(row["epoch"], {})[tag.removeprefix("epoch/")] = row["value"]
    return [by_epoch[e] for e in sorted(by_epoch)]
