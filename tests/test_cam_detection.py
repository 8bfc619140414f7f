"""CAMs of object detectors: the box target against pytorch-grad-cam's
``FasterRCNNBoxScoreTarget``, Grad-CAM on a Faster R-CNN feature level against
pytorch-grad-cam, the feature pyramid found and fused by itself, and the maps put
back on the input the detector resized and padded.

The detectors have random seeded weights and 3 classes; their box classifier is
scaled down so that the softmax is not saturated (a saturated score has no
gradient), and their score threshold is 0 so that random weights still detect.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import detection

import netsight
from helpers import assert_unchanged, snapshot
from netsight.cam import targets
from netsight.cam.base import Frame

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget  # noqa: E402

R_MIN = 0.999


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def _faster_rcnn(size: int) -> nn.Module:
    torch.manual_seed(0)
    model = detection.fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        box_score_thresh=0.0,
        min_size=size,
        max_size=size,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_detections_per_img=20,
    )
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.mul_(1e-2)
        predictor.cls_score.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def faster_rcnn() -> nn.Module:
    return _faster_rcnn(256)


def _images(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parity
def test_box_target_scores_as_pytorch_grad_cam(faster_rcnn):
    with torch.no_grad():
        (out,) = faster_rcnn(_images((1, 3, 256, 256)))
    boxes, labels = out["boxes"][:3], out["labels"][:3].tolist()
    shifted = boxes + torch.tensor([30.0, 0.0, 30.0, 0.0])  # a worse overlap
    other = [(label + 1) % 3 for label in labels]  # the wrong class: no match
    for wanted, classes in ((boxes, labels), (shifted, labels), (boxes, other)):
        ours = targets.Box(wanted, classes)(out)
        theirs = FasterRCNNBoxScoreTarget(classes, wanted.numpy())(out)
        torch.testing.assert_close(ours, theirs.reshape(()))
    assert float(targets.Box(boxes, labels)(out)) > 3.0  # each matches itself: IoU 1 + score
    assert float(targets.Box(boxes, other)(out)) == 0.0


def test_detection_binds_the_box_found_on_the_unchanged_input(faster_rcnn):
    with torch.no_grad():
        (out,) = faster_rcnn(_images((1, 3, 256, 256)))
    bound = targets.Detection(1).bind(out)
    order = out["scores"].argsort(descending=True)
    torch.testing.assert_close(bound.boxes, out["boxes"][order[1]])
    assert bound.labels == int(out["labels"][order[1]])
    with pytest.raises(ValueError, match="detected 20 object"):
        targets.Detection(20).bind(out)
    with pytest.raises(TypeError, match="one image's detections"):
        targets.Detection(0)(torch.zeros(3))


@pytest.mark.parity
def test_grad_cam_of_a_box_matches_pytorch_grad_cam(faster_rcnn):
    """Grad-CAM of each image's own top box on the finest pyramid level (the
    output of ``backbone.fpn.layer_blocks.0``; pytorch-grad-cam cannot take the
    backbone's dict of levels with a gradient method). At 256 x 256 the detector
    neither resizes nor pads, so the final maps compare directly."""
    x = _images((2, 3, 256, 256))
    with torch.no_grad():
        outputs = faster_rcnn(x)
    picked = [targets.Detection(0).bind(out) for out in outputs]
    layer = "backbone.fpn.layer_blocks.0"
    before = snapshot(faster_rcnn)
    ours = netsight.GradCAM(faster_rcnn, layer).explain(x, picked)
    assert_unchanged(faster_rcnn, before)
    module = dict(faster_rcnn.named_modules())[layer]
    reference = [FasterRCNNBoxScoreTarget([b.labels], b.boxes[None].numpy()) for b in picked]
    try:
        with pgc.GradCAM(faster_rcnn, [module]) as cam:
            theirs = cam(x, reference)
    finally:
        for param in faster_rcnn.parameters():
            param.grad = None
    for i in range(2):
        r = _r(ours.maps[i].numpy(), theirs[i])
        assert r >= R_MIN, f"image {i}: r = {r:.6f}"


def test_the_pyramid_is_found_fused_and_put_back_on_the_input(faster_rcnn):
    """No layer given: every level of ``backbone`` that the box scores read (not
    ``pool``, which only the region proposals use, and they are detached) is
    explained, and the fused map has the input's size although the detector
    scaled 200 x 240 to 213 x 256 and padded it to 224 x 256."""
    x = _images((2, 3, 200, 240))
    before = snapshot(faster_rcnn)
    cam = netsight.GradCAM(faster_rcnn)
    result = cam.explain(x, targets.Detection(0))
    assert_unchanged(faster_rcnn, before)
    assert result.layers == ("backbone",)
    assert sorted(result.raw) == [f"backbone[{k}]" for k in "0123"]
    assert result.maps.shape == (2, 200, 240)
    assert torch.isfinite(result.maps).all() and float(result.maps.amax()) == 1.0
    assert (result.scores > 1.0).all()  # IoU 1 with itself plus a confidence
    eigen = netsight.EigenCAM(faster_rcnn).explain(x)  # the top box by default
    assert "backbone[pool]" in eigen.raw and eigen.maps.shape == (2, 200, 240)


def test_frame_maps_the_canvas_back_to_the_input():
    """A map equal to each canvas pixel's column, read back at the input's pixel
    centres: the image filled 213 x 256 of a 224 x 256 canvas and was 200 x 240,
    so input column ``j`` sits at canvas column ``(j + 0.5) * 256 / 240``, and
    the padded rows below 213 are never read."""
    frame = Frame(canvas=(224, 256), image_sizes=((213, 256),))
    columns = torch.arange(256, dtype=torch.float64).add(0.5).expand(224, 256)
    rows = torch.arange(224, dtype=torch.float64).add(0.5)[:, None].expand(224, 256)
    back_x = frame.to_input(columns[None], (200, 240))[0]
    back_y = frame.to_input(rows[None], (200, 240))[0]
    expected_x = (torch.arange(240, dtype=torch.float64) + 0.5) * 256 / 240
    expected_y = (torch.arange(200, dtype=torch.float64) + 0.5) * 213 / 200
    torch.testing.assert_close(back_x[0], expected_x.clamp(0.5, 255.5))
    torch.testing.assert_close(back_y[:, 0], expected_y.clamp(0.5, 223.5))
    assert float(back_y.amax()) < 213


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (detection.retinanet_resnet50_fpn, {"score_thresh": 0.0}),
        (detection.ssdlite320_mobilenet_v3_large, {"score_thresh": 0.0}),
    ],
)
def test_other_detector_families_take_a_box_target(factory, options):
    torch.manual_seed(0)
    kwargs = dict(options)
    if factory is detection.retinanet_resnet50_fpn:
        kwargs.update(min_size=160, max_size=160, topk_candidates=50, detections_per_img=20)
    else:
        kwargs.update(topk_candidates=50, detections_per_img=20)
    model = factory(weights=None, weights_backbone=None, num_classes=3, **kwargs).eval()
    x = _images((1, 3, 160, 160))
    before = snapshot(model)
    result = netsight.GradCAM(model).explain(x, targets.Detection(0))
    assert_unchanged(model, before)
    assert result.layers == ("backbone",) and len(result.raw) >= 3
    assert result.maps.shape == (1, 160, 160) and torch.isfinite(result.maps).all()
