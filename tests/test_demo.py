"""The demo: summaries, training on the digits, filters, feature maps, layer statistics.

The full demo trains for minutes; these tests run ``DemoConfig.quick()`` (one epoch on
64 digits), which goes through every step and writes every file.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from netsight.cli import main
from netsight.demo import DemoConfig, run_demo, train_digits
from netsight.models import load_weights
from netsight.zoo import Vgg16Net

pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    rng = torch.get_rng_state()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        paths = run_demo(out, config=DemoConfig.quick())
    assert torch.equal(torch.get_rng_state(), rng), "the demo moved the global RNG"
    return out, paths, printed.getvalue()


def test_every_step_writes_its_files(quick_run: tuple[Path, list[Path], str]) -> None:
    out, paths, _ = quick_run
    assert all(p.is_file() for p in paths)
    names = {str(p.relative_to(out)) for p in paths}
    for expected in [
        "vgg16.html",
        "vgg16.json",
        "resnet18.html",
        "resnet18.json",
        "vgg16_digits.pth",
        "training.json",
        "training.png",
        "filters/filters_layer1.0.png",
        "filters/filters_layer5.6.png",
        "features/mean_maps.png",
        "features/manifest.json",
        "features/features_layer1.0.png",
        "features/features_layer5.6.png",
        "layer_stats/trained.json",
        "layer_stats/untrained.json",
        "layer_stats/trained.png",
        "runs/vgg16-digits/index.html",
        "report.html",
        "index.txt",
    ]:
        assert expected in names, expected
    # 13 convolutions, one feature grid each
    assert len([n for n in names if n.startswith("features/features_")]) == 13
    listed = (out / "index.txt").read_text().split()
    assert listed == [str(p.relative_to(out)) for p in paths[:-1]]


def test_summaries_and_training_record(quick_run: tuple[Path, list[Path], str]) -> None:
    out, _, printed = quick_run
    assert json.loads((out / "vgg16.json").read_text())["totals"]["total_params"] == 15_118_538
    assert json.loads((out / "resnet18.json").read_text())["totals"]["total_params"] == 11_689_512
    assert (out / "vgg16.html").read_text().startswith("<!DOCTYPE html>")
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["train_limit"] == 64
    (epoch,) = record["history"]
    assert 0 <= epoch["test_acc"] <= 1 and epoch["train_loss"] > 0
    assert "Vgg16Net" in printed and "ResNet" in printed
    assert "epoch 1: train loss" in printed
    # the training monitor's run: every step's loss, the test metrics as validation
    from netsight.monitor import read_scalars

    rows = read_scalars(out / "runs" / "vgg16-digits" / "scalars.csv")
    steps = [r["step"] for r in rows if r["tag"] == "train/loss"]
    assert steps == list(range(len(steps))) and len(steps) == 2  # 64 digits, batch 32
    (acc,) = [r["value"] for r in rows if r["tag"] == "epoch/val_acc"]
    assert acc == pytest.approx(epoch["test_acc"])
    assert record["run"].endswith("vgg16-digits") and "training monitor run" in printed


def test_saved_weights_load_safely_and_reproduce_the_accuracy(
    quick_run: tuple[Path, list[Path], str],
) -> None:
    out, _, _ = quick_run
    model = load_weights(Vgg16Net(), out / "vgg16_digits.pth")  # weights_only=True
    from netsight.datasets import digits

    x, y = digits("test").tensors
    x, y = x[:32], y[:32]
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    record = json.loads((out / "training.json").read_text())
    assert acc == pytest.approx(record["history"][-1]["test_acc"])


def test_layer_stats_cover_every_relu_and_give_a_verdict(
    quick_run: tuple[Path, list[Path], str],
) -> None:
    out, _, printed = quick_run
    trained = json.loads((out / "layer_stats" / "trained.json").read_text())
    assert len(trained["layers"]) == 15  # 13 conv ReLUs + 2 in the classifier
    assert trained["samples"] == 32
    for layer in trained["layers"]:
        assert 0 <= layer["sparsity"] <= 1
    assert "trained:        sparsity" in printed
    assert "initialisation: sparsity" in printed


def test_cli_reuses_cached_weights(
    quick_run: tuple[Path, list[Path], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = quick_run
    before = (out / "vgg16_digits.pth").read_bytes()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "weights from an earlier run" in capsys.readouterr().out
    assert (out / "vgg16_digits.pth").read_bytes() == before


def test_other_settings_or_retrain_do_not_reuse_the_cache(tmp_path: Path) -> None:
    from netsight.demo import _trained_vgg

    tiny = DemoConfig(epochs=1, train_limit=16, test_limit=8, batch_size=16)
    _, first = _trained_vgg(tmp_path, tiny, retrain=False)
    assert first["cached"] is False
    _, again = _trained_vgg(tmp_path, tiny, retrain=False)
    assert again["cached"] is True and again["history"] == first["history"]
    _, forced = _trained_vgg(tmp_path, tiny, retrain=True)
    assert forced["cached"] is False
    other = DemoConfig(epochs=2, train_limit=16, test_limit=8, batch_size=16)
    _, changed = _trained_vgg(tmp_path, other, retrain=False)
    assert changed["cached"] is False and len(changed["history"]) == 2
    (tmp_path / "training.json").write_text("{not json")  # a damaged record: train again
    _, damaged = _trained_vgg(tmp_path, other, retrain=False)
    assert damaged["cached"] is False


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_training_reduces_the_loss_and_leaves_eval_mode() -> None:
    torch.manual_seed(0)
    model = Vgg16Net()
    config = DemoConfig(epochs=3, train_limit=32, test_limit=8, batch_size=16, lr=0.02)
    history = train_digits(model, config, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert not model.training


def test_the_report_shows_the_trained_model(quick_run: tuple[Path, list[Path], str]) -> None:
    out, _, printed = quick_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Class activation maps:" in printed and "report.html" in printed
    for anchor in ("summary", "architecture", "filters", "patterns", "features", "statistics"):
        assert f'<section id="{anchor}"><h2>' in page
    assert "Not shown" not in page  # the training run is there too
    assert "loss and accuracy" in page and "15,118,538" in page
    assert page.count('class="cam"') == 8 * 5  # eight digits, the image and four methods
