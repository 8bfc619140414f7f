"""Every public entry point leaves the model and the process as it found them.

One parametrised test: (every entry point of ``netsight.__all__``, and of the
submodules it exports, plus every CLI command in ``netsight.cli.COMMANDS``) x
seven scenarios (a normal call, a bad target, an unknown layer, a wrong input
shape, a user hook that raises on its third call, ``KeyboardInterrupt`` from
inside the forward at the first and at the third module). After each call, also
when it raised, :func:`state_diff` compares a snapshot of everything a call could
leave behind: hooks of every kind on every module, the global module hooks,
training flags, ``requires_grad``, ``.grad`` (identity and values), parameters and
buffers (values, ``data_ptr``, ``_version``), every plain attribute's identity, the
RNG states, grad and inference mode, the default dtype and device, the torch
dispatch and function mode stacks, the MHA fast-path flag, thread counts, ...

Entry points are *discovered*: a new name in ``netsight.__all__`` (or a new CLI
command) fails :func:`test_every_entry_point_is_driven_or_exempt` until it gets a
driver here (a small function calling it, with the outcome expected in each
scenario, ``NA(reason)`` where a scenario does not apply) or an exemption with a
reason (data records, exceptions, ``__version__``). The captum suite does the
same for hook removal (captum ``tests/attr/test_hook_removal.py``).
"""

from __future__ import annotations

import enum
import os
import random
import signal
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Import-time effects of modules netsight imports lazily are not a call's doing:
# rich draws python-random bits when imported, torch._inductor sets
# TORCHINDUCTOR_CACHE_DIR. Imported up front so the first call does not show them.
import rich.console  # noqa: F401
import torch
import torch._inductor
from PIL import Image
from torch import nn
from torch.nn.modules import module as module_module

import netsight
from netsight import cli

# --------------------------------------------------------------------------- the model

#: The models, as a file the CLI loads (``nets.py:NAME``) and the library tests exec.
#: ``Net.forward`` calls ``TRIP.tick()`` before each child: the tripwire raises
#: ``KeyboardInterrupt`` from inside the forward when armed.
NETS_PY = '''
import torch
from torch import nn


class UserHookError(RuntimeError):
    """What the user's hook raises."""


class Trip:
    """Raises ``error`` at the ``at``-th module call of Net.forward once armed."""

    def __init__(self) -> None:
        self.arm(0)

    def arm(self, at, error=KeyboardInterrupt):
        self.at, self.error, self.calls = at, error, 0

    def tick(self):
        if self.at:
            self.calls += 1
            if self.calls == self.at:
                raise self.error()


TRIP = Trip()


class Net(nn.Module):
    """A small CNN: conv, relu, conv, batch norm, relu, pool, flatten, linear."""

    def __init__(self, in_channels=3, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, classes)
        # a plain tensor attribute; the meta pass of trace/diagram cannot move it, so
        # they fall back to a real pass: hooks and interrupts hit both passes here
        self.scale = torch.ones(1)

    def forward(self, x):
        for child in self.children():
            TRIP.tick()
            x = child(x)
        return x * self.scale


def hook_that_raises_on_third_call():
    """A forward hook (one callable on every module) that raises on its third call."""
    calls = []

    def hook(module, args, output):
        calls.append(module)
        if len(calls) == 3:
            raise UserHookError("the user's hook failed on its third call")

    return hook


def hooked():
    model = Net()
    hook = hook_that_raises_on_third_call()
    for module in model.modules():
        module.register_forward_hook(hook)
    return model


def interrupted_at_first():
    TRIP.arm(1)
    return Net()


def interrupted_at_third():
    TRIP.arm(3)
    return Net()
'''

nets = types.ModuleType("entry_point_nets")
exec(compile(NETS_PY, "nets.py", "exec"), nets.__dict__)

INPUT = (2, 3, 16, 16)
WRONG_INPUT = (2, 5, 16, 16)


class Scenario(str, enum.Enum):
    NORMAL = "normal"
    BAD_TARGET = "bad_target"
    UNKNOWN_LAYER = "unknown_layer"
    WRONG_SHAPE = "wrong_shape"
    HOOK_RAISES = "hook_raises_3rd"
    INTERRUPT_FIRST = "interrupt_1st"
    INTERRUPT_THIRD = "interrupt_3rd"


# --------------------------------------------------------------------------- the state


@dataclass(frozen=True)
class _Tensor:
    """A tensor as it was: its identity, storage, version counter and a copy."""

    ident: int
    data_ptr: int
    version: int
    value: torch.Tensor

    @classmethod
    def of(cls, t: torch.Tensor) -> _Tensor:
        return cls(id(t), t.data_ptr(), t._version, t.detach().clone())

    def same(self, other: _Tensor) -> bool:
        a, b = self.value, other.value
        if (self.ident, self.data_ptr, self.version) != (
            other.ident,
            other.data_ptr,
            other.version,
        ):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(
            torch.equal(a, b) or (a.isnan().any() and torch.equal(a.nan_to_num(), b.nan_to_num()))
        )

    def __str__(self) -> str:
        return (
            f"tensor(id={self.ident:#x}, data_ptr={self.data_ptr:#x}, _version={self.version}, "
            f"shape={list(self.value.shape)}, sum={float(self.value.double().sum()):.6g})"
        )


def _hook_dicts(owner: object) -> dict[str, object]:
    """Every ``*hook*`` attribute of a module (or of torch's module module): the
    registered callables by key and identity, so a hook swapped for another shows."""
    found: dict[str, object] = {}
    for attr, value in sorted(vars(owner).items()):
        if "hook" not in attr.lower() or (callable(value) and not isinstance(value, dict)):
            continue
        if isinstance(value, dict):
            found[attr] = tuple((k, id(v)) for k, v in value.items())
        elif isinstance(value, (set, list, tuple)):
            found[attr] = tuple(sorted(map(id, value)))
        else:
            found[attr] = value
    return found


def snapshot(model: nn.Module | None) -> dict[str, object]:
    """Everything a netsight call could leave behind, as ``{key: comparable value}``:
    the model's (when given) and the process's."""
    state: dict[str, object] = {}
    if model is not None:
        for name, module in model.named_modules(remove_duplicate=False):
            where = f"model[{name or '<root>'}]"
            state[f"{where}.training"] = module.training
            for attr, hooks in _hook_dicts(module).items():
                state[f"{where}.{attr}"] = hooks
            # every attribute's identity (a new or replaced attribute shows here,
            # _compiled_call_impl included), and a copy of each plain tensor
            state[f"{where}.__dict__"] = {k: id(v) for k, v in vars(module).items()}
            for attr, value in vars(module).items():
                if isinstance(value, torch.Tensor):
                    state[f"{where}.{attr}"] = _Tensor.of(value)
        for name, p in model.named_parameters(remove_duplicate=False):
            state[f"param[{name}]"] = _Tensor.of(p)
            state[f"param[{name}].requires_grad"] = p.requires_grad
            state[f"param[{name}].grad"] = None if p.grad is None else _Tensor.of(p.grad)
            for attr in ("_backward_hooks", "_post_accumulate_grad_hooks"):
                hooks = getattr(p, attr, None) or {}
                state[f"param[{name}].{attr}"] = tuple((k, id(v)) for k, v in hooks.items())
        for name, b in model.named_buffers(remove_duplicate=False):
            state[f"buffer[{name}]"] = _Tensor.of(b)
    for attr, hooks in _hook_dicts(module_module).items():
        state[f"torch.nn.modules.module.{attr}"] = hooks
    state["torch RNG"] = torch.get_rng_state()
    state["python random"] = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state["numpy random"] = (kind, keys.tobytes(), pos, has_gauss, cached)
    state["grad mode"] = torch.is_grad_enabled()
    state["inference mode"] = torch.is_inference_mode_enabled()
    state["anomaly mode"] = torch.is_anomaly_enabled()
    state["deterministic algorithms"] = torch.are_deterministic_algorithms_enabled()
    state["default dtype"] = torch.get_default_dtype()
    state["default device"] = torch.get_default_device()
    state["torch dispatch mode stack"] = torch._C._len_torch_dispatch_stack()
    state["torch function mode stack"] = torch._C._len_torch_function_stack()
    state["mha fast path"] = torch.backends.mha.get_fastpath_enabled()
    state["threads"] = torch.get_num_threads()
    state["interop threads"] = torch.get_num_interop_threads()
    state["python threads"] = sorted(t.name for t in threading.enumerate())
    state["sys.path"] = list(sys.path)
    state["cwd"] = os.getcwd()
    state["environ"] = dict(os.environ)
    state["signal handlers"] = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    state["sys.stdout/stderr"] = (id(sys.stdout), id(sys.stderr))
    state["warnings.filters"] = list(warnings.filters)
    if "matplotlib" in sys.modules:
        import matplotlib

        state["matplotlib.rcParams"] = dict(matplotlib.rcParams)
        pyplot = sys.modules.get("matplotlib.pyplot")
        state["pyplot figures"] = pyplot.get_fignums() if pyplot is not None else []
    return state


def _same(a: object, b: object) -> bool:
    if isinstance(a, _Tensor) and isinstance(b, _Tensor):
        return a.same(b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _show(value: object, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_diff(
    before: dict[str, object], after: dict[str, object], ignore: dict[str, str] | None = None
) -> list[str]:
    """One readable line per key whose value changed, appeared or vanished
    (``ignore``: keys a call changes by design, with the reason)."""
    lines = []
    for key in [*before, *(k for k in after if k not in before)]:
        if ignore and key in ignore:
            continue
        if key not in after:
            lines.append(f"{key}: gone (was {_show(before[key])})")
        elif key not in before:
            lines.append(f"{key}: new: {_show(after[key])}")
        elif not _same(before[key], after[key]):
            old, new = before[key], after[key]
            if isinstance(old, dict) and isinstance(new, dict):
                changed = sorted(
                    str(k)
                    for k in old.keys() | new.keys()
                    if k not in old or k not in new or old[k] != new[k]
                )
                lines.append(f"{key}: entries changed: {', '.join(changed)}")
            else:
                lines.append(f"{key}: {_show(old)} -> {_show(new)}")
    return lines


# --------------------------------------------------------------------------- drivers


@dataclass(frozen=True)
class Outcome:
    """What a call does in a scenario: returns (``raises=()``), raises one of
    ``raises`` (the exception itself or one in its cause chain for the user's
    hook error), exits with ``code`` (CLI), or does not apply (``na``: why)."""

    raises: tuple[type[BaseException], ...] = ()
    code: int = 0
    na: str = ""


OK = Outcome()


def raises(*types_: type[BaseException]) -> Outcome:
    return Outcome(raises=types_)


def na(reason: str) -> Outcome:
    return Outcome(na=reason)


def exits(code: int) -> Outcome:
    return Outcome(code=code)


USER_ERROR = raises(ValueError, KeyError, netsight.TraceError)
HOOK_ERROR = raises(nets.UserHookError)
INTERRUPT = raises(KeyboardInterrupt)
#: The hook fails in the meta pass (calls 1-8); the real pass after it runs.
RUNS_ON = OK
#: torch's own error from the model's forward, passed on unwrapped (its message
#: names the expected and the received channels)
TORCH_ERROR = raises(RuntimeError)
NO_TARGET = na("takes no class target")
NO_LAYER = na("takes no layer")
NO_FORWARD = na("runs no forward pass: no hook or interrupt can fire inside it")
NO_MODEL = na("takes no model")


@dataclass
class Ctx:
    """What a driver calls with. The scenario spoils one field (or arms the model)."""

    model: nn.Module
    x: torch.Tensor
    size: tuple[int, ...]
    layer: str
    target: int
    labels: list[int]
    tmp: Path
    image: Path
    nets_file: Path
    activation: torch.Tensor  # (B, C, H, W), or 2-D for the wrong shape
    picture: torch.Tensor  # (3, H, W) in [0, 1]
    fresh: nn.Module  # another Net, for load_weights
    checkpoint: Path  # a state dict of a Net with x's channel count
    runs: Path  # a directory with one run (a scalars.csv)


@dataclass(frozen=True)
class Driver:
    """Calls one entry point on a small model and input (``call(ctx)``), with the
    outcome expected in each scenario (the defaults: the call runs the model)."""

    call: Callable[[Ctx], object]
    bad_target: Outcome
    unknown_layer: Outcome
    wrong_shape: Outcome
    hook_raises: Outcome = HOOK_ERROR
    interrupt: Outcome = INTERRUPT
    normal: Outcome = OK
    #: state keys the call changes by design, and why
    changes: tuple[tuple[str, str], ...] = ()

    def expect(self, scenario: Scenario) -> Outcome:
        return {
            Scenario.NORMAL: self.normal,
            Scenario.BAD_TARGET: self.bad_target,
            Scenario.UNKNOWN_LAYER: self.unknown_layer,
            Scenario.WRONG_SHAPE: self.wrong_shape,
            Scenario.HOOK_RAISES: self.hook_raises,
            Scenario.INTERRUPT_FIRST: self.interrupt,
            Scenario.INTERRUPT_THIRD: self.interrupt,
        }[scenario]


def _explain(cls: type[Any], **options: Any) -> Callable[[Ctx], object]:
    def call(c: Ctx) -> object:
        return cls(c.model, c.layer, **options).explain(c.x, targets=c.target)

    return call


def _cam_driver(cls: type[Any], **options: Any) -> Driver:
    return Driver(
        _explain(cls, **options),
        bad_target=USER_ERROR,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    )


def _capture(c: Ctx) -> object:
    x = c.x.clone().requires_grad_(True)
    with netsight.capture(c.model, c.layer, gradients=True) as cap:
        out = c.model(x)
        torch.autograd.grad(out[:, 0].sum(), x)  # the user's backward; no parameter grads
    return cap.activations


def _monitor(c: Ctx) -> object:
    with netsight.TrainingMonitor(
        c.model,
        c.tmp / "runs",
        "run",
        probe=(c.x, torch.tensor(c.labels)),
        feature_layers=[c.layer],
        tensorboard=False,
        plots=False,
        graph=False,
    ) as mon:
        mon.step(loss=0.5)
        mon.epoch_end(val_loss=0.4)
    return mon.history


def _load_weights(c: Ctx) -> object:
    # The normal call fills another Net from the checkpoint (loading is its job);
    # with the wrong shape the checkpoint is of a Net with other input channels, and
    # the model given (c.model) must come back unchanged.
    target = c.fresh if c.x.shape[1] == INPUT[1] else c.model
    return netsight.load_weights(target, c.checkpoint)


def _report(c: Ctx) -> object:
    return netsight.report(
        c.model,
        c.x[:1],
        labels=c.labels[:1],
        cam_methods=("gradcam",),
        cam_layer=c.layer,
        filter_layers=["conv1"],
        feature_layers=["conv1"],
        faithfulness_steps=0,
        pattern_steps=0,
        diagram=False,
    )


def _explore(c: Ctx) -> object:
    # the server up and down, and in between what its routes do on a click, in this
    # thread: the image's first forward, a layer, a CAM (all through its Session)
    with netsight.explore(c.model, open_browser=False) as ex:
        info = ex.session.add_image(c.x[:1])
        answer = ex.session.layer(info["id"], c.layer)
        ex.session.cam(info["id"], c.layer, c.target)
    return answer


#: Every public entry point with a driver. Scenarios that do not apply say why.
DRIVERS: dict[str, Driver] = {
    "explore": Driver(
        _explore,
        bad_target=USER_ERROR,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    ),
    "CAM": Driver(
        _explain(netsight.CAM),
        bad_target=USER_ERROR,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    ),
    "AblationCAM": _cam_driver(netsight.AblationCAM, batch_size=4),
    "EigenCAM": _cam_driver(netsight.EigenCAM),
    "FEM": _cam_driver(netsight.FEM),
    "KPCACAM": _cam_driver(netsight.KPCACAM),
    "SegEigenCAM": _cam_driver(netsight.SegEigenCAM),
    "SESS": _cam_driver(netsight.SESS, num_scales=2),
    "GradCAM": _cam_driver(netsight.GradCAM),
    "GradCAMPlusPlus": _cam_driver(netsight.GradCAMPlusPlus),
    "HiResCAM": _cam_driver(netsight.HiResCAM),
    "LayerCAM": _cam_driver(netsight.LayerCAM),
    "Saliency": Driver(
        lambda c: netsight.Saliency(c.model).explain(c.x, targets=c.target),
        bad_target=USER_ERROR,
        unknown_layer=na("works on the input: takes no layer"),
        wrong_shape=USER_ERROR,
    ),
    "ScoreCAM": _cam_driver(netsight.ScoreCAM, batch_size=4),
    "SSCAM": _cam_driver(netsight.SSCAM, batch_size=4, num_samples=1, seed=0),
    "ISCAM": _cam_driver(netsight.ISCAM, batch_size=4, num_samples=2),
    "SmoothGradCAMpp": _cam_driver(netsight.SmoothGradCAMpp, num_samples=2, seed=0),
    "XGradCAM": _cam_driver(netsight.XGradCAM),
    "TrainingMonitor": Driver(
        _monitor,
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=TORCH_ERROR,  # the probe's forward at epoch_end
        hook_raises=RUNS_ON,  # the summary at the start fails (logged as such)
    ),
    "compare": Driver(
        lambda c: netsight.compare(c.model, c.x, "gradcam,eigencam", c.target, layer=c.layer).save(
            c.tmp / "cam"
        ),
        bad_target=USER_ERROR,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    ),
    "capture": Driver(
        _capture,
        bad_target=na("the target is the user's own code inside the with block"),
        unknown_layer=USER_ERROR,
        wrong_shape=raises(RuntimeError),  # the user's own forward raises torch's error
    ),
    "count_hooks": Driver(
        lambda c: netsight.count_hooks(c.model),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "denormalize": Driver(
        lambda c: netsight.denormalize(c.x[0], [0.5, 0.5, 0.5], [0.2, 0.2, 0.2]),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "diagram": Driver(
        lambda c: netsight.diagram(c.model, input_size=c.size, format="dot"),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=RUNS_ON,
    ),
    "feature_grid": Driver(
        lambda c: netsight.feature_grid(c.activation),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "filter_grid": Driver(
        lambda c: netsight.filter_grid(c.model, c.layer),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=na("reads the weights; takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "layer_stats": Driver(
        lambda c: netsight.layer_stats(c.model, c.x, c.layer),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=TORCH_ERROR,
    ),
    "list_layers": Driver(
        lambda c: netsight.list_layers(c.model),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "load_image": Driver(
        lambda c: netsight.load_image(c.image, size=c.size[-2:], model=c.model),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes the channel count from the model"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "load_model": Driver(
        lambda c: netsight.load_model(f"{c.nets_file}:Net"),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=na("builds a new model: the user's hook is not on it"),
        interrupt=na("builds a new model and runs no forward"),
        changes=(("torch RNG", "the model's constructor initialises its weights from it"),),
    ),
    "load_weights": Driver(
        _load_weights,
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=raises(ValueError),  # a checkpoint of another architecture
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "maximize": Driver(
        lambda c: netsight.maximize(
            c.model, c.layer, [c.target], size=16, steps=2, in_channels=c.x.shape[1]
        ),
        bad_target=USER_ERROR,  # a channel the layer does not have
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    ),
    "mean_maps": Driver(
        lambda c: netsight.mean_maps({"a": c.activation}),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "overlay": Driver(
        lambda c: netsight.overlay(c.picture, c.activation[0, 0]),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "plot_feature_maps": Driver(
        lambda c: netsight.plot_feature_maps(c.activation),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "plot_filters": Driver(
        lambda c: netsight.plot_filters(c.model, c.layer),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=na("reads the weights; takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "plot_kernel_and_map": Driver(
        # c.activation has conv1's 4 channels: the kernels it is drawn beside are conv1's
        lambda c: netsight.plot_kernel_and_map(
            c.model, c.layer.replace("conv2", "conv1"), c.activation
        ),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "plot_mean_maps": Driver(
        lambda c: netsight.plot_mean_maps({"a": c.activation}),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "report": Driver(
        _report,
        bad_target=USER_ERROR,  # label 999 of 3 classes is refused before any work
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
        hook_raises=OK,  # the section where it fails is skipped with the reason
    ),
    "save_filters": Driver(
        lambda c: netsight.save_filters(c.model, [c.layer], c.tmp / "filters"),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=na("reads the weights; takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "summary": Driver(
        lambda c: netsight.summary(c.model, input_size=c.size),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=RUNS_ON,
    ),
    "to_pil": Driver(
        lambda c: netsight.to_pil(c.x[0].sigmoid()),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "top_channels": Driver(
        lambda c: netsight.top_channels(c.activation),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "trace": Driver(
        lambda c: netsight.trace(c.model, input_size=c.size),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=USER_ERROR,
        hook_raises=RUNS_ON,
    ),
    "cam.EigenGradCAM": _cam_driver(netsight.cam.EigenGradCAM),
    "cam.GradCAMElementWise": _cam_driver(netsight.cam.GradCAMElementWise),
    "cam.ShapleyCAM": _cam_driver(netsight.cam.ShapleyCAM),
    "cam.FinerCAM": _cam_driver(netsight.cam.FinerCAM),
    "cam.GuidedGradCAM": _cam_driver(netsight.cam.GuidedGradCAM),
    "cam.FullGrad": Driver(
        lambda c: netsight.cam.FullGrad(c.model).explain(c.x, targets=c.target),
        bad_target=USER_ERROR,
        unknown_layer=na("works on every biased layer: takes no layer"),
        wrong_shape=USER_ERROR,
    ),
    "cam.GuidedBackprop": Driver(
        lambda c: netsight.cam.GuidedBackprop(c.model).explain(c.x, targets=c.target),
        bad_target=USER_ERROR,
        unknown_layer=na("works on the input: takes no layer"),
        wrong_shape=USER_ERROR,
    ),
    "cam.evaluate": Driver(
        lambda c: netsight.cam.evaluate(
            netsight.GradCAM(c.model, c.layer),
            [(c.x, torch.tensor(c.labels))],
            steps=2,
            progress=False,
        ),
        bad_target=USER_ERROR,
        unknown_layer=USER_ERROR,
        wrong_shape=TORCH_ERROR,
    ),
    "cam.deep_feature_factorization": Driver(
        lambda c: netsight.cam.deep_feature_factorization(c.model, c.x, 2, layer=c.layer),
        bad_target=NO_TARGET,
        unknown_layer=USER_ERROR,
        wrong_shape=USER_ERROR,
    ),
    "monitor.layer_groups": Driver(
        lambda c: netsight.monitor.layer_groups(c.model),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_FORWARD,
        interrupt=NO_FORWARD,
    ),
    "monitor.list_runs": Driver(
        lambda c: netsight.monitor.list_runs(c.runs),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
    "monitor.read_scalars": Driver(
        lambda c: netsight.monitor.read_scalars(c.runs / "run" / "scalars.csv"),
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_MODEL,
        interrupt=NO_MODEL,
    ),
}

_RECORD = "a data record the entry points return; it runs nothing on a model"

#: Public names that are not entry points, and why.
EXEMPT: dict[str, str] = {
    "CAMComparison": _RECORD,
    "CAMResult": _RECORD,
    "Capture": "made by netsight.capture (driven), not constructed by users",
    "Column": "an enum of summary columns",
    "Diagnostic": _RECORD,
    "Diagram": _RECORD,
    "Explorer": "the handle netsight.explore returns (driven through it)",
    "FilterGrid": _RECORD,
    "LayerRecord": _RECORD,
    "LayerStats": _RECORD,
    "Patterns": _RECORD,
    "Report": _RECORD,
    "Summary": "renders a Trace (made by netsight.summary, driven); runs nothing",
    "TensorMeta": _RECORD,
    "Trace": _RECORD,
    "CaptureBudgetError": "an exception",
    "ModelSpecError": "an exception",
    "TraceError": "an exception",
    "TrainingWarning": "a warning category",
    "UntrustedCheckpointError": "an exception",
    "__version__": "a string",
    "cam.METHODS": "the registry of the CAM classes (each is driven by its own name)",
    "cam.BaseCAM": "the abstract base of the CAM methods",
    "cam.GradientCAM": "the abstract base of the gradient CAM methods",
    "cam.CAMEvaluation": _RECORD,
    "cam.CAMWarning": "a warning category",
    "cam.Factorization": _RECORD,
    "cam.LayerLayout": _RECORD,
    "cam.Layout": "an enum of layer layouts",
    "cam.LayoutError": "an exception",
    "cam.layer_layout": "reads module attributes and an output it is given; runs no model "
    "(tests/test_cam_timm.py drives it through every CAM)",
    "cam.MethodScores": _RECORD,
    "cam.targets": "a module of target callables given to the CAM classes (driven through "
    "them in tests/test_cam_targets.py); they run no model",
    "cam.Targets": _RECORD,
    "cam.FullGradients": _RECORD,
    "monitor.GradientStats": "TrainingMonitor's gradient accumulator (driven through it)",
    "monitor.MonitorWriteError": "an exception",
    "monitor.RunInUseError": "an exception",
    "monitor.RunInfo": _RECORD,
    "monitor.Thresholds": "a settings record for TrainingMonitor",
}


def discover() -> list[str]:
    """``netsight.__all__``, with each exported submodule's ``__all__`` as
    ``module.name`` (objects the top level already exports are not listed twice)."""
    names: list[str] = []
    top = {id(getattr(netsight, n)) for n in netsight.__all__}
    for name in netsight.__all__:
        obj = getattr(netsight, name)
        if not isinstance(obj, types.ModuleType):
            names.append(name)
            continue
        for inner in obj.__all__:
            if id(getattr(obj, inner)) not in top:
                names.append(f"{name}.{inner}")
    return names


# --------------------------------------------------------------------------- CLI drivers


@dataclass
class CliCtx:
    """Paths the CLI drivers use; ``spec`` is ``nets.py:FACTORY`` for the scenario."""

    spec: str
    image: Path
    runs: Path
    out: Path
    input: str
    size: str
    layer: str
    target: str


EXIT_OK = exits(0)
EXIT_USAGE = exits(2)  # netsight: error: ...
EXIT_INTERRUPTED = exits(130)


@dataclass(frozen=True)
class CliDriver:
    """``argv(ctx)`` for one command and the exit code expected per scenario."""

    argv: Callable[[CliCtx], list[str]]
    bad_target: Outcome
    unknown_layer: Outcome
    wrong_shape: Outcome
    hook_raises: Outcome = EXIT_USAGE
    interrupt: Outcome = EXIT_INTERRUPTED
    normal: Outcome = EXIT_OK

    expect = Driver.expect


NO_FORWARD_CLI = na("runs no forward pass: no hook or interrupt can fire inside it")
NO_MODEL_CLI = na("takes no model")

#: Every CLI command with a driver.
CLI_DRIVERS: dict[str, CliDriver] = {
    "summary": CliDriver(
        lambda c: ["summary", c.spec, "--input", c.input],
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=EXIT_USAGE,
        hook_raises=EXIT_OK,  # as RUNS_ON
    ),
    "diagram": CliDriver(
        lambda c: ["diagram", c.spec, "--input", c.input, "--format", "dot"],
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=EXIT_USAGE,
        hook_raises=EXIT_OK,  # as RUNS_ON
    ),
    "features": CliDriver(
        lambda c: (
            [
                "features",
                c.spec,
                str(c.image),
                "--layers",
                c.layer,
                "--size",
                c.size,
                "--max-channels",
                "4",
                "--out",
                str(c.out),
            ]
        ),
        bad_target=NO_TARGET,
        unknown_layer=EXIT_USAGE,
        wrong_shape=EXIT_USAGE,
    ),
    "cam": CliDriver(
        lambda c: (
            [
                "cam",
                c.spec,
                str(c.image),
                "--layer",
                c.layer,
                "--target",
                c.target,
                "--size",
                c.size,
                "--out",
                str(c.out),
            ]
        ),
        bad_target=EXIT_USAGE,
        unknown_layer=EXIT_USAGE,
        wrong_shape=EXIT_USAGE,
    ),
    "filters": CliDriver(
        lambda c: ["filters", c.spec, "--layer", c.layer, "--out", str(c.out)],
        bad_target=NO_TARGET,
        unknown_layer=EXIT_USAGE,
        wrong_shape=na("reads the weights; takes no input"),
        hook_raises=NO_FORWARD_CLI,
        interrupt=NO_FORWARD_CLI,
    ),
    "patterns": CliDriver(
        lambda c: (
            [
                "patterns",
                c.spec,
                "--layer",
                c.layer,
                "--channels",
                c.target,
                "--size",
                c.size.split(",")[0],
                "--steps",
                "2",
                "--out",
                str(c.out),
            ]
        ),
        bad_target=EXIT_USAGE,
        unknown_layer=EXIT_USAGE,
        wrong_shape=EXIT_USAGE,
    ),
    "layers": CliDriver(
        lambda c: ["layers", c.spec],
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_FORWARD_CLI,
        interrupt=NO_FORWARD_CLI,
    ),
    "report": CliDriver(
        lambda c: (
            [
                "report",
                c.spec,
                str(c.image),
                "--labels",
                c.target,
                "--layer",
                c.layer,
                "--size",
                c.size,
                "--methods",
                "gradcam",
                "--faithfulness-steps",
                "0",
                "--pattern-steps",
                "0",
                "--no-diagram",
                "--out",
                str(c.out / "r.html"),
            ]
        ),
        bad_target=EXIT_USAGE,  # label 999 of 3 classes is refused
        unknown_layer=EXIT_USAGE,
        wrong_shape=EXIT_USAGE,
        hook_raises=EXIT_OK,  # as for the library's report
    ),
    "runs": CliDriver(
        lambda c: ["runs", str(c.runs)],
        bad_target=NO_TARGET,
        unknown_layer=NO_LAYER,
        wrong_shape=na("takes no input"),
        hook_raises=NO_MODEL_CLI,
        interrupt=NO_MODEL_CLI,
    ),
}

#: CLI commands without a driver, and why.
CLI_EXEMPT: dict[str, str] = {
    "tensorboard": "starts a TensorBoard server that runs until Ctrl-C (tests/test_cli_monitor.py)",
    "demo": "trains a VGG-16 for seconds on its own data, no user model (tests/test_demo.py)",
    "explore": "serves until Ctrl-C or SIGTERM (tests/test_explore_api.py runs it and stops "
    "it with SIGTERM; the library's explore is driven above)",
}

# --------------------------------------------------------------------------- the tests


def test_every_entry_point_is_driven_or_exempt() -> None:
    public = discover()
    neither = [n for n in public if n not in DRIVERS and n not in EXEMPT]
    both = [n for n in public if n in DRIVERS and n in EXEMPT]
    stale = [n for n in [*DRIVERS, *EXEMPT] if n not in public]
    assert not neither, f"public entry points with neither a driver nor an exemption: {neither}"
    assert not both, f"both driven and exempt: {both}"
    assert not stale, f"drivers or exemptions for names that are not public: {stale}"
    commands = [c.name for c in cli.COMMANDS]
    assert sorted([*CLI_DRIVERS, *CLI_EXEMPT]) == sorted(commands), (
        f"CLI commands {commands}; driven {sorted(CLI_DRIVERS)}, exempt {sorted(CLI_EXEMPT)}"
    )


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``nets.py`` (the models as a file), ``picture.png`` (16x16
    RGB) and ``runs/run/scalars.csv`` (a TrainingMonitor run)."""
    root = tmp_path_factory.mktemp("entry_points")
    nets_file = root / "nets.py"
    nets_file.write_text(NETS_PY)
    image = root / "picture.png"
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    run = root / "runs" / "run"
    run.mkdir(parents=True)
    (run / "scalars.csv").write_text("step,epoch,tag,value,wall_time\n0,0,train/loss,0.5,1.0\n")
    return root


def _model() -> nn.Module:
    """A Net in a state a careless call would disturb: train mode with one module in
    eval, a frozen parameter, some ``.grad`` set (and one ``None``), a non-default
    batch-norm running mean."""
    model = nets.Net()
    model.train()
    model.bn.eval()
    model.conv1.bias.requires_grad_(False)
    model(torch.randn(INPUT)).square().mean().backward()
    model.fc.bias.grad = None
    return model


def _ctx(scenario: Scenario, tmp: Path, files: Path) -> Ctx:
    shape = WRONG_INPUT if scenario is Scenario.WRONG_SHAPE else INPUT
    target = 999 if scenario is Scenario.BAD_TARGET else 1
    checkpoint = tmp / "weights.pth"
    torch.save(nets.Net(in_channels=shape[1]).state_dict(), checkpoint)
    return Ctx(
        model=_model(),
        x=torch.randn(shape),
        size=(1, *shape[1:]),
        layer="no_such_layer" if scenario is Scenario.UNKNOWN_LAYER else "conv2",
        target=target,
        labels=[target, 0],
        tmp=tmp,
        image=files / "picture.png",
        nets_file=files / "nets.py",
        activation=torch.rand(2, 4, 8, 8) if shape == INPUT else torch.rand(4, 8),
        picture=torch.rand(3, 16, 16),
        fresh=nets.Net(),
        checkpoint=checkpoint,
        runs=files / "runs",
    )


def _arm(scenario: Scenario, model: nn.Module) -> None:
    if scenario is Scenario.HOOK_RAISES:
        hook = nets.hook_that_raises_on_third_call()
        for module in model.modules():
            module.register_forward_hook(hook)
    elif scenario is Scenario.INTERRUPT_FIRST:
        nets.TRIP.arm(1)
    elif scenario is Scenario.INTERRUPT_THIRD:
        nets.TRIP.arm(3)


def _check_outcome(name: str, expected: Outcome, outcome: BaseException | None) -> None:
    if not expected.raises:
        if outcome is not None:
            raise AssertionError(f"{name}: expected it to return, it raised") from outcome
        return
    assert outcome is not None, f"{name}: expected {expected.raises}, it returned"
    if not any(isinstance(e, expected.raises) for e in _exception_chain(outcome)):
        raise AssertionError(f"{name}: expected {expected.raises}, got {outcome!r}") from outcome
    if not isinstance(outcome, KeyboardInterrupt) and isinstance(outcome, Exception):
        assert str(outcome).strip(), f"{name}: {type(outcome).__name__} without a message"


def _cases(drivers: dict[str, Any]) -> list[Any]:
    """(name, scenario) pairs whose outcome is not NA: a scenario that does not apply
    is left out of the parametrisation (a skip would fail CI)."""
    return [
        pytest.param(name, scenario, id=f"{name}-{scenario.value}")
        for name, driver in drivers.items()
        for scenario in Scenario
        if not driver.expect(scenario).na
    ]


@pytest.mark.parametrize(("name", "scenario"), _cases(DRIVERS))
def test_entry_point_leaves_state(
    name: str, scenario: Scenario, tmp_path: Path, files: Path
) -> None:
    driver = DRIVERS[name]
    expected = driver.expect(scenario)
    ctx = _ctx(scenario, tmp_path, files)
    _arm(scenario, ctx.model)
    before = snapshot(ctx.model)
    outcome: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            driver.call(ctx)
    except BaseException as exc:  # KeyboardInterrupt included: it is what is tested
        outcome = exc
    finally:
        nets.TRIP.arm(0)
    diff = state_diff(before, snapshot(ctx.model), ignore=dict(driver.changes))
    assert not diff, f"{name} ({scenario.value}) changed the state:\n  " + "\n  ".join(diff)
    _check_outcome(name, expected, outcome)


_FACTORIES = {
    Scenario.HOOK_RAISES: "hooked",
    Scenario.INTERRUPT_FIRST: "interrupted_at_first",
    Scenario.INTERRUPT_THIRD: "interrupted_at_third",
}


@pytest.mark.parametrize(("name", "scenario"), _cases(CLI_DRIVERS))
def test_cli_command_leaves_state(
    name: str,
    scenario: Scenario,
    tmp_path: Path,
    files: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    driver = CLI_DRIVERS[name]
    expected = driver.expect(scenario)
    wrong = scenario is Scenario.WRONG_SHAPE
    ctx = CliCtx(
        spec=f"{files / 'nets.py'}:{_FACTORIES.get(scenario, 'Net')}",
        image=files / "picture.png",
        runs=files / "runs",
        out=tmp_path / "out",
        input="1,5,16,16" if wrong else "1,3,16,16",
        size="2,2" if wrong else "16,16",  # 2 px: too small for conv2's 3x3 kernel
        layer="no_such_layer" if scenario is Scenario.UNKNOWN_LAYER else "conv2",
        target="999" if scenario is Scenario.BAD_TARGET else "1",
    )
    before = snapshot(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(driver.argv(ctx))
    err = capsys.readouterr().err
    diff = state_diff(before, snapshot(None))
    assert not diff, f"netsight {name} ({scenario.value}) changed the state:\n  " + "\n  ".join(
        diff
    )
    assert code == expected.code, f"netsight {name} ({scenario.value}): exit {code}\n{err}"
    assert "Traceback" not in err
    if code == 2:
        assert "netsight: error: " in err, err


# --------------------------------------------------------------------------- the checker itself


def _noop(*args: Any) -> None:
    return None


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


Undo = Callable[[], object] | None


def _setting(
    get: Callable[[], Any], set_: Callable[[Any], Any], spoil: Callable[[Any], Any]
) -> Callable[[nn.Module], Undo]:
    """A leak of a global setting: ``set_(spoil(get()))``, undone by setting it back."""

    def leak(model: nn.Module) -> Undo:
        old = get()
        set_(spoil(old))
        return lambda: set_(old)

    return leak


def _draw(draw: Callable[[], object], get: Callable[[], Any]) -> Callable[[Any], Any]:
    """``spoil`` for an RNG: draw a number, and the state is the one after it."""

    def spoil(state: Any) -> Any:
        draw()
        return get()

    return spoil


def _leak_full_backward_hook(model: nn.Module) -> Undo:
    handle = model.bn.register_full_backward_hook(_noop)

    def undo() -> None:
        handle.remove()
        model.bn._is_full_backward_hook = None  # registering sets it; removing does not reset

    return undo


def _leak_function_mode(model: nn.Module) -> Undo:
    mode = _PassThrough()
    mode.__enter__()
    return lambda: mode.__exit__(None, None, None)


def _leak_grad(model: nn.Module) -> Undo:
    old = model.conv1.weight.grad
    model.conv1.weight.grad = None if old is None else old.clone()
    return lambda: setattr(model.conv1.weight, "grad", old)


def _leak_attribute(model: nn.Module) -> Undo:
    old = model.scale
    model.scale = old.clone()
    return lambda: setattr(model, "scale", old)


def _leak_compiled_call(model: nn.Module) -> Undo:
    model.relu1.__dict__["_compiled_call_impl"] = _noop
    return lambda: model.relu1.__dict__.pop("_compiled_call_impl")


def _leak_training(model: nn.Module) -> Undo:
    model.conv2.train(False)
    return lambda: model.conv2.train(True)


def _leak_requires_grad(model: nn.Module) -> Undo:
    model.fc.weight.requires_grad_(False)
    return lambda: model.fc.weight.requires_grad_(True)


def _leak_version(model: nn.Module) -> Undo:
    with torch.no_grad():
        model.bn.running_mean.add_(0)  # the same values, a new _version: no undo
    return None


def _leak_sys_path(model: nn.Module) -> Undo:
    sys.path.insert(0, "/nowhere")
    return lambda: sys.path.remove("/nowhere")


def _removable(register: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Undo]:
    return lambda model: register(model).remove


#: One leak of each kind the snapshot covers: ``leak(model)`` returns its undo (or
#: None when it cannot be undone).
LEAKS: dict[str, Callable[[nn.Module], Undo]] = {
    "forward hook": _removable(lambda m: m.conv1.register_forward_hook(_noop)),
    "forward pre-hook": _removable(lambda m: m.fc.register_forward_pre_hook(_noop)),
    "full backward hook": _leak_full_backward_hook,
    "backward pre-hook": _removable(lambda m: m.bn.register_full_backward_pre_hook(_noop)),
    "state-dict hook": _removable(lambda m: m.register_state_dict_post_hook(_noop)),
    "load-state-dict pre-hook": _removable(lambda m: m.register_load_state_dict_pre_hook(_noop)),
    "parameter hook": _removable(lambda m: m.fc.weight.register_hook(_noop)),
    "global forward hook": _removable(
        lambda m: nn.modules.module.register_module_forward_hook(_noop)
    ),
    "compiled call wrapper": _leak_compiled_call,
    "training flag": _leak_training,
    "requires_grad": _leak_requires_grad,
    ".grad": _leak_grad,
    "_version": _leak_version,
    "plain tensor attribute": _leak_attribute,
    "torch RNG": _setting(
        torch.get_rng_state, torch.set_rng_state, _draw(lambda: torch.rand(1), torch.get_rng_state)
    ),
    "python random": _setting(
        random.getstate, random.setstate, _draw(random.random, random.getstate)
    ),
    "numpy random": _setting(
        np.random.get_state, np.random.set_state, _draw(np.random.rand, np.random.get_state)
    ),
    "grad mode": _setting(torch.is_grad_enabled, torch.set_grad_enabled, lambda v: not v),
    "default dtype": _setting(
        torch.get_default_dtype, torch.set_default_dtype, lambda d: torch.float64
    ),
    "function mode stack": _leak_function_mode,
    "mha fast path": _setting(
        torch.backends.mha.get_fastpath_enabled,
        torch.backends.mha.set_fastpath_enabled,
        lambda v: not v,
    ),
    "threads": _setting(torch.get_num_threads, torch.set_num_threads, lambda n: n + 1),
    "sys.path": _leak_sys_path,
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_the_snapshot_sees_each_kind_of_leak(leak: str) -> None:
    model = _model()
    before = snapshot(model)
    undo = LEAKS[leak](model)
    try:
        diff = state_diff(before, snapshot(model))
    finally:
        if undo is not None:
            undo()
    assert diff, f"a {leak} leak went unnoticed"
    if undo is not None:
        assert not state_diff(before, snapshot(model)), f"the {leak} leak was not undone"
