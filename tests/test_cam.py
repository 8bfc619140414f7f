"""Class activation maps: hand computations, targets, options, bad input, and the
promise that the model leaves every call exactly as it came."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import netsight.cam as nscam
from helpers import assert_unchanged, snapshot
from netsight.cam.base import tokens_to_grid
from netsight.zoo import Vgg16Net

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity


class TinyNet(nn.Module):
    """conv - BN - ReLU(inplace) - conv - ReLU(inplace) - global pool - linear."""

    def __init__(self, in_channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class DictNet(TinyNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x)}


class TokenNet(nn.Module):
    """A ViT-shaped toy: patch embedding, a class token, one token-mixing block."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.block = nn.Sequential(nn.Linear(6, 6), nn.GELU())
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.block(tokens)
        return self.head(tokens.mean(1))


def _model() -> TinyNet:
    model = TinyNet()
    with torch.no_grad():  # non-trivial BN statistics
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 1.5)
    return model


# --------------------------------------------------------------------------- hand computations
def test_gradcam_equals_cam_up_to_scale_by_hand() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    fc = nn.Linear(3, 4)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    x = torch.randn(2, 2, 6, 6)
    classes = [1, 3]
    with torch.no_grad():
        a = F.conv2d(x, conv.weight, conv.bias, padding=1)  # the conv output, by hand
        rows = fc.weight[classes]
        expected_cam = (rows[:, :, None, None] * a).sum(1)
    grad = nscam.GradCAM(model, "0").explain(x, classes)
    cam = nscam.CAM(model, "0").explain(x, classes)
    torch.testing.assert_close(cam.raw["0"], expected_cam)
    # Grad-CAM's weights are d score / d A averaged over 36 positions = W[c] / 36.
    torch.testing.assert_close(grad.raw["0"], expected_cam / 36)
    torch.testing.assert_close(grad.maps, cam.maps)
    expected = F.interpolate(expected_cam.clamp(min=0)[:, None], size=(6, 6))[:, 0]
    low = expected.amin((1, 2), keepdim=True)
    torch.testing.assert_close(
        cam.maps, (expected - low) / (expected.amax((1, 2), keepdim=True) - low)
    )
    assert cam.classes == (1, 3)
    assert cam.layers == ("0",)
    assert cam.method == "cam"


def test_gradient_methods_match_hand_formulas_on_captured_tensors() -> None:
    model = _model().eval()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        a = model.features(x.clone())
    leaf = a.clone().requires_grad_()
    scores = model.fc(model.pool(leaf).flatten(1))[torch.arange(3), torch.tensor([0, 2, 4])]
    (g,) = torch.autograd.grad(scores.sum(), leaf)
    xgrad_weights = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
    expected = {
        "gradcam": (g.mean((2, 3), keepdim=True) * a).sum(1),
        "hirescam": (g * a).sum(1),
        "layercam": (g.clamp(min=0) * a).sum(1),
        "xgradcam": (xgrad_weights * a).sum(1),
    }
    for name, raw in expected.items():
        result = nscam.METHODS[name](model, "features").explain(x, [0, 2, 4])
        torch.testing.assert_close(result.raw["features"], raw, msg=name)
    saliency = nscam.Saliency(model).explain(x, [0, 2, 4])
    xl = x.clone().requires_grad_()
    s = model(xl)[torch.arange(3), torch.tensor([0, 2, 4])].sum()
    (gx,) = torch.autograd.grad(s, xl)
    torch.testing.assert_close(saliency.raw["input"], gx.abs().amax(1))
    assert saliency.layers == ("input",)


def test_automatic_target_layer_is_the_last_spatial_map() -> None:
    assert nscam.GradCAM(_model()).explain(torch.randn(1, 3, 8, 8)).layers == ("features",)
    # Vgg16Net at 32 px: layer5's pooling gives 1x1, so its last ReLU (2x2) is chosen.
    assert nscam.GradCAM(Vgg16Net()).explain(torch.randn(1, 1, 32, 32)).layers == ("layer5.8",)


# --------------------------------------------------------------------------- targets
def test_single_int_target_explains_every_image() -> None:
    model = _model()
    x = torch.randn(4, 3, 12, 12)
    result = nscam.GradCAM(model).explain(x, targets=3)
    assert result.classes == (3, 3, 3, 3)
    for i in range(4):
        alone = nscam.GradCAM(model).explain(x[i : i + 1], targets=3)
        torch.testing.assert_close(result.maps[i], alone.maps[0])
        torch.testing.assert_close(result.raw["features"][i], alone.raw["features"][0])
    assert not torch.equal(result.maps[1], torch.zeros_like(result.maps[1]))


def test_target_forms_agree() -> None:
    model = _model()
    x = torch.randn(3, 3, 12, 12)
    cam = nscam.HiResCAM(model)
    base = cam.explain(x, [1, 0, 4])
    forms = [
        torch.tensor([1, 0, 4]),
        [lambda out, c=c: out[c] for c in (1, 0, 4)],
    ]
    for form in forms:
        torch.testing.assert_close(cam(x, form), base.maps)
    one = cam.explain(x, lambda out: out[2])
    torch.testing.assert_close(one.maps, cam(x, 2))
    assert one.classes == (None, None, None)
    top = cam.explain(x)
    assert top.classes == tuple(base.logits.argmax(1).tolist())  # type: ignore[union-attr]
    torch.testing.assert_close(top.scores, base.logits.max(1).values)  # type: ignore[union-attr]


def test_dict_output_needs_a_callable_target() -> None:
    model = DictNet()
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"not a \(batch, classes\) logits tensor.*callable"):
        nscam.GradCAM(model)(x)
    assert_unchanged(model, before)
    maps = nscam.GradCAM(model)(x, lambda out: out["logits"][1])
    plain = TinyNet()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(maps, nscam.GradCAM(plain)(x, 1))


@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (5, ValueError, r"class 5 is out of range; the model has 5 classes"),
        ([0, -1], ValueError, r"class -1 is out of range"),
        ([0, 1, 2], ValueError, r"got 3 targets for a batch of 2"),
        ("cat", TypeError, r"targets"),
        (lambda out: out, TypeError, r"must return a scalar tensor"),
    ],
)
def test_bad_targets(targets: object, error: type[Exception], message: str) -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        nscam.GradCAM(model)(x, targets)  # type: ignore[arg-type]
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- bad input
def test_layer_without_spatial_map() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"layer 'fc' has output shape \[2, 5\]: not a spatial"):
        nscam.GradCAM(model, "fc")(x)
    assert_unchanged(model, before)


def test_layer_that_does_not_run() -> None:
    model = _model()
    model.unused = nn.Conv2d(3, 3, 1)
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model)
    for method in ("gradcam", "scorecam", "eigencam"):
        with pytest.raises(ValueError, match=r"'unused' did not run in the forward pass"):
            nscam.METHODS[method](model, "unused")(x)
    assert_unchanged(model, before)


def test_unknown_layer_name() -> None:
    with pytest.raises(KeyError, match="did you mean 'features'"):
        nscam.GradCAM(_model(), "featurs")


def test_grayscale_image_to_rgb_model() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"x has 1 channel\(s\) but .* expects 3"):
        nscam.GradCAM(model)(torch.randn(2, 1, 12, 12))
    with pytest.raises(ValueError, match=r"add a batch dimension"):
        nscam.GradCAM(model)(torch.randn(3, 12, 12))


def test_nan_activations_give_zeros_with_a_warning() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    x[0, :, 2, 2] = float("nan")
    with pytest.warns(nscam.CAMWarning, match=r"NaN/Inf values in the map of image\(s\) 0"):
        maps = nscam.GradCAM(model)(x, [0, 1])
    assert torch.isfinite(maps).all()
    clean = nscam.GradCAM(model)(x[1:], 1)
    torch.testing.assert_close(maps[1], clean[0])


def test_all_zero_maps_are_zeros_with_a_warning() -> None:
    model = _model()
    with torch.no_grad():
        model.fc.weight[2] = -1.0  # features are >= 0 after ReLU: class 2 has no positive evidence
    x = torch.randn(2, 3, 12, 12)
    for method in ("gradcam", "cam"):
        with pytest.warns(nscam.CAMWarning, match=r"image\(s\) 0, 1 is constant"):
            maps = nscam.METHODS[method](model)(x, 2)
        assert torch.equal(maps, torch.zeros_like(maps))


def test_inference_mode_error_and_no_grad() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    expected = nscam.GradCAM(model)(x, [1, 2])
    with torch.no_grad():
        torch.testing.assert_close(nscam.GradCAM(model)(x, [1, 2]), expected)
        torch.testing.assert_close(nscam.Saliency(model)(x, 1), nscam.Saliency(model)(x, 1))
    before = snapshot(model)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"needs gradients.*inference_mode"):
            nscam.GradCAM(model)(x)
        eigen = nscam.EigenCAM(model)(x)  # gradient-free methods work there
    assert_unchanged(model, before)
    torch.testing.assert_close(eigen, nscam.EigenCAM(model)(x))


def test_cam_needs_global_pool_and_linear_head() -> None:
    with pytest.raises(ValueError, match=r"'fc.6' takes 256 features but layer 'layer5.8' has 512"):
        nscam.CAM(Vgg16Net())(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="class indices"):
        nscam.CAM(_model())(torch.randn(1, 3, 8, 8), lambda out: out[0])


# --------------------------------------------------------------------------- model state
def _odd_state_model() -> TinyNet:
    model = _model()
    model.train()
    model.features[1].eval()
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    return model


@pytest.mark.parametrize("method", sorted(nscam.METHODS))
def test_model_state_is_unchanged(method: str) -> None:
    model = _odd_state_model()
    x = torch.randn(3, 3, 12, 12)
    before = snapshot(model)
    options = {"batch_size": 5} if method in ("scorecam", "ablationcam") else {}
    result = nscam.METHODS[method](model, **options).explain(x, [0, 1, 2])
    assert result.maps.shape == (3, 12, 12)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.method == method
    assert_unchanged(model, before)


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", sorted(nscam.METHODS))
def test_model_state_is_unchanged_after_an_exception(method: str) -> None:
    model = _odd_state_model()
    model.fc = nn.Sequential(Exploding(), nn.Linear(16, 5))
    x = torch.randn(2, 3, 12, 12)
    cls = nscam.METHODS[method]
    cam = cls(model, "features" if cls.uses_layers else None)
    model.fc[0].armed = True
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        cam(x, [0, 1])
    assert_unchanged(model, before)
    assert torch.is_grad_enabled()


def test_frozen_backbone_gives_the_same_maps() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    expected = {name: nscam.METHODS[name](model)(x, [1, 2]) for name in ("gradcam", "saliency")}
    model.requires_grad_(False)
    before = snapshot(model)
    for name, maps in expected.items():
        torch.testing.assert_close(nscam.METHODS[name](model)(x, [1, 2]), maps)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- options
def test_options_upsample_normalize_relu() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    result = nscam.GradCAM(model, upsample=False, normalize=False, relu=False).explain(x, [0, 1])
    torch.testing.assert_close(result.maps, result.raw["features"])
    assert result.maps.shape == (2, 6, 6)
    assert (result.maps < 0).any()
    small = nscam.GradCAM(model, upsample=False)(x, [0, 1])
    assert small.shape == (2, 6, 6) and float(small.amax()) == 1.0


def test_several_layers_are_averaged() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    first = nscam.LayerCAM(model, "features.2")(x, [0, 1])
    second = nscam.LayerCAM(model, "features.4")(x, [0, 1])
    both = nscam.LayerCAM(model, ["features.2", "features.4"]).explain(x, [0, 1])
    assert both.layers == ("features.2", "features.4")
    mean = (first + second) / 2
    low = mean.amin((1, 2), keepdim=True)
    torch.testing.assert_close(both.maps, (mean - low) / (mean.amax((1, 2), keepdim=True) - low))


def test_aug_smooth_commutes_with_flipping() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    cam = nscam.GradCAM(model, aug_smooth=True)
    smooth = cam(x, [0, 3])
    torch.testing.assert_close(cam(x.flip(-1), [0, 3]), smooth.flip(-1))
    assert not torch.allclose(smooth, nscam.GradCAM(model)(x, [0, 3]))


def test_vit_tokens_are_reshaped_automatically() -> None:
    model = TokenNet()
    x = torch.randn(2, 3, 16, 16)  # 4x4 patches + a class token = 17 tokens

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    for method in ("gradcam", "scorecam", "ablationcam", "eigencam"):
        auto = nscam.METHODS[method](model, "block").explain(x, [0, 3])
        explicit = nscam.METHODS[method](model, "block", reshape=reshape).explain(x, [0, 3])
        assert auto.raw["block"].shape == (2, 4, 4)
        torch.testing.assert_close(auto.maps, explicit.maps, msg=method)
    grid = tokens_to_grid(torch.arange(2 * 16 * 3.0).view(2, 16, 3))
    assert grid.shape == (2, 3, 4, 4) and float(grid[0, 1, 0, 1]) == 4.0
    with pytest.raises(ValueError, match="N = 15 tokens"):
        tokens_to_grid(torch.zeros(1, 15, 3))


def test_automatic_layer_is_found_once_per_model_and_again_after_a_change() -> None:
    model = _model().eval()
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[0]))
    try:
        x = torch.randn(4, 3, 16, 16)
        for _ in range(3):  # a new explainer per batch, as pytorch-grad-cam's API suggests
            assert nscam.GradCAM(model).explain(x).layers == ("features",)
        assert forwards == [1, 4, 4, 4]  # one probe forward of one image, then the batches
        model.features.append(nn.Conv2d(16, 16, 3, padding=1))  # the structure changed
        assert nscam.GradCAM(model).explain(x).layers == ("features",)
        assert forwards[4:] == [1, 4]
        nscam.GradCAM(model).explain(torch.randn(2, 3, 24, 24))  # another input size
        assert forwards[6:] == [1, 2]
    finally:
        handle.remove()


def test_automatic_layer_on_a_vision_transformer_is_the_last_attention_input() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    x = torch.randn(2, 3, 32, 32)
    result = nscam.GradCAM(vit).explain(x, [0, 3])
    # not the patch convolution (the last 4-D output), but the norm before the last attention
    assert result.layers == ("encoder.layers.encoder_layer_1.ln_1",)
    assert result.raw[result.layers[0]].shape == (2, 4, 4)
    assert (result.raw[result.layers[0]].abs().sum(dim=(1, 2)) > 0).all()
    # why: after the last attention the patch tokens reach the head only through the
    # class token, so a later token layer has zero gradient on its patch tokens
    with pytest.warns(nscam.CAMWarning, match="constant"):
        late = nscam.GradCAM(vit, "encoder.ln").explain(x, [0, 3])
    assert float(late.raw["encoder.ln"].abs().sum()) == 0.0
    # a CNN keeps its last spatial layer, a token model without attention its last token layer
    assert nscam.GradCAM(_model()).explain(torch.randn(1, 3, 16, 16)).layers == ("features",)
    assert nscam.GradCAM(TokenNet()).explain(torch.randn(1, 3, 16, 16)).layers == ("block",)


# --------------------------------------------------------------------------- perturbation
def test_scorecam_chunking_and_skipped_channels_do_not_change_weights() -> None:
    model = _model().eval()
    x = torch.randn(3, 3, 12, 12)
    a = nscam.ScoreCAM(model, batch_size=1).explain(x, [0, 1, 2])
    b = nscam.ScoreCAM(model, batch_size=64).explain(x, [0, 1, 2])
    torch.testing.assert_close(a.maps, b.maps)
    # By hand for image 0, every channel (no skipping).
    with torch.no_grad():
        acts = model.features(x.clone())[0]
        up = F.interpolate(acts[:, None], size=(12, 12), mode="bilinear", align_corners=True)
        low, high = up.amin((1, 2, 3), keepdim=True), up.amax((1, 2, 3), keepdim=True)
        masks = (up - low) / (high - low + 1e-8)
        weights = torch.softmax(model(x[0] * masks)[:, 0], 0)
    torch.testing.assert_close(a.raw["features"][0], (weights[:, None, None] * acts).sum(0))


class BatchReadingNet(TinyNet):
    """Reads the batch size before the target layer (the fast ablation path breaks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        return self.fc(self.pool(self.features(x)).view(batch, -1))


def test_ablation_falls_back_when_the_fast_path_is_unsafe() -> None:
    model = TinyNet().eval()
    tricky = BatchReadingNet()
    tricky.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    expected = nscam.AblationCAM(model, batch_size=4).explain(x, [0, 1])
    before = snapshot(tricky)
    got = nscam.AblationCAM(tricky, batch_size=4).explain(x, [0, 1])
    assert_unchanged(tricky, before)
    torch.testing.assert_close(got.maps, expected.maps)
    # By hand: zero one channel of image 1 and re-run the head.
    with torch.no_grad():
        acts = model.features(x.clone())
        base = model.fc(model.pool(acts).flatten(1))[1, 1]
        ablated = acts[1:].repeat(16, 1, 1, 1)
        ablated[torch.arange(16), torch.arange(16)] = 0
        scores = model.fc(model.pool(ablated).flatten(1))[:, 1]
        weights = (base - scores) / base
    torch.testing.assert_close(got.raw["features"][1], (weights[:, None, None] * acts[1]).sum(0))


class BatchRoundingNet(TinyNet):
    """Its output moves by ``shift`` whenever more rows than one reach the head: what
    CPU kernels that block by batch size do to a logit (rounding), or, with a large
    shift, a model that really mixes the batch."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        return self.fc(h) + self.shift * float(h.shape[0] > 1)


def test_ablation_control_tolerates_rounding_of_a_small_logit_among_large_ones() -> None:
    """The control copy's score comes from a forward of another batch size than the
    plain one. Seen with PyTorch's native convolutions: a logit of 0.008 next to
    logits of 0.3 came back 1.2e-5 off, and Ablation-CAM used to refuse the model
    as non-deterministic (its tolerance was 1e-5 + 1e-4 of the logit). Rounding
    follows the size of the output, not of one logit; a real batch effect (1e-2)
    is still refused."""
    torch.manual_seed(0)
    model = BatchRoundingNet(shift=1.2e-5).eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.01)
        model.fc.bias.copy_(torch.tensor([0.008, 0.3, -0.3, 0.2, 0.1]))
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        out = model(x)[0]
    assert abs(float(out[0])) < 0.01 and float(out.abs().max()) > 0.25
    result = nscam.AblationCAM(model, "features.4", batch_size=8).explain(x, [0])
    assert float(result.maps.amax()) > 0
    model.shift = 1e-2
    with pytest.raises(RuntimeError, match="changed the target score of image 0"):
        nscam.AblationCAM(model, "features.4", batch_size=8).explain(x, [0])


# --------------------------------------------------------------------------- overlay
def test_overlay() -> None:
    image = torch.rand(3, 20, 30)
    cam_map = torch.rand(5, 6)
    picture = nscam.overlay(image, cam_map, alpha=0.5)
    assert isinstance(picture, Image.Image) and picture.size == (30, 20) and picture.mode == "RGB"
    plain = nscam.overlay(image, cam_map, alpha=0.0)
    expected = (image * 255).round().to(torch.uint8).permute(1, 2, 0)
    got = torch.from_numpy(np.array(plain)).to(torch.int16)
    assert (got - expected.to(torch.int16)).abs().max() <= 1
    pil = Image.new("L", (30, 20), 128)
    heat = nscam.overlay(pil, torch.ones(1, 20, 30), alpha=1.0, cmap="gray")
    assert heat.getpixel((0, 0)) == (255, 255, 255)
    gray = nscam.overlay(torch.rand(1, 20, 30), cam_map)
    assert gray.size == (30, 20)
    with pytest.raises(ValueError, match="alpha"):
        nscam.overlay(image, cam_map, alpha=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\) tensor"):
        nscam.overlay(torch.rand(1, 3, 20, 30), cam_map)
    with pytest.raises(ValueError, match="unknown matplotlib colormap"):
        nscam.overlay(image, cam_map, cmap="nope")


def test_registry() -> None:
    assert list(nscam.METHODS) == [
        "cam",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "hirescam",
        "layercam",
        "scorecam",
        "sscam",
        "iscam",
        "smoothgradcam++",
        "ablationcam",
        "eigencam",
        "saliency",
        "eigengradcam",
        "gradcamelementwise",
        "shapleycam",
        "finercam",
        "fullgrad",
        "guidedbackprop",
        "guidedgradcam",
        "kpcacam",
        "fem",
        "segeigencam",
        "sess",
    ]
    for name, cls in nscam.METHODS.items():
        assert cls.method == name
        assert issubclass(cls, nscam.BaseCAM)


def test_no_warnings_on_ordinary_maps() -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nscam.GradCAM(model)(torch.randn(2, 3, 12, 12), [0, 1])
