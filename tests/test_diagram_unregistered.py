"""Computation a diagram cannot attribute to a registered module is drawn, never
replaced by a false edge: modules held in plain lists, dicts or objects, modules
called with Python values, and tensors carried inside plain objects (torchvision's
``ImageList``). Each case here was drawn wrong before (issue 12)."""

from __future__ import annotations

import types

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules import module as module_module

import netsight
from helpers import assert_unchanged, snapshot


class PlainListBranches(nn.Module):
    """Three branches in a plain list (not an ``nn.ModuleList``), concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = [nn.Linear(8, 4) for _ in range(3)]
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([b(x) for b in self.branches], dim=1))


class DictHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.heads = {"a": nn.Linear(8, 3), "b": nn.Sequential(nn.Linear(8, 5), nn.ReLU())}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        return self.heads["a"](h), self.heads["b"](h)


class ObjectHeld(nn.Module):
    """A module kept as an attribute of a plain (non-module) object."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = types.SimpleNamespace(proj=nn.Linear(8, 6))
        self.out = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.parts.proj(x))


class ScalarArgument(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.identity = nn.Identity()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.identity(5)
        return self.fc(x) * k


class FailsAfterUnregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.side = [nn.Linear(8, 8)]
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.side[0](x))  # 8 features into a Linear(3, 2)


def _edges(diagram: netsight.Diagram) -> set[tuple[str, str]]:
    by_id = {n.id: n.name for n in diagram.nodes}
    return {(by_id[e.src], by_id[e.dst]) for e in diagram.edges}


def _draw(model: nn.Module, **inputs: object) -> netsight.Diagram:
    before = snapshot(model)
    diagram = netsight.diagram(model, depth=3, **inputs)  # type: ignore[arg-type]
    assert_unchanged(model, before)
    assert not module_module._global_forward_pre_hooks
    assert not module_module._global_forward_hooks
    return diagram


def test_modules_in_a_plain_list_are_drawn_with_the_concatenation() -> None:
    diagram = _draw(PlainListBranches(), input_size=(1, 8))
    edges = _edges(diagram)
    assert ("input", "fc") not in edges  # the false edge drawn before
    for i in range(3):
        assert ("input", f"branches[{i}]") in edges
        assert (f"branches[{i}]", "cat") in edges
    assert ("cat", "fc") in edges
    branch = next(n for n in diagram.nodes if n.name == "branches[0]")
    assert branch.type_name == "Linear (unregistered)"
    assert branch.out_shapes == ((1, 4),)
    # the batch stays 1 along every edge
    for node in diagram.nodes:
        for shape in node.out_shapes:
            assert shape[0] == 1, (node.name, shape)
    assert any("does not register" in note and "branches[2]" in note for note in diagram.notes)


def test_modules_in_a_dict_attribute_are_named_by_key() -> None:
    diagram = _draw(DictHeads(), input_size=(2, 8))
    edges = _edges(diagram)
    assert ("stem", "heads['a']") in edges
    # a container in the dict, drawn at the depth asked for: its children
    assert ("stem", "heads['b'].0") in edges
    assert ("heads['b'].0", "heads['b'].1") in edges
    outputs = [e for e in edges if e[1].startswith("output")]
    assert {src for src, _ in outputs} == {"heads['a']", "heads['b'].1"}


def test_a_module_held_by_a_plain_object_is_drawn() -> None:
    diagram = _draw(ObjectHeld(), input_size=(1, 8))
    edges = _edges(diagram)
    assert ("input", "parts.proj") in edges
    assert ("parts.proj", "out") in edges
    assert ("input", "out") not in edges


def test_a_module_called_with_a_python_value_gets_it_as_its_source() -> None:
    diagram = _draw(ScalarArgument(), input_size=(1, 8))
    constant = [n for n in diagram.nodes if n.kind == "constant"]
    assert [n.name for n in constant] == ["5"]
    assert (constant[0].name, "identity") in _edges(diagram)
    assert "shape=note" in diagram.dot


def test_global_hooks_are_removed_when_the_forward_fails() -> None:
    model = FailsAfterUnregistered()
    before = snapshot(model)
    with pytest.raises(netsight.TraceError, match="fc"):
        netsight.diagram(model, input_size=(1, 8))
    assert_unchanged(model, before)
    assert not module_module._global_forward_pre_hooks
    assert not module_module._global_forward_hooks


def test_a_detector_is_connected_through_its_image_list() -> None:
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()
    diagram = _draw(model, input_data=[[torch.rand(3, 224, 224)]])
    edges = _edges(diagram)
    # the backbone reads images.tensors, which the transform produced
    assert any(src == "transform" and dst.startswith("backbone") for src, dst in edges), edges
    successors: dict[str, set[str]] = {}
    for src, dst in edges:
        successors.setdefault(src, set()).add(dst)
    seen, stack = {"input"}, ["input"]
    while stack:
        for nxt in successors.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    outputs = {n.name for n in diagram.nodes if n.kind == "output"}
    assert outputs and outputs <= seen
