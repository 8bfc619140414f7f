"""Library support of the interactive graph explorer (issue 15): expanding,
collapsing and unrolling modules of the Graphviz dataflow graph, mapping drawn
nodes back to modules, and a partial graph of a forward that fails."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from netsight.diagram.graph import (
    Dataflow,
    Graph,
    build_graph,
    record_dataflow,
    render,
    to_dot,
)
from netsight.trace import TraceError

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def flow() -> Dataflow:
    torch.manual_seed(0)
    return record_dataflow(torchvision.models.resnet18(weights=None), (1, 3, 64, 64))


def _names(graph: Graph) -> list[str]:
    return [n.name for n in graph.nodes]


def _block(prefix: str) -> list[str]:
    """The nodes of one BasicBlock without downsampling, drawn open."""
    return [
        f"{prefix}.conv1",
        f"{prefix}.bn1",
        f"{prefix}.relu",
        f"{prefix}.conv2",
        f"{prefix}.bn2",
        "add",
        f"{prefix}.relu",
    ]


def _down_block(prefix: str) -> list[str]:
    return [
        f"{prefix}.conv1",
        f"{prefix}.bn1",
        f"{prefix}.relu",
        f"{prefix}.conv2",
        f"{prefix}.bn2",
        f"{prefix}.downsample",
        "add",
        f"{prefix}.relu",
    ]


STEM = ["input", "conv1", "bn1", "relu", "maxpool"]
HEAD = ["avgpool", "fc", "output"]


# --------------------------------------------------------------------------- defaults


def test_default_graph_is_unchanged(flow: Dataflow) -> None:
    g = build_graph(flow)
    expected = [*STEM, *_block("layer1.0")]
    for layer in ("layer2", "layer3", "layer4"):
        expected += [*_down_block(f"{layer}.0"), *_block(f"{layer}.1")]
    assert _names(g) == [*expected, *HEAD]
    # layer1's two blocks are rolled into one cluster x 2
    assert [(c.repeat, c.names) for c in g.clusters] == [(2, ("layer1.0", "layer1.1"))]
    assert all(not n.failed for n in g.nodes)
    assert g.error is None
    assert g.node("layer1.0.conv1").rolled_names == ("layer1.0.conv1", "layer1.1.conv1")
    assert g.node("layer2.0.conv1").rolled_names == ()
    # keyword defaults are the same graph
    assert build_graph(flow, expanded=(), collapsed=set(), unrolled=frozenset()) == g

    d2 = build_graph(flow, depth=2)
    assert _names(d2) == [
        *STEM,
        "layer1.0",
        *("layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"),
        *HEAD,
    ]
    rolled = d2.node("layer1.0")
    assert rolled.repeat == 2 and rolled.rolled_names == ("layer1.0", "layer1.1")
    assert rolled.expandable and not d2.node("conv1").expandable
    assert d2.node("layer2.0").rolled_names == ()

    d1 = build_graph(flow, depth=1)
    assert _names(d1) == [*STEM, "layer1", "layer2", "layer3", "layer4", *HEAD]
    assert all(d1.node(f"layer{i}").expandable for i in range(1, 5))


# ------------------------------------------------------------- expand, collapse, unroll


def test_collapsed_draws_one_box(flow: Dataflow) -> None:
    g = build_graph(flow, collapsed={"layer1"})
    assert _names(g)[:7] == [*STEM, "layer1", "layer2.0.conv1"]
    node = g.node("layer1")
    assert node.kind == "module" and node.expandable and node.repeat == 1
    assert node.out_shapes == ((1, 64, 16, 16),)
    assert g.clusters == ()
    assert not any(n.startswith("layer1.") for n in _names(g))
    # collapsing wins over expanding, and the model itself can be collapsed
    assert build_graph(flow, collapsed={"layer1"}, expanded={"layer1"}) == g
    assert _names(build_graph(flow, collapsed={""})) == ["input", "ResNet", "output"]


def test_expanded_beyond_depth(flow: Dataflow) -> None:
    g = build_graph(flow, depth=2, expanded={"layer1.0"})
    # the expanded block is drawn open; its sibling stays one box (not rolled with it)
    assert _names(g)[:14] == [*STEM, *_block("layer1.0"), "layer1.1", "layer2.0"]
    assert g.node("layer1.1").repeat == 1 and g.node("layer1.1").expandable
    assert g.clusters == ()
    # expanding every block a rolled node stands for keeps them rolled, drawn open
    both = build_graph(
        flow, depth=2, expanded=set(build_graph(flow, depth=2).node("layer1.0").rolled_names)
    )
    assert [c.names for c in both.clusters] == [("layer1.0", "layer1.1")]
    assert _names(both)[:13] == [*STEM, *_block("layer1.0"), "layer2.0"]

    # blocks inside a container expanded beyond depth roll too
    d1 = build_graph(flow, depth=1, expanded={"layer1", "layer2"})
    assert _names(d1) == [
        *STEM,
        "layer1.0",
        "layer2.0",
        "layer2.1",
        *("layer3", "layer4"),
        *HEAD,
    ]
    assert d1.node("layer1.0").repeat == 2
    assert d1.node("layer1.0").rolled_names == ("layer1.0", "layer1.1")


def test_unrolled_draws_every_block(flow: Dataflow) -> None:
    g = build_graph(flow, unrolled={"layer1"})
    assert _names(g)[: 5 + 14] == [*STEM, *_block("layer1.0"), *_block("layer1.1")]
    assert g.clusters == ()
    assert g.node("layer1.1.conv1").rolled_names == ()
    d2 = build_graph(flow, depth=2, unrolled={"layer1"})
    assert _names(d2)[5:8] == ["layer1.0", "layer1.1", "layer2.0"]
    assert d2.node("layer1.0").repeat == 1
    # the same as not rolling at all
    assert _names(g) == _names(build_graph(flow, roll=False))


def test_unknown_names_are_refused(flow: Dataflow) -> None:
    with pytest.raises(ValueError, match=r"expanded: .*'layer9'.*did you mean 'layer") as info:
        build_graph(flow, expanded={"layer9"})
    assert "layer9" in str(info.value)
    with pytest.raises(ValueError, match=r"collapsed: .*'layr1\.0'.*did you mean 'layer1\.0'"):
        build_graph(flow, collapsed=["layr1.0"])
    with pytest.raises(ValueError, match=r"unrolled: .*'nope'"):
        build_graph(flow, unrolled=("layer1", "nope"))
    with pytest.raises(TypeError, match="expanded: expected a collection"):
        build_graph(flow, expanded="layer1")
    with pytest.raises(TypeError, match="collapsed: module names must be strings"):
        build_graph(flow, collapsed=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="depth"):
        build_graph(flow, depth=-1)


# --------------------------------------------------------------------------- module_nodes


def test_module_nodes(flow: Dataflow) -> None:
    g = build_graph(flow)
    ids = g.module_nodes()
    conv1 = g.node("layer1.0.conv1").id
    assert ids["layer1.1.conv1"] == ids["layer1.0.conv1"] == conv1
    assert ids["fc"] == g.node("fc").id
    assert ids["layer2.0.downsample.0"] == g.node("layer2.0.downsample").id
    # modules drawn open have no node of their own
    assert "layer1" not in ids and "layer1.0" not in ids and "" not in ids
    # every id is a drawn node
    assert set(ids.values()) <= {n.id for n in g.nodes}

    d2 = build_graph(flow, depth=2)
    rolled = d2.node("layer1.0").id
    ids2 = d2.module_nodes()
    assert ids2["layer1.0"] == ids2["layer1.1"] == ids2["layer1.1.conv1"] == rolled
    assert ids2["layer3.1.bn2"] == d2.node("layer3.1").id
    d0 = build_graph(flow, depth=0).module_nodes()
    assert set(d0.values()) == {build_graph(flow, depth=0).node("ResNet").id}
    assert "layer4.1.conv2" in d0 and "" in d0


# --------------------------------------------------------------------------- partial graphs


class BrokenNet(nn.Module):
    """Fails in its third layer: the Linear expects 10 features, the conv gives 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(10, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(self.head(x))


def test_partial_graph_of_a_failing_forward() -> None:
    model = BrokenNet()
    with pytest.raises(TraceError):
        record_dataflow(model, (1, 3, 16, 16))
    flow = record_dataflow(model, (1, 3, 16, 16), partial=True)
    assert flow.error is not None and "'head.1' (Linear)" in flow.error
    assert flow.failed_call is not None
    failed = flow.calls[flow.failed_call]
    assert failed.name == "head.1" and failed.out_shapes == ()
    assert failed.end == len(flow.steps)
    assert flow.calls[failed.parent].name == "head"
    assert flow.calls[0].end == len(flow.steps) and flow.outputs == ()
    assert [c.name for c in flow.calls] == ["", "conv", "pool", "head", "head.0", "head.1"]
    assert flow.execution == "real"  # meta failed, then the real pass did too

    g = build_graph(flow)
    assert _names(g) == ["input", "conv", "pool", "head.0", "head.1"]
    assert [n.name for n in g.nodes if n.failed] == ["head.1"]
    assert g.error == flow.error
    dot = to_dot(g)
    assert '#d62728", penwidth=2.5' in dot
    assert "failed in &#x27;head.1&#x27; (Linear)" in dot
    assert "mat1 and mat2 shapes cannot be multiplied" in dot
    svg = render(dot, "svg").decode()
    assert "#d62728" in svg and "head.1" in svg

    # collapsed to depth 1: the enclosing box is marked
    g1 = build_graph(flow, depth=1)
    assert [n.name for n in g1.nodes if n.failed] == ["head"]
    assert g1.module_nodes()["head.1"] == g1.node("head").id
    # a forward that completes is not partial
    ok = record_dataflow(nn.Sequential(nn.Linear(4, 2)), (1, 4), partial=True)
    assert ok.error is None and ok.failed_call is None
    with pytest.raises(TypeError, match="partial"):
        record_dataflow(model, (1, 3, 16, 16), partial="yes")  # type: ignore[arg-type]


def test_hostile_module_names_stay_escaped_in_a_partial_graph() -> None:
    model = nn.Sequential()
    model.add_module("stem", nn.Linear(8, 8))
    model.add_module(HOSTILE, nn.Linear(10, 2))  # fails: 8 features in, 10 expected
    flow = record_dataflow(model, (1, 8), partial=True)
    assert flow.error is not None and HOSTILE in flow.error
    assert flow.calls[flow.failed_call or 0].name == HOSTILE
    g = build_graph(flow)
    assert g.node(HOSTILE).failed
    assert g.module_nodes()[HOSTILE] == g.node(HOSTILE).id
    dot = to_dot(g)
    assert HOSTILE not in dot
    assert "&lt;img src=x onerror=alert(1)&gt;" in dot
    svg = render(dot, "svg").decode()
    assert "<img" not in svg
    with pytest.raises(ValueError) as info:
        build_graph(flow, expanded={HOSTILE + "x"})
    assert HOSTILE in str(info.value)


def test_long_errors_are_shortened_in_the_title() -> None:
    long_name = "x" * 400
    model = nn.Sequential()
    model.add_module(long_name, nn.Linear(10, 2))
    flow = record_dataflow(model, (1, 8), partial=True)
    dot = to_dot(build_graph(flow))
    title = next(line for line in dot.splitlines() if line.strip().startswith("label=<<B>"))
    assert long_name not in title and "…" in title
    assert len(title) < 800
