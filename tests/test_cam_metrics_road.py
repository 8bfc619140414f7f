"""ROAD in netsight.cam.evaluate: the noisy linear imputation and the MoRF / LeRF
scores against pytorch-grad-cam 1.5.7 (``pytorch_grad_cam.metrics.road``) on the same
images, maps and noise; on a toy model whose evidence is known; batching, seeding
and bad options. The two-process run is in test_cam_metrics.py (its options measure
ROAD too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn
from torch.utils.data import TensorDataset

import netsight.cam as nscam
from helpers import assert_unchanged, snapshot
from netsight.cam.base import RawMaps, TargetSpec, resolve_targets
from netsight.cam.metrics import ROAD_PERCENTAGES, impute

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = [
    pytest.mark.parity,
    # pytorch-grad-cam's np.float32(list of 0-d tensors), not ours
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

#: Largest difference of an imputed pixel from pytorch-grad-cam's (scipy's direct
#: solve), float64 images / float32 images (the CG tolerance; images of unit scale).
IMPUTE_TOL_64 = 1e-6
IMPUTE_TOL_32 = 2e-4
#: Largest difference of a ROAD probability (resnet18, noise-free) from pytorch-grad-cam's.
SCORE_TOL = 2e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FixedCAM(nscam.BaseCAM):
    """A CAM that returns given maps, one per given image (found by its pixels, so
    the data may come in any batches)."""

    method = "fixed"
    uses_layers = False

    def __init__(
        self, model: nn.Module, images: torch.Tensor, maps: torch.Tensor, **options: Any
    ) -> None:
        super().__init__(model, **options)
        self.images = images
        self.fixed = maps

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        with torch.no_grad():
            output = self.model(x)
        resolved = resolve_targets(targets, output, x.shape[0])
        rows = [next(k for k, known in enumerate(self.images) if torch.equal(known, v)) for v in x]
        maps = self.fixed[rows].to(x.device)
        return RawMaps({"input": maps}, output, resolved, resolved.scores(output))


def _fixed(model: nn.Module, x: torch.Tensor, maps: torch.Tensor) -> FixedCAM:
    return FixedCAM(model, x, maps, normalize=False)


# --------------------------------------------------------------------------- imputation
def _masks(kind: str, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(H, W) bool removed pixels: a smooth map's top 70 % (one blob with holes), or
    70 % scattered pixels."""
    if kind == "scattered":
        return torch.rand(size, generator=generator) < 0.7
    coarse = torch.rand(1, 1, 5, 5, generator=generator)
    smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0, 0]
    return smooth > smooth.flatten().kthvalue(int(0.3 * smooth.numel())).values


@pytest.mark.parametrize("kind", ["blob", "scattered"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_imputation_matches_pytorch_grad_cam_with_the_same_noise(
    kind: str, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(1)
    size = (23, 31)  # odd sides: the multigrid's coarse grids are padded
    images = torch.randn(3, 3, *size, generator=generator)
    removed = torch.stack([_masks(kind, size, generator) for _ in range(3)])
    expected, noises = [], []
    for image, gone in zip(images, removed, strict=True):
        # pytorch-grad-cam draws (C, removed) noise from the global generator, in
        # row-major order of the removed pixels: the same draw, put in place, is ours.
        torch.manual_seed(7)
        expected.append(NoisyLinearImputer(noise=0.01)(image, (~gone).float()))
        torch.manual_seed(7)
        draw = 0.01 * torch.randn(3, int(gone.sum()))
        noise = torch.zeros(3, *size)
        noise[:, gone] = draw
        noises.append(noise)
    ours = impute(images.to(dtype), removed, noise=torch.stack(noises).to(dtype))
    assert ours.dtype == dtype
    worst = float((ours.double() - torch.stack(expected).double()).abs().max())
    assert worst <= (IMPUTE_TOL_64 if dtype == torch.float64 else IMPUTE_TOL_32), worst
    # kept pixels are untouched, bit for bit
    kept = ~removed[:, None].expand_as(images)
    assert torch.equal(ours[kept], images.to(dtype)[kept])


def test_imputation_of_nothing_and_of_everything() -> None:
    images = torch.randn(2, 2, 6, 7, generator=torch.Generator().manual_seed(0))
    nothing = torch.zeros(2, 6, 7, dtype=torch.bool)
    assert torch.equal(impute(images, nothing), images)
    # a constant image is imputed as that constant
    flat = torch.full((1, 1, 6, 7), 0.25)
    some = torch.rand(1, 6, 7, generator=torch.Generator().manual_seed(1)) < 0.8
    torch.testing.assert_close(impute(flat, some), flat, rtol=0, atol=1e-5)
    # no kept pixel: no boundary values, the documented zeros
    assert torch.equal(impute(images, ~nothing), torch.zeros_like(images))
    with pytest.raises(ValueError, match="removed: expected a"):
        impute(images, nothing[0])


# --------------------------------------------------------------------------- ROAD scores
def _calibrated_resnet18(shape: tuple[int, ...]) -> nn.Module:
    """Seeded random weights; BatchNorm statistics from random inputs (as a trained
    model would have them), so the probabilities are neither saturated nor flat."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, *shape[1:], generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def _reference_road(
    model: nn.Module, x: torch.Tensor, maps: torch.Tensor, classes: list[int]
) -> torch.Tensor:
    """(B, 2, P) pytorch-grad-cam's probabilities (noise-free imputer), MoRF then
    LeRF, at netsight's percentages q: its ``percentile`` is the share kept, 100 - q."""
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    cams = maps.double().numpy()
    out = torch.empty(x.shape[0], 2, len(ROAD_PERCENTAGES), dtype=torch.float64)
    for order, removal in enumerate((RemoveMostRelevantFirst, RemoveLeastRelevantFirst)):
        for j, q in enumerate(ROAD_PERCENTAGES):
            metric = PerturbationConfidenceMetric(removal(100 - q, NoisyLinearImputer(noise=0)))
            scores = metric(x, cams, targets, model, return_diff=False)
            out[:, order, j] = torch.from_numpy(np.asarray(scores, dtype=np.float64))
    return out


def test_road_matches_pytorch_grad_cam_on_resnet18() -> None:
    # 100 x 100: pytorch-grad-cam keeps the pixels below np.percentile(map, 100 - q),
    # ceil(99.99 (100 - q)) = 100 (100 - q) of them for every q here, the same count
    # as netsight's round(q 10000 / 100) removed; maps without ties (below) then give
    # both the same pixels.
    shape = (2, 3, 100, 100)
    model = _calibrated_resnet18(shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        classes = model(x).argmax(1)
    # Grad-CAM's maps, made tie-free by their ranks (ties in row-major order, as
    # netsight orders them): (rank + 1) / (n + 1), exact in float32 and in 1 - map.
    maps = nscam.GradCAM(model).explain(x, classes).maps
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    tie_free = ((flat.shape[1] - ranks).float() / (flat.shape[1] + 1)).view_as(maps)

    before = snapshot(model)
    result = nscam.evaluate(
        {"gradcam": _fixed(model, x, tie_free)},
        [(x, classes)],
        steps=1,
        baselines=(),
        road=True,
        road_noise=0.0,
        chunk_size=7,  # chunks that straddle images and orders
        progress=False,
    )
    assert_unchanged(model, before)
    expected = _reference_road(model, x, tie_free, classes.tolist())
    scores = result.methods["gradcam"]
    assert scores.road_morf_curve is not None and scores.road_lerf_curve is not None
    got_curves = torch.stack([scores.road_morf_curve, scores.road_lerf_curve])
    worst = float((got_curves - expected.mean(0)).abs().max())
    assert worst <= SCORE_TOL, worst
    per_image = torch.stack([scores.per_image["road_morf"], scores.per_image["road_lerf"]], 1)
    assert float((per_image - expected.mean(2)).abs().max()) <= SCORE_TOL
    assert scores.road_morf == pytest.approx(float(expected[:, 0].mean()), abs=SCORE_TOL)
    assert scores.road is not None
    assert result.road_percentages == ROAD_PERCENTAGES
    # not a flat comparison: the curves move with the share removed
    assert float(expected.max() - expected.min()) > 0.05


# --------------------------------------------------------------------------- toy model
class Evidence(nn.Module):
    """Class 0's logit is ``4 * mean(x over the top-left 4 x 4 corner) - 2``."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(8, 8)
        mask[:4, :4] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.mask).sum((1, 2)) / 4 - 2
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_the_evidence_map_beats_its_inverse() -> None:
    model = Evidence()
    # a bright corner on a dark image: imputing the corner from its dark
    # neighbourhood kills class 0; imputing the dark rest changes nothing
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, :4, :4] = 2.0
    x[:, 0, 7, 7] = torch.tensor([0.0, 0.01, 0.02])  # distinct images
    labels = torch.zeros(3, dtype=torch.long)
    right = model.mask.expand(3, 8, 8) + 0.01 * torch.rand(3, 8, 8)
    cams = {"right": _fixed(model, x, right), "wrong": _fixed(model, x, 1 - right)}
    result = nscam.evaluate(
        cams,
        [(x, labels)],
        steps=2,
        road=True,
        road_percentages=(25,),  # the 16 corner pixels exactly
        progress=False,
    )
    good, bad = result.methods["right"], result.methods["wrong"]
    assert good.road_morf is not None and bad.road_morf is not None
    assert good.road_lerf is not None and bad.road_lerf is not None
    p0 = torch.sigmoid(torch.tensor(6.0)).item()  # logit 4 * 2 - 2 = 6 against 0
    assert good.road_lerf == pytest.approx(p0, abs=1e-3)  # the corner untouched
    assert good.road_morf < 0.5 < p0 - 0.1 < bad.road_morf
    assert good.road_lerf == pytest.approx(bad.road_morf, abs=1e-6)  # the same pixels
    assert "ROAD MoRF" in result.table() and "ROAD LeRF" in result.table("markdown")
    assert "ROAD at 25 % of the pixels" in result.table()


def test_batching_chunking_and_seeded_noise() -> None:
    model = Evidence()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 1, 8, 8, generator=generator)
    maps = torch.rand(5, 8, 8, generator=generator)
    data = TensorDataset(x, torch.zeros(5, dtype=torch.long))
    options: dict[str, Any] = {
        "steps": 2,
        "road": True,
        "road_percentages": (20, 50, 80),
        "progress": False,
    }

    def run(**extra: Any) -> nscam.CAMEvaluation:
        return nscam.evaluate({"fixed": _fixed(model, x, maps)}, **options, **extra)

    first = run(data=data, batch_size=5, chunk_size=128)
    again = run(data=data, batch_size=2, chunk_size=5)
    for key in ("road_morf", "road_lerf"):
        torch.testing.assert_close(
            again.methods["fixed"].per_image[key], first.methods["fixed"].per_image[key]
        )
        torch.testing.assert_close(
            again.methods["random"].per_image[key], first.methods["random"].per_image[key]
        )
    quiet = run(data=data, road_noise=0.0)
    other = run(data=data, seed=1)
    for changed in (quiet, other):
        assert not torch.equal(
            changed.methods["fixed"].per_image["road_morf"],
            first.methods["fixed"].per_image["road_morf"],
        )
    # off by default: nothing of ROAD in the result
    plain = nscam.evaluate({"fixed": _fixed(model, x, maps)}, data, steps=2, progress=False)
    assert plain.road_percentages == () and plain.methods["fixed"].road_morf is None
    assert "road_morf" not in plain.methods["fixed"].per_image and "ROAD" not in str(plain)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"road_percentages": ()}, "road_percentages: expected a non-empty list"),
        ({"road_percentages": (10, 100)}, "got 100 in"),
        ({"road_percentages": (0,)}, "got 0 in"),
        ({"road_percentages": "10"}, "road_percentages: expected"),
        ({"road_percentages": (True,)}, "got True in"),
        ({"road_noise": -0.1}, "road_noise: expected a finite number >= 0, got -0.1"),
        ({"road_noise": float("nan")}, "road_noise"),
    ],
)
def test_bad_road_options(options: dict[str, Any], message: str) -> None:
    model = Evidence()
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=message):
        nscam.evaluate(
            _fixed(model, x, torch.rand(1, 8, 8)), [x], road=True, progress=False, **options
        )
