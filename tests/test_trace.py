"""The trace engine: modules modelled as they are, numbers checked by hand or
against an independent count, and the model left exactly as it came."""

from __future__ import annotations

import sys
import time

import pytest
import torch
import torchvision
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.trace import TensorMeta, format_structure
from netsight.trace.keys import MISSING
from netsight.trace.twins import MetaTwins
from netsight.zoo import LlamaDecoder, NestedChain, Vgg16Net, wide_model

# --------------------------------------------------------------------------- aliases


def test_tutorial_vgg16_counts_aliased_blocks_once() -> None:
    model = Vgg16Net()
    s = netsight.summary(model, input_size=(1, 1, 32, 32))
    assert s.total_params == 15_118_538 == sum(p.numel() for p in model.parameters())
    # The README's torchsummary figures (29,840,522 parameters, 113.83 MB) are the five
    # blocks counted twice: once as layer1..layer5 and once inside `conv`.
    twice = s.total_params + sum(p.numel() for p in model.conv.parameters())
    assert twice == 29_840_522 and f"{twice * 4 / 2**20:.2f}" == "113.83"
    assert s.trainable_params == 15_118_538
    assert s.aliases["layer1"] == ("conv.0",)
    assert s.aliases["layer5"] == ("conv.4",)
    names = [r.name for r in s.layers]
    # Each block runs once, inside `conv`, and is named by its first registration.
    assert names.count("layer1") == 1
    block = next(r for r in s.layers if r.name == "layer1")
    conv = next(r for r in s.layers if r.name == "conv")
    assert block.parent == conv.index and block.depth == 2
    assert sum(r.params for r in s.layers) == s.total_params
    assert s.layers[-1].output == TensorMeta((1, 10), "float32")


def test_tutorial_vgg16_notes_name_the_aliases() -> None:
    text = str(netsight.summary(Vgg16Net(), input_size=(1, 1, 32, 32), depth=2))
    assert "'layer1' is also registered as 'conv.0'" in text
    # Aliases implied by a parent's alias are not repeated.
    assert "'layer1.0' is also" not in text
    assert "Total params:                    15,118,538" in text


# --------------------------------------------------------------------------- sharing


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.block(x))))


def test_module_called_twice_shows_both_calls_and_counts_params_once() -> None:
    s = netsight.summary(Shared(), input_size=(2, 16))
    calls = [r for r in s.layers if r.name == "block"]
    assert [c.call for c in calls] == [0, 1]
    assert calls[0].params == 16 * 16 + 16 and calls[1].params == 0
    assert calls[1].shared_params == 16 * 16 + 16 and calls[1].repeat_of == calls[0].index
    assert s.total_params == 16 * 16 + 16 + 16 * 4 + 4
    # Both calls do work: 2 x (2 * 16 * 16) + 2 * 16 * 4 mult-adds.
    assert s.total_mult_adds == 2 * (2 * 16 * 16) + 2 * 16 * 4
    text = str(s)
    assert "[call 2]" in text and "(shared)" in text


def test_tied_weights_count_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 8)
            self.out = nn.Linear(8, 100, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(t))

    model = Tied()
    s = netsight.summary(model, input_size=(1, 5), dtypes=[torch.long])
    assert s.total_params == 800 == sum(p.numel() for p in model.parameters())
    out = next(r for r in s.layers if r.name == "out")
    assert out.params == 0 and out.shared_params == 800


# --------------------------------------------------------------------------- RNN, attention


@pytest.mark.parametrize("execution", ["meta", "real"])
def test_lstm_tuple_outputs_and_mult_adds(execution: str) -> None:
    model = nn.LSTM(10, 20, num_layers=2, batch_first=True)
    s = netsight.summary(model, input_size=(3, 5, 10), execution=execution)
    root = s.layers[0]
    assert format_structure(root.output) == "([3, 5, 20], ([2, 3, 20], [2, 3, 20]))"
    # per step and batch item: layer 1 4H(I+H), layer 2 4H(H+H); T*B = 15
    assert s.total_mult_adds == 15 * (80 * (10 + 20) + 80 * (20 + 20)) == 84_000
    assert s.uncounted_ops == ()
    assert s.trace.execution == execution


@pytest.mark.parametrize("execution", ["meta", "real"])
def test_gru_with_hidden_state_input(execution: str) -> None:
    model = nn.GRU(8, 6)
    x, h = torch.randn(4, 2, 8), torch.zeros(1, 2, 6)
    s = netsight.summary(model, input_data=(x, h), execution=execution)
    assert format_structure(s.layers[0].input) == "[[4, 2, 8], [1, 2, 6]]"
    assert s.total_mult_adds == 8 * (18 * 8 + 18 * 6)


def _mha_mult_adds(batch: int, length: int, embed: int) -> int:
    projections = 4 * batch * length * embed * embed
    attention = 2 * batch * length * length * embed
    return projections + attention


@pytest.mark.parametrize(
    ("execution", "mode"), [("meta", "eval"), ("real", "eval"), ("real", "train")]
)
def test_multihead_attention_counted_on_every_path(execution: str, mode: str) -> None:
    # In eval mode under no_grad on CPU, MHA takes a fused kernel the flop counter
    # cannot see; netsight must count the same work on every path.
    model = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 7, 32)
    s = netsight.summary(model, input_data=(x, x, x), execution=execution, mode=mode)
    assert s.total_mult_adds == _mha_mult_adds(2, 7, 32)
    assert format_structure(s.layers[0].output) == "([2, 7, 32], [2, 7, 7])"


def test_transformer_encoder_same_count_meta_real_train() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(2, 9, 32)
    counts = {
        (ex, mode): netsight.summary(model, input_data=x, execution=ex, mode=mode).total_mult_adds
        for ex, mode in [("meta", "eval"), ("real", "eval"), ("real", "train")]
    }
    ffn = 2 * 9 * (32 * 64 + 64 * 32)
    assert set(counts.values()) == {2 * (_mha_mult_adds(2, 9, 32) + ffn)}, counts


# --------------------------------------------------------------------------- dicts, frozen, buffers


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(3, 4, 3)
        self.meta = nn.Linear(5, 4)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"map": self.image(image), "vec": self.meta(extra), "both": [image.mean(), extra]}


def test_dict_inputs_and_outputs() -> None:
    data = {"image": torch.randn(1, 3, 8, 8), "extra": torch.randn(1, 5)}
    s = netsight.summary(DictModel(), input_data=data)
    root = s.layers[0]
    assert format_structure(root.input) == "{image: [1, 3, 8, 8], extra: [1, 5]}"
    assert format_structure(root.output) == "{map: [1, 4, 6, 6], vec: [1, 4], both: [[], [1, 5]]}"
    assert s.input_bytes == (3 * 64 + 5) * 4
    assert s.total_mult_adds == 4 * 36 * 27 + 5 * 4


def test_dict_as_single_positional_argument() -> None:
    class TakesDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.fc(batch["x"])

    s = netsight.summary(TakesDict(), input_data=[{"x": torch.randn(4, 3)}])
    assert s.layers[-1].output == TensorMeta((4, 2), "float32")


def test_frozen_parts_and_batchnorm_buffers() -> None:
    model = torchvision.models.resnet18()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    s = netsight.summary(model, input_size=(1, 3, 64, 64), depth=1)
    frozen = sum(p.numel() for p in model.layer1.parameters())
    assert s.non_trainable_params == frozen == 147_968
    assert s.trainable_params == 11_689_512 - frozen
    bn = next(r for r in s.layers if r.name == "bn1")
    assert bn.params == 128 and bn.buffers == 64 + 64 + 1  # mean, var, num_batches_tracked
    assert s.trace.total_buffers == sum(b.numel() for b in model.buffers())
    rows = {row.record.name: row for row in s.rows()}
    assert rows["layer1"].trainable == "False"
    assert rows["layer2"].trainable == "True"
    assert rows[""].trainable == "--"


# --------------------------------------------------------------------------- meta device


def test_llama_7b_on_meta_without_allocating() -> None:
    with torch.device("meta"):
        model = LlamaDecoder()
    start = time.perf_counter()
    s = netsight.summary(model, input_size=(1, 2048), dtypes=[torch.long], depth=2)
    elapsed = time.perf_counter() - start
    assert s.total_params == 6_738_415_616
    # Projections 2048 x 202,375,168 per layer, QK^T and AV 2 x 32 x 2048^2 x 128 per
    # layer, the head 2048 x 4096 x 32000.
    per_layer = 2048 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 2 * 32 * 2048 * 2048 * 128
    assert s.total_mult_adds == 32 * per_layer + 2048 * 4096 * 32000 == 14_630_806_093_824
    assert s.trace.execution == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert s.params_bytes == 6_738_415_616 * 4
    assert elapsed < 10  # benchmarked in benchmarks/bench_summary.py


def test_meta_pass_leaves_real_weights_in_place() -> None:
    model = torchvision.models.resnet18()
    weight = model.conv1.weight
    before = snapshot(model)
    s = netsight.summary(model, input_size=(2, 3, 64, 64))
    assert s.trace.execution == "meta"
    assert model.conv1.weight is weight
    assert_unchanged(model, before)


def test_meta_and_real_passes_agree() -> None:
    model = torchvision.models.resnet18()
    meta = netsight.summary(model, input_size=(1, 3, 96, 96), execution="meta")
    real = netsight.summary(model, input_size=(1, 3, 96, 96), execution="real")
    assert meta.trace.execution == "meta" and real.trace.execution == "real"
    assert meta.layers == real.layers


class NeedsValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:  # data-dependent branch: impossible on meta
            x = self.fc(x)
        return x


def test_falls_back_to_a_real_pass_when_values_are_needed() -> None:
    model = NeedsValues()
    before = snapshot(model)
    s = netsight.summary(model, input_size=(2, 4))
    assert s.trace.execution == "real"
    assert s.trace.fallback_reason
    assert s.total_mult_adds == 2 * 16
    assert any("real forward" in note for note in s.notes())
    assert_unchanged(model, before)


def test_real_train_mode_pass_keeps_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model.eval()
    before = snapshot(model)
    netsight.summary(model, input_size=(2, 3, 8, 8), execution="real", mode="train")
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- scale


def test_deep_nesting_is_fast() -> None:
    model = NestedChain(50)
    start = time.perf_counter()
    s = netsight.summary(model, input_size=(1, 8), depth=100)
    elapsed = time.perf_counter() - start
    assert len(s.layers) == 51
    assert s.layers[-1].depth == 50
    assert elapsed < 1.0, f"{elapsed:.2f} s for 50 levels of nesting"


# --------------------------------------------------------------------------- leaf replay
#
# On meta, repeated calls of torch.nn leaf modules are replayed from a cache; the
# records must be exactly those of the real pass, which never replays.


def _leaf_mix() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=0),  # same weights' shapes, other settings
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.Dropout(0.1),
        nn.Dropout(0.5, inplace=True),
        nn.MaxPool2d(2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.GELU(),
        nn.GELU(approximate="tanh"),
        nn.Identity(),
        nn.Identity(),
        nn.Flatten(),
        nn.Linear(36, 6),
        nn.Linear(6, 6),
        nn.Linear(6, 6),
        nn.LayerNorm(6),
        nn.LayerNorm(6, elementwise_affine=False),
        nn.Softmax(dim=1),
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_replayed_leaf_calls_match_the_real_pass(mode: str) -> None:
    model = _leaf_mix()
    meta = netsight.summary(model, input_size=(2, 4, 13, 13), mode=mode, execution="meta")
    real = netsight.summary(model, input_size=(2, 4, 13, 13), mode=mode, execution="real")
    assert meta.trace.execution == "meta" and real.trace.execution == "real"
    assert meta.layers == real.layers
    assert meta.total_mult_adds == real.total_mult_adds > 0


def test_wide_model_records_every_leaf() -> None:
    model = wide_model(200)
    s = netsight.summary(model, input_size=(3, 8))
    assert len(s.layers) == 201
    assert s.total_mult_adds == 100 * 3 * 8 * 8
    assert [r.mult_adds for r in s.layers[1:5]] == [3 * 64, 0, 3 * 64, 0]
    assert all(r.output == TensorMeta((3, 8), "float32") for r in s.layers)
    assert netsight.count_hooks(model) == 0
    assert all("_compiled_call_impl" not in m.__dict__ for m in model.modules())


class _Watched(nn.Module):
    """Four identical Linear layers that must not all be replayed alike."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.d = nn.Linear(8, 8)
        self.pool = nn.MaxPool1d(2)
        # a user hook that changes the output, a patched forward, changing settings
        self.b.register_forward_hook(lambda m, i, o: torch.cat([o, o], dim=-1))
        self.c.forward = lambda x: x[..., :3]  # type: ignore[method-assign]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = [self.a(x), self.b(x), self.c(x), self.d(x), self.a(x)]
        self.pool.kernel_size = self.pool.stride = 2
        outputs.append(self.pool(x))
        self.pool.kernel_size = self.pool.stride = 4
        outputs.append(self.pool(x))
        return tuple(outputs)


def test_leaf_replay_respects_hooks_patched_forward_and_settings() -> None:
    s = netsight.summary(_Watched(), input_size=(2, 8))
    assert s.trace.execution == "meta"
    shapes = [format_structure(r.output) for r in s.layers[1:]]
    assert shapes == ["[2, 8]", "[2, 16]", "[2, 3]", "[2, 8]", "[2, 8]", "[2, 4]", "[2, 2]"]
    assert [r.mult_adds for r in s.layers[1:]] == [128, 128, 0, 128, 128, 0, 0]
    real = netsight.summary(_Watched(), input_size=(2, 8), execution="real")
    assert s.layers == real.layers


def test_leaf_replay_with_global_module_hook() -> None:
    seen: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__)
    )
    try:
        s = netsight.summary(wide_model(6), input_size=(1, 8))
    finally:
        handle.remove()
    assert seen == ["Linear", "ReLU"] * 3 + ["Sequential"]  # every call ran
    assert s.total_mult_adds == 3 * 64


class _TiedHead(nn.Module):
    """Two identical Linear layers (the second is replayed, so its weights stay
    real), an output projection tied to the embedding, and a direct
    ``forward`` call: held leaf tensors used outside their own calls."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.l1 = nn.Linear(16, 16)
        self.l2 = nn.Linear(16, 16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.l2(torch.relu(self.l1(self.embed(tokens))))
        h = h + self.l2.forward(h) + self.l2.weight.t().sum()
        return nn.functional.linear(h, self.embed.weight)


class _ReadsDevice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))  # b is replayed: its weight is still the real one here
        return y + torch.ones(8, device=self.b.weight.device)


@pytest.mark.parametrize("model_type", [_TiedHead, _ReadsDevice])
def test_held_leaf_tensors_used_elsewhere_stay_on_the_meta_pass(
    model_type: type[nn.Module],
) -> None:
    torch.manual_seed(0)
    model = model_type()
    kwargs = (
        {"input_data": torch.randint(0, 50, (2, 5))}
        if model_type is _TiedHead
        else {"input_size": (2, 8)}
    )
    before = snapshot(model)
    params = {name: p for name, p in model.named_parameters()}
    meta = netsight.summary(model, **kwargs)
    real = netsight.summary(model, execution="real", **kwargs)
    assert meta.trace.execution == "meta" and meta.trace.fallback_reason is None
    assert meta.layers == real.layers
    assert meta.total_mult_adds == real.total_mult_adds > 0
    assert_unchanged(model, before)
    assert all(p is params[name] for name, p in model.named_parameters())


def test_replayed_leaves_never_get_meta_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    twinned: list[tuple[int, ...]] = []
    original = MetaTwins.twin

    def counting(self: object, tensor: torch.Tensor) -> torch.Tensor:
        twinned.append(tuple(tensor.shape))
        return original(self, tensor)  # type: ignore[arg-type]

    substituted: list[object] = []
    substitute = MetaTwins.substitute

    def watched(self: object, obj: object) -> object:
        result = substitute(self, obj)  # type: ignore[arg-type]
        if result is not MISSING:
            substituted.append(obj)
        return result

    monkeypatch.setattr(MetaTwins, "twin", counting)
    monkeypatch.setattr(MetaTwins, "substitute", watched)
    model = wide_model(200)
    s = netsight.summary(model, input_size=(3, 8))
    assert s.trace.execution == "meta" and len(s.layers) == 201
    assert twinned == [(8, 8), (8,)]  # the first Linear runs; 99 more are replayed
    assert substituted == []  # the first Linear got its twins before it ran
    assert all(p.device.type == "cpu" for p in model.parameters())
    # tied weights: the embedding's table reaches F.linear from outside its own call
    twinned.clear()
    tied = netsight.summary(_TiedHead(), input_data=torch.randint(0, 50, (2, 5)))
    assert tied.trace.execution == "meta" and len(substituted) > 0
    assert (50, 16) in twinned


# --------------------------------------------------------------------------- uncounted ops


def test_op_without_formula_is_listed_never_silently_zero() -> None:
    class Int8Matmul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch._int_mm(a, b)

    a = torch.randint(-5, 5, (32, 64), dtype=torch.int8)
    b = torch.randint(-5, 5, (64, 32), dtype=torch.int8)
    s = netsight.summary(Int8Matmul(), input_data=(a, b), execution="real")
    assert s.uncounted_ops == ("aten._int_mm",)
    assert s.layers[0].uncounted_ops == ("aten._int_mm",)
    text = str(s)
    assert "+?" in text and "aten._int_mm" in text


def test_functional_ops_in_forward_are_counted() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 3, 3, 3))
            self.proj = nn.Parameter(torch.randn(6 * 4 * 4, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.conv2d(x, self.w)
            return y.flatten(1) @ self.proj

    s = netsight.summary(Functional(), input_size=(2, 3, 6, 6))
    assert s.total_mult_adds == 2 * 6 * 16 * 27 + 2 * 96 * 5
    assert s.layers[0].mult_adds == s.total_mult_adds  # attributed to the root itself
    assert s.layers[0].params == 6 * 27 + 96 * 5


# --------------------------------------------------------------------------- state


def test_mixed_training_flags_grads_and_requires_grad_are_restored() -> None:
    model = torchvision.models.resnet18()
    model.train()
    model.layer2.eval()
    model.fc.weight.requires_grad_(False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    before = snapshot(model)
    for mode in ("eval", "train", "same"):
        for execution in ("meta", "real"):
            netsight.summary(model, input_size=(2, 3, 32, 32), mode=mode, execution=execution)
            assert_unchanged(model, before)


# --------------------------------------------------------------------------- errors


def test_wrong_input_shape_names_the_failing_layer() -> None:
    model = Vgg16Net()
    before = snapshot(model)
    with pytest.raises(netsight.TraceError) as info:
        netsight.summary(model, input_size=(1, 3, 32, 32))
    err = info.value
    assert err.module_name == "layer1.0" and err.module_type == "Conv2d"
    assert err.input_shapes == "[1, 3, 32, 32]"
    assert "expected input[1, 3, 32, 32] to have 1 channels" in str(err)
    assert "call stack: Vgg16Net (Vgg16Net) > conv (Sequential) > layer1" in str(err)
    assert_unchanged(model, before)


def test_error_lists_the_layers_that_ran_before() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(32, 2))
    before = snapshot(model)
    with pytest.raises(netsight.TraceError) as info:
        netsight.summary(model, input_size=(1, 8))
    err = info.value
    assert err.module_name == "2"
    assert err.ran_before == ("0 -> [1, 16]", "1 -> [1, 16]")
    assert "layers that ran before it (last 2 of 2)" in str(err)
    assert_unchanged(model, before)


def test_input_dtype_mismatch_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(netsight.TraceError, match=r"failed in '0' \(Conv2d\)"):
        netsight.summary(model, input_data=torch.randn(1, 1, 5, 5, dtype=torch.float64))
    assert netsight.count_hooks(model) == 0


def test_device_other_than_the_models_is_refused_before_running() -> None:
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="never moves your model"):
        netsight.summary(model, input_size=(1, 3), device="meta")
    assert model.weight.device.type == "cpu"


def test_meta_input_for_a_real_model_is_fine() -> None:
    # Shapes are all a summary needs, so a meta input works with a real model.
    s = netsight.summary(nn.Linear(3, 4), input_data=torch.empty(2, 3, device="meta"))
    assert s.layers[0].output == TensorMeta((2, 4), "float32")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": (1, 3)}, TypeError, "expected a torch.nn.Module"),
    ],
)
def test_not_a_module(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        netsight.summary(lambda x: x, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of input_size or input_data"),
        ({"input_size": "1,3"}, "input_size: expected a shape"),
        ({"input_size": [(1, 3), "x"]}, "input_size: expected a shape or a list of shapes"),
        ({"input_size": (1, 3), "mode": "test"}, "mode: expected"),
        ({"input_size": (1, 3), "depth": -1}, "depth: expected >= 0"),
        ({"input_size": (1, 3), "columns": ["nope"]}, "unknown column 'nope'"),
    ],
)
def test_malformed_arguments(kwargs: dict[str, object], match: str) -> None:
    model = nn.Linear(3, 3)
    with pytest.raises((TypeError, ValueError), match=match):
        netsight.summary(model, **kwargs)  # type: ignore[arg-type]
    assert netsight.count_hooks(model) == 0


def test_exception_inside_forward_on_real_path_removes_hooks() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("boom")

    model = Boom()
    with pytest.raises(netsight.TraceError, match="KeyError"):
        netsight.summary(model, input_size=(1, 2))
    assert netsight.count_hooks(model) == 0


def test_recursion_limit_untouched() -> None:
    limit = sys.getrecursionlimit()
    netsight.summary(NestedChain(10), input_size=(1, 8))
    assert sys.getrecursionlimit() == limit
