"""Models that are not plain eager modules (issue 12): quantized, TorchScript,
torch.compile'd, fx-traced, lazy, bfloat16 and ones that use a submodule's weights
functionally. Each is counted right or refused clearly, and left as it came.
Each test here failed before the change it checks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.hooks import LazyModuleError


def _summary(model: nn.Module, **kwargs: object) -> netsight.Summary:
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation warnings on quantized/jit
        s = netsight.summary(model, **kwargs)  # type: ignore[arg-type]
    assert_unchanged(model, before)
    return s


# --------------------------------------------------------------------------- quantized


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_dynamic_quantized_linear_is_counted_like_its_float_twin() -> None:
    float_model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            float_model, {nn.Linear}, dtype=torch.qint8
        )
    reference = _summary(float_model, input_size=(3, 16))
    s = _summary(quantized, input_size=(3, 16))
    assert s.total_params == reference.total_params == 16 * 32 + 32 + 32 * 4 + 4
    assert s.trace.trainable_params == 0  # packed weights are not parameters
    assert s.total_mult_adds == reference.total_mult_adds == 3 * (16 * 32 + 32 * 4)
    rows = {r.name: r for r in s.trace.records}
    assert rows["0"].params == 16 * 32 + 32
    assert rows["0"].mult_adds == 3 * 16 * 32
    assert s.uncounted_ops == ()
    # the table says it: no silent "--" for the quantized layers
    assert "544" in str(s)


class _Static(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3, groups=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 6 * 6, 4)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


def test_static_quantized_conv_and_linear_are_counted_like_their_float_twin() -> None:
    torch.manual_seed(0)
    float_model = _Static().eval()
    reference = _summary(float_model, input_size=(2, 3, 8, 8))
    float_model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = torch.ao.quantization.prepare(float_model)
        prepared(torch.randn(4, 3, 8, 8))
        quantized = torch.ao.quantization.convert(prepared)
    s = _summary(quantized, input_size=(2, 3, 8, 8))
    assert s.total_params == reference.total_params
    assert s.total_mult_adds == reference.total_mult_adds
    assert s.uncounted_ops == ()


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_model_is_said_to_be_one_not_uncalled(how: str) -> None:
    torch.manual_seed(0)
    eager = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(eager) if how == "script" else torch.jit.trace(eager, x)
    reference = _summary(eager, input_size=(1, 3, 64, 64))
    s = _summary(scripted, input_size=(1, 3, 64, 64))
    assert s.total_params == reference.total_params
    assert s.total_mult_adds == reference.total_mult_adds
    assert s.trace.uncalled == ()
    assert s.trace.records[0].params == reference.total_params  # on its own row
    notes = " ".join(s.notes())
    assert "not called" not in notes
    assert "TorchScript module" in notes


# --------------------------------------------------------------------------- torch.compile


def test_a_compiled_model_is_treated_as_the_model_it_wraps() -> None:
    torch.manual_seed(0)
    eager = torchvision.models.resnet18().eval()
    compiled = torch.compile(eager)
    size = (1, 3, 64, 64)
    s = _summary(compiled, input_size=size, depth=2)
    assert not any(r.name.startswith("_orig_mod") for r in s.trace.records)
    assert [r.name for r in s.trace.records] == [
        r.name for r in _summary(eager, input_size=size, depth=2).trace.records
    ]
    x = torch.randn(1, *size[1:])
    before = snapshot(eager)
    drawn = netsight.diagram(compiled, input_size=size, depth=3)
    plain = netsight.diagram(eager, input_size=size, depth=3)
    assert_unchanged(eager, before)
    assert len(drawn.nodes) == len(plain.nodes)
    # names copied from the compiled model's named_modules() resolve too
    result = netsight.GradCAM(compiled, target_layers="_orig_mod.layer4").explain(x)
    assert result.layers == ("layer4",)
    assert_unchanged(eager, before)


# --------------------------------------------------------------------------- fx


def test_an_fx_traced_model_counts_like_the_original() -> None:
    torch.manual_seed(0)
    eager = torchvision.models.resnet18().eval()
    graph_module = torch.fx.symbolic_trace(eager)
    size = (1, 3, 64, 64)
    s = _summary(graph_module, input_size=size)
    reference = _summary(eager, input_size=size)
    assert s.total_params == reference.total_params
    assert s.total_mult_adds == reference.total_mult_adds
    # fx keeps the hierarchy as empty modules, which never run; none holds weights
    assert [u.name for u in s.trace.uncalled if u.params] == []


# --------------------------------------------------------------------------- lazy


def test_lazy_modules_are_refused_and_stay_lazy() -> None:
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU())
    for run in (
        lambda: netsight.summary(model, input_size=(1, 8)),
        lambda: netsight.summary(model, input_size=(1, 8), execution="real"),
        lambda: netsight.diagram(model, input_size=(1, 8)),
        lambda: netsight.GradCAM(model),
    ):
        with pytest.raises(LazyModuleError, match=r"0 \(LazyLinear\).*run one forward pass"):
            run()
        assert isinstance(model[0], nn.LazyLinear)
        assert nn.parameter.is_lazy(model[0].weight)
    model(torch.randn(1, 8))  # the user's own first forward materialises it
    assert netsight.summary(model, input_size=(1, 8)).total_params == 8 * 4 + 4


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parity  # the real error's wording depends on the convolution kernels
def test_a_bfloat16_model_given_float32_fails_as_the_real_forward_does() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(torch.bfloat16).eval()
    x = torch.randn(1, 3, 64, 64)
    # oneDNN: "Input type ... and weight type ... should be the same"; ATen's native
    # convolution: "expected scalar type Float but found BFloat16"
    dtype_error = "should be the same|expected scalar type"
    with pytest.raises(RuntimeError, match=dtype_error) as real, torch.no_grad():
        model(x)
    before = snapshot(model)
    with pytest.raises(netsight.TraceError, match="conv1") as ours:
        netsight.summary(model, input_size=(1, 3, 64, 64))
    assert str(real.value).splitlines()[0] in str(ours.value)
    assert_unchanged(model, before)


def test_a_bfloat16_model_with_bfloat16_input_is_summarised_in_bfloat16() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().to(torch.bfloat16).eval()
    s = _summary(model, input_size=(1, 3, 64, 64), dtypes=[torch.bfloat16])
    assert s.trace.execution == "meta"
    assert s.trace.params_bytes == 2 * s.total_params
    assert s.trace.input_bytes == 2 * 3 * 64 * 64


def test_a_model_that_casts_its_input_is_summarised() -> None:
    class Casting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2).to(torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.to(self.fc.weight.dtype))

    s = _summary(Casting(), input_size=(1, 4))
    assert s.total_mult_adds == 8
    assert s.trace.execution == "real"  # the real forward decided
    assert any("not tried" in note for note in s.notes())


# --------------------------------------------------------------------------- functional use


@pytest.mark.parity
@pytest.mark.parametrize(
    ("name", "used"),
    [("vit_b_16", "self_attention.out_proj"), ("swin_t", "attn.qkv")],
)
def test_weights_read_by_a_parent_are_not_called_unused(name: str, used: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    s = _summary(model, input_size=(1, 3, 224, 224))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert s.total_params == weights.meta["num_params"]
    assert s.total_mult_adds == pytest.approx(weights.meta["_ops"] * 1e9, rel=1e-3)
    functional = [u for u in s.trace.uncalled if u.name.endswith(used)]
    assert functional
    for u in functional:
        assert u.used_by == u.name.rsplit(".", 1)[0]
    assert all(u.used_by is not None for u in s.trace.uncalled if u.params)
    notes = " ".join(s.notes())
    assert "not called in the forward pass" not in notes
    assert "read as weights by their parent's forward" in notes


def test_a_branch_that_did_not_run_is_still_not_called() -> None:
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(init_weights=False, aux_logits=True).eval()
    s = _summary(model, input_size=(1, 3, 299, 299), depth=1)
    aux = [u for u in s.trace.uncalled if u.name.startswith("AuxLogits") and u.params]
    assert aux and all(u.used_by is None for u in aux)
    assert any("not called in the forward pass" in note for note in s.notes())
