"""netsight.cam.factor's own behaviour (comparisons with pytorch-grad-cam are in
tests/test_cam_reference_factor.py): options, errors, the sign rule, SESS's
fusion by hand, Deep Feature Factorization's guarantees and picture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsight.cam as nscam
from helpers import assert_unchanged, snapshot
from netsight.cam.factor import kernel_projection


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _model() -> TinyNet:
    return TinyNet().eval()


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
def test_kernel_projection_agrees_with_the_activation_sum(kernel: str) -> None:
    a = torch.rand(3, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    maps = kernel_projection(a, kernel)
    total = a.sum(1).flatten(1)
    agreement = ((total - total.mean(1, keepdim=True)) * maps.flatten(1)).sum(1)
    assert maps.shape == (3, 6, 6) and (agreement >= 0).all()


def test_linear_kernel_is_eigencam() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    linear = nscam.KPCACAM(model, "features", kernel="linear").explain(x, [0, 1])
    eigen = nscam.EigenCAM(model, "features").explain(x, [0, 1])
    torch.testing.assert_close(linear.raw["features"], eigen.raw["features"], atol=1e-4, rtol=1e-4)


def test_options_are_checked() -> None:
    model = _model()
    with pytest.raises(ValueError, match="kernel: expected one of"):
        nscam.KPCACAM(model, kernel="gauss")
    with pytest.raises(ValueError, match="gamma"):
        nscam.KPCACAM(model, gamma=0)
    with pytest.raises(ValueError, match="k: expected a finite number"):
        nscam.FEM(model, k=float("nan"))
    with pytest.raises(ValueError, match="fusion: expected one of"):
        nscam.SESS(model, fusion="median")
    with pytest.raises(ValueError, match="base: expected one of"):
        nscam.SESS(model, base="nope")
    with pytest.raises(ValueError, match="SESS cannot run on SESS"):
        nscam.SESS(model, base=nscam.SESS)
    with pytest.raises(ValueError, match="pre_filter_ratio"):
        nscam.SESS(model, pre_filter_ratio=1.0)
    with pytest.raises(ValueError, match="at least the window size 12"):
        nscam.SESS(model, "features", scales=[8, 12])(torch.randn(1, 3, 12, 12), 0)
    with pytest.raises(ValueError, match="k: expected an int >= 1"):
        nscam.deep_feature_factorization(model, torch.randn(1, 3, 12, 12), 0)


def test_sess_takes_any_base_method() -> None:
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    before = snapshot(model)
    for base in ("saliency", "eigencam", nscam.ScoreCAM):
        options = {"batch_size": 8} if base is nscam.ScoreCAM else {}
        cam = nscam.SESS(model, None, base=base, base_options=options, num_scales=2)
        result = cam.explain(x, [1, 2])
        assert result.maps.shape == (2, 12, 12)
        assert float(result.maps.amax()) == 1.0
    assert_unchanged(model, before)


def test_sess_single_window_is_the_base_map_blurred() -> None:
    """One scale, the window the whole image: SESS is the base map (weight 1),
    blurred; without the blur, the base map itself."""
    model = _model()
    x = torch.randn(2, 3, 12, 12)
    base = nscam.GradCAM(model, "features")(x, [1, 2])
    plain = nscam.SESS(model, "features", num_scales=1, smooth=False)(x, [1, 2])
    torch.testing.assert_close(plain, base)


def test_sess_raw_scores_of_a_non_logits_model() -> None:
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _model()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x)}

    model = Dict().eval()
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(TypeError, match="softmax_scores=False"):
        nscam.SESS(model, "inner.features", num_scales=2)(x, lambda out: out["logits"][0])
    maps = nscam.SESS(model, "inner.features", num_scales=2, softmax_scores=False)(
        x, lambda out: out["logits"][0]
    )
    assert maps.shape == (1, 12, 12)


def test_deep_feature_factorization_leaves_the_model_and_runs_batched() -> None:
    model = _model()
    model.train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    x = torch.rand(3, 3, 12, 12)
    before = snapshot(model)
    found = nscam.deep_feature_factorization(model, x, 3, layer="features", classifier=model.fc)
    assert_unchanged(model, before)
    assert found.maps.shape == (3, 3, 12, 12) and found.raw.shape == (3, 3, 12, 12)
    assert found.concepts.shape == (3, 16) and found.scores is not None
    assert found.scores.shape == (3, 5) and found.layer == "features"
    assert float(found.maps.amin()) >= 0 and float(found.maps.amax()) <= 1
    # the factorisation reconstructs the (shifted) activations better than chance
    with torch.no_grad():
        a = model.features(x)
    small = nscam.deep_feature_factorization(model, x, 3, layer="features", upsample=False)
    assert small.maps.shape == (3, 3, 12, 12)
    offset = a.transpose(0, 1).flatten(1).amin(1)
    approx = torch.einsum("kc,bkhw->bchw", small.concepts - offset[None], small.raw)
    target = a - offset[None, :, None, None]
    assert float((approx - target).norm() / target.norm()) < 0.5
    picture = found.overlay(x[0], 0)
    assert picture.size == (12, 12)
    with pytest.raises(ValueError, match="colors"):
        found.overlay(x[0], colors=[(1.0, 0.0, 0.0)])
