"""NetsightCallback: a TrainingMonitor driven by a Lightning Trainer (CPU, 2 short epochs)."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netsight.monitor import read_scalars
from netsight.monitor.lightning import NetsightCallback

LAYERS = ["conv", "fc"]


class TinyModule(lightning.LightningModule):
    """A small CNN on 1 x 8 x 8 inputs, 3 classes; it records, next to the monitor,
    each step's loss and each layer's gradient norm just before the optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(1, 4, 3),
                relu=nn.ReLU(),
                flat=nn.Flatten(),
                fc=nn.Linear(4 * 6 * 6, 3),
            )
        )
        self.losses: list[float] = []
        self.norms: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.losses.append(loss.item())
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        squares: dict[str, float] = {}
        for name, param in self.net.named_parameters():
            assert param.grad is not None
            layer = "net." + name.rpartition(".")[0]
            squares[layer] = squares.get(layer, 0.0) + float(param.grad.square().sum())
        self.norms.append({k: v**0.5 for k, v in squares.items()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,)))
    val = TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,)))
    return DataLoader(train, batch_size=8), DataLoader(val, batch_size=8)


def _fit(tmp_path: Path, callback: NetsightCallback, **trainer_kwargs: Any) -> TinyModule:
    module = TinyModule()
    trainer_kwargs.setdefault("max_epochs", 2)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
        **trainer_kwargs,
    )
    train, val = _loaders()
    trainer.fit(module, train, val)
    return module


def _probe() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0])


def test_callback_logs_steps_and_epochs(tmp_path: Path) -> None:
    callback = NetsightCallback(name="lit", probe=_probe(), log_every=1, histogram_every=2)
    module = _fit(tmp_path, callback)
    monitor = callback.monitor
    assert monitor is not None and monitor.closed
    run = tmp_path / "netsight" / "lit"  # logdir defaults under default_root_dir
    assert monitor.run_dir == run
    assert sorted(p.name for p in run.glob("events.out.tfevents.*"))
    rows = read_scalars(run / "scalars.csv")
    by_tag: dict[str, dict[int, float]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], {})[r["step"]] = r["value"]
    # one monitor step per optimizer step: 2 epochs x 4 batches
    assert sorted(by_tag["train/loss"]) == list(range(8))
    assert [by_tag["train/loss"][s] for s in range(8)] == pytest.approx(module.losses)
    # the gradients were read before the optimizer step, and named as in the module
    assert len(module.norms) == 8
    for step, norms in enumerate(module.norms):
        for layer, norm in norms.items():
            assert by_tag[f"grad_norm/{layer}"][step] == pytest.approx(norm, rel=1e-5)
    assert "update_ratio/net.conv" in by_tag
    assert "lr/group0" in by_tag
    # epoch metrics from trainer.callback_metrics, one row per epoch
    epochs = {
        r["tag"]: [x["epoch"] for x in rows if x["tag"] == r["tag"]]
        for r in rows
        if r["tag"].startswith("epoch/")
    }
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert epochs[f"epoch/{key}"] == [1, 2], key
    assert len(monitor.history) == 2
    assert all(
        set(h) >= {"train_loss", "train_acc", "val_loss", "val_acc"} for h in monitor.history
    )
    assert (run / "index.html").exists()
    assert (run / "grad_flow.png").exists()


def test_callback_skips_stale_validation_and_sums_accumulated_losses(tmp_path: Path) -> None:
    callback = NetsightCallback(name="acc", log_every=1, summary=False, plots=False)
    module = _fit(
        tmp_path, callback, max_epochs=3, check_val_every_n_epoch=2, accumulate_grad_batches=2
    )
    assert callback.monitor is not None
    rows = read_scalars(callback.monitor.run_dir / "scalars.csv")
    losses = {r["step"]: r["value"] for r in rows if r["tag"] == "train/loss"}
    # 4 batches an epoch, 2 per optimizer step: a step's loss is the mean of its batches
    assert sorted(losses) == list(range(6))
    means = [(a + b) / 2 for a, b in zip(module.losses[::2], module.losses[1::2], strict=True)]
    assert [losses[s] for s in range(6)] == pytest.approx(means, rel=1e-6)
    # validation ran in epoch 2 only: Lightning still holds its figures in epoch 3
    val = [r["epoch"] for r in rows if r["tag"] == "epoch/val_loss"]
    assert val == [2]
    assert [r["epoch"] for r in rows if r["tag"] == "epoch/train_acc"] == [1, 2, 3]


def test_callback_refuses_model_and_optimizer() -> None:
    with pytest.raises(TypeError, match="comes from the trainer"):
        NetsightCallback(model=nn.Linear(2, 2))


def test_import_netsight_does_not_import_lightning() -> None:
    code = (
        "import sys, netsight, netsight.monitor; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric')); "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
