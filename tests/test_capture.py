"""Activation and gradient capture: the traps of in-place ops, repeated calls and
exceptions, checked against plain autograd on an in-place-free copy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.capture import CaptureBudgetError, list_layers, resolve_layers
from netsight.zoo import Vgg16Net

#: Numbers within float tolerances: `make test` runs these again on other CPU kernels.
pytestmark = pytest.mark.parity


def _without_inplace(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


def test_inplace_relu_does_not_overwrite_the_captured_conv_output() -> None:
    # Each captured layer is followed DIRECTLY by nn.ReLU(inplace=True), which writes
    # into the very tensor the layer returned: without a copy, the capture would hold
    # the ReLU'd values. The reference is the layer's arithmetic done by hand.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
    ).eval()
    with torch.no_grad():
        model[3].running_mean.uniform_(-0.5, 0.5)
        model[3].running_var.uniform_(0.5, 2.0)
    assert isinstance(model[1], nn.ReLU) and model[1].inplace
    assert isinstance(model[4], nn.ReLU) and model[4].inplace
    x = torch.randn(2, 1, 8, 8)
    with netsight.capture(model, layers=["0", "3"]) as cap:
        out = model(x)
    assert (out >= 0).all()  # the ReLUs did run in place on these outputs
    with torch.no_grad():
        conv0 = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
        conv2 = F.conv2d(conv0.clamp(min=0), model[2].weight, model[2].bias, padding=1)
        bn = model[3]
        bn3 = (conv2 - bn.running_mean[:, None, None]) / torch.sqrt(
            bn.running_var[:, None, None] + bn.eps
        ) * bn.weight[:, None, None] + bn.bias[:, None, None]
    for name, expected in (("0", conv0), ("3", bn3)):
        assert (expected < 0).any()  # there are negative values for the ReLU to destroy
        torch.testing.assert_close(cap[name], expected, msg=f"layer {name}")


def test_gradients_equal_autograd_grad_with_inplace_ops() -> None:
    model = Vgg16Net().eval()
    x = torch.randn(3, 1, 32, 32)
    before = snapshot(model)
    with netsight.capture(model, layers=["layer1.0", "layer3.4", "fc.0"], gradients=True) as cap:
        out = model(x)
        loss = out.logsumexp(1).sum()
        loss.backward()
    # The independent reference: autograd.grad on a copy without in-place ReLUs.
    twin = _without_inplace(model)
    kept: dict[str, torch.Tensor] = {}
    modules = dict(twin.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, a, o, n=n: kept.__setitem__(n, o))
        for n in ("layer1.0", "layer3.4", "fc.0")
    ]
    ref_loss = twin(x).logsumexp(1).sum()
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(ref_loss, [kept[n] for n in ("layer1.0", "layer3.4", "fc.0")])
    for name, grad in zip(("layer1.0", "layer3.4", "fc.0"), grads, strict=True):
        torch.testing.assert_close(cap.gradients[name], grad, rtol=1e-4, atol=1e-6)
    # Only the user's own backward touched .grad; clean up so the state check holds.
    model.zero_grad(set_to_none=True)
    assert_unchanged(model, before)


def test_module_called_several_times_keeps_every_call_in_order() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.lin(x)
            return self.lin(a * 2)

    model = Twice()
    x = torch.randn(2, 4, requires_grad=True)
    with netsight.capture(model, layers="lin", gradients=True) as cap:
        y = model(x)
        y.sum().backward()
    first, second = cap.calls["lin"]
    torch.testing.assert_close(first, model.lin(x).detach())
    torch.testing.assert_close(second, model.lin(first * 2).detach())
    assert cap.activations["lin"] is second
    g1, g2 = cap.grad_calls["lin"]
    assert g2 is not None and g1 is not None
    torch.testing.assert_close(g2, torch.ones(2, 4))
    torch.testing.assert_close(g1, 2 * torch.ones(2, 4) @ model.lin.weight.detach())


def test_hooks_removed_when_the_forward_raises() -> None:
    model = Vgg16Net()
    x = torch.randn(1, 3, 32, 32)  # wrong channel count
    before = snapshot(model)
    with pytest.raises(RuntimeError), netsight.capture(model, layers=nn.Conv2d, gradients=True):
        model(x)
    assert_unchanged(model, before)


def test_layer_selection_by_name_glob_instance_type_and_alias() -> None:
    model = torchvision.models.resnet18()
    assert list(resolve_layers(model, "layer*.*.conv2")) == [
        "layer1.0.conv2",
        "layer1.1.conv2",
        "layer2.0.conv2",
        "layer2.1.conv2",
        "layer3.0.conv2",
        "layer3.1.conv2",
        "layer4.0.conv2",
        "layer4.1.conv2",
    ]
    assert list(resolve_layers(model, [model.fc, "conv1"])) == ["conv1", "fc"]
    assert len(resolve_layers(model, nn.BatchNorm2d)) == 20
    vgg = Vgg16Net()
    # An alias resolves to the module's canonical name.
    assert list(resolve_layers(vgg, "conv.0.0")) == ["layer1.0"]
    assert list_layers(vgg, types=[nn.Linear]) == ["fc.0", "fc.3", "fc.6"]


def test_unknown_layer_suggests_close_matches() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(
        KeyError,
        match=r"no layer named 'layer1.0.conv3'.*did you mean 'layer1.0.conv2', 'layer1.0.conv1'",
    ):
        netsight.capture(model, layers="layer1.0.conv3")
    with pytest.raises(KeyError, match="has no LSTM module"):
        netsight.capture(model, layers=nn.LSTM)
    with pytest.raises(KeyError, match="not part of this model"):
        netsight.capture(model, layers=nn.Linear(2, 2))
    assert netsight.count_hooks(model) == 0


def test_layer_that_never_ran_is_a_clear_error() -> None:
    model = torchvision.models.googlenet(init_weights=False, aux_logits=True).eval()
    with netsight.capture(model, layers=["aux1.fc1", "conv1"]) as cap:
        model(torch.randn(1, 3, 64, 64))
    assert "conv1" in cap and "aux1.fc1" not in cap
    with pytest.raises(KeyError, match=r"'aux1\.fc1' was watched but never ran"):
        cap["aux1.fc1"]


def test_byte_budget_names_the_layer_before_storing() -> None:
    model = Vgg16Net().eval()
    x = torch.randn(1, 1, 32, 32)
    budget = 64 * 32 * 32 * 4 + 100  # room for layer1.0's output only
    with (
        pytest.raises(CaptureBudgetError, match=r"layer 'layer1\.3'"),
        netsight.capture(model, layers=["layer1.0", "layer1.3"], max_bytes=budget) as cap,
    ):
        model(x)
    assert cap.stored_bytes <= budget
    assert len(cap.calls["layer1.3"]) == 0
    assert netsight.count_hooks(model) == 0


def test_batch_selection_cpu_copy_and_inputs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    x = torch.randn(5, 1, 6, 6)
    with netsight.capture(model, layers="0", batch=[1, 3], inputs=True, to_cpu=True) as cap:
        model(x)
    assert cap["0"].shape == (2, 2, 4, 4)
    torch.testing.assert_close(cap.inputs["0"], x[[1, 3]])
    assert cap.stored_bytes == (2 * 2 * 16 + 2 * 36) * 4
    assert "2 ran" not in repr(cap) and "1 ran" in repr(cap)


def test_no_grad_block_captures_activations_without_gradients() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad(), netsight.capture(model, layers="0", gradients=True) as cap:
        model(torch.randn(1, 3))
    assert "0" in cap and cap.gradients == {}


def test_captured_tensors_are_independent_copies_holding_only_their_own_bytes() -> None:
    # On the CPU the copies are copy-on-write: they share the model's buffers until one
    # side is written. Writes on either side, after the forward too, must not show in
    # the other; a view of a larger buffer is copied (not kept with all of its base);
    # a numpy-backed input (which PyTorch cannot share lazily) is copied as well.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.head = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x)[:, :2])

    model = Net().eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 6, 6), dtype=np.float32))
    kept: list[torch.Tensor] = []
    handle = model.conv.register_forward_hook(lambda m, a, o: kept.append(o))
    with torch.no_grad(), netsight.capture(model, layers=["conv", "head"], inputs=True) as cap:
        out = model(x)
    handle.remove()
    # Read before any write below (a write ends the sharing); asserted at the end.
    is_cow = getattr(torch._C, "_is_cow_tensor", None)
    cow = None
    if is_cow is not None and hasattr(torch, "_lazy_clone"):
        cow = [is_cow(t) for t in (cap["conv"], kept[0], cap["head"], cap.inputs["conv"])]
    conv, head, first_input = cap["conv"].clone(), cap["head"].clone(), x.clone()
    out.zero_()
    kept[0].zero_()
    x.zero_()
    torch.testing.assert_close(cap["conv"], conv, rtol=0, atol=0)
    torch.testing.assert_close(cap["head"], head, rtol=0, atol=0)
    torch.testing.assert_close(cap.inputs["conv"], first_input, rtol=0, atol=0)
    cap["conv"].fill_(7.0)
    assert not (kept[0] == 7.0).any()
    for tensor in (cap["conv"], cap["head"], cap.inputs["conv"]):
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    # outputs: conv, head; inputs: conv (x), head (the view)
    assert cap.stored_bytes == (2 * 4 * 16 + 2 * 2 * 16 + 2 * 36 + 2 * 2 * 16) * 4
    # The copies above are independent whatever the mechanism. This last check is of
    # the mechanism, through torch's private flag (no public API tells a shared buffer
    # without un-sharing it): the output nothing overwrote (the conv's, a whole
    # buffer) is shared copy-on-write, not copied, so capturing it costs no time and
    # no second buffer; the view and the numpy-backed input were copied eagerly.
    if cow is not None:
        assert cow == [True, True, False, False], "copy-on-write not used where it applies"
