"""Models people bring, beyond classifiers (issue 12): netsight reads them right or
refuses clearly, and never leaves anything changed in them. Random weights, built
in code, nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import netsight
from helpers import assert_unchanged, snapshot
from netsight.cli import main
from netsight.models import default_input_size


def _anchor_tensors(model: nn.Module) -> list[torch.Tensor]:
    generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    return list(generator.cell_anchors)


@torch.no_grad()
def test_retinanet_summary_matches_the_published_count_and_leaves_its_anchors() -> None:
    """torchvision's anchor generator sets ``self.cell_anchors = [a.to(device) ...]``
    in its forward: a plain attribute, not a buffer. The meta pass used to leave
    meta tensors there ("Cannot copy out of meta tensor"), so the summary failed
    and every later forward of the user's model did too. Now the attribute is put
    back after the meta pass, the real pass runs, and the count is the published
    one (the model's own transform resizes to 800x800, as the figure assumes)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None
    ).eval()
    anchors = model.anchor_generator.cell_anchors
    before_anchors = list(anchors)
    x = [torch.rand(3, 224, 224)]
    before = snapshot(model)
    s = netsight.summary(model, input_data=[x])
    published = torchvision.models.get_model_weights("retinanet_resnet50_fpn")
    ops = next(iter(published)).meta["_ops"]
    assert abs(s.total_mult_adds / 1e9 / ops - 1) < 1e-3, (s.total_mult_adds, ops)
    assert model.anchor_generator.cell_anchors is anchors
    assert all(a is b for a, b in zip(anchors, before_anchors, strict=True))
    assert all(a.device.type == "cpu" for a in _anchor_tensors(model))
    assert_unchanged(model, before)
    netsight.diagram(model, input_data=[x])
    assert all(a.device.type == "cpu" for a in _anchor_tensors(model))
    model(x)  # the user's model still runs


class PlainAttributeAnchors(nn.Module):
    """Keeps tensors in a plain list and moves them in its forward (the torchinfo
    test case), then needs their values (``.tolist()`` fails on meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.anchors = [torch.arange(3.0), torch.ones(2)]
        self.table = {"scale": torch.tensor(2.0)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.anchors = [a.to(x.device) for a in self.anchors]
        self.table["scale"] = self.table["scale"].to(x.device)
        self.cache = x.sum()
        self.fc.seen = x  # cached on a torch.nn layer from outside it
        count = int(sum(self.anchors[0].tolist()))  # real values needed
        return self.fc(x) * count * self.table["scale"]


def test_plain_attribute_tensors_come_back_after_a_failed_meta_pass() -> None:
    model = PlainAttributeAnchors()
    anchors, table, scale = model.anchors, model.table, model.table["scale"]
    s = netsight.summary(model, input_size=(2, 4))
    assert s.trace.execution == "real"  # the meta pass failed on .tolist()
    d = netsight.diagram(model, input_size=(2, 4))
    assert any("real tensors" in note for note in d.notes)
    assert model.anchors is anchors and model.table is table and table["scale"] is scale
    assert all(a.device.type == "cpu" for a in model.anchors)
    assert not hasattr(model, "cache")  # nothing netsight's passes cached is left
    assert not hasattr(model.fc, "seen")
    assert model(torch.ones(1, 4)).shape == (1, 2)


def test_a_pruned_layer_keeps_its_masked_weight() -> None:
    """``torch.nn.utils.prune`` recomputes ``module.weight`` (a plain attribute)
    before every call; after a summary it used to be a meta tensor."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    prune.l1_unstructured(model[0], "weight", 0.5)
    weight = model[0].weight
    netsight.summary(model, input_size=(1, 8))
    netsight.diagram(model, input_size=(1, 8))
    assert model[0].weight is weight and weight.device.type == "cpu"
    assert float((model[0].weight == 0).float().mean()) == 0.5


def test_timm_models_get_their_input_size_from_timm(capsys: pytest.CaptureFixture[str]) -> None:
    """``netsight summary timm:NAME`` used to exit 2 ("does not know the input
    size"); timm's pretrained config has it, for every command that needs one."""
    pytest.importorskip("timm")
    assert default_input_size("timm:resnet18") == (1, 3, 224, 224)
    assert default_input_size("timm:vit_base_patch16_384") == (1, 3, 384, 384)
    assert default_input_size("timm:resnet50.a1_in1k") == (1, 3, 224, 224)
    assert default_input_size("timm:no_such_model") is None
    assert main(["summary", "timm:resnet18", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "[1, 64, 112, 112]" in out and "11,689,512" in out  # conv1 of a 224 px input
