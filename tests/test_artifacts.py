"""What netsight writes to disk: netsight.cam.compare and its save, save_filters,
Patterns.save, and the rule they share: a directory is written whole or not at all,
with a manifest, and existing output is never silently replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight import _io
from netsight.cam import CAMComparison, compare
from netsight.cli import main


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 7, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return out


class PooledConv(nn.Module):
    """Classes from a pooled convolution: no nn.Linear, so CAM cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))).mean((2, 3))


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- compare


def test_compare_batches_of_different_sizes() -> None:
    model = Classifier()
    x = [torch.randn(1, 3, 12, 16), torch.randn(2, 3, 10, 10)]
    before = snapshot(model)
    found = compare(model, x, "gradcam,eigencam", 2, names=["a/cat.png", "b/cat.png", "dog"])
    assert_unchanged(model, before)
    assert isinstance(found, CAMComparison)
    assert found.methods == ("gradcam", "eigencam") and dict(found.skipped) == {}
    assert found.names == ("cat", "cat_2", "dog")
    assert found.targets == (2, 2, 2) and found.target == 2
    assert [tuple(m.shape) for m in found.maps["gradcam"]] == [(12, 16), (10, 10), (10, 10)]
    assert found.shapes == ((1, 3, 12, 16), (1, 3, 10, 10), (1, 3, 10, 10))
    assert found.layers["gradcam"] == (("conv2",),) * 3
    assert all(float(m.min()) >= 0.0 and float(m.max()) <= 1.0 for m in found.maps["eigencam"])
    assert set(found.seconds) == {"gradcam", "eigencam"}
    # the same maps as the method itself, image by image
    direct = netsight.GradCAM(model).explain(x[1], targets=2).maps
    torch.testing.assert_close(found.maps["gradcam"][2], direct[1])
    with pytest.raises(AttributeError):
        found.methods = ()  # type: ignore[misc]


def test_compare_all_skips_what_the_model_cannot_run() -> None:
    found = compare(PooledConv(), torch.randn(2, 3, 8, 8), "all")
    assert found.requested == "all"
    assert "cam" in found.skipped and "nn.Linear" in found.skipped["cam"]
    assert "cam" not in found.methods and "gradcam" in found.methods
    assert found.targets == found.predicted  # top-1 by default
    with pytest.raises(ValueError, match=r"CAM needs a final nn\.Linear"):
        compare(PooledConv(), torch.randn(1, 3, 8, 8), ["cam"], strict=True)
    nothing = compare(PooledConv(), torch.randn(1, 3, 8, 8), ["cam"])
    assert nothing.methods == ()
    with pytest.raises(ValueError, match="none of the methods ran"):
        nothing.save("never-written")
    assert not Path("never-written").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"targets": 4}, ValueError, r"targets: class 4 is out of range; the model has 4 classes"),
        ({"targets": [1]}, ValueError, r"targets: 1 .* for 2 images"),
        ({"targets": [1, 2.0]}, TypeError, r"targets: expected int class indices"),
        ({"methods": "gradcamm"}, ValueError, r"unknown method 'gradcamm'; did you mean"),
        ({"methods": ""}, ValueError, r"expected method names such as gradcam"),
        ({"names": ["one"]}, ValueError, r"names: 1 names for 2 images"),
        ({"layer": "conv3"}, KeyError, r"did you mean 'conv2'"),
        ({"faithfulness_steps": -1}, ValueError, r"faithfulness_steps: expected 0"),
        ({"approx": 0}, ValueError, r"approx: expected an integer >= 1"),
    ],
)
def test_compare_refuses_bad_arguments_before_any_method(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        compare(Classifier(), torch.randn(2, 3, 8, 8), **kwargs)


def test_targets_as_a_tensor_are_recorded_as_ints(tmp_path: Path) -> None:
    found = compare(Classifier(), torch.randn(2, 3, 8, 8), targets=torch.tensor([3, 0]))
    assert found.targets == (3, 0) and found.target == (3, 0)
    found.save(tmp_path)
    assert json.loads((tmp_path / "cam.json").read_text())["target"] == [3, 0]


def test_compare_explains_classifiers_only() -> None:
    with pytest.raises(TypeError, match=r"returned a tensor of shape \[1, 3, 8, 8\] for x.png"):
        compare(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 8, 8), names=["dir/x.png"])


def test_compare_faithfulness_matches_evaluate() -> None:
    model = Classifier()
    x = torch.randn(2, 3, 12, 12)
    found = compare(model, x, "gradcam", [1, 3], faithfulness_steps=4)
    assert found.evaluation is not None and found.evaluation_error is None
    direct = netsight.cam.evaluate(
        {"gradcam": netsight.GradCAM(model)}, [(x, torch.tensor([1, 3]))], steps=4, progress=False
    )
    got, want = found.evaluation.methods["gradcam"], direct.methods["gradcam"]
    assert got.deletion == pytest.approx(want.deletion)
    assert got.insertion == pytest.approx(want.insertion)


def test_save_writes_everything_with_a_manifest(tmp_path: Path) -> None:
    found = compare(
        Classifier(), torch.randn(2, 3, 12, 12), "gradcam,layercam", mean=[0.5], std=[0.25]
    )
    out = tmp_path / "new" / "cam"
    paths = found.save(out, alpha=0.3, colormap="viridis", spec="net.py:Classifier")
    assert [p.name for p in paths][-2:] == ["grid.png", "cam.json"]
    manifest = json.loads((out / "cam.json").read_text())
    assert manifest["schema"] == "netsight.cam/1"
    assert {"netsight_version", "torch_version", "torchvision_version"} <= set(manifest)
    assert manifest["torchvision_version"] == __import__("torchvision").__version__
    assert manifest["model"] == "net.py:Classifier" and manifest["model_class"] == "Classifier"
    assert manifest["mean"] == [0.5] and manifest["std"] == [0.25] and manifest["alpha"] == 0.3
    assert _listing(out) == sorted([*manifest["files"], "cam.json"])  # no staging left
    saved = np.load(out / "image_1__layercam.npy", allow_pickle=False)
    np.testing.assert_array_equal(saved, found.maps["layercam"][1].numpy())
    assert not (tmp_path / "plain").exists()
    found.save(tmp_path / "plain", maps=False)
    assert not list((tmp_path / "plain").glob("*.npy"))


def test_save_does_not_replace_output_unless_asked(tmp_path: Path) -> None:
    found = compare(Classifier(), torch.randn(1, 3, 8, 8))
    found.save(tmp_path)
    stamp = (tmp_path / "cam.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError) as caught:
        found.save(tmp_path)
    message = str(caught.value)
    assert "already holds netsight cam output" in message
    assert "image_0__gradcam.png" in message and "cam.json" in message
    assert "overwrite=True" in message and "--overwrite" in message
    assert (tmp_path / "cam.json").stat().st_mtime_ns == stamp
    found.save(tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="colormap: unknown matplotlib colormap 'jett'"):
        found.save(tmp_path / "other", colormap="jett")
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0, 1\]"):
        found.save(tmp_path / "other", alpha=2.0)
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- all or nothing


def test_a_failed_write_leaves_the_directory_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _io._write_synced
    calls: list[Path] = []

    def fail_on_second(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(_io, "_write_synced", fail_on_second)
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    files = {"a.png": b"a", "b.png": b"b", "manifest.json": b"{}"}
    with pytest.raises(OSError, match="No space left"):
        _io.write_directory(existing, files, what="test")
    assert _listing(existing) == ["notes.txt"]  # no file, no staging directory
    calls.clear()
    fresh = tmp_path / "fresh" / "dir"
    with pytest.raises(OSError, match="No space left"):
        _io.write_directory(fresh, files, what="test")
    assert not fresh.exists()  # the directory it created is gone again


def test_write_directory_refuses_odd_names_and_files_in_the_way(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file names"):
        _io.write_directory(tmp_path, {"../escape.txt": b""}, what="test")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        _io.write_directory(blocker, {"a.txt": b""}, what="test")


# --------------------------------------------------------------------------- filters, patterns


def test_save_filters(tmp_path: Path) -> None:
    model = Classifier()
    paths = netsight.save_filters(model, None, tmp_path)  # the first convolution
    assert [p.name for p in paths] == ["filters_conv1.png", "filters.json"]
    manifest = json.loads(paths[-1].read_text())
    assert manifest["schema"] == "netsight.filters/1" and "torchvision_version" in manifest
    (entry,) = manifest["layers"]
    assert entry["layer"] == "conv1" and entry["file"] == "filters_conv1.png"
    # the figure's note: the grid's, less the zoom of the TensorBoard image (the figure
    # draws its tiles at whatever size the page gives them)
    grid_note = netsight.filter_grid(model, "conv1").note
    assert "zoomed" in grid_note and "zoomed" not in entry["note"]
    assert entry["note"] == grid_note.rsplit("; tiles zoomed", 1)[0]
    with pytest.raises(FileExistsError, match=r"filters output \(filters.json\)"):
        netsight.save_filters(model, ["conv2"], tmp_path)
    paths = netsight.save_filters(model, ["conv1", "conv2"], tmp_path, mode="mean", overwrite=True)
    assert [p.name for p in paths] == ["filters_conv1.png", "filters_conv2.png", "filters.json"]
    assert json.loads(paths[-1].read_text())["mode"] == "mean"
    with pytest.raises(ValueError, match="has no convolution layer to draw"):
        netsight.save_filters(nn.Linear(2, 2), None, tmp_path / "none")
    with pytest.raises(ValueError, match="mode: expected one of 'auto', 'rgb'"):
        netsight.save_filters(model, "conv1", tmp_path / "none", mode="grey")
    assert not (tmp_path / "none").exists()


def test_patterns_save(tmp_path: Path) -> None:
    model = Classifier()
    found = netsight.maximize(model, "conv2", [0, 2], size=12, steps=2)
    paths = found.save(tmp_path, spec="net.py:Classifier")
    assert [p.name for p in paths] == ["patterns_conv2.png", "patterns_conv2.json"]
    record = json.loads(paths[-1].read_text())
    assert record["schema"] == "netsight.patterns/1" and "torch_version" in record
    assert record["channels"] == [0, 2] and record["steps"] == 2 and record["size"] == 12
    assert record["settings"]["seed"] == 0 and record["model"] == "net.py:Classifier"
    other = netsight.maximize(model, "conv1", [1], size=12, steps=2)
    other.save(tmp_path)  # another layer's patterns share the directory
    with pytest.raises(FileExistsError, match=r"patterns_conv2\.json"):
        found.save(tmp_path)
    found.save(tmp_path, overwrite=True)


# --------------------------------------------------------------------------- the CLI


def test_features_refuses_to_replace_an_earlier_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((32, 32), dtype="uint8"), "L").save(image)
    out = tmp_path / "features"
    argv = ["features", "zoo:Vgg16Net", str(image), "--layers", "layer1.0", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds netsight features output (manifest.json, mean_maps.png" in err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("command", ["cam", "filters", "patterns", "features"])
def test_every_directory_command_takes_overwrite(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out
