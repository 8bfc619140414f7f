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
