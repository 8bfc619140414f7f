"""The demo: summaries, training on the digits, filters, feature maps, layer statistics.

The full demo trains for minutes; these tests run ``DemoConfig.quick()`` (one epoch on
64 digits), which goes through every step and writes every file.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import torch

import netsight
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
        "canvasnet_digits.pth",
        "canvas_training.json",
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
    assert "Where it looks: class activation maps:" in printed and "report.html" in printed
    for anchor in ("overview", "structure", "layers", "statistics", "patterns", "cam"):
        assert f'<section id="{anchor}"><h2>' in page
    assert "Not shown" not in page  # the training run is there too
    assert "loss and accuracy" in page and "15,118,538" in page
    # the maps are CanvasNet's on unseen canvases: eight, the image and four methods each
    assert page.count('class="cam"') == 8 * 5 and "netsight.zoo.CanvasNet" in page
    assert "pointing (higher is better)" in page and "16 images (16 with boxes)" in page
    # the statistics are the test set's (32 digits in the quick run), not the 8 shown
    assert "measured over 32 inputs" in page


def test_the_demo_cam_model_beats_both_baselines_on_deletion_and_pointing(
    tmp_path: Path,
) -> None:
    """The demo's CAM section, with the demo's own CAM model and inputs (CanvasNet
    trained as the full demo trains it, explained on the same 100 unseen canvases;
    about 20 s): the best method beats the random and the centred map on deletion and
    on pointing, as the page prints it."""
    import re

    from netsight.datasets import digit_canvases
    from netsight.demo import _trained_canvas_net
    from netsight.report import CAMInputs, report

    config = DemoConfig()
    with contextlib.redirect_stdout(io.StringIO()):
        model, info = _trained_canvas_net(tmp_path, config, retrain=False)
    assert info["history"][-1]["test_acc"] > 0.9
    x, y, boxes = digit_canvases("test", config.canvas_test, seed=config.seed + 1).tensors
    page = report(
        model,
        x[:2],
        cam_methods=("gradcam", "gradcam++", "layercam", "eigencam"),
        cams=CAMInputs(model, x, labels=y.tolist(), boxes=boxes),
        faithfulness_steps=16,
        pattern_steps=0,
        diagram=False,
    )
    cam = next(s for s in page.sections if s.id == "cam").html
    table = cam[cam.index('class="data faithfulness"') :]
    rows = {
        row[0]: row[1:]
        for row in (
            re.findall(r"<td>([^<]*)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", table)
        )
        if row
    }
    pointing = {k: float(v[0].rstrip(" %")) for k, v in rows.items()}
    deletion = {k: float(v[1]) for k, v in rows.items()}
    methods = [k for k in rows if k not in ("random", "center")]
    best = min(methods, key=lambda k: (deletion[k], -pointing[k]))
    assert f"Best on deletion: {best}" in cam
    assert deletion[best] < min(deletion["random"], deletion["center"])
    assert pointing[best] > max(pointing["random"], pointing["center"])
    assert f"{best} beats both baselines on deletion and pointing." in cam


# --------------------------------------------------------------------------- as a reader sees it

MIN_IMAGE_PX = 120  # no picture on the page is drawn narrower
MIN_FIGURE_TEXT_PX = 10.0  # the smallest text in a figure, as drawn on the screen
MIN_PAGE_TEXT_PX = 12.0  # the smallest text of the page itself


def _browser() -> str:
    from browser import chromium

    found = chromium()
    if found is None:
        pytest.skip("no chromium (Debian package chromium)")
    return found


def test_every_figure_of_the_report_has_a_title_colour_bars_and_readable_text(
    quick_run: tuple[Path, list[Path], str],
) -> None:
    """The figures as matplotlib made them (``Report.figures``, measured by
    ``netsight._figures.audit_figure``): a title, a colour bar for every heatmap, no
    text below 10 px at the page's resolution; the demo writes the measurements to
    report_figures.json."""
    out, _, _ = quick_run
    audits = json.loads((out / "report_figures.json").read_text(encoding="utf-8"))
    problems = [f"{a['caption']}: {'; '.join(a['problems'])}" for a in audits if a["problems"]]
    assert not problems, "\n".join(problems)
    assert all(a["title"] for a in audits)
    page = (out / "report.html").read_text(encoding="utf-8")
    import re

    fonts = [float(v) for v in re.findall(r'data-font-px="([\d.]+)"', page)]
    assert len(fonts) >= 13 * 2 + 3  # every conv's kernels and maps, means, stats, patterns
    assert min(fonts) >= MIN_FIGURE_TEXT_PX, sorted(fonts)[:5]


@pytest.mark.parametrize("name", ["report.html", "runs/vgg16-digits/index.html"])
def test_the_pages_read_well_at_a_laptop_width(
    quick_run: tuple[Path, list[Path], str], name: str
) -> None:
    """Headless Chromium lays the page out at 1280 px with every fold open: every
    picture loads and is drawn at least 120 px wide; figures are not shrunk so far
    that their smallest text falls under 10 px on the screen; the page's own text is
    at least 12 px."""
    from browser import measure

    out, _, _ = quick_run
    layout = measure(out / name, browser=_browser())
    assert layout.images, "no pictures on the page"
    problems = []
    for image in layout.images:
        label = f"{image['alt'][:60]!r}"
        if not image["complete"] or image["naturalWidth"] == 0:
            problems.append(f"{label} did not load")
            continue
        if image["width"] < MIN_IMAGE_PX:
            problems.append(f"{label} drawn {image['width']:.0f} px wide")
        if image["fontPx"] is not None:
            shown = float(image["fontPx"]) * image["width"] / image["naturalWidth"]
            if shown < MIN_FIGURE_TEXT_PX:
                problems.append(f"{label}: its smallest text is drawn at {shown:.1f} px")
    if layout.min_text_px < MIN_PAGE_TEXT_PX:
        problems.append(f"page text of {layout.min_text_px} px: {layout.min_text_sample!r}")
    assert not problems, "\n".join(problems)


def test_screenshots_for_the_readme(
    quick_run: tuple[Path, list[Path], str], tmp_path: Path
) -> None:
    """The README's pictures are made by the same code from a demo output (here the
    quick run's) at 1280 px; the committed ones in docs/ are the full demo's and the
    README shows each of them."""
    from PIL import Image

    from browser import DOCS_SHOTS, WIDTH, docs_screenshots

    out, _, _ = quick_run
    shots = docs_screenshots(out, tmp_path, browser=_browser())
    for shot in shots:
        with Image.open(shot) as picture:
            assert picture.size[0] == WIDTH
            grey = picture.convert("L")
            dark = sum(n for n, v in grey.getcolors(256) or [] if v < 128)
            assert dark > 0.005 * picture.size[0] * picture.size[1], f"{shot.name} is blank"
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    for name, *_ in DOCS_SHOTS:
        committed = root / "docs" / name
        assert committed.is_file(), f"docs/{name} is missing: scripts/docs_screenshots.py"
        with Image.open(committed) as picture:
            assert picture.size[0] == WIDTH
        assert f"docs/{name}" in readme, f"the README does not show docs/{name}"


def test_the_printed_explore_command_opens_the_trained_model_on_the_test_digits(
    quick_run: tuple[Path, list[Path], str],
) -> None:
    import http.client
    import json
    import shlex
    import signal
    import subprocess
    import sys

    out, _, printed = quick_run
    command = (out / "explore" / "command.txt").read_text().strip()
    assert command in printed, "the demo prints the command it saved"
    argv = shlex.split(command)
    assert argv[:3] == ["netsight", "explore", "zoo:Vgg16Net"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "netsight", *argv[1:], "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert " at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].strip()
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1]
        images: list[dict] = []
        for _ in range(600):  # the images load in the background after the URL is printed
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/model", headers={"X-Netsight-Token": token})
            model = json.loads(conn.getresponse().read())
            conn.request("GET", "/api/images", headers={"X-Netsight-Token": token})
            images = json.loads(conn.getresponse().read())
            conn.close()
            if model["pending_images"] == 0:
                break
            time.sleep(0.1)
        assert len(images) == 16 and not model["load_errors"]
        # the trained weights were loaded: the predictions are those of the demo's model
        trained = Vgg16Net()
        trained.load_state_dict(torch.load(out / "vgg16_digits.pth", weights_only=True))
        trained.eval()
        folder = out / "explore" / "digits"
        for info in images[:4]:
            x = netsight.load_image(folder / info["name"], size=32, mean=(0.5,), std=(0.5,))
            with torch.no_grad():
                expected = int(trained(x).argmax())
            assert info["predictions"][0]["index"] == expected, info["name"]
            assert info["predictions"][0]["name"] == str(expected)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
