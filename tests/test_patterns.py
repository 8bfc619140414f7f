"""Filter patterns by activation maximisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.patterns import maximize
from netsight.zoo import Vgg16Net


def _edges() -> nn.Sequential:
    """Channel 0 answers vertical edges, channel 1 horizontal ones."""
    conv = nn.Conv2d(1, 2, 3, bias=False)
    with torch.no_grad():
        vertical = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
        conv.weight[0, 0] = vertical
        conv.weight[1, 0] = vertical.t()
    return nn.Sequential(conv, nn.ReLU())


def _gradient_energy(image: torch.Tensor) -> tuple[float, float]:
    """Mean |d/dx| and mean |d/dy| of a (1, H, W) picture."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
    return float(dx), float(dy)


def test_each_channel_gets_its_own_orientation() -> None:
    model = _edges()
    p = maximize(
        model, "1", size=24, steps=60, lr=0.1, parameterization="pixel", jitter=0, scales=()
    )
    assert p.channels == (0, 1) and p.images.shape == (2, 1, 24, 24)
    vertical_dx, vertical_dy = _gradient_energy(p.images[0])
    horizontal_dx, horizontal_dy = _gradient_energy(p.images[1])
    assert vertical_dx > 2 * vertical_dy  # stripes that change along x: vertical edges
    assert horizontal_dy > 2 * horizontal_dx
    assert bool((p.activation > 5 * p.start.clamp_min(1e-3)).all())


def test_the_objective_rises_and_beats_noise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
    )
    p = maximize(model, "2", size=32, steps=40, seed=3)
    assert p.history.shape == (40, 6)
    assert bool((p.activation > p.start).all())
    noise = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model[2](model[1](model[0]((noise - 0.5) / 0.5)))
    on_noise = out[torch.arange(6), torch.arange(6)].flatten(1).mean(1)
    assert bool((p.activation > on_noise).all())
    assert float(p.images.min()) >= 0.0 and float(p.images.max()) <= 1.0


def test_model_state_rng_and_grads_are_left_alone() -> None:
    torch.manual_seed(0)
    model = Vgg16Net().train()
    model(torch.randn(2, 1, 32, 32)).sum().backward()  # some .grad to keep
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    before = snapshot(model)
    first = maximize(model, "layer2.3", channels=[5, 7], size=32, steps=5)
    assert_unchanged(model, before)
    again = maximize(model, "layer2.3", channels=[5, 7], size=32, steps=5)
    other = maximize(model, "layer2.3", channels=[5, 7], size=32, steps=5, seed=1)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)


def test_bad_requests_get_clear_errors() -> None:
    model = _edges()
    with pytest.raises(KeyError, match=r"no layer named 'conv'"):
        maximize(model, "conv")
    with pytest.raises(ValueError, match=r"channels: 1 has 2 channels \(0-1\), got \[5\]"):
        maximize(model, "1", channels=[0, 5], steps=1)
    with pytest.raises(ValueError, match="parameterization"):
        maximize(model, "1", parameterization="wavelet")
    vgg = Vgg16Net()
    with pytest.raises(netsight.TraceError, match=r"layer1\.0"):
        maximize(vgg, "layer3.0", in_channels=3, steps=1)  # the model takes 1 channel
    assert netsight.count_hooks(vgg) == 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        maximize(model, "1", steps=1)

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(1, 2, 3)
            self.unused = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.used(x)
            return out

    with pytest.raises(ValueError, match="unused did not run"):
        maximize(Branchy(), "unused", steps=1)
    assert netsight.count_hooks(model) == 0


def test_a_user_hook_failing_once_is_reported_not_netsights_stop() -> None:
    # The first pass fails in the user's hook; the diagnostic re-run reaches the
    # target layer, where netsight's own hook stops it: that is no failure to
    # report, so the user's error is raised, not "failed in 'layer2.0.conv1': _Reached".
    model = torchvision.models.resnet18()
    calls: list[int] = []

    def flaky(module: nn.Module, args: Any, output: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("flaky user hook")

    handle = model.layer1.register_forward_hook(flaky)
    try:
        with pytest.raises(RuntimeError, match="flaky user hook") as caught:
            maximize(model, "layer2.0.conv1", channels=[0], size=32, steps=1)
        assert not isinstance(caught.value, netsight.TraceError)
        assert len(calls) == 2 and netsight.count_hooks(model) == 1  # the user's own
        p = maximize(model, "layer2.0.conv1", channels=[0], size=32, steps=1)  # now fine
        assert p.images.shape == (1, 3, 32, 32)
    finally:
        handle.remove()


def test_figure_and_grid() -> None:
    p = maximize(_edges(), "1", size=16, steps=3)
    grid = p.grid()
    assert grid.shape[0] == 3 and grid.shape[1] == 16 + 4
    fig = p.plot()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("channel 0\n") and "->" in titles[0]


def test_cli_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from netsight.cli import main

    source = tmp_path / "net.py"
    source.write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))\n"
    )
    out = tmp_path / "patterns"
    argv = ["patterns", f"{source}:small", "--layer", "2", "--channels", "1,3"]
    assert main([*argv, "--steps", "4", "--size", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 channel 1: mean activation" in printed and "2 channel 3" in printed
    record = json.loads((out / "patterns_2.json").read_text())
    assert record["channels"] == [1, 3] and record["steps"] == 4
    assert (out / record["figure"]).is_file()
    assert main([*argv[:4], "--channels", "9", "--out", str(out), "--overwrite"]) == 2
    assert "has 5 channels" in capsys.readouterr().err
