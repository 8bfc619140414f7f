"""netsight.diagram: dataflow structure on known models, escaping, golden DOT, real Graphviz."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import netsight
from netsight.cli import main
from netsight.diagram import Diagram, GraphvizNotFoundError
from netsight.trace import TraceError
from netsight.zoo import Vgg16Net


def _ops(d: Diagram) -> Counter[str]:
    return Counter(n.name for n in d.nodes if n.kind == "op")


def _in_degree(d: Diagram, node_id: str) -> int:
    return sum(e.dst == node_id for e in d.edges)


class SmallNet(nn.Module):
    """A residual block and a two-branch concatenation: the golden-file model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.branch_a(x)
        x = torch.cat([x, self.branch_b(x)], dim=1)
        return self.head(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- structure


def test_resnet18_has_eight_residual_additions() -> None:
    d = netsight.diagram(torchvision.models.resnet18(), input_size=(1, 3, 224, 224), roll=False)
    adds = [n for n in d.nodes if n.kind == "op"]
    assert [n.name for n in adds] == ["add"] * 8
    # every addition joins the block's main path and its shortcut
    assert all(_in_degree(d, n.id) == 2 for n in adds)
    assert d.graph.execution == "meta"
    names = {n.name for n in d.nodes}
    assert {"conv1", "layer4.1.bn2", "fc", "input", "output"} <= names
    assert d.graph.node("fc").params == 512 * 1000 + 1000
    assert d.graph.node("output").out_shapes == ((1, 1000),)


def test_resnet18_rolled_blocks_and_depths() -> None:
    model = torchvision.models.resnet18()
    rolled = netsight.diagram(model, input_size=(1, 3, 64, 64))
    # layer1's two identical blocks are drawn once, in a cluster marked x 2
    assert [c.repeat for c in rolled.graph.clusters] == [2]
    assert "x 2" in rolled.graph.clusters[0].label
    assert _ops(rolled)["add"] == 7
    d2 = netsight.diagram(model, input_size=(1, 3, 64, 64), depth=2)
    node = d2.graph.node("layer1.0")
    assert node.repeat == 2 and node.type_name == "BasicBlock"
    assert "x 2" in d2.dot
    d1 = netsight.diagram(model, input_size=(1, 3, 64, 64), depth=1)
    assert [n.name for n in d1.nodes] == [
        "input",
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
        "output",
    ]
    layer1 = d1.graph.node("layer1")
    assert layer1.out_shapes == ((1, 64, 16, 16),)
    assert layer1.params == sum(p.numel() for p in model.layer1.parameters())
    assert layer1.category == "container"
    d0 = netsight.diagram(model, input_size=(1, 3, 64, 64), depth=0)
    assert [n.kind for n in d0.nodes] == ["input", "module", "output"]


def test_densenet_block_concatenations() -> None:
    d = netsight.diagram(torchvision.models.densenet121(), input_size=(1, 3, 64, 64))
    cats = [n for n in d.nodes if n.kind == "op"]
    assert [n.name for n in cats] == ["cat"] * 4
    # a dense block concatenates its input and every layer's new features
    assert [_in_degree(d, n.id) for n in cats] == [1 + 6, 1 + 12, 1 + 24, 1 + 16]
    # and every dense layer reads everything before it in its block
    assert _in_degree(d, d.graph.node("features.denseblock1.denselayer6").id) == 6


def test_vgg16_is_a_chain() -> None:
    d = netsight.diagram(Vgg16Net(), input_size=(1, 1, 32, 32))
    assert not _ops(d)
    ids = [n.id for n in d.nodes]
    assert [(e.src, e.dst) for e in d.edges] == list(itertools.pairwise(ids))
    assert sum(n.type_name == "Conv2d" for n in d.nodes) == 13
    assert sum(n.type_name == "Linear" for n in d.nodes) == 3


def test_resnet152_rolls_to_a_readable_graph() -> None:
    model = torchvision.models.resnet152()
    d = netsight.diagram(model, input_size=(1, 3, 224, 224))
    assert len(d.nodes) == 92  # the README's figure ("92 nodes instead of 512")
    assert sorted(c.repeat for c in d.graph.clusters) == [2, 2, 7, 35]
    assert _ops(d)["add"] == 8
    unrolled = netsight.diagram(model, input_size=(1, 3, 224, 224), depth=3, roll=False)
    assert _ops(unrolled)["add"] == 50
    assert len(unrolled.nodes) == 512


def test_transformer_layers_roll_into_one() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 24, enable_nested_tensor=False)
    d = netsight.diagram(model, input_size=(2, 10, 32), depth=1)
    assert [(n.name, n.repeat) for n in d.nodes] == [("input", 1), ("layers.0", 24), ("output", 1)]
    expanded = netsight.diagram(model, input_size=(2, 10, 32))
    assert [c.repeat for c in expanded.graph.clusters] == [24]
    assert _ops(expanded)["add"] == 2  # the two residual additions of one layer


# --------------------------------------------------------------------------- DOT text


def test_golden_dot(golden) -> None:  # type: ignore[no-untyped-def]
    d = netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16))
    assert _ops(d) == {"add": 1, "cat": 1}
    golden("diagram_smallnet.dot", d.dot)
    assert d.dot == str(d)


def test_direction_and_legend() -> None:
    d = netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16), direction="LR")
    assert "rankdir=LR;" in d.dot
    assert "cluster_legend" in d.dot and 'legend_conv [label="conv"' in d.dot
    plain = netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16), legend=False)
    assert "legend" not in plain.dot
    with pytest.raises(ValueError, match="direction"):
        netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16), direction="XY")
    with pytest.raises(ValueError, match="format"):
        netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16), format="jpeg")  # type: ignore[call-overload]


def test_names_that_break_dot_are_escaped() -> None:
    odd = "a<b&c_d%e{f}\"g'"
    weird_type = type("Weird<T>&{x}", (nn.Linear,), {})
    model = nn.Sequential()
    model.add_module(odd, nn.Linear(4, 4))
    model.add_module("tail", weird_type(4, 2))
    d = netsight.diagram(model, input_size=(1, 4))
    assert d.graph.node(odd).name == odd
    assert "a&lt;b&amp;c_d%e{f}&quot;g&#x27;" in d.dot
    assert "Weird&lt;T&gt;&amp;{x}" in d.dot
    assert odd not in d.dot
    svg = d.render("svg").decode()  # the real dot parses it
    assert "a&lt;b&amp;c_d%e{f}" in svg


# --------------------------------------------------------------------------- Graphviz


def test_real_dot_renders_svg_png_pdf(tmp_path: Path) -> None:
    d = netsight.diagram(SmallNet(), input_size=(1, 3, 16, 16))
    svg = d.save(tmp_path / "net.svg").read_text()
    assert "<svg" in svg and "branch_a" in svg
    assert d.save(tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d.save(tmp_path / "net.pdf").read_bytes()[:5] == b"%PDF-"
    assert d.save(tmp_path / "net.dot").read_text() == d.dot
    assert d.save(tmp_path / "noext").name == "noext.svg"
    assert d._repr_svg_() is not None and d._repr_svg_().startswith("<?xml")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"\.svg"):
        d.save(tmp_path / "net.jpg")


def test_missing_dot_names_the_package_and_writes_dot(tmp_path: Path) -> None:
    d = netsight.diagram(
        SmallNet(), input_size=(1, 3, 16, 16), executable="netsight-no-such-dot-program"
    )
    assert d.dot.startswith("digraph")  # the text needs no binary
    with pytest.raises(GraphvizNotFoundError, match="package graphviz") as info:
        d.save(tmp_path / "net.svg")
    assert "net.dot" in str(info.value)
    assert (tmp_path / "net.dot").read_text() == d.dot
    assert not (tmp_path / "net.svg").exists()
    assert d._repr_svg_() is None


def test_cli_without_dot_on_path(tmp_path: Path) -> None:
    # PATH holds only the interpreter's directory: no Graphviz there
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = tmp_path / "vgg.png"
    proc = subprocess.run(
        [sys.executable, "-m", "netsight", "diagram", "zoo:Vgg16Net", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "graphviz" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    assert (tmp_path / "vgg.dot").read_text().startswith("digraph")


def test_cli_diagram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "zoo:Vgg16Net", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph netsight {")
    out = tmp_path / "r.svg"
    assert main(["diagram", "torchvision:resnet18", "--depth", "2", "--out", str(out)]) == 0
    assert "<svg" in out.read_text()
    assert "nodes" in capsys.readouterr().err
    dot_out = tmp_path / "r.dot"
    assert main(["diagram", "torchvision:resnet18", "--no-roll", "--out", str(dot_out)]) == 0
    assert dot_out.read_text().count("<B>add</B>") == 8
    assert main(["diagram", "zoo:Vgg16Net", "--out", str(tmp_path / "x.bmp")]) == 2


# --------------------------------------------------------------------------- bad input


def test_untraceable_model_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(10, 2))
    with pytest.raises(TraceError, match=r"'2' \(Linear\)") as info:
        netsight.diagram(model, input_size=(1, 8))
    assert info.value.module_name == "2"
    assert netsight.count_hooks(model) == 0


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 4)
        self.down = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # a decision on values: meta cannot take it
            return self.up(x)
        return self.down(x)


def test_value_dependent_control_flow_draws_the_path_taken() -> None:
    d = netsight.diagram(Branchy(), input_data=torch.ones(1, 4))
    names = [n.name for n in d.nodes]
    assert "up" in names and "down" not in names
    assert d.graph.execution == "real"
    assert any("value-dependent control flow" in note for note in d.notes)
    assert "value-dependent" in d.dot  # the note is in the drawing's title
    other = netsight.diagram(Branchy(), input_data=-torch.ones(1, 4))
    assert "down" in [n.name for n in other.nodes]


def test_model_leaves_as_it_came() -> None:
    model = torchvision.models.resnet18()
    model.train()
    model.layer2.eval()
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    netsight.diagram(model, input_size=(2, 3, 32, 32), execution="real", mode="train")
    netsight.diagram(model, input_size=(2, 3, 32, 32))
    assert netsight.count_hooks(model) == 0
    assert [m.training for m in model.modules()] == flags
    assert not model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_inputs_as_data_and_kwargs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 5)
            self.b = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) * self.b(y)

    d = netsight.diagram(TwoInputs(), input_data={"x": torch.randn(2, 3), "y": torch.randn(2, 4)})
    assert [n.name for n in d.nodes if n.kind == "input"] == ["x", "y"]
    assert _ops(d) == {"mul": 1}
    with pytest.raises(TypeError, match="exactly one"):
        netsight.diagram(TwoInputs())
