"""Speed features of the perturbation CAMs: the approximation (``approx=``), chunks that
bound memory, shared forwards for equal masks, channels-last weights that are put
back, inference mode, and the model left as it came."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import netsight.cam as nscam
from helpers import assert_unchanged, snapshot

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity


class WideNet(nn.Module):
    """conv - BN - ReLU - conv (48 channels at 8 x 8) - ReLU - pool - linear."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 48, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _model(seed: int = 0) -> WideNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WideNet().eval()
        with torch.no_grad():
            model.features[1].running_mean.uniform_(-0.2, 0.2)
            model.features[1].running_var.uniform_(0.5, 1.5)
    return model


def _input(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


@contextmanager
def _batches(module: nn.Module) -> Iterator[list[int]]:
    """Batch sizes of every input ``module`` sees."""
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        yield seen
    finally:
        handle.remove()


TARGETS = [0, 2, 4]


# --------------------------------------------------------------------------- approx
def test_scorecam_approx_is_close_to_exact_with_fewer_forwards() -> None:
    model, x = _model(), _input()
    with _batches(model) as exact_calls:
        exact = nscam.ScoreCAM(model, "features").explain(x, TARGETS)
    with _batches(model) as approx_calls:
        approx = nscam.ScoreCAM(model, "features", approx=12).explain(x, TARGETS)
    for i in range(x.shape[0]):
        r = _pearson(approx.maps[i], exact.maps[i])
        assert r >= 0.98, f"image {i}: r = {r:.4f}"
    # exact: the plain forward, the zero image if needed, one per distinct mask
    assert sum(exact_calls) > 3 * 40
    # approx: the plain forward (3), at most one zero image, at most 12 per image
    assert sum(approx_calls) <= 3 + 1 + 3 * 12


# The README's figure for Ablation-CAM's approximation: approx=16, r >= 0.9999 against
# exact, where the layer reaches the score through global pooling and a linear layer
# (WideNet here, resnet18's layer4 below): the first-order estimate is then exact.
README_ABLATION_APPROX, README_ABLATION_R = 16, 0.9999


def test_ablationcam_approx_is_close_to_exact_with_fewer_ablations() -> None:
    model, x = _model(), _input()
    with _batches(model.pool) as exact_calls:
        exact = nscam.AblationCAM(model, "features").explain(x, TARGETS)
    with _batches(model.pool) as approx_calls:
        approx = nscam.AblationCAM(model, "features", approx=README_ABLATION_APPROX).explain(
            x, TARGETS
        )
    for i in range(x.shape[0]):
        r = _pearson(approx.maps[i], exact.maps[i])
        assert r >= README_ABLATION_R, f"image {i}: r = {r:.6f}"
    # every chunk adds one control copy; approx ablates 16 of the 48 channels per image
    assert sum(approx_calls) <= 3 + 3 * (README_ABLATION_APPROX + 1) < sum(exact_calls)


@pytest.mark.slow
def test_ablationcam_approx_on_resnet18_reaches_the_readme_figure() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exact = nscam.AblationCAM(model, "layer4").explain(x, [7])
    approx = nscam.AblationCAM(model, "layer4", approx=README_ABLATION_APPROX).explain(x, [7])
    r = _pearson(approx.maps[0], exact.maps[0])
    assert r >= README_ABLATION_R, f"r = {r:.6f}"


def test_ablation_first_order_estimate_is_exact_for_a_linear_head() -> None:
    """After global pooling + linear, ``y - y_k = sum(G_k * A_k)`` exactly, so even
    ``approx=1`` gives the exact weights (up to rounding)."""
    model, x = _model(), _input()
    exact = nscam.AblationCAM(model, "features").explain(x, TARGETS)
    approx = nscam.AblationCAM(model, "features", approx=1).explain(x, TARGETS)
    torch.testing.assert_close(approx.raw["features"], exact.raw["features"], rtol=1e-3, atol=1e-5)


def test_approx_at_or_above_the_channel_count_is_exact() -> None:
    model, x = _model(), _input()
    for method in ("scorecam", "ablationcam"):
        exact = nscam.METHODS[method](model, "features").explain(x, TARGETS)
        wide = nscam.METHODS[method](model, "features", approx=48).explain(x, TARGETS)
        torch.testing.assert_close(wide.raw["features"], exact.raw["features"], msg=method)


# --------------------------------------------------------------------------- chunks, sharing
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("approx", [None, 10])
def test_chunk_size_bounds_every_forward(method: str, approx: int | None) -> None:
    """Memory is bounded by the chunk: apart from the plain forward of the batch, no
    forward (Score-CAM: the whole model; Ablation-CAM: the part after the target
    layer) sees more than ``batch_size`` inputs, however many channels there are."""
    model, x = _model(), _input(4)
    cam = nscam.METHODS[method](model, "features", batch_size=7, approx=approx)
    watched = model if method == "scorecam" else model.pool
    with _batches(watched) as seen:
        chunked = cam.explain(x, [0, 1, 2, 3])
    assert seen[0] == 4  # the plain forward
    assert len(seen) > 5 and max(seen[1:]) <= 7
    whole = nscam.METHODS[method](model, "features", batch_size=1000, approx=approx)
    with _batches(watched) as seen:
        together = whole.explain(x, [0, 1, 2, 3])
    assert max(seen[1:]) > 7
    torch.testing.assert_close(chunked.maps, together.maps, rtol=1e-4, atol=1e-5)


def test_scorecam_runs_each_distinct_mask_once() -> None:
    """Channels equal up to scale and offset have the same normalised mask: with
    each filter of the last conv repeated 3 times (at 1x, 2x and 3x), the model sees
    each distinct mask once, and the map is Score-CAM's formula over all channels."""
    torch.manual_seed(0)
    base = nn.Conv2d(3, 8, 3, padding=1)
    conv = nn.Conv2d(3, 24, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([base.weight * s for s in (1.0, 2.0, 3.0)]))
        conv.bias.copy_(torch.cat([base.bias * s for s in (1.0, 2.0, 3.0)]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 4))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    with _batches(model) as seen:
        result = nscam.ScoreCAM(model, "1", channels_last=False).explain(x, [1, 3])
    with torch.no_grad():
        acts = torch.relu(conv(x))
    distinct = 0
    for i in range(2):
        flat = acts[i, :8].flatten(1)
        varying = flat.amax(1) > flat.amin(1)
        distinct += int(varying.sum())
    assert sum(seen) <= 2 + 1 + distinct  # plain forward, zero image, one per mask
    # By hand, every channel separately.
    with torch.no_grad():
        expected = []
        for i in range(2):
            up = F.interpolate(acts[i][:, None], size=(6, 6), mode="bilinear", align_corners=True)
            low, high = up.amin((1, 2, 3), keepdim=True), up.amax((1, 2, 3), keepdim=True)
            masks = (up - low) / (high - low + 1e-8)
            scores = model(x[i] * masks)[:, [1, 3][i]]
            weights = torch.softmax(scores, 0)
            expected.append((weights[:, None, None] * acts[i]).sum(0))
    torch.testing.assert_close(result.raw["1"], torch.stack(expected), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- layout, modes, state
def test_channels_last_gives_the_same_maps_and_puts_the_weights_back() -> None:
    model, x = _model(), _input()
    conv = model.features[3]
    weight = conv.weight
    before = snapshot(model)
    fast = nscam.ScoreCAM(model, "features", channels_last=True).explain(x, TARGETS)
    plain = nscam.ScoreCAM(model, "features", channels_last=False).explain(x, TARGETS)
    assert conv.weight is weight and weight.is_contiguous()
    assert_unchanged(model, before)
    torch.testing.assert_close(fast.maps, plain.maps, rtol=1e-4, atol=1e-5)


def test_channels_last_weights_are_put_back_after_an_exception() -> None:
    model, x = _model(), _input()
    weight = model.features[3].weight

    def boom(module: nn.Module, args: object, output: torch.Tensor) -> None:
        assert module.weight is not weight  # the channels-last copy is in place
        raise RuntimeError("boom")

    handle = model.features[3].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            nscam.ScoreCAM(model, "features", channels_last=True)(x, TARGETS)
    finally:
        handle.remove()
    assert model.features[3].weight is weight and weight.is_contiguous()


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_model_state_is_unchanged_with_approx(method: str) -> None:
    model = _model()
    model.train()
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    result = nscam.METHODS[method](model, "features", approx=5, batch_size=6).explain(
        _input(), TARGETS
    )
    assert result.maps.shape == (3, 16, 16)
    assert_unchanged(model, before)


def test_inference_mode() -> None:
    model, x = _model(), _input()
    expected = nscam.ScoreCAM(model, "features", approx=6).explain(x, TARGETS)
    with torch.inference_mode():
        got = nscam.ScoreCAM(model, "features", approx=6).explain(x, TARGETS)
        exact = nscam.AblationCAM(model, "features").explain(x, TARGETS)
        with pytest.raises(RuntimeError, match="inference_mode"):
            nscam.AblationCAM(model, "features", approx=6).explain(x, TARGETS)
    torch.testing.assert_close(got.maps, expected.maps)
    assert exact.maps.shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"approx": 0}, "approx"),
        ({"approx": 2.5}, "approx"),
        ({"approx": True}, "approx"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options(options: dict[str, object], error: str) -> None:
    for cls in (nscam.ScoreCAM, nscam.AblationCAM):
        with pytest.raises(ValueError, match=error):
            cls(_model(), "features", **options)  # type: ignore[arg-type]
