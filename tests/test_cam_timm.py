"""CAMs on models whose layers keep channels last or give token sequences (issue 12).

netsight reads each layer's layout from the model (netsight.cam.layout); the
reference is pytorch-grad-cam's own activation and gradient capture
(``ActivationsAndGradients``) on the same layer with the reshape that layout
implies, written out here per family, and the signed Grad-CAM map computed from
it. Comparing signed raw maps (not the ReLU'd, normalised ones) keeps the check
meaningful on random weights, where a whole map can be negative.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.cam import Layout, LayoutError

Reshape = Callable[[torch.Tensor], torch.Tensor]


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _tokens(prefix: int, h: int, w: int) -> Reshape:
    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t


# (model, expected automatic layer, its layout, the reference reshape, prefix tokens)
TIMM = [
    ("swin_tiny_patch4_window7_224", "norm", Layout.NHWC, _nhwc),
    ("swinv2_tiny_window8_256", "norm", Layout.NHWC, _nhwc),
    ("convnext_atto", "norm_pre", Layout.NCHW, _nchw),
    ("maxvit_rmlp_pico_rw_256", "norm", Layout.NCHW, _nchw),
    ("mobilevit_xxs", "final_conv", Layout.NCHW, _nchw),
    ("efficientformer_l1", "stages.3.blocks.4.norm1", Layout.TOKENS, _tokens(0, 7, 7)),
    ("hiera_tiny_224", "blocks.11.norm1", Layout.TOKENS, _tokens(0, 7, 7)),
    ("vit_tiny_patch16_224", "blocks.11.norm1", Layout.TOKENS, _tokens(1, 14, 14)),
    ("deit_tiny_distilled_patch16_224", "blocks.11.norm1", Layout.TOKENS, _tokens(2, 14, 14)),
    ("eva02_tiny_patch14_224", "blocks.11.norm1", Layout.TOKENS, _tokens(1, 16, 16)),
    ("levit_128s", "stages.2.blocks.2", Layout.TOKENS, _tokens(0, 4, 4)),
    ("coat_lite_tiny", "serial_blocks4.1.norm1", Layout.TOKENS, _tokens(1, 7, 7)),
]


def _conditioned(model: nn.Module) -> nn.Module:
    """Weight matrices initialised to zero (torchvision's ViT head, some timm heads)
    get small random values: with a zero head every gradient, and so every map,
    is zero and a comparison says nothing."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model.eval()


def _reference(
    model: nn.Module, layer: str, reshape: Reshape, x: torch.Tensor, target: int
) -> torch.Tensor:
    """Signed Grad-CAM maps from pytorch-grad-cam's capture, on a copy of the model."""
    twin = copy.deepcopy(model)
    module = dict(twin.named_modules())[layer]
    capture = ActivationsAndGradients(twin, [module], reshape, detach=True)
    try:
        out = capture(x)
        out[:, target].sum().backward()
        a, g = capture.activations[0], capture.gradients[0]
    finally:
        capture.release()
    weights = g.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1)


def _check(model: nn.Module, x: torch.Tensor, layer: str, layout: Layout, reshape: Reshape) -> None:
    before = snapshot(model)
    cam = netsight.GradCAM(model)
    result = cam.explain(x, targets=3)
    assert_unchanged(model, before)
    assert result.layers == (layer,)
    assert (
        netsight.cam.layer_layout(
            model,
            dict(model.named_modules())[layer],
            layer,
            _layer_output(model, layer, x),
            (x.shape[-2], x.shape[-1]),
        ).layout
        is layout
    )
    ours = result.raw[layer]
    ref = _reference(model, layer, reshape, x, 3)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    r = torch.corrcoef(torch.stack([ours.flatten().double(), ref.flatten().double()]))[0, 1]
    assert r >= 0.999, f"{layer}: r = {r:.5f}"
    scale = ref.abs().max()
    assert torch.allclose(ours, ref, rtol=0, atol=1e-3 * float(scale))


def _layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    with netsight.capture(model, layers=[layer]) as cap, torch.no_grad():
        model(x[:1])
    return cap[layer]


@pytest.mark.parity
@pytest.mark.parametrize(("name", "layer", "layout", "reshape"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_family_matches_pytorch_grad_cam(
    name: str, layer: str, layout: Layout, reshape: Reshape
) -> None:
    torch.manual_seed(0)
    model = _conditioned(timm.create_model(name, pretrained=False, num_classes=10))
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(2, *size)
    _check(model, x, layer, layout, reshape)


@pytest.mark.parity
def test_torchvision_swin_is_read_channels_last() -> None:
    torch.manual_seed(0)
    model = _conditioned(torchvision.models.swin_t(num_classes=10))
    x = torch.randn(2, 3, 224, 224)
    # the automatic layer: torchvision's Permute after the norm gives (B, C, H, W)
    _check(model, x, "permute", Layout.NCHW, _nchw)
    # its norm keeps channels last
    cam = netsight.GradCAM(model, target_layers="norm")
    ours = cam.explain(x, targets=3).raw["norm"]
    ref = _reference(model, "norm", _nhwc, x, 3)
    r = torch.corrcoef(torch.stack([ours.flatten().double(), ref.flatten().double()]))[0, 1]
    assert r >= 0.999


@pytest.mark.parity
def test_torchvision_vit_and_convnext_keep_their_layouts() -> None:
    torch.manual_seed(0)
    vit = _conditioned(torchvision.models.vit_b_16(num_classes=10, image_size=64))
    _check(
        vit,
        torch.randn(2, 3, 64, 64),
        "encoder.layers.encoder_layer_11.ln_1",
        Layout.TOKENS,
        _tokens(1, 4, 4),
    )
    convnext = _conditioned(torchvision.models.convnext_tiny(num_classes=10))
    _check(convnext, torch.randn(2, 3, 64, 64), "features", Layout.NCHW, _nchw)


@pytest.mark.parity
def test_a_channels_last_stage_chosen_by_name() -> None:
    torch.manual_seed(0)
    model = _conditioned(timm.create_model("swin_tiny_patch4_window7_224", num_classes=10))
    x = torch.randn(2, 3, 224, 224)
    cam = netsight.GradCAM(model, target_layers="layers.2")
    ours = cam.explain(x, targets=3).raw["layers.2"]
    assert ours.shape == (2, 14, 14)
    ref = _reference(model, "layers.2", _nhwc, x, 3)
    r = torch.corrcoef(torch.stack([ours.flatten().double(), ref.flatten().double()]))[0, 1]
    assert r >= 0.999


def test_hiera_tokens_before_the_last_stage_are_refused() -> None:
    torch.manual_seed(0)
    model = timm.create_model("hiera_tiny_224", num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    before = snapshot(model)
    with pytest.raises(LayoutError, match="raster order"):
        netsight.GradCAM(model, target_layers="blocks.0").explain(x)
    assert_unchanged(model, before)


def test_windows_batched_together_are_refused() -> None:
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10).eval()
    layer = "layers.2.blocks.1.attn"  # 14 x 14 tokens in four 7 x 7 windows
    with pytest.raises(LayoutError, match="not one map per image"):
        netsight.GradCAM(model, target_layers=layer).explain(torch.randn(1, 3, 224, 224))


class Ambiguous(nn.Module):
    """A layer whose output is (B, 7, 7, 7): seven channels on a 7 x 7 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 7, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.act = nn.ReLU()
        self.fc = nn.Linear(7 * 49, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.pool(self.conv(x))).flatten(1))


def test_a_layout_that_cannot_be_told_is_refused_with_what_to_pass() -> None:
    model = Ambiguous().eval()
    x = torch.randn(1, 3, 7, 7)  # spatial sizes equal to the channel count
    with pytest.raises(LayoutError, match="reshape="):
        netsight.GradCAM(model, target_layers="act").explain(x)
    # the escape hatch: the user says how to read it
    maps = netsight.GradCAM(model, target_layers="act", reshape=lambda t: t).explain(x).maps
    assert maps.shape == (1, 7, 7)
