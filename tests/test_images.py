"""netsight.images: loading real image files written with Pillow, normalising,
colouring and laying out maps, with values checked by hand."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from helpers import zeros_png
from netsight.images import (
    NONFINITE_COLOR,
    colorize,
    denormalize,
    expected_channels,
    load_image,
    map_grid,
    minmax_scale,
    normalize_maps,
    to_pil,
)
from netsight.zoo import Vgg16Net

RAW: dict[str, Any] = {"mean": [0.0], "std": [1.0]}  # no normalisation: the loaded values in [0, 1]
RAW3: dict[str, Any] = {"mean": [0.0] * 3, "std": [1.0] * 3}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MAGENTA = torch.tensor(NONFINITE_COLOR)


def save(path: Path, image: Image.Image, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


def rgb_file(tmp_path: Path) -> Path:
    """A 2x3 (H x W) RGB PNG with known pixels."""
    pixels = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[0, 0, 0], [255, 255, 255], [51, 102, 204]]],
        dtype=np.uint8,
    )
    return save(tmp_path / "rgb.png", Image.fromarray(pixels, mode="RGB"))


def gray_file(tmp_path: Path) -> Path:
    pixels = np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8)
    return save(tmp_path / "gray.png", Image.fromarray(pixels, mode="L"))


# --------------------------------------------------------------------------- load_image


def test_grayscale_file(tmp_path: Path) -> None:
    x = load_image(gray_file(tmp_path), **RAW)
    assert x.shape == (1, 1, 2, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]]))
    default = load_image(gray_file(tmp_path))  # mean 0.5, std 0.5: [0, 1] -> [-1, 1]
    torch.testing.assert_close(default[0, 0, 1], torch.tensor([0.2, 0.6, 1.0]))


def test_rgb_file(tmp_path: Path) -> None:
    x = load_image(rgb_file(tmp_path), **RAW3)
    assert x.shape == (1, 3, 2, 3)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # red
    torch.testing.assert_close(x[0, :, 0, 2], torch.tensor([0.0, 0.0, 1.0]))  # blue
    torch.testing.assert_close(x[0, :, 1, 2], torch.tensor([0.2, 0.4, 0.8]))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 102]]], dtype=np.uint8
    )  # transparent red, opaque blue, 40% black
    path = save(tmp_path / "rgba.png", Image.fromarray(pixels, mode="RGBA"))
    x = load_image(path, **RAW3)
    assert x.shape == (1, 3, 1, 3)
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))  # white, not red or black
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(x[0, :, 0, 2], torch.full((3,), 153 / 255), atol=1 / 255, rtol=0)


def test_palette_file(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 50, 255, 0, 0] + [0] * (256 * 3 - 9))
    for i in range(3):
        image.putpixel((i, 0), i)
    x = load_image(save(tmp_path / "p.png", image), **RAW3)
    assert x.shape == (1, 3, 1, 3)
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor([200, 100, 50]) / 255.0)
    # a palette with a transparent entry is composited on white like RGBA
    x = load_image(save(tmp_path / "pt.png", image, transparency=2), **RAW3)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0)
    torch.testing.assert_close(x[0, :, 0, 2], torch.ones(3))


def test_16_bit_file(tmp_path: Path) -> None:
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    path = save(tmp_path / "deep.png", Image.fromarray(pixels))
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"
    x = load_image(path, **RAW)
    assert x.shape == (1, 1, 2, 2)
    assert x[0, 0, 0, 1] == 1.0  # full scale of the type, not of the data
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 1.0], [32768 / 65535, 1000 / 65535]]))


def test_32_bit_float_and_int_files_are_scaled_by_their_range(tmp_path: Path) -> None:
    floats = np.array([[0.25, 0.5], [0.75, 1.0]], dtype=np.float32)
    path = save(tmp_path / "f.tif", Image.fromarray(floats))
    with Image.open(path) as reopened:
        assert reopened.mode == "F"
    x = load_image(path, **RAW)
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    ints = np.array([[0, 1000], [2000, 4000]], dtype=np.int32)
    x = load_image(save(tmp_path / "i.tif", Image.fromarray(ints)), **RAW)
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    flat = load_image(save(tmp_path / "flat.tif", Image.fromarray(np.full((2, 2), 7.0, "f4"))))
    assert torch.isfinite(flat).all()  # a constant image divides by nothing


def test_resize(tmp_path: Path) -> None:
    path = save(tmp_path / "big.png", Image.new("RGB", (40, 20), (255, 0, 0)))  # W 40, H 20
    square = load_image(path, size=8, **RAW3)
    assert square.shape == (1, 3, 8, 8)
    torch.testing.assert_close(square[0, :, 3, 3], torch.tensor([1.0, 0.0, 0.0]))
    shaped = load_image(path, size=(5, 10), **RAW3)  # (H, W)
    assert shaped.shape == (1, 3, 5, 10)
    assert shaped.min() >= 0 and shaped.max() <= 1


def test_channels_from_the_model(tmp_path: Path) -> None:
    # the tutorials' VGG takes one channel: an RGB file becomes luminance
    vgg = Vgg16Net()
    x = load_image(rgb_file(tmp_path), model=vgg, **RAW)
    assert x.shape == (1, 1, 2, 3)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))
    torch.testing.assert_close(x[0, 0, 1, 1], torch.tensor(1.0))
    # resnet18 takes three: a grayscale file is repeated
    resnet = torchvision.models.resnet18()
    x = load_image(gray_file(tmp_path), model=resnet, **RAW3)
    assert x.shape == (1, 3, 2, 3)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])
    torch.testing.assert_close(x[0, 1, 0, 1], torch.tensor(0.2))
    # an explicit count wins over the model
    assert load_image(gray_file(tmp_path), channels=1, model=resnet).shape == (1, 1, 2, 3)
    assert expected_channels(vgg) == 1 and expected_channels(resnet) == 3
    assert expected_channels(nn.Sequential(nn.Linear(2, 2))) is None


def test_mean_std_and_denormalize_round_trip(tmp_path: Path) -> None:
    path = rgb_file(tmp_path)
    raw = load_image(path, **RAW3)
    x = load_image(path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    expected = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(denormalize(x, IMAGENET_MEAN, IMAGENET_STD), raw)
    torch.testing.assert_close(denormalize(x[0], IMAGENET_MEAN, IMAGENET_STD), raw[0])
    torch.testing.assert_close(denormalize(load_image(path)), raw)  # defaults 0.5 / 0.5
    gray = load_image(gray_file(tmp_path), channels=1)
    torch.testing.assert_close(denormalize(gray), load_image(gray_file(tmp_path), **RAW))
    with pytest.raises(ValueError, match="mean/std: expected 3 values each, got 1 and 3"):
        load_image(path, mean=[0.5], std=[0.5, 0.5, 0.5])


def test_load_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is not an image Pillow can read"):
        load_image(text)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="1- or 3-channel inputs, but 4 channels"):
        load_image(rgb_file(tmp_path), channels=4)
    with pytest.raises(ValueError, match="but 2 channels"):
        load_image(rgb_file(tmp_path), model=nn.Conv2d(2, 4, 3))
    for size in (0, (4, 0), (4, 4, 4), (-1, 4)):
        with pytest.raises(ValueError, match="size: expected a positive int or"):
            load_image(rgb_file(tmp_path), size=size)  # type: ignore[arg-type]


def test_explicit_channel_error_does_not_blame_the_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4 channels") as caught:
        load_image(rgb_file(tmp_path), channels=4)
    assert "model" not in str(caught.value)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (2, 1))  # stored as 1 row: red, blue
    image.putpixel((0, 0), (255, 0, 0))
    image.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path / "phone.png", image, exif=exif)
    x = load_image(path, **RAW3)
    assert x.shape == (1, 3, 2, 1)  # displayed upright: 1 wide, 2 high, red on top
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_decompression_bomb_is_a_value_error_naming_file_and_size(tmp_path: Path) -> None:
    path = zeros_png(tmp_path / "huge.png", 20000, 20000)  # over twice MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="too large to decode safely") as caught:
        load_image(path, size=64)
    message = str(caught.value)
    assert "huge.png" in message and "400000000 pixels" in message
    assert "MAX_IMAGE_PIXELS" in message  # what to change if the file is trusted


def test_decompression_bomb_warning_names_the_file_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warn over 1000, refuse over 2000
    path = save(tmp_path / "wide.png", Image.new("L", (40, 30), 255))  # 1200 pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = load_image(path, size=8, **RAW)
    bombs = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert len(bombs) == 1  # ours, not Pillow's as well
    assert "wide.png" in str(bombs[0].message) and "40x30" in str(bombs[0].message)
    assert bombs[0].filename == __file__  # points at the caller, not at netsight
    assert x.shape == (1, 1, 8, 8)
    torch.testing.assert_close(x, torch.ones_like(x))


def test_a_large_file_is_reduced_while_read(tmp_path: Path) -> None:
    # Memory follows the target size: no full-resolution float copy of the file
    # (numpy's buffers are traced by tracemalloc; the old path made a 36 MB one here).
    yy, xx = np.mgrid[0:1500, 0:2000] / 2000
    pixels = np.stack([xx, yy, 0.5 + 0.5 * np.sin(12 * xx) * np.cos(9 * yy)], axis=2)
    path = save(tmp_path / "big.png", Image.fromarray((pixels * 255).astype(np.uint8)))
    tracemalloc.start()
    try:
        x = load_image(path, size=(64, 48), **RAW3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (1, 3, 64, 48)  # still exactly the requested size
    assert peak < 5_000_000, f"traced peak {peak / 1e6:.0f} MB"
    # ... and the picture is the one a single full-resolution resize gives
    with Image.open(path) as image:
        full = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    direct = nn.functional.interpolate(
        full[None], size=(64, 48), mode="bilinear", align_corners=False, antialias=True
    )
    difference = (x - direct).abs()
    assert difference.mean() < 0.5 / 255 and difference.max() < 4 / 255


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = save(tmp_path / "big.jpg", Image.new("RGB", (4000, 3000), (200, 100, 50)))
    tracemalloc.start()
    try:
        x = load_image(path, size=32, **RAW3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (1, 3, 32, 32)
    assert peak < 5_000_000, f"traced peak {peak / 1e6:.0f} MB"
    torch.testing.assert_close(
        x[0, :, 16, 16], torch.tensor([200, 100, 50]) / 255, atol=3 / 255, rtol=0
    )


def _checkered(mode: str, colours: tuple[Any, Any]) -> Image.Image:
    """600 x 400 in ``mode``, alternating ``colours`` pixel by pixel."""
    image = Image.new(mode, (600, 400), colours[0])
    odd = Image.new(mode, (600, 400), colours[1])
    mask = np.indices((400, 600)).sum(axis=0) % 2 == 1
    image.paste(odd, mask=Image.fromarray((mask * 255).astype(np.uint8)))
    return image


def test_every_mode_averages_correctly_when_reduced(tmp_path: Path) -> None:
    # Pixel-by-pixel checkerboards of two colours: a reduced file must show their
    # mean colour (averaging palette indices or bilevel bytes would not).
    palette = Image.new("P", (600, 400))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    palette.paste(_checkered("L", (0, 1)))
    cases: dict[str, tuple[Image.Image, dict[str, Any], list[float]]] = {
        "1": (_checkered("1", (0, 1)), {}, [0.5] * 3),
        "L": (_checkered("L", (0, 255)), {}, [0.5] * 3),
        "P": (palette, {}, [105 / 255, 60 / 255, 40 / 255]),
        "P+transparency": (palette, {"transparency": 0}, [227.5 / 255, 177.5 / 255, 152.5 / 255]),
        "RGBA": (_checkered("RGBA", ((0, 0, 0, 0), (0, 0, 0, 255))), {}, [0.5] * 3),
        "I;16": (
            Image.fromarray(np.where(np.indices((400, 600)).sum(0) % 2, 65535, 0).astype("u2")),
            {},
            [0.5] * 3,
        ),
    }
    for name, (image, options, expected) in cases.items():
        path = save(tmp_path / f"{name}.png", image, **options)
        x = load_image(path, size=(8, 12), channels=3, **RAW3)
        assert x.shape == (1, 3, 8, 12), name
        torch.testing.assert_close(
            x[0, :, 4, 6], torch.tensor(expected), atol=1 / 255, rtol=0, msg=name
        )


def test_exif_orientation_is_applied_to_a_reduced_file(tmp_path: Path) -> None:
    image = Image.new("RGB", (600, 300), (0, 0, 255))  # stored: red left half, blue right
    image.paste((255, 0, 0), (0, 0, 300, 300))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned: 300 wide, 600 high, red on top
    path = save(tmp_path / "phone.png", image, exif=exif)
    x = load_image(path, size=(20, 10), **RAW3)  # (H, W) of the upright picture
    assert x.shape == (1, 3, 20, 10)
    torch.testing.assert_close(x[0, :, 2, 5], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(x[0, :, 17, 5], torch.tensor([0.0, 0.0, 1.0]))


# --------------------------------------------------------------------------- normalize_maps


def test_normalize_each_shared_none_and_range() -> None:
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]], [[-1.0, 1.0], [1.0, 3.0]]])
    each = normalize_maps(maps, "each")
    torch.testing.assert_close(each[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    torch.testing.assert_close(each[1], torch.tensor([[0.0, 0.5], [0.5, 1.0]]))
    shared = normalize_maps(maps, "shared")  # one range: -1 .. 8
    torch.testing.assert_close(shared, (maps + 1) / 9)
    none = normalize_maps(maps, "none")  # clamped as they are
    torch.testing.assert_close(none, maps.clamp(0, 1))
    fixed = normalize_maps(maps, "each", value_range=(0.0, 4.0))
    torch.testing.assert_close(fixed, (maps / 4).clamp(0, 1))
    assert not torch.equal(maps, fixed)  # the input is not modified in place
    assert maps[0, 1, 1] == 8.0


def test_normalize_constant_nan_and_bad_input() -> None:
    maps = torch.tensor([[[3.0, 3.0], [3.0, 3.0]], [[0.0, float("nan")], [2.0, 4.0]]])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(2, 2))  # constant: zeros, no 0/0
    assert torch.isnan(out[1, 0, 1])  # kept, so it can be flagged
    torch.testing.assert_close(out[1].flatten()[[0, 2, 3]], torch.tensor([0.0, 0.5, 1.0]))
    inf = normalize_maps(torch.tensor([[[0.0, float("inf")], [1.0, 2.0]]]))
    assert torch.isinf(inf[0, 0, 1]) and inf[0, 1, 1] == 1.0
    empty = normalize_maps(torch.full((1, 2, 2), float("nan")))
    assert torch.isnan(empty).all()
    shared = normalize_maps(maps, "shared")  # the constant map joins the shared range
    torch.testing.assert_close(shared[0], torch.full((2, 2), 0.75))
    with pytest.raises(ValueError, match=r"expected shape \(N, H, W\), got \[2, 2\]"):
        normalize_maps(torch.zeros(2, 2))
    expected = "mode: expected one of 'each', 'shared', 'none', got 'all'"
    with pytest.raises(ValueError, match=expected):
        normalize_maps(maps, "all")


def test_minmax_scale_keeps_the_dtype_and_zeroes_constant_maps() -> None:
    maps = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]], dtype=torch.float64)
    scaled, varies = minmax_scale(maps)
    assert scaled.dtype == torch.float64 and varies.shape == (2, 1, 1)
    assert torch.equal(scaled[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]], dtype=torch.float64))
    assert torch.equal(scaled[1], torch.zeros(2, 2, dtype=torch.float64))  # no 0/0
    assert varies.flatten().tolist() == [True, False]
    # a given range is taken as it is: neither clamped nor checked for NaN
    ranged, ranged_varies = minmax_scale(maps[:1], torch.tensor(1.0), torch.tensor(5.0))
    assert ranged.flatten().tolist() == [0.0, 0.5, 1.0, 2.0] and bool(ranged_varies)


# --------------------------------------------------------------------------- colorize


def test_colorize_gray_values_and_nan() -> None:
    maps = torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]], [[float("nan"), 0.5], [float("inf"), 0.0]]])
    rgb = colorize(maps, "gray")
    assert rgb.shape == (2, 3, 2, 2)
    for channel in range(3):
        torch.testing.assert_close(rgb[0, channel], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    torch.testing.assert_close(rgb[1, :, 0, 0], MAGENTA)
    torch.testing.assert_close(rgb[1, :, 1, 0], MAGENTA)
    torch.testing.assert_close(rgb[1, :, 0, 1], torch.full((3,), 128 / 255))
    viridis = colorize(torch.tensor([[[0.0, 1.0]]]), "viridis")
    expected = matplotlib.colormaps["viridis"]([0.0, 1.0])[:, :3].T
    torch.testing.assert_close(viridis[0, :, 0], torch.tensor(expected, dtype=torch.float32))
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        colorize(maps, "nope")


# --------------------------------------------------------------------------- map_grid, to_pil


def test_map_grid_layout_and_note() -> None:
    maps = torch.arange(5 * 2 * 2, dtype=torch.float32).view(5, 2, 2)
    maps[3, 1, 1] = float("nan")
    grid = map_grid(maps, indices=[0, 3, 4], cmap="gray", nrow=3, padding=1)
    assert grid.indices == (0, 3, 4) and grid.total == 5 and grid.nrow == 3
    assert grid.nonfinite == 1
    assert grid.note == "showing 3 of 5, 2 left out, 1 NaN/Inf values in magenta"
    assert grid.image.shape == (3, 1 * 3 + 1, 3 * 3 + 1)
    # second tile is map 3, NaN in its lower right corner
    tile = grid.image[:, 1:3, 4:6]
    torch.testing.assert_close(tile[:, 1, 1], MAGENTA)
    torch.testing.assert_close(tile[0, 0], torch.tensor([0.0, 0.5]), atol=1 / 255, rtol=0)
    whole = map_grid(maps[:2])
    assert whole.note == "showing 2 of 2" and whole.nonfinite == 0
    zoomed = map_grid(maps, upscale=3, nrow=5)
    assert zoomed.image.shape == (3, 6 + 2, 5 * 7 + 1)
    with pytest.raises(ValueError, match="no maps selected"):
        map_grid(maps, indices=[])
    with pytest.raises(ValueError, match="expected shape"):
        map_grid(torch.zeros(2, 3))


def test_to_pil_shapes() -> None:
    rgb = to_pil(torch.rand(3, 4, 6))
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    gray = to_pil(torch.rand(1, 4, 6))
    assert gray.mode == "L" and gray.size == (6, 4)
    flagged = torch.zeros(3, 1, 2)
    flagged[:, 0, 0] = float("nan")
    flagged[:, 0, 1] = 7.0
    assert np.asarray(to_pil(flagged)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    for bad in (torch.rand(4, 4), torch.rand(2, 4, 4), torch.rand(1, 3, 4, 4)):
        with pytest.raises(ValueError, match=r"expected shape \(3, H, W\) or \(1, H, W\)"):
            to_pil(bad)
