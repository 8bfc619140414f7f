"""KPCA-CAM, FEM, Seg-Eigen-CAM, SESS and Deep Feature Factorization against
pytorch-grad-cam 1.5.7, and the evidence for Eigen-CAM's sign rule.

The models, inputs, BatchNorm conditioning and comparisons are those of
``tests/test_cam_reference.py`` (see its docstring; the helpers live in
``tests/helpers.py``): torchvision's resnet18 and vgg11_bn and the tutorials'
VGG-16 with random seeded weights, the raw signed map at layer resolution within
``RAW_TOL`` of the reference's largest value, and the final maps at Pearson
r >= ``R_MIN`` per image.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import netsight.cam as nscam
from helpers import (
    CAM_ARCHS,
    CAM_TARGETS,
    R_MIN,
    assert_maps_match,
    assert_raw_match,
    calibrate_batchnorm,
    cam_model,
    pearson,
    pgc_reference,
    reset_after_reference,
    seeded_input,
)
from netsight.cam.targets import Segmentation

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.sess import SESS as ReferenceSESS  # noqa: E402
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity


def _signs(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [1.0 if pearson(ours[i], theirs[i]) >= 0 else -1.0 for i in range(ours.shape[0])]
    )


def _assert_match_up_to_sign(
    cam: nscam.BaseCAM, ours: nscam.CAMResult, theirs: torch.Tensor, raw: torch.Tensor, what: str
) -> None:
    """The raw maps equal up to each image's sign; the final maps match once
    netsight's map is made from the raw map with the reference's sign."""
    (layer,) = ours.layers
    signs = _signs(ours.raw[layer], raw)
    assert_raw_match(ours.raw[layer] * signs[:, None, None], raw, what)
    size = (theirs.shape[-2], theirs.shape[-1])
    same_sign = cam._maps({layer: ours.raw[layer] * signs[:, None, None]}, size, quiet=True)
    assert_maps_match(same_sign, theirs, what)


# --------------------------------------------------------------------------- KPCA-CAM
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", list(CAM_ARCHS))
def test_kpcacam_matches_pytorch_grad_cam_up_to_the_sign(arch: str) -> None:
    """scikit-learn's ``KernelPCA`` (sigmoid kernel, pytorch-grad-cam's default)
    against netsight's float64 torch kernel PCA. The sign of a component is
    arbitrary: scikit-learn makes its largest entry positive, netsight orients it
    to agree with the activation sum (checked in tests/test_cam_factor.py)."""
    _, shape, layer, _, _ = CAM_ARCHS[arch]
    model = cam_model(arch)
    x = seeded_input(shape)
    cam = nscam.KPCACAM(model, layer)
    ours = cam.explain(x, CAM_TARGETS)
    theirs, raw = pgc_reference("KPCA_CAM", model, layer, x)
    _assert_match_up_to_sign(cam, ours, theirs, raw, f"{arch} kpcacam")


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize(
    ("kernel", "gamma"), [("rbf", None), ("poly", 0.01), ("linear", None), ("cosine", None)]
)
def test_kpcacam_kernels_match_pytorch_grad_cam(kernel: str, gamma: float | None) -> None:
    _, shape, layer, _, _ = CAM_ARCHS["vgg16net"]
    model = cam_model("vgg16net")
    x = seeded_input(shape)
    cam = nscam.KPCACAM(model, layer, kernel=kernel, gamma=gamma)
    ours = cam.explain(x, CAM_TARGETS)
    theirs, raw = pgc_reference("KPCA_CAM", model, layer, x, kernel=kernel, gamma=gamma)
    _assert_match_up_to_sign(cam, ours, theirs, raw, f"kpcacam {kernel}")


# --------------------------------------------------------------------------- FEM
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize(
    ("arch", "k"), [("resnet18", 2.0), ("vgg11_bn", 2.0), ("vgg16net", 2.0), ("vgg16net", 1.0)]
)
def test_fem_matches_pytorch_grad_cam(arch: str, k: float) -> None:
    _, shape, layer, _, _ = CAM_ARCHS[arch]
    model = cam_model(arch)
    x = seeded_input(shape)
    ours = nscam.FEM(model, layer, k=k).explain(x, CAM_TARGETS)
    theirs, raw = pgc_reference("FEM", model, layer, x, k=k)
    assert_raw_match(ours.raw[layer], raw, f"{arch} fem")
    assert_maps_match(ours.maps, theirs, f"{arch} fem")
    assert sum(float(m.amax()) > 0 for m in ours.maps) >= 2


# --------------------------------------------------------------------------- Seg-Eigen-CAM
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", list(CAM_ARCHS))
def test_segeigencam_matches_pytorch_grad_cam(arch: str) -> None:
    """On classifiers (pytorch-grad-cam's SegEigenCAM takes any target): the same
    sign rule (the paper's eq. 13), so the maps match without flipping."""
    _, shape, layer, _, _ = CAM_ARCHS[arch]
    model = cam_model(arch)
    x = seeded_input(shape)
    ours = nscam.SegEigenCAM(model, layer).explain(x, CAM_TARGETS)
    theirs, raw = pgc_reference("SegEigenCAM", model, layer, x)
    assert_raw_match(ours.raw[layer], raw, f"{arch} segeigencam")
    assert_maps_match(ours.maps, theirs, f"{arch} segeigencam")


class _OutOnly(nn.Module):
    """A torchvision segmentation model's ``out`` logits, for pytorch-grad-cam
    (which needs a tensor output); netsight reads the dict itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)["out"]
        return out


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
def test_segeigencam_on_a_segmentation_model() -> None:
    """torchvision's LR-ASPP MobileNetV3 (random weights, BatchNorm conditioned),
    112 px, its backbone's last block (7x7), each image's own class and mask (the
    pixels the model assigns to it), as pytorch-grad-cam's segmentation tutorial."""
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4
    )
    shape = (2, 3, 112, 112)
    calibrate_batchnorm(model, (2, 3, 64, 64))  # statistics of random inputs: 64 px is enough
    x = seeded_input(shape)
    layer = "backbone.16"
    with torch.no_grad():
        labels = model(x)["out"].argmax(1)
    categories = [int(labels[i].flatten().mode().values) for i in range(2)]
    masks = [(labels[i] == c).float().numpy() for i, c in enumerate(categories)]
    targets = [Segmentation(c, m) for c, m in zip(categories, masks, strict=True)]
    ours = nscam.SegEigenCAM(model, layer).explain(x, targets)
    wrapped = _OutOnly(model)
    module = dict(model.named_modules())[layer]
    raws: list[np.ndarray] = []
    with reset_after_reference(model), pgc.SegEigenCAM(wrapped, [module]) as cam:
        get_cam_image = cam.get_cam_image

        def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
            raws.append(get_cam_image(*args, **kwargs))
            return raws[-1]

        cam.get_cam_image = keep_raw
        reference = [
            SemanticSegmentationTarget(c, m) for c, m in zip(categories, masks, strict=True)
        ]
        theirs = torch.from_numpy(cam(x, reference))
    assert ours.raw[layer].shape[-2:] == (7, 7)
    assert_raw_match(ours.raw[layer], torch.from_numpy(raws[0]), "lraspp segeigencam")
    assert_maps_match(ours.maps, theirs, "lraspp segeigencam")


# --------------------------------------------------------------------------- SESS
def _bilinear_weights(out: int, size: int) -> np.ndarray:
    """The ``(out, size)`` matrix of a bilinear resize with half-pixel centres
    (OpenCV's ``INTER_LINEAR``, ``F.interpolate(align_corners=False)``), its
    weights computed as exact fractions."""
    weights = np.zeros((out, size))
    for i in range(out):
        source = max(Fraction(2 * i + 1, 2) * Fraction(size, out) - Fraction(1, 2), Fraction(0))
        low = int(source)
        share = source - low
        weights[i, low] += float(1 - share)
        if share:
            weights[i, min(low + 1, size - 1)] += float(share)
    return weights


class _ExactPasteSESS(ReferenceSESS):
    """pytorch-grad-cam's SESS with its one inexact step made exact: ``cv2.resize``
    of a pasted patch leaves residues of about 1e-15 (instead of 0) beside the
    patch where the bilinear weight is exactly zero, and SESS's mean fusion counts
    any value above ``theta = 0`` as the patch covering that pixel. Here the same
    resize is a product with exact weight matrices."""

    def paste_cam(
        self, cam: np.ndarray, coordinates: tuple[int, int, int, int], target_size: tuple[int, int]
    ) -> np.ndarray:
        x1, y1, scaled_width, scaled_height = coordinates
        canvas = np.zeros((scaled_height, scaled_width))
        canvas[y1 : y1 + cam.shape[0], x1 : x1 + cam.shape[1]] = cam
        rows = _bilinear_weights(target_size[0], scaled_height)
        cols = _bilinear_weights(target_size[1], scaled_width)
        return np.float32(rows @ canvas @ cols.T)


#: Two images, two scales (window and 1 2/7 window): 5 patches per image.
SESS_INPUTS = {
    "resnet18": ((2, 3, 112, 112), "layer3"),
    "vgg11_bn": ((2, 3, 112, 112), "features.27"),
}


def _sess_reference(
    cls: type[ReferenceSESS], model: nn.Module, layer: str, x: torch.Tensor, **options: Any
) -> torch.Tensor:
    module = dict(model.named_modules())[layer]
    with reset_after_reference(model):
        sess = cls(model, [module], **options)
        try:
            maps = sess(x, [ClassifierOutputTarget(c) for c in CAM_TARGETS[: x.shape[0]]])
        finally:
            sess.base_cam.activations_and_grads.release()
    return torch.from_numpy(maps)


@pytest.mark.slow  # pytorch-grad-cam's SESS: 3-10 s per model on 2 busy cores
@pytest.mark.parametrize("arch", list(CAM_ARCHS))
def test_sess_matches_pytorch_grad_cam(arch: str) -> None:
    """Grad-CAM on every patch (the default base), mean fusion, blur. Against the
    reference with an exact paste (above): equal to 1e-4 (see the next test for
    the reference as it is)."""
    shape, layer = SESS_INPUTS.get(arch, ((2, *CAM_ARCHS[arch][1][1:]), CAM_ARCHS[arch][2]))
    model = cam_model(arch)
    x = seeded_input(shape)
    ours = nscam.SESS(model, layer, num_scales=2).explain(x, CAM_TARGETS[:2])
    exact = _sess_reference(_ExactPasteSESS, model, layer, x, num_scales=2)
    assert float((ours.maps - exact).abs().max()) <= 1e-4
    assert_maps_match(ours.maps, exact, f"{arch} sess")
    assert sum(float(m.amax()) > 0 for m in ours.maps) == 2


@pytest.mark.slow
def test_sess_differs_from_pytorch_grad_cam_by_opencv_residues() -> None:
    """vgg11_bn at 112 px: the patches of the 144 px scale start at 0 and 32, and
    resized to 112 px their borders fall exactly on pixel centres (rows and
    columns 24 and 87), where ``cv2.resize`` leaves ~1e-15 instead of 0, so
    pytorch-grad-cam counts a patch that does not cover those pixels in their
    mean (a darker line per border), which also moves the min-max scaling of the
    whole map. The reference as it is then differs from netsight (r < R_MIN); the
    reference with only its paste made exact matches netsight to 1e-4 (above)."""
    shape, layer = SESS_INPUTS["vgg11_bn"]
    model = cam_model("vgg11_bn")
    x = seeded_input(shape)
    ours = nscam.SESS(model, layer, num_scales=2).explain(x, CAM_TARGETS[:2])
    plain = _sess_reference(ReferenceSESS, model, layer, x, num_scales=2)
    rs = [pearson(ours.maps[i], plain[i]) for i in range(2)]
    assert min(rs) < R_MIN
    assert min(rs) > 0.98


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ours_options", "reference_options"),
    [
        ({"pre_filter_ratio": 0.5, "theta": 0.1}, {"pre_filter_ratio": 0.5, "theta": 0.1}),
        (
            {"fusion": "max", "smooth": False, "softmax_scores": False, "step_size": 16},
            {"pool": "max", "smooth": False, "use_softmax_scores": False, "step_size": 16},
        ),
        (
            {"base": "gradcam++", "step_size": 16},
            {"base_method": pgc.GradCAMPlusPlus, "step_size": 16},
        ),
    ],
)
def test_sess_options_match_pytorch_grad_cam(
    ours_options: dict[str, Any], reference_options: dict[str, Any]
) -> None:
    """The tutorials' VGG-16 (32 px, so 2 x 2 patches at 41 and 50 px): the other
    fusion, pre-filtering and a threshold, raw scores, overlapping windows and
    another base method."""
    _, shape, layer, _, _ = CAM_ARCHS["vgg16net"]
    model = cam_model("vgg16net")
    x = seeded_input((2, *shape[1:]))
    ours = nscam.SESS(model, layer, num_scales=3, **ours_options).explain(x, CAM_TARGETS[:2])
    theirs = _sess_reference(_ExactPasteSESS, model, layer, x, num_scales=3, **reference_options)
    # Largest |difference| seen: 1.5e-6, except 3e-3 with Grad-CAM++ and, on native
    # convolutions (oneDNN off), 0.045 with max fusion unblurred (r = 0.9998): the two
    # round the patches' float32 forwards differently (netsight batches the patches
    # of both images together, pytorch-grad-cam each image's alone), and a patch's
    # min-max scaling, then a per-pixel maximum, can enlarge that. So r only here.
    assert_maps_match(ours.maps, theirs, f"sess {ours_options}")


# --------------------------------------------------------------------------- DFF
def test_deep_feature_factorization_matches_pytorch_grad_cam() -> None:
    """resnet18's ``layer4`` over two 224 px images, 4 concepts, the classifier
    ``fc`` on the concept embeddings. netsight's NMF starts from scikit-learn's
    random factors (same seed) and runs the same solver, so concept ``j`` is the
    reference's concept ``j``; the test still pairs each concept with its best
    correlated reference concept and requires that pairing to be one-to-one."""
    model = cam_model("resnet18")
    x = seeded_input((2, 3, 224, 224))
    k = 4
    ours = nscam.deep_feature_factorization(model, x, k, layer="layer4", classifier=model.fc)
    dff = pgc.DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
    with reset_after_reference(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning at 200 steps
        concepts, explanations, outputs = dff(x, k)
    dff.activations_and_grads.release()
    theirs = torch.from_numpy(np.stack(explanations))  # (B, k, H, W)
    assert ours.maps.shape == theirs.shape == (2, k, 224, 224)
    pairs = []
    for j in range(k):
        rs = [min(pearson(ours.maps[b, j], theirs[b, i]) for b in range(2)) for i in range(k)]
        best = int(np.argmax(rs))
        assert rs[best] >= 0.99, f"concept {j}: best r = {rs[best]:.4f}"
        pairs.append(best)
    assert sorted(pairs) == list(range(k))
    order = torch.tensor(pairs)
    reference_concepts = torch.from_numpy(concepts.T)[order]  # (k, C)
    scale = float(reference_concepts.abs().max())
    assert float((ours.concepts - reference_concepts).abs().max()) <= 1e-3 * scale
    assert ours.scores is not None
    reference_scores = torch.from_numpy(outputs)[order]
    scale = float(reference_scores.abs().max())
    assert float((ours.scores - reference_scores).abs().max()) <= 1e-3 * scale


# --------------------------------------------------------------------------- Eigen-CAM's sign
def test_eigencam_sign_differs_from_pytorch_grad_cam_on_vgg11() -> None:
    """torchvision's vgg11 (no BatchNorm, so nothing to condition; random seeded
    weights), 64 px, ``features.9`` (16x16). numpy's SVD returns the principal
    direction whose projection is *anti*-correlated with the activation sum for
    all four images, so pytorch-grad-cam's map (after its ReLU) highlights where
    the layer is least active: netsight's maps and pytorch-grad-cam's correlate
    negatively (r = -0.74 here). netsight's map of the negated projection is the
    reference's map; netsight's own projection agrees with the activation sum."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10).eval()
    layer = "features.9"
    x = seeded_input((4, 3, 64, 64))
    cam = nscam.EigenCAM(model, layer)
    ours = cam.explain(x, CAM_TARGETS)
    theirs, raw = pgc_reference("EigenCAM", model, layer, x)
    assert ours.raw[layer].shape[-2:] == (16, 16)
    for i in range(4):
        assert pearson(ours.maps[i], theirs[i]) < 0.5
        assert pearson(ours.raw[layer][i], raw[i]) < -0.999
    flipped = cam._maps({layer: -ours.raw[layer]}, (64, 64), quiet=True)
    assert_maps_match(flipped, theirs, "vgg11 eigencam, sign flipped")
    with torch.no_grad():
        kept: dict[str, torch.Tensor] = {}
        handle = model.features[9].register_forward_hook(
            lambda m, a, o: kept.setdefault("a", o.clone())
        )
        model(x)
        handle.remove()
    total = kept["a"].sum(1).flatten(1)
    total = total - total.mean(1, keepdim=True)
    assert ((total * ours.raw[layer].flatten(1)).sum(1) > 0).all()
    assert ((total * raw.flatten(1)).sum(1) < 0).all()
