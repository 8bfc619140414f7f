"""Feature maps, mean maps, top channels and layer statistics, with values
checked by hand."""

from __future__ import annotations

import json
import warnings
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight._figures import title_of
from netsight.features import (
    feature_grid,
    layer_stats,
    mean_maps,
    plot_feature_maps,
    plot_mean_maps,
    run_forward,
    top_channels,
)
from netsight.hooks import StopForward
from netsight.trace import TraceError, trace
from netsight.zoo import Vgg16Net

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity


class _Stop(StopForward):
    pass


def _raise_once(error: Exception) -> Any:
    """A forward hook that raises ``error`` on its first call only."""
    calls: list[int] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error

    return hook


def test_a_netsight_stop_is_no_failure_for_run_forward_or_trace() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(1, 4)

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _Stop

    handle = model[1].register_forward_hook(stop)
    try:
        with pytest.raises(_Stop):  # unchanged: not a TraceError naming model[1]
            run_forward(model, x)
        for execution in ("auto", "real"):
            with pytest.raises(_Stop):
                trace(model, input_data=x, execution=execution)
        # The plain pass fails before the stop; the diagnostic re-run then reaches
        # the stop, so no layer fails: the original error is raised, not the stop.
        flaky = model[0].register_forward_hook(_raise_once(ValueError("flaky user hook")))
        with pytest.raises(ValueError, match="flaky user hook") as caught:
            run_forward(model, x)
        assert not isinstance(caught.value, (StopForward, TraceError))
        flaky.remove()
    finally:
        handle.remove()
    assert netsight.count_hooks(model) == 0
    # a real failure before the stop is still named
    wrong = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 2), nn.ReLU())
    wrong[2].register_forward_hook(stop)
    with pytest.raises(TraceError, match=r"failed in '1' \(Linear\) with input \[1, 3\]"):
        run_forward(wrong, x)


def test_feature_grid_tiles_are_the_normalised_channels() -> None:
    act = torch.zeros(1, 2, 2, 2)
    act[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    act[0, 1] = torch.tensor([[5.0, 5.0], [5.0, 5.0]])  # constant: no division by zero
    grid = feature_grid(act, cmap="gray", nrow=2, upscale=1)
    assert grid.indices == (0, 1) and grid.total == 2 and grid.nonfinite == 0
    image = grid.image
    # make_grid: padding 1 around and between tiles.
    tile0 = image[0, 1:3, 1:3]
    gray = matplotlib.colormaps["gray"](np.linspace(0, 1, 256))[:, 0]
    expected = torch.tensor(gray[[0, 64, 128, 255]], dtype=torch.float32).view(2, 2)
    torch.testing.assert_close(tile0, expected, atol=1e-6, rtol=0)
    tile1 = image[0, 1:3, 4:6]
    assert torch.all(tile1 == 0)


def test_feature_maps_capped_and_said_so() -> None:
    act = torch.randn(1, 2048, 7, 7)
    grid = feature_grid(act, max_channels=64)
    assert len(grid.indices) == 64
    assert grid.note == "showing 64 of 2048, 1984 left out"
    fig = plot_feature_maps(act, title="layer4", max_channels=64)
    assert isinstance(fig, Figure)
    heading = (title_of(fig) or "").replace("\n", " ")
    assert heading.startswith("layer4: 2048x7x7 output of image 0")
    assert "channels 0-63 of 2048 (1984 left out)" in heading


def test_nan_and_inf_are_drawn_and_flagged() -> None:
    act = torch.randn(1, 4, 5, 5)
    act[0, 1, 2, 2] = float("nan")
    act[0, 3, 0, 0] = float("inf")
    grid = feature_grid(act, upscale=1, nrow=4)
    assert grid.nonfinite == 2
    magenta = (grid.image[0] == 1) & (grid.image[1] == 0) & (grid.image[2] == 1)
    assert int(magenta.sum()) == 2
    assert "2 NaN/Inf values in magenta" in grid.note
    assert torch.isfinite(grid.image).all()


def test_mean_maps_for_every_conv_layer_of_the_tutorial_vgg(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = Vgg16Net().eval()
    x = torch.randn(2, 1, 32, 32)
    before = snapshot(model)
    with netsight.capture(model, layers=nn.Conv2d) as cap:
        model(x)
    maps = mean_maps(cap, index=1)
    assert len(maps) == 13
    torch.testing.assert_close(maps["layer1.0"], cap["layer1.0"][1].mean(0))
    assert maps["layer5.6"].shape == (2, 2)
    fig = plot_mean_maps(cap, ncols=5, title="VGG-16 mean maps")
    panels = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    assert len(panels) == 13  # one map per layer, each with its own colour bar
    assert len(fig.axes) == 26
    assert [ax.get_title().split("\n")[0] for ax in panels][:2] == ["layer1.0", "layer1.3"]
    assert title_of(fig) == "VGG-16 mean maps"
    with_input = plot_mean_maps(cap, index=1, image=x)
    first = next(ax for ax in with_input.axes if not hasattr(ax, "_colorbar"))
    assert first.get_title().startswith("input\n32x32")
    assert first.get_images()[0].get_array().shape == (32, 32, 3)  # drawn as a picture
    fig.savefig(tmp_path / "mean.png")
    assert (tmp_path / "mean.png").stat().st_size > 1000
    assert_unchanged(model, before)


def test_mean_maps_skip_layers_without_spatial_maps() -> None:
    maps = mean_maps({"conv": torch.randn(1, 3, 4, 4), "fc": torch.randn(1, 10)})
    assert list(maps) == ["conv"]
    with pytest.raises(ValueError, match="no feature maps"):
        feature_grid(torch.randn(1, 10))


def test_top_channels() -> None:
    act = torch.zeros(1, 5, 2, 2)
    act[0, 3] = 4.0
    act[0, 1] = 2.0
    act[0, 4, 0, 0] = 10.0  # mean 2.5, max 10
    assert top_channels(act, k=2) == [(3, 4.0), (4, 2.5)]
    assert top_channels(act, k=1, by="max") == [(4, 10.0)]


class Tiny(nn.Module):
    """conv -> relu with hand-set weights: channel 0 copies the input, channel 1
    negates it, channel 2 is always -1 (dead after the ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def test_layer_stats_by_hand() -> None:
    model = Tiny()
    x = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])  # (1, 1, 2, 2)
    stats = layer_stats(model, x, layers=["conv", "relu"])
    conv, relu = stats["conv"], stats["relu"]
    # conv output: [1,-2,0,3], [-1,2,0,-3], [-1,-1,-1,-1]; the in-place ReLU must not leak.
    assert conv.sparsity == pytest.approx(2 / 12)
    assert conv.mean == pytest.approx(-4 / 12)
    assert conv.min == -3 and conv.max == 3
    assert conv.dead_channels == 1 and conv.channels == 3
    # relu output: [1,0,0,3], [0,2,0,0], [0,0,0,0]
    assert relu.sparsity == pytest.approx(9 / 12)
    assert relu.mean == pytest.approx(6 / 12)
    assert relu.dead_channels == 1
    assert relu.std == pytest.approx(
        float(torch.tensor([1, 0, 0, 3, 0, 2, 0, 0, 0, 0, 0, 0.0]).std(unbiased=False))
    )


def test_layer_stats_default_layers_without_activations() -> None:
    # no ReLU-like module: the convolutions the model has (it has no Conv1d or Conv3d)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1), nn.Flatten())
    stats = layer_stats(model, torch.randn(2, 1, 6, 6))
    assert [s.name for s in stats.layers] == ["0", "1"]


def test_layer_stats_keep_each_call_of_a_shared_module_apart() -> None:
    class Shared(nn.Module):  # ResNet's way: one ReLU after layers of different widths
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 2, 1)
            self.b = nn.Conv2d(2, 5, 1)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.b(self.relu(self.a(x))))

    model = Shared()
    x = torch.randn(3, 1, 4, 4)
    stats = layer_stats(model, [x, x])
    assert [(s.name, s.channels) for s in stats.layers] == [("relu", 2), ("relu (call 2)", 5)]
    first = torch.relu(model.a(x))
    assert stats["relu"].sparsity == pytest.approx(float((first == 0).float().mean()))
    assert stats.batches == 2 and stats["relu (call 2)"].samples == 6


def test_layer_stats_over_batches_equal_one_big_batch_and_leave_the_model() -> None:
    model = Vgg16Net()
    data = torch.randn(12, 1, 32, 32)
    loader = [(data[i : i + 4], torch.zeros(4)) for i in range(0, 12, 4)]
    before = snapshot(model)
    streamed = layer_stats(model, loader, progress=True)
    whole = layer_stats(model, data)
    assert streamed.batches == 3 and streamed.samples == 12
    assert len(streamed.layers) == 15  # 13 conv ReLUs + 2 in the classifier
    for a, b in zip(streamed.layers, whole.layers, strict=True):
        assert a.name == b.name
        assert a.sparsity == pytest.approx(b.sparsity)
        assert a.mean == pytest.approx(b.mean, rel=1e-5)
        assert a.dead_channels == b.dead_channels
    assert_unchanged(model, before)
    limited = layer_stats(model, loader, max_batches=1)
    assert limited.batches == 1 and limited.samples == 4


def test_layer_stats_renderings_and_trend() -> None:
    model = Vgg16Net()
    stats = layer_stats(model, torch.randn(4, 1, 32, 32), layers=nn.ReLU)
    text = stats.to_text()
    assert text.splitlines()[0].startswith("Layer")
    assert "Spearman rho" in text
    data = json.loads(stats.to_json())
    assert data["layers"][0]["name"] == "layer1.2"
    assert data["sparsity_trend"] == stats.sparsity_trend
    assert "<table" in stats.to_html()
    fig = stats.plot()
    assert isinstance(fig, Figure)


def test_trend_detects_rising_sparsity() -> None:
    from netsight.features import LayerStat, LayerStats

    def stat(i: int, sparsity: float) -> LayerStat:
        return LayerStat(f"l{i}", "ReLU", (1,), 0, 0, 0, 0, sparsity, 1, 0, 0, 1)

    rising = LayerStats(tuple(stat(i, s) for i, s in enumerate([0.1, 0.3, 0.2, 0.6, 0.9])), 1, 1)
    assert rising.sparsity_trend == pytest.approx(0.9)
    assert "rises with depth" in rising.trend_text()
    flat = LayerStats(tuple(stat(i, 0.5) for i in range(4)), 1, 1)
    assert flat.sparsity_trend is None


def test_names_escaped_in_stats_html() -> None:
    model = nn.Sequential()
    model.add_module("<b>x</b>", nn.ReLU())
    stats = layer_stats(model, torch.randn(2, 3), layers=nn.ReLU)
    assert "<b>" not in stats.to_html() and "&lt;b&gt;" in stats.to_html()


def test_export_features_says_which_figures_it_left_out_and_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from netsight.features import export_features

    model, x = Vgg16Net(), torch.randn(1, 1, 32, 32)
    # A conv layer and a Linear one: the Linear has no grid, the mean maps still draw.
    with pytest.warns(UserWarning, match=r"features_fc\.0\.png not written: layer 'fc\.0'"):
        export_features(model, x, tmp_path / "mixed", layers=["layer1.0", "fc.0"])
    manifest = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert [(s["file"], s["layer"]) for s in manifest["skipped"]] == [("features_fc.0.png", "fc.0")]
    assert "no feature maps to draw" in manifest["skipped"][0]["reason"]
    assert "mean_maps.png" in manifest["files"] and "features_layer1.0.png" in manifest["files"]
    # Only Linear layers: no grid and no mean-map figure, each said.
    with pytest.warns(UserWarning, match="export_features: ") as caught:
        written = export_features(model, x, tmp_path / "linear", layers=["fc.0", "fc.3"])
    messages = [str(w.message) for w in caught if "export_features" in str(w.message)]
    assert len(messages) == 3 and "mean_maps.png not written" in messages[-1]
    manifest = json.loads((tmp_path / "linear" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["skipped"]] == [
        "features_fc.0.png",
        "features_fc.3.png",
        "mean_maps.png",
    ]
    assert manifest["skipped"][-1] == {
        "file": "mean_maps.png",
        "layer": None,
        "reason": "mean maps: none of the given layers produced spatial feature maps",
    }
    assert not (tmp_path / "linear" / "mean_maps.png").exists()
    assert {p.name for p in written} == {*manifest["files"], "manifest.json"}
    # Nothing left out: an empty list, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_features(model, x, tmp_path / "conv", layers=["layer1.0"])
    assert json.loads((tmp_path / "conv" / "manifest.json").read_text())["skipped"] == []
