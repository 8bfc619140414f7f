"""Every figure netsight draws for features, kernels, layer statistics and patterns
is readable at the report's 90 dpi (``audit_figure``: a title, a colour bar for
every heatmap, no text under 10 px) and fits a 1200 px page, across the shapes real
networks produce: 1x1 to 56x56 maps, 1 to 512 channels, 1x1 to 7x7 kernels,
first-layer RGB kernels, and a layer with NaN/Inf values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from matplotlib.figure import Figure
from torch import nn

import netsight
from netsight._figures import audit_figure, title_of
from netsight.features import (
    DEAD_MIN_SAMPLES,
    LayerStat,
    LayerStats,
    layer_stats,
    plot_feature_maps,
    plot_layer_stats,
    plot_mean_maps,
)
from netsight.filters import plot_filters, plot_kernel_and_map
from netsight.patterns import Patterns, maximize
from netsight.zoo import Vgg16Net

DPI = 90
#: The widest a figure may be saved at DPI for a 1200 px page, and the flattest.
MAX_WIDTH_PX = 1150
MAX_ASPECT = 4.0


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make().eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _seeded(lambda: torchvision.models.resnet18(num_classes=10), 0)


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return _seeded(Vgg16Net, 1)


@pytest.fixture(scope="module")
def resnet_outputs(resnet18: nn.Module) -> dict[str, torch.Tensor]:
    """Outputs of a 112x112 image: conv1 64x56x56, relu 64x56x56 (>= 0),
    layer4.1.conv2 512x4x4, avgpool 512x1x1."""
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    layers = ["conv1", "relu", "layer1.0.conv1", "layer3.0.conv1", "layer4.1.conv2", "avgpool"]
    with torch.no_grad(), netsight.capture(resnet18, layers=layers) as cap:
        resnet18(x)
    return {**cap.activations, "input": x}


@pytest.fixture(scope="module")
def vgg_outputs(vgg: nn.Module) -> dict[str, torch.Tensor]:
    """Outputs of a 32x32 grey image: layer1.0 64x32x32 ... layer5.6 512x2x2."""
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), netsight.capture(vgg, layers=nn.Conv2d) as cap:
        vgg(x)
    return {**cap.activations, "input": x}


def _with_nonfinite(activation: torch.Tensor) -> torch.Tensor:
    broken = activation.clone()
    broken[0, 1, 0, 0] = float("nan")
    broken[0, 2, -1, -1] = float("inf")
    broken[0, 3, 0, -1] = -float("inf")
    return broken


def assert_readable(fig: Figure) -> None:
    audit = audit_figure(fig, DPI)
    assert audit.problems() == [], (audit.title, audit.problems())
    assert audit.width_px <= MAX_WIDTH_PX, f"{audit.width_px} px wide: {audit.title!r}"
    flat = max(audit.width_px / audit.height_px, audit.height_px / audit.width_px)
    assert flat <= MAX_ASPECT, f"{audit.width_px}x{audit.height_px}: a strip"


# --------------------------------------------------------------------------- feature maps

FEATURE_CASES = {
    # name: (source, layer, keyword options)
    "56x56 x 64, signed": ("resnet", "conv1", {}),
    "56x56 x 64, after ReLU": ("resnet", "relu", {}),
    "56x56, 1 channel": ("resnet", "conv1", {"channels": [5]}),
    "56x56, 3 channels": ("resnet", "conv1", {"channels": [0, 1, 2]}),
    "4x4 x 512, first 64": ("resnet", "layer4.1.conv2", {}),
    "4x4 x 512, all": ("resnet", "layer4.1.conv2", {"max_channels": 512}),
    "1x1 x 512": ("resnet", "avgpool", {}),
    "2x2 x 512": ("vgg", "layer5.6", {}),
    "32x32 x 64": ("vgg", "layer1.0", {"index": 1}),
    "8x8 x 256, chosen channels": ("vgg", "layer3.3", {"channels": [9, 3, 200, 7, 100]}),
    "NaN and Inf": ("nan", "layer4.0", {}),
}


def _activation(name: str, layer: str, resnet: dict[str, Any], vgg: dict[str, Any]) -> Any:
    if name == "resnet":
        return resnet[layer]
    if name == "vgg":
        return vgg[layer]
    return _with_nonfinite(vgg[layer])


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_feature_maps_are_readable(
    case: str, resnet_outputs: dict[str, Any], vgg_outputs: dict[str, Any]
) -> None:
    source, layer, options = FEATURE_CASES[case]
    activation = _activation(source, layer, resnet_outputs, vgg_outputs)
    fig = plot_feature_maps(activation, title=layer, **options)
    assert_readable(fig)
    audit = audit_figure(fig, DPI)
    assert audit.heatmaps == 1  # one scalar mosaic, on one colour bar
    title = (title_of(fig) or "").replace("\n", " ")
    assert title.startswith(f"{layer}: ")
    assert "one colour scale" in title or "channel " in title
    if source == "nan":
        assert "3 NaN/Inf values in magenta" in title


def test_feature_maps_keep_the_values_and_pick_the_scale_by_sign() -> None:
    act = torch.zeros(1, 3, 2, 2)
    act[0, 0] = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    act[0, 2] = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    fig = plot_feature_maps(act, title="x", nrow=3)
    ax = fig.axes[0]
    image = ax.get_images()[0]
    values = np.ma.getdata(image.get_array())
    # tiles hold the values themselves (no per-tile min-max), NaN between them
    found = values[np.isfinite(values)]
    assert sorted(found.tolist()) == sorted(act.flatten().repeat_interleave(256).tolist())
    assert np.isnan(values).any()
    assert image.get_cmap().name.startswith("RdBu_r")
    assert (image.norm.vmin, image.norm.vmax) == (-4.0, 4.0)  # symmetric around 0
    assert image.colorbar is not None and image.colorbar.ax.get_ylabel() == "activation"
    # every tile carries its channel number
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2"]
    relu = plot_feature_maps(act.clamp(min=0), title="relu")
    scale = relu.axes[0].get_images()[0]
    assert scale.get_cmap().name.startswith("viridis") and scale.norm.vmin == 0.0


def test_small_tiles_get_row_and_column_labels(resnet_outputs: dict[str, Any]) -> None:
    fig = plot_feature_maps(resnet_outputs["layer4.1.conv2"], max_channels=512, title="l4")
    ax = fig.axes[0]
    assert not ax.texts  # tiles too small for their own numbers ...
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[0] == "0" and len(rows) >= 2  # ... so rows say their first channel
    assert ax.get_xticklabels()[0].get_text() == "+0"
    assert "channels 0-511 of 512" in (title_of(fig) or "").replace("\n", " ")


def test_each_tile_on_its_own_scale_says_so(resnet_outputs: dict[str, Any]) -> None:
    fig = plot_feature_maps(resnet_outputs["conv1"], normalize="each", max_channels=16)
    title = (title_of(fig) or "").replace("\n", " ")
    assert "each tile on its own scale" in title
    image = fig.axes[0].get_images()[0]
    assert image.colorbar.ax.get_ylabel() == "value / the tile's largest |value|"
    with pytest.raises(ValueError, match="normalize: expected one of"):
        plot_feature_maps(resnet_outputs["conv1"], normalize="per-channel")


# --------------------------------------------------------------------------- mean maps


@pytest.mark.parametrize("source", ["resnet", "vgg", "nan"])
def test_mean_maps_are_readable(
    source: str, resnet_outputs: dict[str, Any], vgg_outputs: dict[str, Any]
) -> None:
    outputs = resnet_outputs if source == "resnet" else vgg_outputs
    maps = {k: v for k, v in outputs.items() if k != "input"}
    if source == "nan":
        maps = {k: _with_nonfinite(v) for k, v in maps.items()}
    fig = plot_mean_maps(maps, image=outputs["input"])
    assert_readable(fig)
    assert audit_figure(fig, DPI).heatmaps == len(maps)  # the input is a picture, not a map


# --------------------------------------------------------------------------- kernels

FILTER_CASES = {
    "resnet conv1 7x7 RGB (auto)": ("resnet", "conv1", {}),
    "resnet conv1 channels": ("resnet", "conv1", {"mode": "channels"}),
    "resnet conv1 mean": ("resnet", "conv1", {"mode": "mean"}),
    "resnet conv1 RGB each": ("resnet", "conv1", {"scale_each": True}),
    "resnet layer4 3x3 (auto)": ("resnet", "layer4.1.conv2", {}),
    "resnet layer4 channels": ("resnet", "layer4.1.conv2", {"mode": "channels"}),
    "resnet layer4 channels, 64 tiles": (
        "resnet",
        "layer4.1.conv2",
        {"mode": "channels", "max_tiles": 64},
    ),
    "resnet 1x1 downsample": ("resnet", "layer2.0.downsample.0", {}),
    "vgg first layer, 1 input channel": ("vgg", "layer1.0", {}),
    "vgg 64x64 channels": ("vgg", "layer1.3", {"mode": "channels"}),
    "vgg 512 filters mean": ("vgg", "layer5.6", {"mode": "mean", "max_tiles": 512}),
    "NaN and Inf weights": ("nan", "layer1.3", {"mode": "channels"}),
}


@pytest.fixture(scope="module")
def broken_vgg() -> nn.Module:
    model = _seeded(Vgg16Net, 4)
    with torch.no_grad():
        weight = model.get_submodule("layer1.3").weight
        weight[0, 1, 1, 1] = float("nan")
        weight[2, 0, 0, 0] = float("inf")
    return model


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_kernels_are_readable(
    case: str, resnet18: nn.Module, vgg: nn.Module, broken_vgg: nn.Module
) -> None:
    source, layer, options = FILTER_CASES[case]
    model = {"resnet": resnet18, "vgg": vgg, "nan": broken_vgg}[source]
    fig = plot_filters(model, layer, **options)
    assert_readable(fig)
    title = (title_of(fig) or "").replace("\n", " ")
    assert title.startswith(layer)
    if "RGB" in case:
        assert "drawn in colour" in title and audit_figure(fig, DPI).heatmaps == 0
    else:
        image = fig.axes[0].get_images()[0]
        assert image.get_cmap().name.startswith("RdBu_r")
        assert image.norm.vmin == pytest.approx(-image.norm.vmax)  # centred at 0
    if source == "nan":
        assert "2 NaN/Inf weights drawn in magenta" in title


def test_channels_mode_is_a_filters_by_inputs_grid(resnet18: nn.Module) -> None:
    fig = plot_filters(resnet18, "layer4.1.conv2", mode="channels")
    audit = audit_figure(fig, DPI)
    assert audit.width_px <= MAX_WIDTH_PX and audit.height_px > 0.5 * audit.width_px
    ax = fig.axes[0]
    assert ax.get_ylabel() == "filter" and ax.get_xlabel() == "input channel"
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(16)]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(16)]
    title = (title_of(fig) or "").replace("\n", " ")
    assert "showing 256 (filters 0-15 x input channels 0-15; 261888 left out)" in title
    # the tiles are the weights: tile (filter 2, input channel 5) of the mosaic
    values = np.ma.getdata(ax.get_images()[0].get_array())
    weight = resnet18.get_submodule("layer4.1.conv2").weight.detach()
    zoom = math.ceil(32 / 3)
    pad = (values.shape[1] - 16 * 3 * zoom) // 17
    top, left = pad + 2 * (3 * zoom + pad), pad + 5 * (3 * zoom + pad)
    tile = values[top : top + 3 * zoom : zoom, left : left + 3 * zoom : zoom]
    np.testing.assert_allclose(tile, weight[2, 5].numpy(), rtol=1e-6)


def test_save_filters_writes_what_the_figure_shows(resnet18: nn.Module, tmp_path: Any) -> None:
    import json

    netsight.save_filters(resnet18, ["layer4.1.conv2"], tmp_path, mode="channels")
    (entry,) = json.loads((tmp_path / "filters.json").read_text())["layers"]
    assert (entry["mode"], entry["shown"], entry["total"]) == ("channels", 256, 512 * 512)
    assert "filters 0-15 x input channels 0-15" in entry["note"]


# --------------------------------------------------------------------------- kernel beside map


@pytest.mark.parametrize(
    ("source", "layer", "kernel_words"),
    [
        ("resnet", "conv1", "kernels in colour"),
        ("resnet", "layer4.1.conv2", "averaged over their 512 input channels"),
        ("resnet", "layer1.0.conv1", "averaged over their 64 input channels"),
        ("vgg", "layer1.0", "kernels of the single input channel"),
        ("nan", "layer1.3", "averaged over their 64 input channels"),
    ],
)
def test_kernel_beside_its_map_is_readable(
    source: str,
    layer: str,
    kernel_words: str,
    resnet18: nn.Module,
    vgg: nn.Module,
    resnet_outputs: dict[str, Any],
    vgg_outputs: dict[str, Any],
) -> None:
    model = resnet18 if source == "resnet" else vgg
    outputs = resnet_outputs if source == "resnet" else vgg_outputs
    activation = outputs[layer] if source != "nan" else _with_nonfinite(outputs[layer])
    fig = plot_kernel_and_map(model, layer, activation, channels=range(6))
    assert_readable(fig)
    title = (title_of(fig) or "").replace("\n", " ")
    assert title.startswith(f"{layer}: kernel and the map it produces") and kernel_words in title
    panels = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert panels[:4] == ["kernel 0", "map 0", "kernel 1", "map 1"]


def test_kernel_beside_map_values_and_capture(vgg: nn.Module) -> None:
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad(), netsight.capture(vgg, layers="layer1.0") as cap:
        vgg(x)
    fig = plot_kernel_and_map(vgg, "layer1.0", cap, channels=[3])
    kernel_ax, map_ax = [ax for ax in fig.axes if ax.get_title()]
    weight = vgg.get_submodule("layer1.0").weight.detach()
    np.testing.assert_allclose(kernel_ax.get_images()[0].get_array(), weight[3, 0].numpy())
    np.testing.assert_allclose(
        map_ax.get_images()[0].get_array(), cap["layer1.0"][0, 3].numpy(), rtol=1e-6
    )
    with pytest.raises(KeyError, match=r"holds no output of 'layer1\.3'"):
        plot_kernel_and_map(vgg, "layer1.3", cap)
    with pytest.raises(ValueError, match=r"expected the output of 'layer1\.3'"):
        plot_kernel_and_map(vgg, "layer1.3", cap["layer1.0"][:, :8])


# --------------------------------------------------------------------------- layer statistics


def test_layer_stats_figures_are_readable(
    resnet18: nn.Module, vgg: nn.Module, broken_vgg: nn.Module
) -> None:
    generator = torch.Generator().manual_seed(5)
    for model, x in (
        (resnet18, torch.randn(2, 3, 64, 64, generator=generator)),
        (vgg, torch.randn(4, 1, 32, 32, generator=generator)),
        (broken_vgg, torch.randn(2, 1, 32, 32, generator=generator)),
    ):
        stats = layer_stats(model, x)
        fig = plot_layer_stats(stats)
        assert_readable(fig)
        title = title_of(fig) or ""
        assert title.startswith(f"sparsity (fraction of zeros) over {x.shape[0]} inputs")
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert legend[1] == f"channels never > 0 on all {x.shape[0]} inputs"


def _stat(name: str, sparsity: float, shape: tuple[int, ...], samples: int) -> LayerStat:
    return LayerStat(name, "ReLU", shape, 0.0, 0.0, 0.0, 1.0, sparsity, 8, 2, 0, samples)


def test_the_verdict_says_what_it_rests_on() -> None:
    # the demo's trained VGG: conv ReLUs from 49.5 % to 56 %, then fc.1 80 % and fc.4 95 %
    conv = [0.495, 0.50, 0.51, 0.52, 0.50, 0.53, 0.54, 0.52, 0.55, 0.54, 0.56, 0.55, 0.56]
    layers = [_stat(f"layer{i}", s, (64, 4, 4), 360) for i, s in enumerate(conv)]
    layers += [_stat("fc.1", 0.801, (256,), 360), _stat("fc.4", 0.948, (256,), 360)]
    stats = LayerStats(tuple(layers), 3, 360)
    assert stats.sparsity_trend is not None and stats.sparsity_trend > 0.9
    text = stats.trend_text()
    assert text.startswith("sparsity (fraction of zeros) over 360 inputs: ")
    assert "convolutional part (13 layers): roughly flat 49.5-56.0 %" in text
    assert "under the 10 a trend needs" in text
    assert "rises" not in text
    assert "classifier part (2 layers), too few for a trend: fc.1 80.1 %, fc.4 94.8 %" in text
    assert "over all 15 layers rho = +0.95, which rests on the classifier" in text
    assert stats.dead_claimed and stats.dead_text().startswith("dead channels: never positive")
    data = stats.to_dict()
    assert data["verdict"] == text and data["dead_claimed"] is True
    assert [p["part"] for p in data["parts"]] == ["convolutional", "classifier"]
    assert data["parts"][0]["verdict"] == "flat"
    assert data["layers"][-1]["part"] == "classifier"
    assert "Dead ch." in stats.to_text()


def test_a_trend_is_called_when_large_and_its_driver_named() -> None:
    rising = [_stat(f"l{i}", s, (8, 4, 4), 500) for i, s in enumerate([0.1, 0.2, 0.35, 0.5, 0.6])]
    text = LayerStats(tuple(rising), 1, 500).trend_text()
    assert "5 layers: rises with depth, 10.0 % -> 60.0 %" in text
    # one layer makes the rise: flat 50 % with a last layer at 95 %
    carried = [
        _stat(f"l{i}", s, (8, 4, 4), 500) for i, s in enumerate([0.5, 0.51, 0.5, 0.52, 0.95])
    ]
    text = LayerStats(tuple(carried), 1, 500).trend_text()
    assert "rises with depth" in text and "but without l4 there is no trend" in text
    # a wide spread that does not follow depth: no trend, and not "flat"
    zigzag = [_stat(f"l{i}", s, (8, 4, 4), 500) for i, s in enumerate([0.2, 0.55, 0.25, 0.5, 0.3])]
    text = LayerStats(tuple(zigzag), 1, 500).trend_text()
    assert "5 layers: no trend with depth, spread over 20.0-55.0 %" in text


def test_dead_is_not_claimed_on_few_inputs() -> None:
    few = LayerStats((_stat("a", 0.5, (8, 4, 4), 1),), 1, 1)
    assert not few.dead_claimed
    assert few.dead_text().startswith("channels never positive on all 1 input: not called dead")
    assert f"< {DEAD_MIN_SAMPLES}" in few.dead_text()
    assert "Dead ch." not in few.to_text() and "Never >0 (1)" in few.to_text()
    assert "dead" not in few.to_html().split("not called dead")[0].lower()


# --------------------------------------------------------------------------- patterns


def test_patterns_figures_are_readable(vgg: nn.Module) -> None:
    found = maximize(vgg, "layer1.0", channels=range(8), size=32, steps=2)
    assert found.images.shape[1] == 1  # grey pictures: drawn as pictures, no colour bar
    assert_readable(found.plot())
    many = Patterns(
        layer="layer4.1.conv2",
        channels=tuple(range(16)),
        images=torch.rand(16, 3, 64, 64),
        start=torch.zeros(16),
        activation=torch.ones(16),
        history=torch.zeros(2, 16),
    )
    fig = many.plot()
    assert_readable(fig)
    assert (title_of(fig) or "").startswith("layer4.1.conv2: the input each channel responds to")


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(4, 6, 5),
        nn.Conv3d(3, 4, (3, 3, 3)),
        nn.ConvTranspose2d(16, 3, 4, stride=2),
        nn.Conv2d(32, 32, 3, groups=32),
        nn.Conv2d(8, 6, 3, groups=2),
        nn.Conv2d(2048, 2048, 1),
    ],
    ids=["conv1d", "conv3d-rgb", "transposed-rgb", "depthwise", "grouped", "2048x2048 1x1"],
)
def test_kernels_of_other_layer_kinds_are_readable(conv: nn.Module) -> None:
    for mode in ("auto", "channels", "mean"):
        assert_readable(plot_filters(conv, conv, mode=mode))
