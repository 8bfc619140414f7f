"""The newer gradient methods against pytorch-grad-cam 1.5.7: Eigen-Grad-CAM,
Shapley-CAM, Finer-CAM, FullGrad, guided backpropagation, Guided Grad-CAM and
``eigen_smooth=True``. (Element-wise Grad-CAM, a plain gradient method, is in
tests/test_cam_reference.py with the others.)

The same models, inputs and comparisons as tests/test_cam_reference.py (whose
docstring says why the models are calibrated): torchvision's resnet18 and vgg11_bn
and the tutorials' VGG-16 with seeded random weights, a batch of 4, a different
class per image; the raw maps within ``RAW_TOL`` of the reference's largest value
and the final maps at Pearson r >= ``R_MIN``. Where the sign of a principal
component is involved, the comparison is up to the sign (pytorch-grad-cam keeps
what numpy's SVD returns) and netsight's own sign rule is checked apart.

pytorch-grad-cam calls ``model.eval()`` and fills ``.grad``; both are reset after
each reference run. Its guided backpropagation replaces the model's ReLU modules
(and puts back new, not in-place, ones), so it runs on a copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import netsight.cam as nscam
from helpers import (
    CAM_ARCHS,
    CAM_TARGETS,
    R_MIN,
    assert_maps_match,
    assert_raw_match,
    assert_unchanged,
    cam_model,
    pearson,
    pgc_reference,
    pgc_targets,
    reset_after_reference,
    seeded_input,
    snapshot,
)
from netsight.cam import targets as nstargets

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST  # noqa: E402

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity

ARCHS = list(CAM_ARCHS)


def _setup(arch: str) -> tuple[nn.Module, torch.Tensor, str]:
    _, shape, layer, _, _ = CAM_ARCHS[arch]
    return cam_model(arch), seeded_input(shape), layer


def _signs(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Per image, the sign that turns ``ours`` into ``theirs``."""
    return torch.tensor(
        [1.0 if pearson(ours[i], theirs[i]) >= 0 else -1.0 for i in range(ours.shape[0])]
    )


def _assert_match_up_to_sign(
    cam: nscam.BaseCAM, result: nscam.CAMResult, key: str, theirs: tuple[torch.Tensor, ...]
) -> None:
    """Raw maps equal up to each image's sign, and the final maps of the sign the
    reference chose at r >= R_MIN (netsight's maps of the negated raw map where the
    signs differ)."""
    maps, raw = theirs
    signs = _signs(result.raw[key], raw)
    assert_raw_match(result.raw[key] * signs[:, None, None], raw, f"{cam.method} (up to sign)")
    size = (maps.shape[-2], maps.shape[-1])
    flipped = cam._maps({key: -result.raw[key]}, size, quiet=True)
    for i in range(maps.shape[0]):
        mine = result.maps[i] if signs[i] > 0 else flipped[i]
        r = pearson(mine, maps[i])
        assert r >= R_MIN, f"{cam.method} image {i}: r = {r:.6f}"


def _agrees_with(raw: torch.Tensor, channel_sum: torch.Tensor) -> bool:
    """netsight's sign rule: the projection correlates positively with the channel sum."""
    raw, total = raw.flatten(1).double(), channel_sum.flatten(1).double()
    return bool((((total - total.mean(1, keepdim=True)) * raw).sum(1) >= 0).all())


def _activations_and_gradients(
    model: nn.Module, layer: str, x: torch.Tensor, targets: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and the gradient of the summed target logits there, by hand."""
    module = dict(model.named_modules())[layer]
    kept: dict[str, torch.Tensor] = {}

    def keep(m: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        kept["a"] = out
        return out.clone()

    handle = module.register_forward_hook(keep)
    try:
        scores = model(x)[torch.arange(len(targets)), torch.tensor(targets)]
        (grad,) = torch.autograd.grad(scores.sum(), kept["a"])
    finally:
        handle.remove()
    return kept["a"].detach(), grad


# --------------------------------------------------------------------------- Eigen-Grad-CAM
@pytest.mark.parametrize("arch", ARCHS)
def test_eigengradcam_matches_pytorch_grad_cam_up_to_the_sign(arch: str) -> None:
    """The first principal component of ``G * A``; netsight's sign agrees with the
    channel sum ``sum_k G_k A_k`` (HiRes-CAM's map)."""
    model, x, layer = _setup(arch)
    cam = nscam.EigenGradCAM(model, layer)
    ours = cam.explain(x, CAM_TARGETS)
    _assert_match_up_to_sign(cam, ours, layer, pgc_reference("EigenGradCAM", model, layer, x))
    a, g = _activations_and_gradients(model, layer, x, CAM_TARGETS)
    assert _agrees_with(ours.raw[layer], (g * a).sum(1))


# --------------------------------------------------------------------------- Shapley-CAM
@dataclass(frozen=True)
class HalfSquaredLogit:
    """``z_c^2 / 2``: a score whose Hessian in any layer before a linear head is
    not zero (the same callable serves both libraries)."""

    category: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[self.category] ** 2 / 2


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("score", ["rest", "square"])
def test_shapleycam_matches_pytorch_grad_cam(arch: str, score: str) -> None:
    """With the ReST score the paper pairs it with (``ClassAgainstRest``,
    pytorch-grad-cam's ``ClassifierOutputReST``) and with ``z_c^2 / 2``, whose
    curvature makes the Hessian-vector product matter: there the maps differ from
    Grad-CAM's on the same score, and equal pytorch-grad-cam's. (The calibrated
    resnet18's logits reach 100 at 224 px, so its softmax is saturated and ReST's
    Hessian vanishes there: the maps are Grad-CAM's, in both libraries.) The paper
    and pytorch-grad-cam agree on ``G - H A / 2``."""
    model, x, layer = _setup(arch)
    if score == "rest":
        ours_targets: list[Any] = [nstargets.ClassAgainstRest(c) for c in CAM_TARGETS]
        their_targets: list[Any] = [ClassifierOutputReST(c) for c in CAM_TARGETS]
    else:
        ours_targets = their_targets = [HalfSquaredLogit(c) for c in CAM_TARGETS]
    before = snapshot(model)
    ours = nscam.ShapleyCAM(model, layer).explain(x, ours_targets)
    assert_unchanged(model, before)
    maps, raw = pgc_reference("ShapleyCAM", model, layer, x, their_targets)
    assert_raw_match(ours.raw[layer], raw, f"{arch} shapleycam {score}")
    assert_maps_match(ours.maps, maps, f"{arch} shapleycam {score}")
    if score == "square":
        first_order = nscam.GradCAM(model, layer).explain(x, ours_targets)
        gap = (ours.raw[layer] - first_order.raw[layer]).abs().amax()
        assert float(gap) > 0.1 * float(ours.raw[layer].abs().amax())


def test_shapleycam_is_gradcam_where_the_score_is_piecewise_linear() -> None:
    """resnet18's logit is linear in ``layer4`` (average pool, linear): the Hessian is
    zero and Shapley-CAM is Grad-CAM."""
    model, x, layer = _setup("resnet18")
    ours = nscam.ShapleyCAM(model, layer).explain(x, CAM_TARGETS)
    grad = nscam.GradCAM(model, layer).explain(x, CAM_TARGETS)
    torch.testing.assert_close(ours.raw[layer], grad.raw[layer])


def test_shapleycam_on_a_vision_transformer() -> None:
    """The second derivative passes attention: PyTorch's fused attention kernels have
    none (``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
    is not implemented``), so Shapley-CAM runs attention on the math kernel.
    (pytorch-grad-cam cannot be the reference here: its ShapleyCAM fails on token
    layers, handing unreshaped activations to its channel weighting.) The map is the
    formula worked out by hand on a full graph, patch tokens laid on their 4 x 4
    grid."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64
    ).eval()
    x = seeded_input((2, 3, 64, 64))
    targets = [nstargets.ClassAgainstRest(1), nstargets.ClassAgainstRest(3)]
    before = snapshot(model)
    ours = nscam.ShapleyCAM(model).explain(x, targets)
    assert_unchanged(model, before)
    layer = "blocks.11.norm1"
    assert ours.layers == (layer,)
    kept: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, args, out: kept.setdefault("a", out))
    try:
        with sdpa_kernel(SDPBackend.MATH):
            out = model(x)
    finally:
        handle.remove()
    a = kept["a"]
    score = targets[0](out[0]) + targets[1](out[1])
    (g,) = torch.autograd.grad(score, a, create_graph=True)
    (h,) = torch.autograd.grad(g, a, grad_outputs=a.detach())

    def grid(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2).detach()

    weights = (grid(g) - 0.5 * grid(h)).mean((2, 3), keepdim=True)
    expected = (weights * grid(a)).sum(1)
    assert float((grid(h)).abs().amax()) > 0  # the second-order term is there
    assert_raw_match(ours.raw[layer], expected, "vit shapleycam")


# --------------------------------------------------------------------------- Finer-CAM
def _pgc_finer(
    model: nn.Module, layer: str, x: torch.Tensor, **call: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    module = dict(model.named_modules())[layer]
    raws: list[np.ndarray] = []
    with reset_after_reference(model), pgc.FinerCAM(model, [module]) as cam:
        get_cam_image = cam.base_cam.get_cam_image

        def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
            raws.append(get_cam_image(*args, **kwargs))
            return raws[-1]

        cam.base_cam.get_cam_image = keep_raw
        maps = cam(x, **call)
    return torch.from_numpy(maps), torch.from_numpy(np.asarray(raws[0]))


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", ARCHS)
def test_finercam_matches_pytorch_grad_cam(arch: str) -> None:
    """Each image's top class against its 3 nearest classes by logit (alpha 1), and
    class 3 for every image against its nearest two with alpha 0.6
    (pytorch-grad-cam's ``target_idx`` and ``comparison_categories``)."""
    model, x, layer = _setup(arch)
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    ours = nscam.FinerCAM(model, layer).explain(x)
    assert ours.classes == tuple(top)
    maps, raw = _pgc_finer(model, layer, x)
    assert_raw_match(ours.raw[layer], raw, f"{arch} finercam")
    assert_maps_match(ours.maps, maps, f"{arch} finercam")

    ours = nscam.FinerCAM(model, layer, alpha=0.6, ranks=[1, 2]).explain(x, 3)
    maps, raw = _pgc_finer(model, layer, x, alpha=0.6, target_idx=3, comparison_categories=[1, 2])
    assert_raw_match(ours.raw[layer], raw, f"{arch} finercam class 3")
    assert_maps_match(ours.maps, maps, f"{arch} finercam class 3")
    assert ours.classes == (3, 3, 3, 3)


def test_finercam_compares_with_the_nearest_classes() -> None:
    """The score is Grad-CAM's of ``Contrast(class, nearest classes)``, the nearest by
    ``|z_k - z_c|``, worked out here by hand; ``compare_with`` fixes them instead,
    and ``base_method`` picks the gradient method."""
    model, x, layer = _setup("vgg16net")
    with torch.no_grad():
        logits = model(x)
    expected = []
    for i, c in enumerate(CAM_TARGETS):
        distance = (logits[i] - logits[i, c]).abs().tolist()
        order = sorted((d, k) for k, d in enumerate(distance) if k != c)
        expected.append(nstargets.Contrast(c, (order[0][1], order[2][1]), 0.5))
    ours = nscam.FinerCAM(model, layer, alpha=0.5, ranks=(1, 3)).explain(x, CAM_TARGETS)
    by_hand = nscam.GradCAM(model, layer).explain(x, expected)
    torch.testing.assert_close(ours.raw[layer], by_hand.raw[layer])
    chosen = [nstargets.Contrast(c, (0,) if c != 0 else (), 1.0) for c in CAM_TARGETS]
    fixed = nscam.FinerCAM(model, layer, compare_with=[0], base_method="layercam")
    by_hand = nscam.LayerCAM(model, layer).explain(x, chosen)
    torch.testing.assert_close(fixed.explain(x, CAM_TARGETS).raw[layer], by_hand.raw[layer])


def test_finercam_options_are_checked() -> None:
    model = cam_model("vgg16net")
    with pytest.raises(ValueError, match="base_method: expected one of gradcam"):
        nscam.FinerCAM(model, base_method="scorecam")
    with pytest.raises(TypeError, match="base_method"):
        nscam.FinerCAM(model, base_method=nscam.ScoreCAM)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ranks: expected ints >= 1"):
        nscam.FinerCAM(model, ranks=[0])
    with pytest.raises(ValueError, match="not both"):
        nscam.FinerCAM(model, ranks=[1], compare_with=[2])
    with pytest.raises(ValueError, match="alpha: expected a finite number"):
        nscam.FinerCAM(model, alpha=float("nan"))
    x = seeded_input((2, 1, 32, 32))
    with pytest.raises(ValueError, match="compare_with: class 10 is out of range"):
        nscam.FinerCAM(model, "layer3.8", compare_with=[10])(x)
    with pytest.raises(TypeError, match="finercam compares classes"):
        nscam.FinerCAM(model, "layer3.8")(x, nstargets.ClassScore(1))


# --------------------------------------------------------------------------- FullGrad
FULLGRAD_SHAPES = {
    "resnet18": (4, 3, 64, 64),
    "vgg11_bn": (4, 3, 64, 64),
    "vgg16net": (4, 1, 32, 32),
}


def _unaliased(model: nn.Module) -> nn.Module:
    """The model, or for the tutorials' VGG-16 a copy without its second names:
    its blocks are registered both as ``layerN`` and as ``conv.N-1``, and
    pytorch-grad-cam's FullGrad, which walks ``_modules``, then lists every biased
    layer twice and fails (its gradients are counted per call)."""
    if not hasattr(model, "conv"):
        return model
    twin = copy.deepcopy(model)
    for block in ("layer1", "layer2", "layer3", "layer4", "layer5"):
        delattr(twin, block)  # forward() runs self.conv
    return twin


def _pgc_fullgrad(
    model: nn.Module, x: torch.Tensor, targets: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's FullGrad maps, and its raw map: the sum of the rescaled
    parts before the last rescaling (what its ``compute_cam_per_layer`` returns)."""
    raws: list[np.ndarray] = []
    model = _unaliased(model)
    with reset_after_reference(model), pgc.FullGrad(model, []) as cam:
        compute = cam.compute_cam_per_layer

        def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
            raws.append(compute(*args, **kwargs))
            return raws[-1]

        cam.compute_cam_per_layer = keep_raw
        maps = cam(x, pgc_targets(targets))
    return torch.from_numpy(maps), torch.from_numpy(raws[0][:, 0])


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", ARCHS)
def test_fullgrad_matches_pytorch_grad_cam(arch: str) -> None:
    """Every channel map rescaled on its own, as the paper's eq. 5 sums them and
    pytorch-grad-cam computes it (the authors' code rescales a layer's channels
    jointly). Small inputs: FullGrad reads every layer, none has to be 7x7."""
    model = cam_model(arch)
    x = seeded_input(FULLGRAD_SHAPES[arch])
    ours = nscam.FullGrad(model).explain(x, CAM_TARGETS)
    maps, raw = _pgc_fullgrad(model, x, CAM_TARGETS)
    assert_raw_match(ours.raw["input"], raw, f"{arch} fullgrad")
    assert_maps_match(ours.maps, maps, f"{arch} fullgrad")


def test_fullgrad_parts_add_up_to_the_score() -> None:
    """The decomposition is complete (the paper's eq. 3): for resnet18 in eval mode
    (ReLU, max and average pooling, convolutions, BatchNorm) the input part, every
    BatchNorm's implicit bias times its gradient and the linear layer's bias add up
    to the logit. A gradient read after an in-place ReLU instead of at the
    BatchNorm's output would break the sum."""
    model = cam_model("resnet18")
    x = seeded_input((4, 3, 64, 64))
    before = snapshot(model)
    parts = nscam.FullGrad(model).decompose(x, CAM_TARGETS)
    assert_unchanged(model, before)
    assert len(parts.biases) == 20  # resnet18's BatchNorms (its convolutions have no bias)
    total = (parts.input_gradient * x).flatten(1).sum(1).double()
    for part in parts.biases:
        total += (part.bias[None, :, None, None] * part.gradient).flatten(1).sum(1).double()
    total += model.fc.bias[CAM_TARGETS].detach().double()
    with torch.no_grad():
        logits = model(x)[torch.arange(4), torch.tensor(CAM_TARGETS)].double()
    torch.testing.assert_close(parts.scores.double(), logits)
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))


# --------------------------------------------------------------------------- guided
def _pgc_guided(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """pytorch-grad-cam's guided backpropagation, one image at a time (it reads only
    the first image), on a copy: it replaces the ReLU modules."""
    twin = copy.deepcopy(model)
    found = []
    for i, target in enumerate(targets):
        gb = pgc.GuidedBackpropReLUModel(twin, device="cpu")(x[i : i + 1], target)
        found.append(torch.from_numpy(np.ascontiguousarray(gb.transpose(2, 0, 1))))
    return torch.stack(found)


def _modules(model: nn.Module) -> list[tuple[str, type, bool]]:
    """Every module's name, type and in-place flag (pytorch-grad-cam's guided
    backpropagation changes them)."""
    return [(n, type(m), getattr(m, "inplace", False)) for n, m in model.named_modules()]


@pytest.mark.parametrize("arch", ARCHS)
def test_guided_backprop_matches_pytorch_grad_cam(arch: str) -> None:
    """The whole ``(B, C, H, W)`` gradient (``attribution``) equals pytorch-grad-cam's
    per image, without replacing a module: resnet18 calls one in-place ReLU module
    twice per block, vgg11_bn and the VGG-16 have in-place ReLUs."""
    model, x, _ = _setup(arch)
    modules = _modules(model)
    before = snapshot(model)
    ours = nscam.GuidedBackprop(model).explain(x, CAM_TARGETS)
    assert_unchanged(model, before)
    assert _modules(model) == modules and any(inplace for _, _, inplace in modules)
    theirs = _pgc_guided(model, x, CAM_TARGETS)
    assert ours.attribution is not None
    assert_raw_match(ours.attribution.flatten(1), theirs.flatten(1), f"{arch} guidedbackprop")
    torch.testing.assert_close(ours.raw["input"], ours.attribution.abs().amax(1))
    plain = nscam.Saliency(model).explain(x, CAM_TARGETS)
    assert min(pearson(ours.maps[i], plain.maps[i]) for i in range(4)) < 0.99  # it is guided


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", ARCHS)
def test_guided_gradcam_matches_pytorch_grad_cam(arch: str) -> None:
    """The product of pytorch-grad-cam's GradCAM map (its ``cam_mask``) and its
    guided backpropagation, as its README combines them (``cam_mask * gb``, before
    ``deprocess_image``)."""
    model, x, layer = _setup(arch)
    ours = nscam.GuidedGradCAM(model, layer).explain(x, CAM_TARGETS)
    cam_mask, _ = pgc_reference("GradCAM", model, layer, x)
    product = cam_mask[:, None] * _pgc_guided(model, x, CAM_TARGETS)
    assert ours.attribution is not None
    assert_raw_match(ours.attribution.flatten(1), product.flatten(1), f"{arch} guidedgradcam")
    assert_maps_match(ours.maps, product.abs().amax(1), f"{arch} guidedgradcam")
    assert ours.layers == (layer,)


class FunctionalReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def test_guided_backprop_cannot_guide_functional_relus() -> None:
    """``F.relu`` in ``forward()`` has no module to hook: the plain input gradient,
    with a warning that says so."""
    torch.manual_seed(0)
    model = FunctionalReLUNet()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(nscam.CAMWarning, match="no torch.nn.ReLU module ran"):
        ours = nscam.GuidedBackprop(model).explain(x, [0, 1])
    plain = nscam.Saliency(model).explain(x, [0, 1])
    torch.testing.assert_close(ours.raw["input"], plain.raw["input"])


def test_guided_gradcam_refuses_upsample_false() -> None:
    with pytest.raises(ValueError, match="expected upsample=True"):
        nscam.GuidedGradCAM(cam_model("vgg16net"), upsample=False)


# --------------------------------------------------------------------------- eigen_smooth
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("method", "cls_name"), [("gradcam", "GradCAM"), ("layercam", "LayerCAM")])
def test_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign(
    arch: str, method: str, cls_name: str
) -> None:
    """pytorch-grad-cam's ``eigen_smooth=True``: the first principal component of the
    weighted activations instead of their channel sum. netsight's sign: the one that
    correlates positively with the channel sum (the unsmoothed map), as Eigen-CAM's."""
    model, x, layer = _setup(arch)
    cam = nscam.METHODS[method](model, layer, eigen_smooth=True)
    ours = cam.explain(x, CAM_TARGETS)
    theirs = pgc_reference(cls_name, model, layer, x, call_options={"eigen_smooth": True})
    _assert_match_up_to_sign(cam, ours, layer, theirs)
    plain = nscam.METHODS[method](model, layer).explain(x, CAM_TARGETS)
    assert _agrees_with(ours.raw[layer], plain.raw[layer])
    assert min(pearson(ours.raw[layer][i], plain.raw[layer][i]) for i in range(4)) < 0.999


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
def test_fullgrad_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FullGrad's own smoothing (the rescaled parts at an eighth of the input,
    projected). The raw map is the projection pytorch-grad-cam's
    ``get_2d_projection`` returns there; it applies no ReLU to it, so netsight runs
    with ``relu=False`` here."""
    import pytorch_grad_cam.fullgrad_cam as reference

    projections: list[np.ndarray] = []
    project = reference.get_2d_projection

    def keep(*args: Any) -> np.ndarray:
        projections.append(project(*args))
        return projections[-1]

    monkeypatch.setattr(reference, "get_2d_projection", keep)
    model = cam_model("vgg11_bn")
    x = seeded_input((4, 3, 64, 64))
    cam = nscam.FullGrad(model, eigen_smooth=True, relu=False)
    ours = cam.explain(x, CAM_TARGETS)
    assert ours.raw["input"].shape == (4, 8, 8)
    with reset_after_reference(model), pgc.FullGrad(model, []) as theirs:
        maps = torch.from_numpy(theirs(x, pgc_targets(CAM_TARGETS), eigen_smooth=True))
    (raw,) = projections
    _assert_match_up_to_sign(cam, ours, "input", (maps, torch.from_numpy(raw)))
    plain = nscam.FullGrad(model).explain(x, CAM_TARGETS).raw["input"]
    small = F.interpolate(plain[:, None], size=(8, 8), mode="bilinear")[:, 0]
    assert _agrees_with(ours.raw["input"], small)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam", "saliency", "guidedbackprop"])
def test_eigen_smooth_is_refused_where_no_channels_are_weighted(method: str) -> None:
    with pytest.raises(ValueError, match=f"{method}: eigen_smooth=True is not supported"):
        nscam.METHODS[method](cam_model("vgg16net"), eigen_smooth=True)


class SmallNet(nn.Module):
    """conv - BN - ReLU - conv - ReLU (16 channels at 8x8) - global pool - linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize(
    "method", [name for name, cls in nscam.METHODS.items() if cls.supports_eigen_smooth]
)
def test_eigen_smooth_option_runs_everywhere_it_is_offered(method: str) -> None:
    """Every method that takes ``eigen_smooth=True`` gives maps with it, different from
    its plain maps, and leaves the model as it came."""
    cls = nscam.METHODS[method]
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = seeded_input((2, 3, 16, 16))
    layer = "features" if cls.uses_layers else None
    before = snapshot(model)
    smooth = cls(model, layer, eigen_smooth=True).explain(x, [0, 1])
    assert_unchanged(model, before)
    plain = cls(model, layer).explain(x, [0, 1])
    assert smooth.maps.shape == (2, 16, 16) and torch.isfinite(smooth.maps).all()
    assert not torch.allclose(smooth.maps, plain.maps, atol=1e-3)


# --------------------------------------------------------------------------- aug_smooth
@pytest.mark.parametrize(
    "method",
    [
        "eigengradcam",
        "gradcamelementwise",
        "shapleycam",
        "fullgrad",
        "guidedbackprop",
        "guidedgradcam",
    ],
)
def test_aug_smooth_commutes_with_flipping(method: str) -> None:
    cls = nscam.METHODS[method]
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = seeded_input((2, 3, 16, 16))
    cam = cls(model, "features" if cls.uses_layers else None, aug_smooth=True)
    smooth = cam(x, [0, 2])
    torch.testing.assert_close(cam(x.flip(-1), [0, 2]), smooth.flip(-1))
    assert not torch.allclose(
        smooth, cls(model, "features" if cls.uses_layers else None)(x, [0, 2])
    )


def test_finercam_aug_smooth_keeps_the_unchanged_inputs_comparisons() -> None:
    """The augmented inputs explain the same ``Contrast`` as the unchanged one: the
    class nearest on the unchanged input, not on each augmented copy (where it is
    another class for some copies of this input)."""
    torch.manual_seed(0)
    model = SmallNet(classes=10).eval()
    x = seeded_input((4, 3, 16, 16))
    with torch.no_grad():
        logits = model(x)
    fixed = []
    for i, c in enumerate(CAM_TARGETS):
        nearest = min(
            (k for k in range(10) if k != c), key=lambda k: abs(logits[i, k] - logits[i, c])
        )
        fixed.append(nstargets.Contrast(c, (nearest,), 1.0))
    ours = nscam.FinerCAM(model, "features", ranks=[1], aug_smooth=True)(x, CAM_TARGETS)
    by_hand = nscam.GradCAM(model, "features", aug_smooth=True)(x, fixed)
    torch.testing.assert_close(ours, by_hand)
