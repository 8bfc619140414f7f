"""TikZ (PlotNeuralNet-style) drawings compiled with the real pdflatex, and block pictures."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F

import netsight
from helpers import assert_unchanged, snapshot
from netsight.diagram.blocks import block_picture
from netsight.diagram.stages import PAGE_WIDTH, Network, extract, layout
from netsight.diagram.tikz import (
    LatexError,
    LatexNotFoundError,
    compile_pdf,
    tex_escape,
    to_tikz,
)
from netsight.zoo import Vgg16Net

# Under CI=true every binary is installed and a skip fails the run (conftest.py).
needs_tex = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and not all(shutil.which(b) for b in ("pdflatex", "pdftoppm", "pdfinfo", "pdffonts")),
    reason="needs pdflatex (texlive-latex-base) and poppler-utils",
)

VGG_INPUT = (1, 1, 32, 32)
RESNET_INPUT = (1, 3, 224, 224)


class WeirdNames(nn.Module):
    """Module names with characters that break TeX (and DOT, XML)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("conv<1>&_%{x}", nn.Conv2d(3, 8, 3, padding=1))
        self.add_module("head_<&_%{", nn.Linear(8 * 16 * 16, 10))
        self.add_module("soft $#^~\\|", nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, head, soft = self.children()
        return soft(head(torch.flatten(conv(x), 1)))  # type: ignore[no-any-return]


class Functional(nn.Module):
    """Pools, activations and a residual addition written in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        x = x + F.relu(self.res(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.softmax(self.fc(x), dim=1)


@pytest.fixture(scope="module")
def vgg() -> Network:
    return extract(Vgg16Net(), VGG_INPUT)


@pytest.fixture(scope="module")
def resnet() -> Network:
    return extract(torchvision.models.resnet18(), RESNET_INPUT)


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not shutil.which("pdflatex") and os.environ.get("CI") != "true":
        pytest.skip("needs pdflatex (texlive-latex-base)")
    out = tmp_path_factory.mktemp("tikz")
    return {
        "vgg16": compile_pdf(to_tikz(Vgg16Net(), VGG_INPUT), out / "vgg16.pdf"),
        "resnet18": compile_pdf(
            to_tikz(torchvision.models.resnet18(), RESNET_INPUT), out / "resnet18.pdf"
        ),
    }


def _page_png(pdf: Path, dpi: int = 40) -> Image.Image:
    prefix = pdf.with_name(pdf.stem + "-page")
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-png", "-f", "1", "-l", "1", "-singlefile", pdf, prefix],
        check=True,
        timeout=60,
    )
    return Image.open(prefix.with_suffix(".png")).convert("L")


def _ink(image: Image.Image) -> float:
    """Fraction of pixels that are not white."""
    histogram = image.convert("L").histogram()
    return 1 - sum(histogram[245:]) / (image.width * image.height)


def _pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", pdf], capture_output=True, text=True, check=True).stdout
    return int(next(line for line in info.splitlines() if line.startswith("Pages:")).split()[1])


# --------------------------------------------------------------------------- stages


def test_vgg16_stages(vgg: Network) -> None:
    assert vgg.count("input") == 1 and vgg.stages[0].shape == (1, 32, 32)
    assert vgg.count("conv") == 13
    assert vgg.count("pool") == 5
    assert vgg.count("fc") == 3
    assert vgg.skips == ()
    # conv + BN + ReLU is one box; the tutorial's blocks are the captions
    first = vgg.stages[1]
    assert first.types == ("Conv2d", "BatchNorm2d", "ReLU") and first.activation == "ReLU"
    assert [s.channels for s in vgg.stages if s.kind == "conv"] == (
        [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    )
    assert [s.spatial for s in vgg.stages if s.kind == "pool"] == [
        (16, 16),
        (8, 8),
        (4, 4),
        (2, 2),
        (1, 1),
    ]
    assert vgg.captions[:6] == ("input", "layer1", "layer2", "layer3", "layer4", "layer5")
    assert [s.channels for s in vgg.stages if s.kind == "fc"] == [512, 256, 10]


def test_resnet18_stages_and_skip_arcs(resnet: Network) -> None:
    assert resnet.count("conv") == 17  # conv1 + 16 in the blocks; downsample is on the arcs
    assert resnet.count("pool") == 2 and resnet.count("fc") == 1
    assert len(resnet.skips) == 8
    assert [s.container for s in resnet.skips] == [
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)
    ]
    projections = [s.projection for s in resnet.skips]
    assert projections.count(None) == 5
    assert projections.count("1×1 conv, /2") == 3
    for skip in resnet.skips:
        # each arc spans the block's two convolutions
        inside = resnet.stages[skip.src + 1 : skip.dst + 1]
        assert [s.kind for s in inside] == ["conv", "conv"]
        assert inside[0].group == inside[1].group


def test_functional_layers_and_residual_add() -> None:
    net = extract(Functional(), (1, 3, 16, 16))
    assert [s.kind for s in net.stages] == [
        "input",
        "conv",
        "pool",
        "conv",
        "pool",
        "fc",
        "softmax",
    ]
    assert net.stages[1].activation == "relu"
    assert len(net.skips) == 1 and net.skips[0].projection is None
    assert (net.skips[0].src, net.skips[0].dst) == (2, 3)


def test_both_networks_fit_the_page_unscaled_by_latex(vgg: Network, resnet: Network) -> None:
    for net in (vgg, resnet):
        lay = layout(net)
        assert lay.xmax - lay.xmin <= PAGE_WIDTH + 1.5  # A4 landscape minus margins: 27.7 cm
        assert lay.ymax - lay.ymin < 17
        assert 0.75 < lay.scale <= 1.0
        # the first feature map has the full height in both, whatever its resolution
        assert max(b.h for b in lay.boxes) == pytest.approx(4.2 * lay.scale)


def test_to_tikz_leaves_the_model_as_it_came() -> None:
    model = torchvision.models.resnet18()
    model.train()
    before = snapshot(model)
    tex = to_tikz(model, RESNET_INPUT)
    assert_unchanged(model, before)
    assert tex.startswith("% ResNet") and r"\end{document}" in tex
    assert (
        sum(line.startswith(r"\nsbox{") for line in tex.splitlines()) == 21
    )  # input, 17 conv, 2 pool, 1 fc
    assert tex.count("controls") == 8  # skip arcs
    # only what Debian's texlive-latex-base and texlive-pictures provide
    packages = re.findall(r"\\usepackage(?:\[[^]]*\])?\{([^}]*)\}", tex)
    assert packages == ["geometry", "graphicx", "tikz"]
    assert r"\documentclass[10pt]{article}" in tex and "\\input" not in tex


# --------------------------------------------------------------------------- pdflatex


@needs_tex
@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_compiled_page_is_one_page_drawn_and_within_the_margins(
    pdfs: dict[str, Path], name: str
) -> None:
    pdf = pdfs[name]
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert pdf.with_suffix(".tex").exists()
    assert _pages(pdf) == 1
    page = _page_png(pdf)
    assert page.width > page.height  # landscape
    assert _ink(page) > 0.03, "the page is (nearly) blank"
    # 1 cm margins: nothing drawn in the outer 0.8 cm
    border = round(0.8 / 2.54 * 40)
    w, h = page.size
    for box in ((0, 0, w, border), (0, h - border, w, h), (0, 0, border, h), (w - border, 0, w, h)):
        assert _ink(page.crop(box)) == 0, f"drawing reaches the page edge at {box}"
    fonts = subprocess.run(["pdffonts", pdf], capture_output=True, text=True, check=True).stdout
    assert "Type 3" not in fonts  # no bitmap fonts: only texlive-base's Type 1 fonts


@needs_tex
def test_names_that_break_tex_are_escaped_and_compile(tmp_path: Path) -> None:
    title = r"net <&_%{}$#^~\> 100%"
    tex = to_tikz(WeirdNames(), (1, 3, 16, 16), title=title)
    assert r"conv\textless{}1\textgreater{}\&\_\%\{x\}" in tex
    assert tex_escape(title) in tex
    # through the public entry point, which dispatches to compile_pdf
    out = tmp_path / "weird.pdf"
    pdf = netsight.diagram(WeirdNames(), input_size=(1, 3, 16, 16), format="pdf-3d", out=out)
    assert pdf == out and _pages(out) == 1
    text = subprocess.run(
        ["pdftotext", out, "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "conv<1>&" in text and "%{x}" in text and "soft $#" in text and "\\|" in text


def test_tex_escape() -> None:
    raw = 'a\\b{c}d%e&f_g#h$i^j~k<l>m|n"o×p\u00e9q\u4e2d'
    escaped = tex_escape(raw)
    assert escaped == (
        r"a\textbackslash{}b\{c\}d\%e\&f\_g\#h{\char36}i\textasciicircum{}j"
        r"\textasciitilde{}k\textless{}l\textgreater{}m\textbar{}n''o\ensuremath{\times}peq?"
    )
    assert tex_escape("line\nbreak") == "line break"


@needs_tex
def test_latex_error_shows_the_log_lines(tmp_path: Path) -> None:
    bad = "\\documentclass{article}\n\\begin{document}\n\\nosuchcommand\n\\end{document}\n"
    with pytest.raises(LatexError, match="Undefined control sequence") as info:
        compile_pdf(bad, tmp_path / "bad.pdf")
    assert "bad.tex" in str(info.value)
    assert (tmp_path / "bad.tex").read_text() == bad
    assert not (tmp_path / "bad.pdf").exists()


def test_missing_pdflatex_names_the_package_and_writes_tex(tmp_path: Path) -> None:
    tex = to_tikz(Functional(), (1, 3, 16, 16))
    with pytest.raises(LatexNotFoundError, match="texlive-latex-base") as info:
        compile_pdf(tex, tmp_path / "net.pdf", executable="netsight-no-such-pdflatex")
    assert str(tmp_path / "net.tex") in str(info.value)
    assert (tmp_path / "net.tex").read_text() == tex
    assert not (tmp_path / "net.pdf").exists()
    with pytest.raises(ValueError, match=r"\.pdf"):
        compile_pdf(tex, tmp_path / "net.png")


def test_pdf_3d_without_pdflatex_on_path(tmp_path: Path) -> None:
    # PATH holds only the interpreter's directory: no TeX there
    out = tmp_path / "net.pdf"
    script = (
        "import sys, netsight\n"
        "from netsight.zoo import Vgg16Net\n"
        "try:\n"
        "    netsight.diagram(Vgg16Net(), input_size=(1, 1, 32, 32), format='pdf-3d',\n"
        f"                     out={str(out)!r})\n"
        "except FileNotFoundError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "texlive-latex-base" in proc.stdout and "net.tex" in proc.stdout
    assert not out.exists()
    assert (tmp_path / "net.tex").read_text().startswith("% Vgg16Net")


# --------------------------------------------------------------------------- block picture


@pytest.mark.parametrize(
    ("model", "size"),
    [(Vgg16Net(), VGG_INPUT), (torchvision.models.resnet18(), RESNET_INPUT)],
    ids=["vgg16", "resnet18"],
)
def test_block_picture_png(model: nn.Module, size: tuple[int, ...]) -> None:
    data = block_picture(model, size)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    assert 1000 <= image.width <= 2500 and 250 <= image.height <= 1200
    assert image.width > 2 * image.height
    assert _ink(image.convert("RGB")) > 0.05
    # warm conv boxes and the red pools are there
    colours = {c for _n, c in image.convert("RGB").getcolors(1 << 20) or []}
    assert (0xF7, 0xD7, 0x74) in colours and (0xD9, 0x53, 0x4F) in colours


def test_block_picture_svg_and_dispatch() -> None:
    svg = block_picture(WeirdNames(), (1, 3, 16, 16), format="svg")
    root = ET.fromstring(svg)  # well-formed despite < & { in the names
    assert root.tag.endswith("svg")
    assert b"conv&lt;1&gt;&amp;_%{x}" in svg and b"soft $#^~\\|" in svg
    png = netsight.diagram(Functional(), input_size=(1, 3, 16, 16), format="blocks")
    assert isinstance(png, bytes) and png[:4] == b"\x89PNG"
    tex = netsight.diagram(Functional(), input_size=(1, 3, 16, 16), format="tikz")
    assert isinstance(tex, str) and tex == to_tikz(Functional(), (1, 3, 16, 16))
    with pytest.raises(ValueError, match="'png' or 'svg'"):
        block_picture(Functional(), (1, 3, 16, 16), format="jpg")


class _NeedsScale(nn.Module):
    """A forward that needs a keyword argument and a long input: run options matter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 8, 3)

    def forward(self, tokens: torch.Tensor, *, scale: float) -> torch.Tensor:
        return self.conv(self.embed(tokens).transpose(1, 2) * scale)


@pytest.mark.parametrize("fmt", ["tex", "blocks"])
def test_stage_formats_honour_dtypes_and_forward_kwargs(fmt: str) -> None:
    model = _NeedsScale()
    with pytest.raises(netsight.TraceError):  # float input and no scale: the forward fails
        netsight.diagram(model, input_size=(1, 6), format=fmt)
    out = netsight.diagram(
        model, input_size=(1, 6), format=fmt, dtypes=[torch.long], forward_kwargs={"scale": 2.0}
    )
    assert out


@pytest.mark.parametrize("option", [{"depth": 1}, {"direction": "LR"}, {"roll": False}])
def test_stage_formats_refuse_graph_only_options(option: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(option))}: options of the Graphviz"):
        netsight.diagram(nn.Linear(2, 2), input_size=(1, 2), format="tex", **option)
