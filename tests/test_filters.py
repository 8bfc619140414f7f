"""Convolution kernels drawn as grids: tile values checked against the weights by
hand and against torchvision's make_grid, caps, odd layer shapes, NaN, errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from helpers import assert_unchanged, snapshot
from netsight._figures import title_of
from netsight.filters import FilterGrid, filter_grid, plot_filters
from netsight.zoo import Vgg16Net

MAGENTA = torch.tensor([1.0, 0.0, 1.0])


def tile(grid: FilterGrid, index: int, height: int, width: int, padding: int = 1) -> torch.Tensor:
    """The ``(3, h, w)`` pixels of tile ``index`` (make_grid's layout), zoom undone."""
    row, col = divmod(index, grid.nrow)
    h, w = height * grid.upscale, width * grid.upscale
    top = padding + row * (h + padding)
    left = padding + col * (w + padding)
    pixels = grid.image[:, top : top + h, left : left + w]
    assert pixels.shape == (3, h, w)
    return pixels[:, :: grid.upscale, :: grid.upscale]


def minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


def gray(values: torch.Tensor) -> torch.Tensor:
    """What colorize(cmap="gray") makes of values in [0, 1]: the 256-entry LUT."""
    lut = torch.tensor(matplotlib.colormaps["gray"](np.linspace(0, 1, 256))[:, 0])
    return lut[(values.clamp(0, 1) * 255).round().long()].float()


def conv_with(weight: torch.Tensor, cls: type[nn.Module] = nn.Conv2d, **kwargs: int) -> Any:
    out, per_group = weight.shape[:2]
    groups = kwargs.get("groups", 1)
    conv: Any = cls(per_group * groups, out, tuple(weight.shape[2:]), bias=False, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


@pytest.fixture(scope="module")
def resnet18() -> Any:
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def vgg() -> Any:
    return Vgg16Net()


# --------------------------------------------------------------------------- rgb


def test_rgb_mode_on_resnet18_conv1(resnet18: Any) -> None:
    grid = filter_grid(resnet18, "conv1")
    assert grid.mode == "rgb" and grid.layer == "conv1"
    assert (grid.shown, grid.total, grid.nonfinite) == (64, 64, 0)
    assert grid.upscale == 4  # 7x7 -> 28x28 px
    assert grid.nrow == 8
    # make_grid layout: 8x8 tiles of 28 px, 1 px padding around and between them.
    assert grid.image.shape == (3, 8 * 29 + 1, 8 * 29 + 1)
    assert grid.image.min() >= 0 and grid.image.max() <= 1
    weight = resnet18.conv1.weight.detach()
    for index in (0, 10, 63):
        torch.testing.assert_close(tile(grid, index, 7, 7), minmax(weight[index]))
    # every zoomed pixel of a kernel value is the same (nearest neighbour)
    block = grid.image[:, 1:5, 1:5]
    assert torch.all(block == block[:, :1, :1])
    assert grid.note.startswith("64 filters x 3 input channels = 192 kernels; showing all 64")
    assert "7x7 kernels" in grid.note


@pytest.mark.parametrize("scale_each", [True, False])
def test_rgb_equals_make_grid_on_known_weights(scale_each: bool) -> None:
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    weight[1] = weight[1] * -0.5 + 3  # another range, reversed
    conv = conv_with(weight)
    grid = filter_grid(conv, conv, upscale=1, scale_each=scale_each)
    assert grid.mode == "rgb" and grid.layer == "Conv2d"
    expected = make_grid(
        weight, nrow=2, padding=1, normalize=True, scale_each=scale_each, pad_value=1
    )
    torch.testing.assert_close(grid.image, expected)
    with_range = filter_grid(conv, conv, upscale=1, value_range=(0.0, 10.0))
    expected = make_grid(
        weight, nrow=2, padding=1, normalize=True, value_range=(0, 10), pad_value=1
    )
    torch.testing.assert_close(with_range.image, expected)


def test_rgb_mode_refused_for_a_layer_without_three_channels(vgg: Any) -> None:
    with pytest.raises(ValueError, match=r"mode='rgb' needs 3 input channels per group.* has 64"):
        filter_grid(vgg, "layer1.3", mode="rgb")


# --------------------------------------------------------------------------- channels


def test_channels_mode_on_vgg_capped(vgg: Any) -> None:
    grid = filter_grid(vgg, "layer1.3", mode="channels", max_tiles=256)
    assert grid.layer == "layer1.3" and grid.mode == "channels"
    assert (grid.shown, grid.total) == (256, 64 * 64)
    assert grid.note.startswith(
        "64 filters x 64 input channels = 4096 kernels; showing 256 (first 4 filters; "
        "3840 left out); 3x3 kernels"
    )
    # one row per filter: 64 tiles of 24 px across, 4 rows
    assert grid.nrow == 64 and grid.upscale == 8
    assert grid.image.shape == (3, 4 * 25 + 1, 64 * 25 + 1)
    weight = vgg.layer1[3].weight.detach()
    for f, c in ((0, 0), (2, 5), (3, 63)):
        pixels = tile(grid, f * 64 + c, 3, 3)
        expected = gray(minmax(weight[f, c]))
        for channel in range(3):
            torch.testing.assert_close(pixels[channel], expected)
    # the alias under which the tutorial's VGG registers the same block
    assert filter_grid(vgg, "conv.0.3", mode="channels", max_tiles=64).layer == "layer1.3"


def test_hand_set_kernel_gray_values() -> None:
    conv = conv_with(torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]))
    grid = filter_grid(conv, conv, upscale=1)
    assert grid.mode == "channels" and (grid.shown, grid.total) == (1, 1)
    assert grid.image.shape == (3, 4, 4)  # one 2x2 tile, padded like any grid
    expected = torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]])
    for channel in range(3):
        torch.testing.assert_close(grid.image[channel, 1:3, 1:3], expected)
    assert torch.all(grid.image[:, 0] == 1) and torch.all(grid.image[:, :, 3] == 1)  # padding
    zoomed = filter_grid(conv, conv)
    assert zoomed.upscale == 12 and zoomed.image.shape == (3, 26, 26)
    assert torch.all(zoomed.image[:, 1:13, 1:13] == 0)
    assert torch.all(zoomed.image[:, 13:25, 13:25] == 1)


def test_shared_scale_and_unnormalised() -> None:
    weight = torch.tensor([[[[0.0, 1.0]], [[2.0, 4.0]]]])  # 1 filter, 2 channels, 1x2
    conv = conv_with(weight)
    each = filter_grid(conv, conv, upscale=1)
    shared = filter_grid(conv, conv, upscale=1, scale_each=False)
    torch.testing.assert_close(tile(each, 0, 1, 2)[0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(tile(each, 1, 1, 2)[0, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(tile(shared, 0, 1, 2)[0, 0], gray(torch.tensor([0.0, 0.25])))
    torch.testing.assert_close(tile(shared, 1, 1, 2)[0, 0], gray(torch.tensor([0.5, 1.0])))
    raw = filter_grid(conv, conv, upscale=1, normalize=False)
    torch.testing.assert_close(tile(raw, 1, 1, 2)[0, 0], torch.tensor([1.0, 1.0]))  # clamped
    fixed = filter_grid(conv, conv, upscale=1, value_range=(0.0, 8.0))
    torch.testing.assert_close(tile(fixed, 1, 1, 2)[0, 0], gray(torch.tensor([0.25, 0.5])))


# --------------------------------------------------------------------------- mean / auto


def test_mean_mode_by_hand() -> None:
    weight = torch.zeros(2, 2, 1, 3)
    weight[0, 0] = torch.tensor([[0.0, 2.0, 4.0]])
    weight[0, 1] = torch.tensor([[4.0, 2.0, 4.0]])  # mean [2, 2, 4]
    weight[1, 0] = torch.tensor([[1.0, 0.0, 0.0]])
    weight[1, 1] = torch.tensor([[1.0, 0.0, 2.0]])  # mean [1, 0, 1]
    conv = conv_with(weight)
    grid = filter_grid(conv, conv, mode="mean", upscale=1, nrow=2)
    assert (grid.mode, grid.shown, grid.total) == ("mean", 2, 2)
    torch.testing.assert_close(tile(grid, 0, 1, 3)[0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(tile(grid, 1, 1, 3)[0, 0], torch.tensor([1.0, 0.0, 1.0]))
    assert "showing all 2 filters as tiles, each averaged over its 2 input channels" in grid.note
    fixed = filter_grid(conv, conv, mode="mean", upscale=1, nrow=2, value_range=(0.0, 4.0))
    torch.testing.assert_close(tile(fixed, 0, 1, 3)[0, 0], gray(torch.tensor([0.5, 0.5, 1.0])))


def test_auto_mode_choices(vgg: Any) -> None:
    assert filter_grid(vgg, "layer1.0").mode == "channels"  # 64 x 1 kernels fit
    deep = filter_grid(vgg, "layer1.3")  # 4096 kernels do not fit 256 tiles
    assert (deep.mode, deep.shown, deep.total) == ("mean", 64, 64)
    assert filter_grid(vgg, "layer1.3", max_tiles=4096).mode == "channels"
    rgb_ish = nn.Sequential(nn.Conv2d(6, 4, 3, groups=2))  # 3 per group, but not colour
    assert filter_grid(rgb_ish, "0").mode == "channels"
    assert filter_grid(rgb_ish, "0", mode="rgb").shown == 4


# --------------------------------------------------------------------------- layer shapes


def test_depthwise_conv_of_mobilenet_v2() -> None:
    model = torchvision.models.mobilenet_v2()
    grid = filter_grid(model, "features.1.conv.0.0")
    conv = model.features[1].conv[0][0]
    assert conv.weight.shape == (32, 1, 3, 3)
    assert (grid.mode, grid.shown, grid.total) == ("channels", 32, 32)
    assert "32 filters x 1 input channel (depthwise, groups=32) = 32 kernels" in grid.note
    assert grid.nrow < 32  # about square, not one tile per row
    for f in (0, 31):
        torch.testing.assert_close(tile(grid, f, 3, 3)[0], gray(minmax(conv.weight[f, 0].detach())))


def test_grouped_conv() -> None:
    conv = nn.Conv2d(8, 6, 3, groups=2)  # weight (6, 4, 3, 3)
    grid = filter_grid(conv, conv)
    assert (grid.mode, grid.shown, grid.total) == ("channels", 24, 24)
    assert "6 filters x 4 input channels per group (groups=2) = 24 kernels" in grid.note
    assert grid.nrow % 4 == 0  # whole filters per row
    weight = conv.weight.detach()
    torch.testing.assert_close(tile(grid, 5 * 4 + 3, 3, 3)[0], gray(minmax(weight[5, 3])))
    mean = filter_grid(conv, conv, mode="mean")
    assert (mean.shown, mean.total) == (6, 6)


def test_conv1d_tiles_are_one_pixel_high() -> None:
    weight = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    weight[2, 1] = torch.tensor([3.0, 0.0, 1.0, 2.0])
    conv = conv_with(weight, nn.Conv1d)
    grid = filter_grid(conv, conv, upscale=1)
    assert (grid.mode, grid.shown, grid.total) == ("channels", 6, 6)
    assert grid.nrow == 2  # one filter per row
    assert grid.image.shape == (3, 3 * 2 + 1, 2 * 5 + 1)
    torch.testing.assert_close(
        tile(grid, 5, 1, 4)[0, 0], gray(torch.tensor([3.0, 0.0, 1.0, 2.0]) / 3)
    )
    assert "length-4 kernels (1-d)" in grid.note
    zoomed = filter_grid(conv, conv)
    assert zoomed.upscale == 6  # the long side reaches 24 px
    assert zoomed.image.shape == (3, 3 * 7 + 1, 2 * 25 + 1)


def test_conv3d_draws_the_middle_depth_slice() -> None:
    weight = torch.randn(2, 2, 3, 2, 2)
    weight[1, 0, 1] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    conv = conv_with(weight, nn.Conv3d)
    grid = filter_grid(conv, conv, upscale=1)
    assert (grid.mode, grid.shown, grid.total) == ("channels", 4, 4)
    assert "middle depth slice 1 of 0-2 drawn" in grid.note and "3x2x2 kernels" in grid.note
    torch.testing.assert_close(tile(grid, 2, 2, 2)[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    colour = nn.Conv3d(3, 4, (1, 3, 3))
    rgb = filter_grid(colour, colour)
    assert rgb.mode == "rgb" and "middle depth slice 0 of 0-0" in rgb.note


def test_transposed_conv() -> None:
    conv = nn.ConvTranspose2d(16, 3, 4, stride=2)  # weight (16, 3, 4, 4)
    grid = filter_grid(conv, conv)
    assert (grid.mode, grid.shown, grid.total) == ("rgb", 16, 16)
    assert grid.note.startswith("transposed convolution: 16 input channels x 3 output channels")
    torch.testing.assert_close(tile(grid, 7, 4, 4), minmax(conv.weight[7].detach()))
    grouped = nn.ConvTranspose1d(4, 6, 3, groups=2)  # weight (4, 3, 3)
    assert filter_grid(grouped, grouped, mode="channels").total == 12


def test_2048_channel_layer_is_capped_and_fast() -> None:
    conv = nn.Conv2d(2048, 2048, 1)
    warm = nn.Conv2d(2, 2, 3)
    filter_grid(warm, warm)  # warm-up: first use imports matplotlib colormaps
    start = time.perf_counter()
    grid = filter_grid(conv, conv)
    channels = filter_grid(conv, conv, mode="channels")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"two grids of a 2048-channel layer took {elapsed:.2f} s"
    assert (grid.mode, grid.shown, grid.total) == ("mean", 256, 2048)
    assert "showing 256 of 2048 filters as tiles (first 256; 1792 left out)" in grid.note
    assert (channels.shown, channels.total) == (256, 2048 * 2048)
    assert "input channels 0-255 of the first filter" in channels.note
    assert channels.image.shape[1] < channels.image.shape[2]
    small = filter_grid(conv, conv, max_tiles=10)
    assert small.shown == 10


# --------------------------------------------------------------------------- values


def test_nan_and_inf_weights_are_drawn_and_counted() -> None:
    weight = torch.randn(4, 3, 3, 3)
    weight[1, 0, 1, 1] = float("nan")
    weight[3, 2, 0, 0] = float("inf")
    conv = conv_with(weight)
    grid = filter_grid(conv, conv, mode="channels", upscale=1)
    assert grid.nonfinite == 2
    assert torch.isfinite(grid.image).all()
    torch.testing.assert_close(tile(grid, 1 * 3 + 0, 3, 3)[:, 1, 1], MAGENTA)
    torch.testing.assert_close(tile(grid, 3 * 3 + 2, 3, 3)[:, 0, 0], MAGENTA)
    magenta = (grid.image[0] == 1) & (grid.image[1] == 0) & (grid.image[2] == 1)
    assert int(magenta.sum()) == 2
    assert "2 NaN/Inf weights drawn in magenta" in grid.note
    rgb = filter_grid(conv, conv, mode="rgb", upscale=1)
    assert torch.isfinite(rgb.image).all() and rgb.nonfinite == 2
    torch.testing.assert_close(tile(rgb, 1, 3, 3)[:, 1, 1], MAGENTA)
    mean = filter_grid(conv, conv, mode="mean", upscale=1)
    torch.testing.assert_close(tile(mean, 1, 3, 3)[:, 1, 1], MAGENTA)
    capped = filter_grid(conv, conv, mode="channels", max_tiles=6)  # filters 0 and 1 only
    assert capped.nonfinite == 2
    assert "(1 drawn in magenta, 1 in parts not shown)" in capped.note


def test_constant_kernels_do_not_divide_by_zero() -> None:
    conv = conv_with(torch.full((2, 3, 3, 3), 0.7))
    for mode in ("rgb", "channels", "mean"):
        for scale_each in (True, False):
            grid = filter_grid(conv, conv, mode=mode, scale_each=scale_each)
            assert torch.isfinite(grid.image).all(), mode
            assert grid.nonfinite == 0
            assert torch.all(tile(grid, 0, 3, 3) == 0), mode


# --------------------------------------------------------------------------- errors


def test_not_a_convolution(vgg: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"layer 'fc\.0' is a Linear, not a convolution; convolutions in this model: "
        r"layer1\.0, layer1\.3, layer2\.0, .*\(13 in all\)",
    ):
        filter_grid(vgg, "fc.0")
    with pytest.raises(TypeError, match="is a Linear, not a convolution"):
        filter_grid(vgg, vgg.fc[0])


def test_model_without_convolutions() -> None:
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(TypeError, match=r"layer '0' is a Linear.*this model has no convolution"):
        filter_grid(mlp, "0")


def test_unknown_name_gets_close_matches(vgg: Any) -> None:
    with pytest.raises(KeyError, match=r"no layer named 'layer1\.33'.*did you mean 'layer1\.3'"):
        filter_grid(vgg, "layer1.33")


def test_other_bad_arguments(vgg: Any) -> None:
    with pytest.raises(ValueError, match=r"matches 2: layer1\.0, layer1\.3"):
        filter_grid(vgg, "layer1.[03]")  # a glob over two layers
    with pytest.raises(ValueError, match="mode: expected one of"):
        filter_grid(vgg, "layer1.0", mode="colour")
    with pytest.raises(ValueError, match="max_tiles"):
        filter_grid(vgg, "layer1.0", max_tiles=0)
    with pytest.raises(ValueError, match="value_range"):
        filter_grid(vgg, "layer1.0", value_range=(1.0, 1.0))
    with pytest.raises(KeyError, match="not part of this model"):
        filter_grid(vgg, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="layer: expected a layer name or a module"):
        filter_grid(vgg, 3)  # type: ignore[arg-type]
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    with pytest.raises(ValueError, match="not been initialised"):
        filter_grid(lazy, "0")


def test_meta_weights_have_nothing_to_draw() -> None:
    with torch.device("meta"):
        model = Vgg16Net()
    with pytest.raises(ValueError, match=r"layer 'layer1\.0' has its weight on the meta device"):
        filter_grid(model, "layer1.0")


# --------------------------------------------------------------------------- figure and model


def test_plot_filters_figure(resnet18: Any, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    fig = plot_filters(resnet18, "layer1.0.conv1", mode="channels", max_tiles=64)
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == open_figures  # no pyplot state
    ax, bar = fig.axes  # the kernels and their one colour bar
    assert hasattr(bar, "_colorbar")
    title = (title_of(fig) or "").replace("\n", " ")
    assert title.startswith("layer1.0.conv1 ")
    assert "64 filters x 64 input channels" in title
    # a filters x input-channels grid: filters 0-7 (rows) x input channels 0-7 (columns)
    assert "showing 64 (filters 0-7 x input channels 0-7; 4032 left out)" in title
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(8)]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(8)]
    assert ax.get_ylabel() == "filter" and ax.get_xlabel() == "input channel"
    # the weights themselves, on a scale centred at 0
    image = ax.get_images()[0]
    weight = resnet18.layer1[0].conv1.weight.detach()[:8, :8]
    bound = float(weight.abs().max())
    assert image.norm.vmin == pytest.approx(-bound) and image.norm.vmax == pytest.approx(bound)
    fig.savefig(tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as png:
        assert png.width > 100 and png.height > 100
    titled = plot_filters(resnet18, "conv1", title="first layer")
    assert (title_of(titled) or "").startswith("first layer\n64 filters")


def test_model_is_untouched() -> None:
    model = torchvision.models.resnet18()
    model.layer1[0].conv1.weight.requires_grad_(False)
    for i, parameter in enumerate(model.parameters()):
        if i % 2 == 0:
            parameter.grad = torch.randn_like(parameter)  # gradients must stay as they are
    model.eval()
    model.layer2.train()
    before = snapshot(model)
    weight_before = model.conv1.weight.detach().clone()
    for mode in ("auto", "channels", "mean"):
        grid = filter_grid(model, "conv1", mode=mode, upscale=1, normalize=False)
        grid.image.fill_(0.5)  # the image is no view of the weight
    plot_filters(model, "layer2.0.conv1")
    filter_grid(model, model.layer1[0].conv1)
    assert_unchanged(model, before)
    assert torch.equal(model.conv1.weight, weight_before)
    assert torch.is_grad_enabled()  # the no_grad decorator was undone
