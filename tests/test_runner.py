"""netsight.trace.runner: the one runner behind the summary, the diagram, the named
error of a feature forward and the CAM layer probe."""

from __future__ import annotations

import contextlib
from dataclasses import FrozenInstanceError, dataclass

import pytest
import torch
from torch import nn

import netsight
from helpers import assert_unchanged, snapshot
from netsight.cam.base import find_target_layer
from netsight.diagram.graph import Step, StepKind, record_dataflow
from netsight.features import run_forward
from netsight.hooks import HookSet, StopForward
from netsight.options import Execution, Mode
from netsight.trace import TraceError
from netsight.trace.frames import FLOPS
from netsight.trace.inputs import tensors_in
from netsight.trace.recorder import FrameRecorder
from netsight.trace.runner import Failure, Forward, run


class NeedsValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:  # a decision on values: impossible on meta
            x = self.fc(x)
        return x


class Names:
    """A minimal recorder: the names of the modules called, in order."""

    def __init__(self) -> None:
        self.called: list[str] = []
        self.passes: list[bool] = []

    def watch(self, hooks: HookSet, forward: Forward) -> contextlib.AbstractContextManager[object]:
        self.passes.append(forward.real)

        def pre(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            self.called.append(forward.names[id(module)][0])

        def post(module: nn.Module, args: object, kwargs: object, output: object) -> None:
            pass

        hooks.add_call_hooks(forward.modules, pre, post)
        return contextlib.nullcontext()

    def failure(self) -> Failure:
        return Failure(module_name=self.called[-1] if self.called else "")


def test_a_recorder_of_ones_own_sees_every_call_and_the_model_leaves_as_it_came() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    model.train()
    before = snapshot(model)
    result = run(model, Names, input_size=(2, 3), mode="train", execution="real")
    assert result.recorder.called == ["", "0", "1", "2"]
    assert result.execution is Execution.REAL and result.mode is Mode.TRAIN
    assert result.fallback_reason is None
    assert isinstance(result.output, torch.Tensor) and result.output.shape == (2, 4)
    assert_unchanged(model, before)  # BatchNorm's running stats restored
    assert netsight.count_hooks(model) == 0
    meta = run(model, Names, input_size=(2, 3))
    assert meta.execution is Execution.META and meta.output.is_meta
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_the_fallback_reason_is_carried_as_data() -> None:
    result = run(NeedsValues(), Names, input_size=(2, 4))
    assert result.execution is Execution.REAL
    assert result.fallback_reason is not None
    assert result.fallback_reason.startswith("RuntimeError: ")  # the meta pass's error
    assert "\n" not in result.fallback_reason
    with pytest.raises(TraceError) as info:
        run(NeedsValues(), Names, input_size=(2, 4), execution="meta")
    assert info.value.reason == result.fallback_reason
    assert isinstance(info.value.__cause__, RuntimeError)
    s = netsight.summary(NeedsValues(), input_size=(2, 4))
    assert s.trace.fallback_reason == result.fallback_reason


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "test"}, ValueError, "mode: expected one of 'eval', 'train', 'same', got 'test'"),
        ({"execution": "fast"}, ValueError, "execution: expected one of 'auto', 'meta', 'real'"),
        ({"device": "meta"}, ValueError, "never moves your model"),
    ],
)
def test_options_are_checked_once(kwargs: dict[str, str], error: type, match: str) -> None:
    for entry in (
        lambda: run(nn.Linear(3, 3), Names, input_size=(1, 3), **kwargs),
        lambda: netsight.trace(nn.Linear(3, 3), input_size=(1, 3), **kwargs),
    ):
        with pytest.raises(error, match=match):
            entry()
    if "device" not in kwargs:
        with pytest.raises(error, match=match):
            record_dataflow(nn.Linear(3, 3), input_size=(1, 3), **kwargs)


def test_the_summary_and_the_diagram_fail_with_the_same_wording() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(32, 2))
    errors = []
    for entry in (netsight.summary, netsight.diagram, record_dataflow):
        with pytest.raises(TraceError) as info:
            entry(model, input_size=(1, 8))
        errors.append(info.value)
    for err in errors:
        text = str(err)
        assert text.startswith("the forward pass failed in '2' (Linear) with input [1, 16]:")
        assert "call stack: Sequential (Sequential) > 2 (Linear)" in text
        assert "layers that ran before it (last 2 of 2)" in text
        assert (err.module_name, err.module_type, err.input_shapes) == ("2", "Linear", "[1, 16]")
        assert err.ran_before == ("0 -> [1, 16]", "1 -> [1, 16]")
        assert err.reason.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert netsight.count_hooks(model) == 0


def test_a_netsight_stop_passes_through_the_diagram() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def stop(module: nn.Module, args: object, output: object) -> None:
        raise StopForward

    handle = model[0].register_forward_hook(stop)
    try:
        with pytest.raises(StopForward):
            record_dataflow(model, input_size=(1, 4))
    finally:
        handle.remove()


def test_the_dataflow_is_public_and_frozen() -> None:
    flow = record_dataflow(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), input_size=(1, 4))
    assert all(isinstance(step, Step) for step in flow.steps)
    kinds = [step.kind for step in flow.steps]
    assert kinds == [StepKind.INPUT, StepKind.MODULE, StepKind.MODULE, StepKind.MODULE]
    assert flow.steps[2].inputs == (0,) and flow.steps[2].out_shapes == ((1, 4),)
    assert flow.calls[0].children == (1, 2)
    with pytest.raises(FrozenInstanceError):
        flow.steps[0].name = "x"  # type: ignore[misc]


def test_the_feature_forward_and_the_cam_probe_name_the_failing_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(5, 4, 3))
    x = torch.randn(1, 3, 12, 12)
    for entry in (lambda: run_forward(model, x), lambda: find_target_layer(model, x)):
        with pytest.raises(
            TraceError, match=r"failed in '2' \(Conv2d\) with input \[1, 4, 10, 10\]"
        ):
            entry()
    assert netsight.count_hooks(model) == 0


@dataclass
class _Holder:
    batch: torch.Tensor
    extra: list[torch.Tensor]


def test_tensors_in_looks_into_objects_only_when_asked() -> None:
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    nested = {"x": [a, (b,)], "held": _Holder(c, [a])}
    assert [t.shape[0] for t in tensors_in(nested)] == [1, 2]
    assert [t.shape[0] for t in tensors_in(nested, deep=True)] == [1, 2, 3, 1]
    too_deep = [[[[[a]]]]]
    assert list(tensors_in(too_deep)) == [a]
    assert list(tensors_in(too_deep, deep=True)) == []  # deeper than SEARCH_DEPTH
    assert list(tensors_in(nn.Linear(2, 2), deep=True)) == []  # weights are not data


def test_the_summary_recorder_counts_only_when_asked() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    counted = run(model, FrameRecorder, input_size=(2, 3))
    calls_only = run(model, lambda: FrameRecorder(count=False), input_size=(2, 3))
    assert len(counted.recorder.frames) == len(calls_only.recorder.frames) == 3
    assert sum(f[FLOPS] for f in counted.recorder.frames) > 0
    assert sum(f[FLOPS] for f in calls_only.recorder.frames) == 0
