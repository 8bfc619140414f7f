"""A Lightning callback that runs a :class:`~netsight.monitor.TrainingMonitor`.

Needs the ``lightning`` package (``pip install 'netsight[lightning]'``); importing
``netsight`` never imports it, only importing this module does.

Example:
    >>> from netsight.monitor.lightning import NetsightCallback
    >>> trainer = lightning.Trainer(
    ...     max_epochs=5, callbacks=[NetsightCallback(logdir="runs", probe=(x, y))]
    ... )
    >>> trainer.fit(module, train_loader, val_loader)

Where each part of the monitor is fed from:

* the monitor is created when fitting starts (the module and the first optimizer are
  ready then) and closed in ``teardown``, or with the error's name when fitting fails;
* one monitor step per optimizer step, in ``on_before_optimizer_step``: the gradients
  are complete there (all accumulated micro-batches, unscaled under mixed precision,
  not yet clipped) and the weights not yet updated, as ``TrainingMonitor.step`` wants;
* the step's loss is the sum of the losses passed to ``backward`` since the previous
  optimizer step (Lightning divides each by ``accumulate_grad_batches``, so this is
  their mean), its batch size the samples of the batches seen since then;
* at the end of each training epoch, every scalar in ``trainer.callback_metrics``
  (what the module logged with ``self.log``: the epoch means of training metrics and
  the results of this epoch's validation, which Lightning runs before the epoch's end)
  goes to ``TrainingMonitor.epoch_end``. Validation metrics are left out of epochs
  without validation (``check_val_every_n_epoch``), where Lightning would still hold
  the last ones; ``*_step`` values are left out when an ``*_epoch`` mean exists.

Per-step training accuracy needs the model's outputs, which these hooks do not see: log
an accuracy with ``self.log("train_acc", ..., on_epoch=True)`` to get it per epoch.
Under a multi-process strategy, every rank runs the callback and only rank 0 writes
(see :class:`~netsight.monitor.TrainingMonitor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - the test extra installs lightning
    raise ImportError(
        "netsight.monitor.lightning needs Lightning: pip install 'netsight[lightning]' "
        "(or pip install lightning)"
    ) from error

from netsight.monitor.monitor import TrainingMonitor

__all__ = ["NetsightCallback"]


def _batch_size(batch: Any) -> int | None:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, (list, tuple)):
        items: list[Any] = list(batch)
    elif isinstance(batch, dict):
        items = list(batch.values())
    else:
        return None
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class NetsightCallback(Callback):
    """Runs a :class:`~netsight.monitor.TrainingMonitor` on a Lightning fit.

    Example:
        >>> trainer = lightning.Trainer(callbacks=[NetsightCallback(name="exp1")])
        >>> trainer.fit(module, train_loader, val_loader)   # writes <root>/netsight/exp1

    Args:
        **monitor_kwargs: passed to ``TrainingMonitor`` (``logdir``, ``name``,
            ``probe``, ``log_every``, ``histogram_every``, ...). ``model`` and
            ``optimizer`` come from the trainer (the first optimizer, for learning
            rates); ``logdir`` defaults to ``<trainer.default_root_dir>/netsight``.

    Attributes:
        monitor: the monitor of the current (or last) fit; ``None`` before fitting.
    """

    def __init__(self, **monitor_kwargs: Any) -> None:
        super().__init__()
        for key in ("model", "optimizer"):
            if key in monitor_kwargs:
                raise TypeError(
                    f"NetsightCallback: {key!r} comes from the trainer; got {key}= as well"
                )
        self.monitor_kwargs = monitor_kwargs
        self.monitor: TrainingMonitor | None = None
        self._loss: torch.Tensor | None = None
        self._samples = 0
        self._val_keys: set[str] = set()
        self._before_validation: set[str] = set()
        self._validated = False

    # ------------------------------------------------------------------ fit
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        kwargs = dict(self.monitor_kwargs)
        kwargs.setdefault("logdir", Path(trainer.default_root_dir) / "netsight")
        optimizers = trainer.optimizers
        self.monitor = TrainingMonitor(
            pl_module, optimizer=optimizers[0] if optimizers else None, **kwargs
        )
        self._loss, self._samples = None, 0
        self._val_keys, self._validated = set(), False

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self.monitor is not None:
            self.monitor.close(f"stopped by {type(exception).__name__}: {exception}")

    # ------------------------------------------------------------------ steps
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._samples += _batch_size(batch) or 1

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        value = loss.detach().float().reshape(())
        self._loss = value if self._loss is None else self._loss + value

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        self.monitor.step(loss=self._loss, batch_size=max(self._samples, 1))
        self._loss, self._samples = None, 0

    # ------------------------------------------------------------------ epochs
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._before_validation = set(trainer.callback_metrics)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # what this validation added is validation's (later runs overwrite the same keys)
        self._val_keys |= set(trainer.callback_metrics) - self._before_validation
        self._validated = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        found = trainer.callback_metrics
        metrics: dict[str, float] = {}
        for key, value in found.items():
            if key in self._val_keys and not self._validated:
                continue  # Lightning still holds the last validation's values
            if key.endswith("_step") and key.removesuffix("_step") + "_epoch" in found:
                continue
            number = _scalar(value)
            if number is not None:
                metrics[key] = number
        self._validated = False
        self.monitor.epoch_end(**metrics)
