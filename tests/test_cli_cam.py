"""`netsight cam`: overlays, the comparison grid and cam.json, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import noise_pictures, zeros_png
from netsight.cam import METHODS
from netsight.cam.compare import _CELL as _CAM_CELL
from netsight.cam.compare import _DPI as _CAM_DPI
from netsight.cli import main

MODELS = """
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights in-process and in a subprocess
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


class NoLinear(nn.Module):
    # Global pooling over a 4-class convolution: no nn.Linear, so CAM cannot run.
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))).mean((2, 3))


def Detector():
    # a torchvision detector whose random weights still detect (score threshold 0)
    from torchvision.models import detection

    torch.manual_seed(0)
    return detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        box_score_thresh=0.0,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=10,
    )


class Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """An RGB image (24 x 32) and a grayscale one (20 x 20)."""
    return noise_pictures(tmp_path, seed=0)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    return round(columns * _CAM_CELL[0] * _CAM_DPI), round(rows * _CAM_CELL[1] * _CAM_DPI)


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "cam.json").read_text(encoding="utf-8"))
    return data


def test_all_methods_on_a_tiny_model(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cam"
    argv = ["cam", f"{models}:TinyCNN", *map(str, images), "--method", "all", "--out", str(out)]
    code, printed, err = run(capsys, *argv, "--save-maps")
    assert code == 0, err
    data = manifest(out)
    assert data["schema"] == "netsight.cam/1"
    assert data["requested"] == "all"
    assert data["methods"] == list(METHODS) and data["skipped"] == {}
    assert [record["name"] for record in data["images"]] == ["cat", "gray"]
    sizes = {"cat": (32, 24), "gray": (20, 20)}  # each image at its own size (file model)
    for record in data["images"]:
        width, height = sizes[record["name"]]
        assert record["input_shape"] == [1, 3, height, width]  # grayscale -> 3 channels
        assert 0 <= record["target"]["class"] < 5
        assert record["target"]["class"] == record["predicted"]["class"]  # default: top-1
        assert set(record["methods"]) == set(METHODS)
        for method, entry in record["methods"].items():
            assert entry["overlay"] == f"{record['name']}__{method}.png"
            assert png_size(out / entry["overlay"]) == (width, height)
            cam_map = np.load(out / entry["map"], allow_pickle=False)
            assert cam_map.shape == (height, width) and cam_map.dtype == np.float32
            assert cam_map.min() >= 0.0 and cam_map.max() <= 1.0
            assert entry["layers"] == (["conv2"] if METHODS[method].uses_layers else ["input"])
    assert (out / "cat__gradcam++.png").is_file()
    assert data["grid"] == {
        "file": "grid.png",
        "rows": 2,
        "columns": 1 + len(METHODS),
        "column_titles": ["image", *METHODS],
    }
    assert png_size(out / "grid.png") == grid_size(2, 1 + len(METHODS))
    written = {p.name for p in out.iterdir()}
    assert written == {*data["files"], "cam.json"}  # everything listed, no .tmp left behind
    assert "cat__scorecam.png" in printed and "grid: " in printed


def test_evaluate_measures_the_maps_that_were_drawn(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from netsight.cam import GradCAM, evaluate
    from netsight.images import load_image
    from netsight.models import load_model

    out = tmp_path / "cam"
    argv = ["cam", f"{models}:TinyCNN", *map(str, images), "--method", "gradcam,eigencam"]
    code, printed, err = run(capsys, *argv, "--target", "3", "--evaluate", "6", "--out", str(out))
    assert code == 0, err
    assert "deletion AUC" in printed and "2 images" in printed
    data = manifest(out)["faithfulness"]
    assert data["steps"] == 6 and data["images"] == 2
    assert list(data["methods"]) == ["gradcam", "eigencam", "random", "center"]
    for scores in data["methods"].values():
        assert 0.0 <= scores["deletion_auc"] <= 1.0 and 0.0 <= scores["insertion_auc"] <= 1.0
    # the same numbers as the library on the same images and target
    model = load_model(f"{models}:TinyCNN")
    batches = [(load_image(p, model=model), torch.tensor([3])) for p in images]
    direct = evaluate({"gradcam": GradCAM(model)}, batches, steps=6, progress=False)
    got = data["methods"]["gradcam"]
    assert got["deletion_auc"] == pytest.approx(direct.methods["gradcam"].deletion)
    assert got["insertion_auc"] == pytest.approx(direct.methods["gradcam"].insertion)
    code, _, err = run(capsys, "cam", f"{models}:TinyCNN", str(images[0]), "--out", str(out))
    assert code == 2 and "already holds netsight cam output (cam.json, grid.png)" in err
    code, _, _ = run(
        capsys, "cam", f"{models}:TinyCNN", str(images[0]), "--out", str(out), "--overwrite"
    )
    assert code == 0 and manifest(out)["faithfulness"] is None


def test_road_is_measured_with_the_faithfulness(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cam"
    argv = ["cam", f"{models}:TinyCNN", str(images[0]), "--out", str(out), "--road"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--road: needs --faithfulness-steps N" in err
    # one torch thread: 54 small imputations of a few dozen steps each, and a second
    # thread mostly waits (15x slower when another process keeps a core busy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, printed, err = run(capsys, *argv, "--faithfulness-steps", "2")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert "ROAD MoRF" in printed and "ROAD at 10, 20, 30" in printed
    data = manifest(out)["faithfulness"]
    assert data["road_percentages"] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    for scores in data["methods"].values():
        assert 0.0 <= scores["road_morf"] <= 1.0 and 0.0 <= scores["road_lerf"] <= 1.0


def test_approx_reaches_the_perturbation_methods(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from netsight.cam import ScoreCAM
    from netsight.images import load_image
    from netsight.models import load_model

    out = tmp_path / "cam"
    argv = ["cam", f"{models}:TinyCNN", str(images[0]), "--method", "scorecam,gradcam"]
    code, _, err = run(capsys, *argv, "--approx", "2", "--save-maps", "--out", str(out))
    assert code == 0, err
    assert manifest(out)["approx"] == 2
    model = load_model(f"{models}:TinyCNN")
    x = load_image(images[0], model=model)
    saved = np.load(out / "cat__scorecam.npy")
    approx = ScoreCAM(model, approx=2).explain(x).maps[0].numpy()
    exact = ScoreCAM(model).explain(x).maps[0].numpy()
    assert np.allclose(saved, approx, atol=1e-5)
    assert not np.allclose(saved, exact, atol=1e-3)  # 2 of 6 channels: not the exact map


def test_resnet18_grayscale_image_target_and_layer(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r18"
    argv = ["cam", "torchvision:resnet18", str(images[1]), "--size", "64,48", "--out", str(out)]
    code, _, err = run(capsys, *argv, "--target", "7", "--layer", "layer3", "--alpha", "0.3")
    assert code == 0, err
    data = manifest(out)
    (record,) = data["images"]
    assert record["input_shape"] == [1, 3, 64, 48]
    assert record["target"]["class"] == 7
    assert record["methods"]["gradcam"]["layers"] == ["layer3"]
    assert record["methods"]["gradcam"]["map"] is None  # no --save-maps
    assert png_size(out / "gray__gradcam.png") == (48, 64)
    assert png_size(out / "grid.png") == grid_size(1, 2)
    assert data["alpha"] == 0.3 and data["layer"] == "layer3" and data["target"] == 7


def test_weights_decide_the_default_target(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from netsight.models import load_model

    model = load_model(f"{models}:TinyCNN")
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0, 0.0]))
    weights = tmp_path / "trained.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "w"
    argv = [
        "cam",
        f"{models}:TinyCNN",
        str(images[0]),
        "--out",
        str(out),
        "--weights",
        str(weights),
    ]
    assert run(capsys, *argv)[0] == 0
    (record,) = manifest(out)["images"]
    assert record["predicted"] == {"class": 3, "name": None, "probability": pytest.approx(1.0)}
    assert record["target"]["class"] == 3


def test_a_method_the_model_cannot_run_is_skipped(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"{models}:NoLinear"
    out = tmp_path / "skip"
    code, _, err = run(
        capsys, "cam", spec, str(images[0]), "--method", "cam,gradcam", "--out", str(out)
    )
    assert code == 1  # a method the user named did not run; the others were written
    assert "netsight: skipped cam: CAM needs a final nn.Linear" in err
    data = manifest(out)
    assert data["methods"] == ["gradcam"] and list(data["skipped"]) == ["cam"]
    assert (out / "cat__gradcam.png").is_file() and not (out / "cat__cam.png").exists()
    assert png_size(out / "grid.png") == grid_size(1, 2)

    argv = ["cam", spec, str(images[0]), "--method", "all", "--out", str(out), "--overwrite"]
    code, _, err = run(capsys, *argv)
    assert code == 0  # `all` means every method this model supports
    assert manifest(out)["methods"] == [m for m in METHODS if m != "cam"]

    nothing = tmp_path / "nothing"
    code, _, err = run(
        capsys, "cam", spec, str(images[0]), "--method", "cam", "--out", str(nothing)
    )
    assert code == 2
    assert "netsight: error: none of the methods could run" in err and "Traceback" not in err
    assert not nothing.exists()  # nothing to write, not even the directory


def test_odd_file_names_are_sanitised(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    odd_dir = tmp_path / "my models (v2)"
    odd_dir.mkdir()
    model = odd_dir / "net <1> & co.py"
    model.write_text(MODELS)
    odd_image = tmp_path / "a cat's <pic>.png"
    odd_image.write_bytes(images[0].read_bytes())
    other = tmp_path / "again"
    other.mkdir()
    same_stem = other / "a cat's <pic>.jpg"
    Image.open(images[0]).convert("RGB").save(same_stem)
    out = tmp_path / "odd"
    argv = ["cam", f"{model}:TinyCNN", str(odd_image), str(same_stem), "--out", str(out)]
    code, _, err = run(capsys, *argv, "--method", "gradcam++")
    assert code == 0, err
    data = manifest(out)
    assert [r["name"] for r in data["images"]] == ["a_cat_s_pic", "a_cat_s_pic_2"]
    assert (out / "a_cat_s_pic__gradcam++.png").is_file()
    assert (out / "a_cat_s_pic_2__gradcam++.png").is_file()
    assert data["model"] == f"{model}:TinyCNN"
    assert data["images"][0]["file"] == str(odd_image)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "gradcamm"], "unknown method 'gradcamm'; did you mean 'gradcam'"),
        (["--method", "gradcam,bogus"], "expected names from: cam, gradcam, gradcam++"),
        (["--target", "5"], "targets: class 5 is out of range; "),
        (["--target", "-1"], "expected a class index"),
        (["--layer", "conv3"], "no layer named 'conv3' in TinyCNN; did you mean 'conv2'"),
        (["--alpha", "1.5"], "expected a number in [0, 1]"),
        (["--colormap", "jett"], "unknown matplotlib colormap 'jett'; did you mean 'jet'"),
        (["--batch-size", "0"], "expected an integer >= 1"),
        (["--size", "1,2,3"], "--size: expected H,W"),
    ],
)
def test_errors(
    tmp_path: Path,
    models: Path,
    images: list[Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "err"
    code, printed, err = run(
        capsys, "cam", f"{models}:TinyCNN", str(images[0]), "--out", str(out), *extra
    )
    assert code == 2
    assert message in err and "Traceback" not in err
    if extra[0] == "--target":
        assert "(0 to 4)" in err or "class index" in err
    assert printed == "" and not out.exists()


def test_a_model_that_is_not_a_classifier(
    tmp_path: Path, models: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cam", f"{models}:Segmenter", str(images[0]), "--out", str(tmp_path / "seg")]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "returned a tensor of shape [1, 2, 24, 32]" in err and "(batch, classes) logits" in err


def test_missing_image(tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cam", f"{models}:TinyCNN", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "no such file" in err


def test_decompression_bomb_is_a_one_line_error(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = zeros_png(tmp_path / "huge.png", 20000, 20000)
    argv = ["cam", f"{models}:TinyCNN", str(huge), "--out", str(tmp_path / "o")]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("netsight: error: image: ") and len(err.splitlines()) == 1
    assert "huge.png" in err and "too large to decode safely" in err


def test_help_lists_the_methods(capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, _ = run(capsys, "cam", "--help")
    assert code == 0
    assert "gradcam++" in printed and "scorecam" in printed and "grid.png" in printed


def test_netsight_executable_subprocess(tmp_path: Path, models: Path, images: list[Path]) -> None:
    executable = Path(sys.executable).parent / "netsight"
    out = tmp_path / "sub"
    argv = [str(executable), "cam", f"{models}:TinyCNN", *map(str, images), "--out", str(out)]
    result = subprocess.run(
        [*argv, "--method", "gradcam,scorecam", "--batch-size", "2", "--colormap", "viridis"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "gray__scorecam.png" in result.stdout
    data = manifest(out)
    assert data["methods"] == ["gradcam", "scorecam"] and data["colormap"] == "viridis"
    assert png_size(out / "grid.png") == grid_size(2, 3)
    # the same seeded model in-process and in the subprocess: the same top-1 class
    from netsight.models import load_model

    model = load_model(f"{models}:TinyCNN")
    from netsight.images import load_image

    x = load_image(images[0], model=model)
    with torch.no_grad():
        assert data["images"][0]["predicted"]["class"] == int(model(x).argmax())


def test_targets_beyond_classes_segmentation_and_detection(
    capsys: pytest.CaptureFixture[str], models: Path, images: list[Path], tmp_path: Path
) -> None:
    """``--target seg:1`` explains a segmentation model's pixels of class 1 and
    ``--target box:0`` a detector's most confident box; the manifest says what each
    map explains, and faithfulness (class targets only) is refused with a reason."""
    out = tmp_path / "seg"
    code, _, err = run(
        capsys, "cam", f"{models}:Segmenter", str(images[0]), "--target", "seg:1",
        "--out", str(out), "--methods", "gradcam,eigencam",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "cam.json").read_text())
    (record,) = manifest["images"]
    assert record["predicted"] is None
    assert record["target"]["label"] == "class 1 over the pixels predicted as it"
    assert manifest["methods"] == ["gradcam", "eigencam"]
    out = tmp_path / "det"
    code, _, err = run(
        capsys, "cam", f"{models}:Detector", str(images[0]), "--target", "box:0",
        "--size", "96", "--out", str(out), "--save-maps",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "cam.json").read_text())
    (record,) = manifest["images"]
    assert record["target"]["label"].startswith("box of class ")
    assert record["target"]["score"] > 1.0  # IoU 1 with itself plus its confidence
    assert record["methods"]["gradcam"]["layers"] == ["backbone"]
    heat = np.load(out / record["methods"]["gradcam"]["map"])
    assert heat.shape == (96, 96)
    code, _, err = run(
        capsys, "cam", f"{models}:Segmenter", str(images[0]), "--target", "seg:1",
        "--out", str(tmp_path / "faith"), "--faithfulness-steps", "2",
    )  # fmt: skip
    assert code == 2 and "class targets only" in err
    code, _, err = run(capsys, "cam", f"{models}:Segmenter", str(images[0]), "--target", "seg:x")
    assert code == 2 and "expected an integer >= 0 after 'seg:'" in err
    out = tmp_path / "none"
    code, _, err = run(capsys, "cam", f"{models}:Segmenter", str(images[0]), "--out", str(out))
    assert code == 2 and "--target seg:15" in err
