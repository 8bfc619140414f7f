"""The one-page report: its sections, escaping, skips with reasons, a training
run, the CLI, and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import netsight
from browser import BROWSER_FLAGS, chromium
from helpers import assert_unchanged, snapshot
from netsight.cli import main
from netsight.report import report

IDS = ["overview", "structure", "layers", "statistics", "patterns", "cam", "training"]


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def _pictures(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/(png|svg\+xml);base64,([A-Za-z0-9+/=]+)"', page)
    pictures = []
    for kind, data in found:
        raw = base64.b64decode(data, validate=True)
        if kind == "png":
            pictures.append(Image.open(io.BytesIO(raw)))
        else:
            assert raw.lstrip().startswith(b"<?xml") or b"<svg" in raw[:400]
    return pictures


def test_every_section_for_a_small_cnn() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    images = torch.randn(3, 1, 16, 16)
    before = snapshot(model)
    r = report(
        model, images, labels=[0, 1, 2], class_names=["a", "b", "c", "d"], faithfulness_steps=3
    )
    assert_unchanged(model, before)
    assert [s.id for s in r.sections] == IDS
    skipped = {s.id: s.skipped for s in r.sections if s.skipped}
    assert list(skipped) == ["training"] and "run=" in str(skipped["training"])
    s = netsight.summary(model, input_size=(1, 1, 16, 16))
    assert f"{s.total_params:,}" in r.html
    assert f"{s.total_mult_adds:,}" in r.html
    pictures = _pictures(r.html)
    assert all(p.size[0] > 8 and p.size[1] > 8 for p in pictures)
    alts = re.findall(r'<img[^>]* alt="([^"]*)"', r.html)
    assert len(alts) == len(pictures) + 1  # and the dataflow graph, an SVG
    for conv in ("features.0", "features.3", "features.6"):  # every convolution, one by one
        assert f"{conv}: kernels" in alts
        assert any(a.startswith(f"{conv}: the maps it produces") for a in alts)
        assert f"{conv}: each kernel beside the map it makes" in alts
    assert not [f for f in r.figures if f.audit.problems()]
    # 3 images, each beside its 3 maps, enlarged so the marks stay crisp
    cam = next(s for s in r.sections if s.id == "cam")
    tiles = _pictures(cam.html)[1:]  # after the colour bar
    assert len(tiles) == 3 + 9 and all(p.size == (192, 192) for p in tiles)
    # each CAM overlay is a real picture, not a blank tile
    assert all(len(p.convert("L").getcolors(256) or []) > 4 for p in tiles)
    assert cam.html.count("<div>predicted ") == 3 and "p = " in cam.html
    table = cam.html[cam.html.index("<h3>Faithfulness</h3>") :]
    names = re.findall(r"<tr><td>([\w+]+)</td>", table)
    assert names == ["gradcam", "gradcam++", "layercam", "random", "center"]
    aucs = [float(v) for v in re.findall(r"<td>(\d\.\d{3})</td>", table)]
    assert len(aucs) == 10 and all(0.0 <= v <= 1.0 for v in aucs)
    prediction = model.eval()(images).argmax(1).tolist()
    overview = r.sections[0].html
    assert overview.count(">right<") + overview.count(">wrong<") == 3
    right = sum(p == k for p, k in zip(prediction, [0, 1, 2], strict=True))
    assert overview.count(">right<") == right
    assert f"{right} of 3 images classified correctly" in overview
    assert cam.html.count("<div>right</div>") == right


def test_names_from_the_model_are_escaped() -> None:
    model = nn.Sequential()
    model.add_module("<b>&conv", nn.Conv2d(1, 4, 3))
    model.add_module("flat", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(4, 2))
    r = report(
        model,
        torch.randn(2, 1, 12, 12),
        class_names=["<script>alert(1)</script>"] * 2,
        title="<i>title</i>",
    )
    assert "<script>alert(1)" not in r.html and "&lt;script&gt;alert(1)" in r.html
    assert "<b>&conv" not in r.html and "&lt;b&gt;&amp;conv" in r.html
    assert "<i>title</i>" not in r.html and "&lt;i&gt;title&lt;/i&gt;" in r.html
    assert r.html.count("<script>") == 1  # the page's own


def test_sections_that_cannot_apply_say_why() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    r = report(
        model, torch.randn(2, 1, 8, 8), cam_methods=("gradcam", "saliency"), faithfulness_steps=0
    )
    assert "<h3>Faithfulness</h3>" not in r.html and "Faithfulness not measured" in r.html
    skipped = {s.id: s.skipped for s in r.sections if s.skipped}
    assert "no nn.Conv2d" in str(skipped["layers"])
    assert "no nn.Conv2d" in str(skipped["patterns"])
    assert "cam" not in skipped  # saliency works on the input
    assert "skipped gradcam" in next(s.html for s in r.sections if s.id == "cam")
    assert "Not shown: the model has no nn.Conv2d" in r.html
    assert str(r).startswith("Sequential: netsight report: Overview")


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.conv(x))
        return {"logits": self.fc(h.mean((2, 3))), "map": h}


def test_a_model_with_dict_output_gets_every_section_but_the_cams() -> None:
    model = _DictOutput().train()
    images = torch.randn(2, 3, 16, 16)
    before = snapshot(model)
    r = report(model, images)
    assert_unchanged(model, before)
    skipped = {s.id: s.skipped for s in r.sections if s.skipped}
    assert set(skipped) == {"cam", "training"}
    reason = str(skipped["cam"])
    assert reason.startswith("gradcam, gradcam++, layercam: the model returned a dict")
    assert reason.count("the model returned a dict") == 1
    assert "Predictions" not in r.html  # no (batch, classes) logits to read them from


def test_a_section_that_fails_says_so_and_the_page_is_still_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    module = importlib.import_module("netsight.report")

    def broken(ctx: object) -> str:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(module, "_layers", broken)
    with pytest.warns(RuntimeWarning, match="the Layer by layer section failed"):
        r = report(SmallCNN(), torch.randn(2, 1, 16, 16), cam_methods=("gradcam",))
    filters = next(s for s in r.sections if s.id == "layers")
    assert filters.skipped == "failed: RuntimeError: drawing failed"
    assert "Not shown: failed: RuntimeError: drawing failed" in r.html
    assert next(s for s in r.sections if s.id == "cam").skipped is None


def test_training_section_reads_a_monitor_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with netsight.TrainingMonitor(model, tmp_path, "run", probe=(x[:4], y[:4]), log_every=1) as mon:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.step(loss, model(x).detach(), y)
        mon.epoch_end()
    run = tmp_path / "run"
    r = report(model, x[:2], run=run, cam_methods=("gradcam",), diagram=False)
    training = next(s for s in r.sections if s.id == "training")
    assert training.skipped is None
    assert "loss and accuracy" in training.html and "gradient flow" in training.html
    assert ">3<" in training.html  # steps
    structure = next(s for s in r.sections if s.id == "structure")
    assert "dataflow graph: turned off (diagram=False)" in structure.html


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    model = SmallCNN()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor, got \(1, 16, 16\)"):
        report(model, torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="labels: 1 labels for 2 images"):
        report(model, torch.randn(2, 1, 16, 16), labels=[1])
    with pytest.raises(FileNotFoundError, match=r"no scalars\.csv"):
        report(model, torch.randn(2, 1, 16, 16), run=tmp_path)
    with pytest.raises(ValueError, match="faithfulness_steps"):
        report(model, torch.randn(2, 1, 16, 16), faithfulness_steps=-1)
    with pytest.raises(KeyError, match=r"no layer named 'features\.11'.*did you mean"):
        report(model, torch.randn(2, 1, 16, 16), cam_layer="features.11")
    with pytest.raises(ValueError, match="unknown"):
        report(model, torch.randn(2, 1, 16, 16), cam_methods=("gradcamm",))
    with pytest.raises(netsight.TraceError, match=r"features\.0"):
        report(model, torch.randn(2, 3, 16, 16))
    assert netsight.count_hooks(model) == 0


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium (Debian package chromium)")
    torch.manual_seed(0)
    model = SmallCNN()
    page = report(model, torch.randn(2, 1, 16, 16)).save(tmp_path / "report.html")
    flags = [
        *BROWSER_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attributes.get("data-ready") == "1"
    images = page.read_text(encoding="utf-8").count("<img ")
    assert int(attributes["data-images"]) == images > 10
    assert attributes["data-broken-images"] == "0"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    grey = Image.open(shot).convert("L")
    dark = sum(count for count, value in grey.getcolors(256) or [] if value < 128)
    assert dark > 0.01 * grey.size[0] * grey.size[1]  # text, tables and pictures drawn


def test_impossible_labels_are_refused_before_any_work() -> None:
    model = SmallCNN(classes=4)
    calls: list[int] = []
    model.register_forward_hook(lambda m, a, o: calls.append(1))
    images = torch.randn(2, 1, 16, 16)
    refused_at_once: list[tuple[object, type[Exception], str]] = [
        ([-1, 0], ValueError, r"labels: label -1 is out of range; class indices start at 0"),
        ([1], ValueError, r"labels: 1 labels for 2 images"),
        ([0, 1, 2], ValueError, r"labels: 3 labels for 2 images"),
        ([1.0, 2], TypeError, r"labels: expected int label indices, got 1\.0 \(float\)"),
        ([True, 0], TypeError, r"got True \(bool\)"),
        ("01", TypeError, r"labels: expected a sequence of label indices, got"),
        (torch.tensor([0.0, 1.0]), TypeError, r"1-D integer tensor"),
    ]
    for labels, error, message in refused_at_once:
        with pytest.raises(error, match=message):
            report(model, images, labels=labels)  # type: ignore[arg-type]
    assert calls == []  # not even a forward
    # the class count comes from the model's output: one trace, one forward, no section
    with pytest.raises(
        ValueError, match=r"labels: label 999 is out of range; the model has 4 classes \(0 to 3\)"
    ):
        report(model, images, labels=[999, 1000])
    assert len(calls) <= 2
    assert netsight.count_hooks(model) == 1  # the test's own
    # numpy and tensor ints are class indices too
    import numpy as np

    page = report(
        model,
        images,
        labels=torch.tensor([3, 0]),
        cam_methods=(),
        faithfulness_steps=0,
        pattern_steps=0,
        diagram=False,
    )
    assert ">3<" in page.sections[0].html
    report(model, images, labels=[np.int64(1), 2], cam_methods=(), pattern_steps=0, diagram=False)


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "net.py"
    source.write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small():
                return nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
                )
            """
        )
    )
    paths = []
    for i, colour in enumerate(["red", "navy"]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (20, 20), colour).save(path)
        paths.append(str(path))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    out = tmp_path / "site" / "report.html"
    args = [
        "report",
        f"{source}:small",
        *paths,
        "--size",
        "24,24",
        "--labels",
        "0,2",
        "--classes",
        str(classes),
        "--methods",
        "gradcam,eigencam",
        "--faithfulness-steps",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "Where it looks: class activation maps:" in printed
    page = out.read_text(encoding="utf-8")
    assert "gradcam" in page and "eigencam" in page and "(bird)" in page
    assert "<h3>Faithfulness</h3>" in page and "3 steps" in page
    assert main([*args[:-2], "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main([*args[:7], "0", *args[8:]]) == 2
    assert "1 labels for 2 images" in capsys.readouterr().err
    # a label the 3-class model does not have: one line, exit 2, no page
    for bad in ("0,3", "=-1,0"):
        labels = ["--labels", bad] if not bad.startswith("=") else [f"--labels{bad}"]
        assert main([*args[:6], *labels, *args[8:-2], "--out", str(tmp_path / "bad.html")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("netsight: error: labels: label ") and len(err.splitlines()) == 1
        assert "is out of range" in err
    assert not (tmp_path / "bad.html").exists()


def test_a_cam_target_beyond_classes_explains_a_dict_output_and_segmentation() -> None:
    """``cam_target=``: the dict-output model above gets its CAMs from a ready-made
    target (its ``logits`` entry), and a segmentation model's maps explain its pixels
    of a class; the captions say what each map explains."""
    from netsight.cam import targets

    model = _DictOutput().eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    r = report(model, images, cam_target=targets.ClassScore(1), pattern_steps=0, diagram=False)
    assert not {s.id: s.skipped for s in r.sections if s.skipped}.get("cam")
    assert "gradcam, class 1, conv" in r.html
    torch.manual_seed(0)
    segmenter = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    r = report(
        segmenter,
        images,
        cam_target=targets.Segmentation(1),
        cam_methods=("gradcam",),
        pattern_steps=0,
        diagram=False,
    )
    assert "explains class 1 over the pixels predicted as it" in r.html
    assert "Each map explains class 1 over the pixels predicted as it" in r.html
