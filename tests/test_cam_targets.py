"""netsight.cam.targets against pytorch-grad-cam's own targets: the same score of
the same output, and the same Grad-CAM end to end (Pearson r of the final maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import netsight
from netsight.cam import targets

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils import model_targets as theirs  # noqa: E402

pytestmark = pytest.mark.parity
R_MIN = 0.999


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 and b.std() == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (targets.ClassScore(3), theirs.ClassifierOutputTarget(3)),
        (targets.ClassProbability(3), theirs.ClassifierOutputSoftmaxTarget(3)),
        (targets.ClassAgainstRest(3), theirs.ClassifierOutputReST(3)),
        (targets.Contrast(3, (1, 7, 4), 0.6), theirs.FinerWeightedTarget(3, [1, 7, 4], 0.6)),
    ],
)
def test_classifier_targets_score_as_pytorch_grad_cam(ours, reference):
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for row in logits:
        torch.testing.assert_close(ours(row), reference(row).reshape(()))


def test_binary_segmentation_similarity_score_as_pytorch_grad_cam():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(1, generator=g)
    for positive in (True, False):
        torch.testing.assert_close(
            targets.Binary(positive)(one),
            theirs.BinaryClassifierOutputTarget(int(positive))(one)[0],
        )
    seg = torch.randn(4, 6, 7, generator=g)
    mask = (torch.rand(6, 7, generator=g) > 0.5).numpy().astype(np.float32)
    torch.testing.assert_close(
        targets.Segmentation(2, mask)(seg), theirs.SemanticSegmentationTarget(2, mask)(seg)
    )
    predicted = (seg.argmax(0) == 2).float().numpy()
    torch.testing.assert_close(
        targets.Segmentation(2)({"out": seg}), theirs.SemanticSegmentationTarget(2, predicted)(seg)
    )
    concept = torch.randn(16, generator=g)
    embedding = torch.randn(16, generator=g)
    # pytorch-grad-cam 1.5.7 defines its concept target in a tutorial, not the
    # package: the cosine similarity along the embedding (dim 0)
    torch.testing.assert_close(
        targets.Similarity(concept)(embedding), _concept_target(concept)(embedding)
    )


def test_targets_refuse_what_they_cannot_read():
    with pytest.raises(ValueError, match="out of range"):
        targets.ClassProbability(12)(torch.zeros(10))
    with pytest.raises(ValueError, match="one output per image"):
        targets.Binary()(torch.zeros(3))
    with pytest.raises(KeyError, match="'out'"):
        targets.Segmentation(1)({"aux": torch.zeros(3, 4, 4)})
    with pytest.raises(ValueError, match="mask"):
        targets.Segmentation(1, np.ones((2, 2)))(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="16 values"):
        targets.Similarity(torch.zeros(16))(torch.zeros(8))
    with pytest.raises(ValueError, match="one index per dimension"):
        targets.OutputElement(1)(torch.zeros(3, 4))


def test_parse_target_spellings(tmp_path):
    assert targets.parse_target("3") == 3 and targets.parse_target("class:4") == 4
    assert targets.parse_target("prob:2") == targets.ClassProbability(2)
    assert targets.parse_target("rest:2") == targets.ClassAgainstRest(2)
    assert targets.parse_target("binary:0") == targets.Binary(positive=False)
    assert targets.parse_target("seg:15") == targets.Segmentation(15)
    assert targets.parse_target("output:0,2") == targets.OutputElement((0, 2))
    np.save(tmp_path / "c.npy", np.arange(4, dtype=np.float32))
    concept = targets.parse_target(f"concept:{tmp_path / 'c.npy'}")
    assert torch.equal(concept.concept, torch.arange(4, dtype=torch.float32))
    for bad in ("box:x", "prob:-1", "binary:2", "concept:/no/such.npy"):
        with pytest.raises(ValueError, match="target"):
            targets.parse_target(bad)


def _concept_target(concept: torch.Tensor):
    """pytorch-grad-cam's tutorial target for embeddings, as that tutorial states it."""
    cosine = nn.CosineSimilarity(dim=0)
    return lambda output: cosine(output, concept)


def _their_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, target) -> np.ndarray:
    state = {n: p.requires_grad for n, p in model.named_parameters()}
    with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=[target] * x.shape[0])
    for n, p in model.named_parameters():  # pytorch-grad-cam fills .grad
        p.grad = None
        p.requires_grad_(state[n])
    return maps


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (targets.ClassProbability(3), theirs.ClassifierOutputSoftmaxTarget(3)),
        (targets.ClassAgainstRest(3), theirs.ClassifierOutputReST(3)),
    ],
)
def test_grad_cam_with_a_classifier_target_matches_pytorch_grad_cam(resnet, ours, reference):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    mine = netsight.GradCAM(resnet, "layer4")(x, ours).numpy()
    theirs_maps = _their_maps(resnet, resnet.layer4, x, reference)
    resnet.eval()
    for a, b in zip(mine, theirs_maps, strict=True):
        assert _r(a, b) >= R_MIN


class _Out(nn.Module):
    """pytorch-grad-cam's segmentation tutorial wrapper: the dict's 'out' tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)["out"]
        return out


def test_segmentation_target_on_a_torchvision_segmentation_model():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False
    ).eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(x)["out"][0]
    category = int(out.argmax(0).flatten().mode().values)
    mask = (out.argmax(0) == category).float().numpy()
    # netsight takes the dict output as it is; pytorch-grad-cam needs the wrapper
    mine = netsight.GradCAM(model, "backbone.layer4")(x, targets.Segmentation(category)).numpy()
    wrapped = _Out(model)
    theirs_maps = _their_maps(
        wrapped, model.backbone.layer4, x, theirs.SemanticSegmentationTarget(category, mask)
    )
    model.eval()
    assert _r(mine[0], theirs_maps[0]) >= R_MIN


def test_similarity_target_on_an_embedding_model(resnet):
    embedder = nn.Sequential(*list(resnet.children())[:-1], nn.Flatten()).eval()
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        concept = embedder(x[:1])[0]
    reference = _concept_target(concept)
    mine = netsight.GradCAM(embedder, "7")(x, targets.Similarity(concept)).numpy()
    theirs_maps = _their_maps(embedder, embedder[7], x, reference)
    embedder.eval()
    for a, b in zip(mine, theirs_maps, strict=True):
        assert _r(a, b) >= R_MIN


def test_a_detector_list_of_dicts_takes_one_callable_per_image():
    # torchcam handles this form; netsight's target selection raised IndexError
    class PerImage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            f = self.conv(x)
            return [{"scores": f[i].mean((1, 2))} for i in range(x.shape[0])]

    torch.manual_seed(0)
    model = PerImage()
    x = torch.randn(3, 3, 12, 12)
    picks = [lambda out, k=k: out["scores"][k] for k in (0, 1, 3)]
    maps = netsight.GradCAM(model, "conv")(x, picks)
    for i, k in enumerate((0, 1, 3)):
        alone = netsight.GradCAM(model, "conv")(x[i : i + 1], lambda out, k=k: out["scores"][k])
        torch.testing.assert_close(maps[i], alone[0], rtol=1e-4, atol=1e-5)


def test_a_float64_model_gets_float64_maps_and_an_int_layer_a_clear_error(resnet):
    model = torchvision.models.resnet18(num_classes=10).eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert netsight.GradCAM(model, "layer4")(x, 2).dtype == torch.float64
    with pytest.raises(TypeError, match="got int 3"):
        netsight.GradCAM(resnet, 3)
