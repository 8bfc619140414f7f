"""The training monitor: what it records, the diagnostics it raises (each provoked on
a small model), and that it leaves the model and earlier runs alone."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsight
from netsight.monitor import (
    GradientStats,
    MonitorWriteError,
    Thresholds,
    TrainingMonitor,
    TrainingWarning,
    layer_groups,
    read_scalars,
)


def _digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.5) / 0.5, torch.tensor(data.target[:n])


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train(
    model: nn.Module,
    mon: TrainingMonitor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 1e-2,
    batch: int = 64,
    optimizer: str = "adam",
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr)
    )
    mon.optimizer = opt
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            loss = F.cross_entropy(out, y[i : i + batch])
            loss.backward()
            mon.step(loss=loss, outputs=out, targets=y[i : i + batch])
            opt.step()
            opt.zero_grad()
        metrics = {}
        if val is not None:
            with torch.no_grad():
                was = model.training
                model.eval()
                vo = model(val[0])
                model.train(was)
            metrics = {
                "val_loss": float(F.cross_entropy(vo, val[1])),
                "val_acc": float((vo.argmax(1) == val[1]).float().mean()),
            }
        mon.epoch_end(**metrics)


@pytest.fixture
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _kinds(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]


# --------------------------------------------------------------------------- records
def test_healthy_run_writes_everything_and_warns_about_nothing(
    tmp_path: Path, quiet: list[warnings.WarningMessage]
) -> None:
    torch.manual_seed(0)
    x, y = _digits(640)
    model = SmallCNN()
    flags = [m.training for m in model.modules()]
    with TrainingMonitor(
        model, tmp_path, "healthy", probe=(x[:16], y[:16]), mean=(0.5,), std=(0.5,), log_every=5
    ) as mon:
        _train(model, mon, x[:512], y[:512], epochs=3, val=(x[512:], y[512:]))
    assert _kinds(quiet) == [] and mon.diagnostics == []
    run = mon.run_dir
    assert run == tmp_path / "healthy"
    for name in (
        "scalars.csv",
        "curves.png",
        "grad_flow.png",
        "grad_flow_epoch_3.png",
        "grad_heatmap.png",
        "probe.png",
        "features_features.0.png",
        "features_features.3.png",
        "index.html",
        "summary.txt",
    ):
        assert (run / name).stat().st_size > 0, name
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "diagnostics.jsonl").read_text() == ""
    rows = read_scalars(run / "scalars.csv")
    tags = {r["tag"] for r in rows}
    assert {"train/loss", "train/accuracy", "lr/group0", "grad_norm/total"} <= tags
    assert {"grad_mean/features.0", "grad_max/head.2", "update_ratio/features.3"} <= tags
    assert {"epoch/train_loss", "epoch/val_loss", "epoch/val_acc"} <= tags
    losses = [r for r in rows if r["tag"] == "train/loss"]
    assert [r["step"] for r in losses] == list(range(3 * 8))  # every step, in order
    epoch_loss = [r["value"] for r in rows if r["tag"] == "epoch/train_loss"]
    assert len(epoch_loss) == 3 and epoch_loss[2] < epoch_loss[0]  # it learned
    assert [r["epoch"] for r in rows if r["tag"] == "epoch/train_loss"] == [1, 2, 3]
    # the epoch's training loss is the sample-weighted mean of its steps
    first = [r["value"] for r in losses if r["epoch"] == 1]
    assert math.isclose(epoch_loss[0], sum(first) / len(first), rel_tol=1e-5)
    assert len(mon.history) == 3 and mon.history[0]["train_loss"] == pytest.approx(epoch_loss[0])
    html = (run / "index.html").read_text()
    assert "No problems found" in html and "curves.png" in html
    assert "features.0" in (run / "summary.txt").read_text()
    # the probe forward ran in eval mode and restored every module's flag
    assert [m.training for m in model.modules()] == flags
    assert netsight.count_hooks(model) == 0


def test_gradient_statistics_match_a_hand_computation() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2, bias=False))
    model(torch.randn(5, 4)).pow(2).sum().backward()
    stats = GradientStats.compute(layer_groups(model))
    assert stats is not None and stats.layers == ("0", "2")
    w, b, v = model[0].weight, model[0].bias, model[2].weight
    assert w.grad is not None and b.grad is not None and v.grad is not None
    grads = torch.cat([w.grad.flatten(), b.grad.flatten()])
    assert stats.grad_mean[0] == pytest.approx(float(grads.abs().mean()), rel=1e-5)
    assert stats.grad_max[0] == pytest.approx(float(grads.abs().max()), rel=1e-6)
    assert stats.grad_norm[0] == pytest.approx(float(grads.norm()), rel=1e-5)
    assert stats.grad_mean[1] == pytest.approx(float(v.grad.abs().mean()), rel=1e-5)
    weights = torch.cat([w.detach().flatten(), b.detach().flatten()])
    assert stats.weight_norm[0] == pytest.approx(float(weights.norm()), rel=1e-5)
    everything = torch.cat([grads, v.grad.flatten()])
    assert stats.total_grad_norm == pytest.approx(float(everything.norm()), rel=1e-5)
    assert stats.nonfinite == (False, False) and stats.missing == ()


def test_update_ratio_is_the_step_relative_to_the_weight(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrainingMonitor(model, tmp_path, "u", log_every=1, tensorboard=False, plots=False) as mon:
        for _ in range(2):
            before = model[0].weight.detach().clone()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            mon.step(loss=torch.tensor(1.0))
            opt.step()
            opt.zero_grad()
            expected = float((model[0].weight.detach() - before).norm() / before.norm())
        model(torch.randn(8, 4)).pow(2).mean().backward()
        mon.step(loss=torch.tensor(1.0))  # reads the update of the step before
    rows = [r for r in read_scalars(mon.run_dir / "scalars.csv") if r["tag"] == "update_ratio/0"]
    assert len(rows) == 2
    assert rows[-1]["value"] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- diagnostics
def test_vanishing_gradients_in_a_deep_sigmoid_mlp(
    tmp_path: Path, quiet: list[warnings.WarningMessage]
) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(12):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(nn.Flatten(), *layers, nn.Linear(32, 10))
    x, y = _digits(256)
    x = F.adaptive_avg_pool2d(x, (4, 8))  # 32 features
    with TrainingMonitor(model, tmp_path, "deep", tensorboard=False, plots=False) as mon:
        _train(model, mon, x, y, epochs=1, optimizer="sgd", lr=0.1)
    kinds = {d.kind for d in mon.diagnostics}
    assert "vanishing_gradients" in kinds
    found = next(d for d in mon.diagnostics if d.kind == "vanishing_gradients")
    assert found.layer == "1"  # the first Linear, next to the input
    assert any("vanishing gradients" in m for m in _kinds(quiet))
    assert "exploding_gradients" not in kinds


def test_exploding_gradients_with_a_too_large_learning_rate(
    tmp_path: Path, quiet: list[warnings.WarningMessage]
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = _digits(512)
    with TrainingMonitor(model, tmp_path, "lr", log_every=1, tensorboard=False, plots=False) as mon:
        _train(model, mon, x, y, epochs=1, optimizer="sgd", lr=50.0, batch=32)
    kinds = [d.kind for d in mon.diagnostics]
    assert "exploding_gradients" in kinds
    assert any("learning rate" in m for m in _kinds(quiet))


class SqrtNet(nn.Module):
    """``sqrt(h * (h > 0))`` after ``middle``: a finite forward, but where ``h < 0`` the
    backward multiplies sqrt's infinite slope at 0 by the mask's 0, giving NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.middle = nn.Linear(8, 8)
        self.last = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.first(x))
        return self.last(torch.sqrt(h * (h > 0)))


def test_nonfinite_gradient_names_where_it_first_appears(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SqrtNet()
    with TrainingMonitor(
        model, tmp_path, "nan", log_every=1, tensorboard=False, plots=False
    ) as mon:
        model(torch.randn(16, 4)).sum().backward()
        with pytest.warns(TrainingWarning, match="'middle'"):
            mon.step(loss=torch.tensor(0.5))
    found = [d for d in mon.diagnostics if d.kind == "nonfinite_gradient"]
    assert len(found) == 1 and found[0].layer == "middle"
    stats = GradientStats.compute(layer_groups(model))
    assert stats is not None and stats.nonfinite == (True, True, False)


def test_nonfinite_loss_is_logged_and_training_goes_on(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    with TrainingMonitor(model, tmp_path, "l", tensorboard=False, plots=False) as mon:
        for value in (1.0, float("nan"), 0.5):
            model(torch.randn(2, 3)).sum().backward()
            mon.step(loss=torch.tensor(value))
            model.zero_grad()
        with pytest.warns(TrainingWarning, match="the loss is nan"):
            mon.epoch_end()  # losses are read in one batch at logging steps and epoch ends
    losses = [
        r["value"] for r in read_scalars(mon.run_dir / "scalars.csv") if r["tag"] == "train/loss"
    ]
    assert losses[0] == 1.0 and math.isnan(losses[1]) and losses[2] == 0.5
    lines = (mon.run_dir / "diagnostics.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["nonfinite_loss"]


def test_dead_relu_units_on_the_probe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias[:12] = -100.0  # 12 of 16 units driven negative
    x = torch.randn(32, 4)
    with TrainingMonitor(
        model, tmp_path, "dead", probe=(x, None), tensorboard=False, plots=False
    ) as mon:
        model(x).sum().backward()
        mon.step(loss=torch.tensor(1.0))
        with pytest.warns(TrainingWarning, match="12 of 16 units of '1'"):
            mon.epoch_end()
    found = [d for d in mon.diagnostics if d.kind == "dead_units"]
    assert len(found) == 1 and found[0].value == pytest.approx(0.75)
    rows = read_scalars(mon.run_dir / "scalars.csv")
    assert [r["value"] for r in rows if r["tag"] == "units/dead_fraction/1"] == [0.75]


def test_overfitting_when_validation_rises_and_training_falls(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with TrainingMonitor(model, tmp_path, "o", tensorboard=False, plots=False) as mon:
        for epoch, (train, val) in enumerate([(1.0, 1.0), (0.8, 0.9), (0.6, 1.0), (0.4, 1.2)]):
            model(torch.randn(4, 2)).sum().backward()
            if epoch < 3:
                mon.step(loss=torch.tensor(train))
                mon.epoch_end(val_loss=val)
            else:
                mon.step(loss=torch.tensor(train))
                with pytest.warns(TrainingWarning, match="overfitting"):
                    mon.epoch_end(val_loss=val)
            model.zero_grad()
    assert [d.kind for d in mon.diagnostics] == ["overfitting"]
    assert mon.diagnostics[0].epoch == 4


def test_step_before_backward_says_so_once(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with (
        TrainingMonitor(model, tmp_path, "nb", log_every=1, tensorboard=False, plots=False) as mon,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        for _ in range(3):
            mon.step(loss=model(torch.randn(1, 2)).sum())
    messages = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert len(messages) == 1 and "after loss.backward" in messages[0]
    assert [d.kind for d in mon.diagnostics] == ["no_gradients"] * 3


def test_thresholds_are_configurable(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    strict = Thresholds(vanishing_ratio=2.0)  # every layer but the largest "vanishes"
    with TrainingMonitor(
        model,
        tmp_path,
        "t",
        log_every=1,
        thresholds=strict,
        warn=False,
        tensorboard=False,
        plots=False,
    ) as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    assert [d.kind for d in mon.diagnostics] == ["vanishing_gradients"]


# --------------------------------------------------------------------------- runs and files
def test_runs_are_never_overwritten_and_resume_appends(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)

    def run(**kwargs: bool) -> TrainingMonitor:
        with TrainingMonitor(model, tmp_path, "exp", tensorboard=False, **kwargs) as mon:
            for _ in range(3):
                model(torch.randn(1, 2)).sum().backward()
                mon.step(loss=torch.tensor(1.0))
                model.zero_grad()
            mon.epoch_end(val_loss=1.0)
        return mon

    first, second = run(), run()
    assert first.run_dir.name == "exp" and second.run_dir.name == "exp-2"
    resumed = run(resume=True)
    assert resumed.run_dir == first.run_dir
    rows = read_scalars(first.run_dir / "scalars.csv")
    assert [r["step"] for r in rows if r["tag"] == "train/loss"] == list(range(6))
    assert [r["epoch"] for r in rows if r["tag"] == "epoch/val_loss"] == [1, 2]
    assert len(resumed.history) == 2
    assert (first.run_dir / "scalars.csv").read_text().count("step,epoch") == 1


def test_unwritable_logdir_fails_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MonitorWriteError, match="cannot write the run directory"):
        TrainingMonitor(nn.Linear(2, 2), blocker / "runs", "x")


def test_names_from_the_model_are_escaped_and_sanitised(tmp_path: Path) -> None:
    model = nn.Sequential()
    model.add_module("a/<b>", nn.Conv2d(1, 4, 3))
    model.add_module("<img src=x onerror=alert(1)>", nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # all dead: a diagnostic naming the layer goes to HTML
    x = torch.randn(4, 1, 8, 8)
    with TrainingMonitor(model, tmp_path, "../evil/<run>", probe=x, warn=False) as mon:
        model(x).sum().backward()
        mon.step(loss=torch.tensor(1.0))
        mon.epoch_end()
    assert mon.run_dir.parent == tmp_path  # the name cannot leave the logdir
    html = (mon.run_dir / "index.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    features = [p.name for p in mon.run_dir.glob("features_*.png")]
    assert features and all("<" not in n and "/" not in n for n in features)


def test_bad_arguments(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        TrainingMonitor("model", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_every"):
        TrainingMonitor(model, tmp_path, log_every=0)
    with pytest.raises(ValueError, match="one label per input"):
        TrainingMonitor(model, tmp_path, probe=(torch.zeros(4, 2), torch.zeros(3)))
    mon = TrainingMonitor(model, tmp_path, "closed", tensorboard=False)
    mon.close()
    mon.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        mon.step(loss=torch.tensor(1.0))


def test_model_state_is_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    model.train()
    model.head.eval()
    flags = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    x, y = _digits(64)
    with TrainingMonitor(model, tmp_path, "s", probe=(x[:8], y[:8]), warn=False) as mon:
        out = model(x)
        F.cross_entropy(out, y).backward()
        grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
        weights = [p.detach().clone() for p in model.parameters()]
        mon.step(loss=F.cross_entropy(out, y), outputs=out, targets=y)
        mon.epoch_end()
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires
    for p, g, w in zip(model.parameters(), grads, weights, strict=True):
        assert torch.equal(p.detach(), w)
        assert (p.grad is None and g is None) or (
            p.grad is not None and g is not None and torch.equal(p.grad, g)
        )
    assert netsight.count_hooks(model) == 0
    assert "features.0" not in {
        r["tag"].split("/", 1)[1]
        for r in read_scalars(mon.run_dir / "scalars.csv")
        if r["tag"].startswith("grad_mean/")
    }  # frozen: not tracked
