"""CAMs of model forms beyond the plain image classifier: a 1x1-convolution
classifier (SqueezeNet) for the original CAM, compared with torchcam's CAM, which
takes such heads; and video models (``Conv3d``, ``(B, C, T, H, W)`` input),
compared with pytorch-grad-cam's 3-D support."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import netsight
from helpers import assert_unchanged, snapshot

torchcam_methods = pytest.importorskip("torchcam.methods")

R_MIN = 0.999


def _r(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parity
def test_cam_takes_a_one_by_one_convolution_head_as_torchcam_does():
    """SqueezeNet ends in Dropout, Conv2d(512, classes, 1), ReLU, global average
    pooling: no nn.Linear. CAM finds the 1x1 convolution and, without a target
    layer, the layer whose output it reads (``features``' last Fire module)."""
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    before = snapshot(model)
    ours = netsight.cam.CAM(model).explain(x, top)
    assert_unchanged(model, before)
    assert ours.layers == ("features.12",)
    with torchcam_methods.CAM(model, "features", fc_layer="classifier.1") as extractor:
        with torch.no_grad():
            scores = model(x)
        theirs = extractor(top, scores)[0]  # (B, h, w), ReLU'd and min-max scaled
    raw = ours.raw["features.12"].clamp(min=0)
    for i in range(2):
        r = _r(raw[i], theirs[i])
        assert r >= R_MIN, f"image {i}: r = {r:.6f}"
    with pytest.raises(TypeError, match=r"not an nn\.Linear or a 1x1"):
        netsight.cam.CAM(model, fc_layer="features.0")


@pytest.mark.parity
def test_video_models_get_grad_cam_volumes_as_pytorch_grad_cam_computes_them():
    """r3d_18 on two 8-frame clips: the raw ``(B, T, h, w)`` maps equal
    pytorch-grad-cam's 3-D Grad-CAM. The final maps differ by design:
    pytorch-grad-cam resizes 3-D maps with ``scipy.ndimage.zoom`` (cubic
    splines, corner pixels aligned: r = 0.90 against netsight here) but its 2-D maps
    with pixel centres aligned; netsight resizes both the 2-D way (trilinear,
    pixel centres), so the final maps are checked against the reference's raw
    maps resized like that."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=10).eval()
    x = torch.randn(2, 3, 8, 112, 112, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    ours = netsight.GradCAM(model, "layer3").explain(x, [1, 3])
    assert_unchanged(model, before)
    assert ours.maps.shape == (2, 8, 112, 112) and ours.raw["layer3"].shape == (2, 2, 14, 14)
    raws: list[np.ndarray] = []
    try:
        with pgc.GradCAM(model, [model.layer3]) as cam:
            get_cam_image = cam.get_cam_image

            def keep(*args, **kwargs):
                raws.append(get_cam_image(*args, **kwargs))
                return raws[-1]

            cam.get_cam_image = keep
            cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    finally:
        for param in model.parameters():
            param.grad = None
    theirs = torch.from_numpy(raws[0])
    scale = theirs.abs().amax()
    assert float((ours.raw["layer3"] - theirs).abs().amax()) <= 1e-3 * float(scale)
    resized = torch.nn.functional.interpolate(
        theirs.clamp(min=0)[:, None], size=(8, 112, 112), mode="trilinear", align_corners=False
    )[:, 0]
    for i in range(2):
        r = _r(ours.maps[i], resized[i])
        assert r >= R_MIN, f"clip {i}: r = {r:.6f}"
    # found by itself: the last 3-D map; perturbation methods refuse clips clearly
    assert netsight.GradCAM(model).explain(x[:1], 1).layers == ("layer4",)
    with pytest.raises(ValueError, match="use a gradient method"):
        netsight.ScoreCAM(model, "layer3").explain(x[:1], 1)
