"""`netsight features`, `filters` and `layers` on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netsight.cli import main


@pytest.fixture
def digit_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "digit.png"
    Image.fromarray((rng.random((20, 20, 3)) * 255).astype("uint8")).save(path)
    return path


def test_features_writes_grids_mean_maps_stats_and_manifest(
    tmp_path: Path, digit_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "feat"
    assert main(["features", "zoo:Vgg16Net", str(digit_png), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed.splitlines()[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_shape"] == [1, 1, 32, 32]  # RGB file -> 1 channel, 32 px
    assert len(manifest["layers"]) == 13
    for name in manifest["files"]:
        assert (out / name).stat().st_size > 0
    assert (out / "features_layer1.0.png").exists() and (out / "mean_maps.png").exists()
    stats = json.loads((out / "layer_stats.json").read_text())
    assert len(stats["layers"]) == 15
    assert not list(out.glob(".*.tmp"))  # no half-written files


def test_features_with_chosen_layers_and_weights(
    tmp_path: Path, digit_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from netsight.zoo import Vgg16Net

    weights = tmp_path / "vgg.pth"
    torch.save(Vgg16Net().state_dict(), weights)
    out = tmp_path / "f2"
    argv = ["features", "zoo:Vgg16Net", str(digit_png), "--layers", "layer2.*", "--out", str(out)]
    assert main([*argv, "--weights", str(weights)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == [f"layer2.{i}" for i in range(7)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layers", "layer9.0"], "no layer named 'layer9.0'"),
        (["--size", "1,2,3"], "--size: expected H,W"),
    ],
)
def test_features_errors(
    tmp_path: Path,
    digit_png: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code = main(["features", "zoo:Vgg16Net", str(digit_png), "--out", str(tmp_path / "o"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_features_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("hello")
    assert main(["features", "zoo:Vgg16Net", str(bogus), "--out", str(tmp_path / "o")]) == 2
    assert "is not an image" in capsys.readouterr().err


def test_layers_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "zoo:Vgg16Net"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "layer1.0\tConv2d" in lines and "fc.6\tLinear" in lines


def test_filters_default_layer_and_chosen_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "filt"
    assert main(["filters", "torchvision:resnet18", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["filters.json", "filters_conv1.png"]
    with Image.open(out / "filters_conv1.png") as image:
        assert image.size[0] > 200 and image.mode in ("RGB", "RGBA")
    argv = ["filters", "zoo:Vgg16Net", "--layer", "layer1.0", "layer5.6", "--out", str(out)]
    assert main([*argv, "--max-tiles", "16", "--mode", "mean"]) == 2  # filters.json is there
    assert "already holds netsight filters output (filters.json)" in capsys.readouterr().err
    assert main([*argv, "--max-tiles", "16", "--mode", "mean", "--overwrite"]) == 0
    assert {"filters_layer1.0.png", "filters_layer5.6.png"} <= {p.name for p in out.iterdir()}
    assert str(out / "filters_layer5.6.png") in capsys.readouterr().out


def test_filters_with_weights_draws_the_loaded_kernels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from netsight._io import save_figure
    from netsight.filters import plot_filters
    from netsight.zoo import Vgg16Net

    torch.manual_seed(1)
    model = Vgg16Net()
    weights = tmp_path / "trained.pth"
    torch.save(model.state_dict(), weights)
    expected = save_figure(plot_filters(model, "layer1.0"), tmp_path / "expected.png")

    out = tmp_path / "o"
    argv = ["filters", "zoo:Vgg16Net", "--layer", "layer1.0", "--out", str(out)]
    assert main([*argv, "--weights", str(weights)]) == 0
    drawn = out / "filters_layer1.0.png"

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    np.testing.assert_array_equal(pixels(drawn), pixels(expected))
    assert main([*argv, "--overwrite"]) == 0  # no --weights: a fresh random init, other kernels
    assert not np.array_equal(pixels(drawn), pixels(expected))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["zoo:Vgg16Net", "--layer", "fc.0"], "not a convolution"),
        (["zoo:Vgg16Net", "--layer", "layer10"], "did you mean 'layer1.0'"),
        (["torchvision:resnet18", "--weights", "missing.pth"], "missing.pth"),
    ],
)
def test_filters_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["filters", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
