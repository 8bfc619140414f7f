"""netsight's CAMs against independent implementations: pytorch-grad-cam (``grad-cam``
on PyPI) and torchcam, on torchvision's resnet18 and vgg11_bn and the tutorials'
VGG-16, with random seeded weights, a batch of 4 and a different class per image.

Agreement is Pearson r >= 0.999 per image on the normalised input-resolution
maps. An all-zero reference map (no positive evidence after ReLU) must be
all-zero in netsight too. pytorch-grad-cam calls ``model.eval()`` without
restoring it and fills every parameter's ``.grad``; both are reset after each
reference run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import netsight.cam as nscam
from netsight.cam.gradient import GradientCAM
from netsight.zoo import Vgg16Net

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TARGETS = [1, 3, 5, 7]
R_MIN = 0.999

# name -> (factory, input shape, target layer for the gradient methods and Eigen-CAM,
#          a 64-channel layer for Score-CAM / Ablation-CAM, input shape for those)
ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, str, tuple[int, ...]]] = {
    "resnet18": (
        lambda: torchvision.models.resnet18(num_classes=10),
        (4, 3, 64, 64),
        "layer4",
        "layer1",
        (4, 3, 32, 32),
    ),
    "vgg11_bn": (
        lambda: torchvision.models.vgg11_bn(num_classes=10),
        (4, 3, 64, 64),
        "features",
        "features.2",
        (4, 3, 32, 32),
    ),
    "vgg16net": (Vgg16Net, (4, 1, 32, 32), "layer5.8", "layer1.2", (4, 1, 32, 32)),
}

GRADIENT_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}


@functools.cache
def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = ARCHS[arch][0]().eval()
    if arch == "vgg11_bn":
        # A frozen 100M-parameter head: pytorch-grad-cam's backward then skips the
        # head's weight gradients (3x faster); netsight never computes them anyway.
        model.classifier.requires_grad_(False)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    return model


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@contextmanager
def _reset(model: nn.Module) -> Iterator[None]:
    flags = [m.training for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in zip(model.modules(), flags, strict=True):
            module.training = flag
        for param in model.parameters():
            param.grad = None


def _reference(cls_name: str, model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    module = dict(model.named_modules())[layer]
    with _reset(model), getattr(pgc, cls_name)(model, [module]) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = 64
        maps = cam(x, [ClassifierOutputTarget(c) for c in TARGETS])
    return torch.from_numpy(maps)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def _assert_match(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> list[float]:
    rs = []
    for i in range(ours.shape[0]):
        if float(theirs[i].amax() - theirs[i].amin()) < 1e-6:  # no positive evidence
            assert float(ours[i].abs().amax()) == 0.0, f"{what}: image {i} should be all zero"
            rs.append(1.0)
            continue
        r = _pearson(ours[i], theirs[i])
        assert r >= R_MIN, f"{what}: image {i}: r = {r:.6f}"
        rs.append(r)
    return rs


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_gradient_methods_match_pytorch_grad_cam(arch: str, method: str) -> None:
    _, shape, layer, _, _ = ARCHS[arch]
    model = _model(arch)
    x = _input(shape)
    ours = nscam.METHODS[method](model, layer).explain(x, TARGETS)
    theirs = _reference(GRADIENT_METHODS[method], model, layer, x)
    _assert_match(ours.maps, theirs, f"{arch} {method}")
    # At least half the images carry positive evidence, so the test compares something.
    assert sum(float(m.amax()) > 0 for m in ours.maps) >= 2


@pytest.mark.parametrize("arch", list(ARCHS))
def test_automatic_layer_is_the_one_compared(arch: str) -> None:
    _, shape, layer, _, _ = ARCHS[arch]
    if arch == "vgg11_bn":
        layer = "features"  # the adaptive average pool after it is skipped
    assert nscam.GradCAM(_model(arch)).explain(_input(shape), TARGETS).layers == (layer,)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eigencam_matches_pytorch_grad_cam_up_to_the_sign(arch: str) -> None:
    """The sign of a principal direction is arbitrary. pytorch-grad-cam keeps what
    numpy's SVD returns; netsight orients it to agree with the channel sum of the
    activations. Where the two signs differ, netsight's map of the negated raw
    projection is the reference's map."""
    _, shape, layer, _, _ = ARCHS[arch]
    model = _model(arch)
    x = _input(shape)
    ours = nscam.EigenCAM(model, layer).explain(x, TARGETS)
    theirs = _reference("EigenCAM", model, layer, x)
    flipped = nscam.EigenCAM(model, layer)._maps(
        {layer: -ours.raw[layer]}, (shape[2], shape[3]), quiet=True
    )
    for i in range(shape[0]):
        r = max(_pearson(ours.maps[i], theirs[i]), _pearson(flipped[i], theirs[i]))
        assert r >= R_MIN, f"{arch} eigencam image {i}: r = {r:.6f}"
    # netsight's sign convention: the projection agrees with the activation sum.
    with torch.no_grad():
        acts: dict[str, torch.Tensor] = {}
        module = dict(model.named_modules())[layer]
        handle = module.register_forward_hook(lambda m, a, o: acts.setdefault("a", o.clone()))
        model(x)
        handle.remove()
    total = acts["a"].sum(1).flatten(1)
    raw = ours.raw[layer].flatten(1)
    agreement = ((total - total.mean(1, keepdim=True)) * raw).sum(1)
    assert (agreement >= 0).all()


@pytest.mark.slow  # 256 extra forwards per implementation: 10-60 s on 2 busy cores
@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize(
    ("method", "cls_name"), [("scorecam", "ScoreCAM"), ("ablationcam", "AblationCAM")]
)
def test_perturbation_methods_match_pytorch_grad_cam(arch: str, method: str, cls_name: str) -> None:
    """On a 64-channel layer (one extra forward per image and channel), post-ReLU, so
    pytorch-grad-cam's ablation value is 0, as netsight's always is."""
    _, _, _, layer, shape = ARCHS[arch]
    model = _model(arch)
    x = _input(shape)
    ours = nscam.METHODS[method](model, layer, batch_size=64).explain(x, TARGETS)
    theirs = _reference(cls_name, model, layer, x)
    _assert_match(ours.maps, theirs, f"{arch} {method}")


@pytest.mark.slow  # about 10-15 s on 2 busy cores
def test_ablation_differs_where_the_reference_ablates_to_min_minus_1e7() -> None:
    """On a layer with negative values (a conv output before BN/ReLU) pytorch-grad-cam
    sets ablated channels to ``min - 1e7`` instead of 0, which swamps the rest of the
    network; netsight ablates to zero as the paper does. Shown on resnet18's
    ``layer1.1.conv2``: netsight's map is the zero-ablation map computed by hand, and
    the reference's map is a different one."""
    model = _model("resnet18")
    x = _input((1, 3, 32, 32))
    layer = "layer1.1.conv2"
    ours = nscam.AblationCAM(model, layer, batch_size=64).explain(x, [1])
    module = dict(model.named_modules())[layer]
    kept: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        handle = module.register_forward_hook(lambda m, a, o: kept.setdefault("a", o.clone()))
        base = model(x)[0, 1]
        handle.remove()
        a = kept["a"]
        assert float(a.amin()) < 0
        channels = a.shape[1]
        ablated = a.repeat(channels, 1, 1, 1)
        ablated[torch.arange(channels), torch.arange(channels)] = 0
        handle = module.register_forward_hook(lambda m, i, o: ablated)
        scores = model(x.repeat(channels, 1, 1, 1))[:, 1]
        handle.remove()
        weights = (base - scores) / base
    by_hand = (weights[:, None, None] * a[0]).sum(0)
    torch.testing.assert_close(ours.raw[layer][0], by_hand, rtol=1e-3, atol=1e-4)
    module = dict(model.named_modules())[layer]
    with _reset(model), pgc.AblationCAM(model, [module], batch_size=64) as cam:
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(1)]))
    assert _pearson(ours.maps[0], theirs[0]) < 0.9


# torchcam's CAM applies no ReLU (the original paper's map is signed), so netsight's
# CAM is compared with relu=False. (Grad-CAM++: see the test after this one.)
TORCHCAM = {
    "gradcam": ("GradCAM", {}, True),
    "cam": ("CAM", {"fc_layer": "fc"}, False),
    "layercam": ("LayerCAM", {}, True),
    "xgradcam": ("XGradCAM", {}, True),
}


@pytest.mark.filterwarnings("ignore::netsight.cam.CAMWarning")
@pytest.mark.parametrize("method", list(TORCHCAM))
def test_methods_match_torchcam(method: str) -> None:
    name, extra, relu = TORCHCAM[method]
    model = _model("resnet18")
    x = _input((4, 3, 64, 64))
    ours = nscam.METHODS[method](model, "layer4", relu=relu).explain(x, TARGETS)
    theirs_cls = getattr(torchcam_methods, name)
    with _reset(model), theirs_cls(model, "layer4", input_shape=(3, 64, 64), **extra) as ex:
        (theirs,) = ex(class_idx=TARGETS, scores=model(x))
    theirs = theirs.detach()
    # torchcam returns maps at layer resolution; compare there and at input size.
    ours_small = nscam.GradCAM(model, "layer4", upsample=False, relu=relu)._maps(
        ours.raw, (2, 2), quiet=True
    )
    _assert_match(ours_small, theirs, f"torchcam {name} (layer resolution)")
    up = F.interpolate(theirs[:, None], size=(64, 64), mode="bilinear")[:, 0]
    _assert_match(ours.maps, up, f"torchcam {name}")


class _SquaredGradients(GradientCAM):
    """Weights ``sum(G^2 * relu(G))``: Grad-CAM++ without its denominator."""

    method = "squared-gradients"

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = (gradients.pow(2) * gradients.clamp(min=0)).sum((2, 3), keepdim=True)
        return (weights * activations).sum(1)


def test_torchcam_gradcampp_never_divides_by_its_denominator() -> None:
    """torchcam 0.5.0's GradCAMpp divides alpha in place through a boolean mask
    (``alpha[mask].div_(...)``), which divides a copy: alpha stays G^2 and the
    weights are ``sum(G^2 * relu(G))``. Its maps equal that formula exactly and
    differ from Grad-CAM++ as the paper and pytorch-grad-cam (which netsight
    matches, above) define it."""
    model = _model("resnet18")
    x = _input((4, 3, 64, 64))
    with _reset(model), torchcam_methods.GradCAMpp(model, "layer4", input_shape=(3, 64, 64)) as ex:
        (theirs,) = ex(class_idx=TARGETS, scores=model(x))
    squared = _SquaredGradients(model, "layer4", upsample=False).explain(x, TARGETS)
    _assert_match(squared.maps, theirs.detach(), "torchcam GradCAMpp vs sum(G^2 relu(G))")
    ours = nscam.GradCAMPlusPlus(model, "layer4", upsample=False).explain(x, TARGETS)
    assert min(_pearson(ours.maps[i], theirs[i].detach()) for i in range(4)) < 0.999
