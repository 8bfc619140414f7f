"""Running a model under netsight's rules: the watched passes and their errors.

Owns the meta pass and its retry (:func:`run_meta`), one watched forward
(:func:`run_pass`), the error a failed forward becomes, the module survey
(:func:`survey`), the model's device, the dtype check before a meta pass and
the garbage-collector pause (:func:`gc_paused`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from netsight.hooks import HookSet, StopForward, preserve_attributes
from netsight.trace.counter import OpCounter
from netsight.trace.frames import INDEX, INPUT, MODULE, OUTPUT, PARENT, Frame
from netsight.trace.inputs import InputMaker, tensors_in
from netsight.trace.keys import META
from netsight.trace.recorder import FrameRecorder
from netsight.trace.records import TraceError, format_structure
from netsight.trace.replay import global_module_hooks, leaf_runner, replayable_leaf
from netsight.trace.twins import MetaTwins, swapped_to_meta

__all__ = [
    "device_of",
    "dtype_mismatch",
    "gc_paused",
    "run_meta",
    "run_pass",
    "survey",
]


class _NoFusedPaths(TorchFunctionMode):
    """An active torch-function mode makes ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` skip their fused inference kernels, so the
    real-tensor pass runs (and counts) the same ops as training does."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return func(*args, **(kwargs or {}))


#: Modules whose forward takes a fused fast path unless a torch-function mode is
#: active (the only ones in torch.nn: activation.py and transformer.py). The mode
#: costs every torch call a Python round trip, so the real pass enters it only
#: for models that contain one of these.
_FUSED_PATH_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter (else buffer) is; the CPU for a model without either."""
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def run_pass(
    model: nn.Module,
    modules: list[nn.Module],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: dict[int, list[str]],
    *,
    real: bool,
    twins: MetaTwins | None = None,
) -> FrameRecorder:
    """One watched forward. ``twins`` (meta pass): swap every module's tensors
    for meta twins first, except those of the leaves the replay wrapper holds."""
    recorder = FrameRecorder()
    fused_paths = real and any(isinstance(m, _FUSED_PATH_MODULES) for m in modules)
    with HookSet() as hooks:
        pre_hook, post_hook = recorder.pre_hook, recorder.post_hook
        if real or global_module_hooks():
            hooks.add_call_hooks(modules, pre_hook, post_hook)
            if twins is not None:
                twins.swap_all(modules)
        else:
            leaves: list[nn.Module] = []
            others: list[nn.Module] = []
            for module in modules:
                (leaves if replayable_leaf(module) else others).append(module)
            hooks.add_call_hooks(others, pre_hook, post_hook)
            wrapped = hooks.add_call_hooks(
                leaves, pre_hook, post_hook, run=leaf_runner(recorder, twins)
            )
            if twins is not None:
                held = [m for m in wrapped if not isinstance(m, nn.RNNBase)]
                twins.hold(held)
                twins.swap_all(modules, skip=twins.held)
        fused_off: contextlib.AbstractContextManager[Any] = (
            _NoFusedPaths() if fused_paths else contextlib.nullcontext()
        )
        # no_grad, not inference_mode: under inference_mode composite ops
        # (linear, conv2d, lstm, ...) reach the op counter undecomposed, so the
        # ATen-level formulas would not see their matmuls and convolutions.
        try:
            with torch.no_grad(), fused_off, OpCounter(recorder, cache=not real, twins=twins):
                model(*args, **kwargs)
        except StopForward:
            raise  # a netsight hook ended the pass on purpose: not the model's failure
        except Exception as exc:
            raise _trace_error(exc, recorder, names) from exc
    return recorder


def run_meta(
    model: nn.Module,
    modules: list[nn.Module],
    inputs_on: InputMaker,
    names: dict[int, list[str]],
    *,
    on_meta: bool,
) -> FrameRecorder:
    """The meta pass (:func:`_meta_attempts`), after which every tensor the
    model holds in plain attributes is as it was: a forward that stores tensors
    in attributes (torchvision's anchor generators) would otherwise leave meta
    tensors in the user's model, and the real fallback would fail on them."""
    with preserve_attributes(modules):
        return _meta_attempts(model, modules, inputs_on, names, on_meta=on_meta)


def _meta_attempts(
    model: nn.Module,
    modules: list[nn.Module],
    inputs_on: InputMaker,
    names: dict[int, list[str]],
    *,
    on_meta: bool,
) -> FrameRecorder:
    """The meta pass. Replayed leaf calls never need their module's tensors on
    meta, so leaves are held (``MetaTwins.hold``) and get twins only when they
    really run. If that pass fails, it is run again with every tensor swapped
    first (a model can read a held leaf's tensor in ways no op shows, e.g.
    ``weight.device``) before the caller turns to a real forward."""
    if on_meta:  # nothing to swap
        args, kwargs = inputs_on(META)
        return run_pass(model, modules, args, kwargs, names, real=False)
    twins = MetaTwins()
    try:
        args, kwargs = inputs_on(META)
        return run_pass(model, modules, args, kwargs, names, real=False, twins=twins)
    except TraceError:
        if not twins.held_any:
            raise
    finally:
        twins.restore()
    args, kwargs = inputs_on(META)
    with swapped_to_meta(modules):
        return run_pass(model, modules, args, kwargs, names, real=False)


def _trace_error(
    exc: Exception, recorder: FrameRecorder, names: dict[int, list[str]]
) -> TraceError:
    def label(frame: Frame) -> str:
        module = frame[MODULE]
        name = names.get(id(module), [""])[0]
        return name or type(module).__name__

    stack = recorder.stack
    if stack:
        failing = stack[-1]
        module_name = label(failing)
        module_type = type(failing[MODULE]).__name__
        inputs = format_structure(failing[INPUT])
        path = " > ".join(f"{label(f)} ({type(f[MODULE]).__name__})" for f in stack)
    else:
        module_name, module_type, inputs, path = "", "", "", ""
    parents = {f[PARENT] for f in recorder.frames}
    running = {f[INDEX] for f in stack}
    done = tuple(
        f"{label(f)} -> {format_structure(f[OUTPUT])}"
        for f in recorder.frames
        if f[INDEX] not in parents and f[INDEX] not in running and f[OUTPUT] is not None
    )
    shown = done[-5:]
    lines = [
        f"the forward pass failed in '{module_name}' ({module_type}) with input {inputs}:",
        f"  {type(exc).__name__}: {exc}",
    ]
    if path:
        lines.append(f"  call stack: {path}")
    if shown:
        lines.append(f"  layers that ran before it (last {len(shown)} of {len(done)}):")
        lines.extend(f"    {item}" for item in shown)
    else:
        lines.append("  no layer completed before it")
    return TraceError(
        "\n".join(lines),
        module_name=module_name,
        module_type=module_type,
        input_shapes=inputs,
        ran_before=done,
    )


_NAMED_MODULES = nn.Module.named_modules


def survey(model: nn.Module) -> tuple[dict[int, list[str]], list[nn.Module]]:
    """Every name of every module (id -> names, the first canonical), and the
    unique modules in ``model.modules()`` order: one walk of the tree serves
    the names, the hooks, the meta swap, the training flags and the totals.

    The walk is ``named_modules(remove_duplicate=False)`` (depth first, every
    path), done with a stack instead of nested generators, which pass every
    name up through each level; a class that overrides ``named_modules`` gets
    the real thing."""
    names: dict[int, list[str]] = {}
    modules: list[nn.Module] = []
    stack: list[tuple[str, nn.Module]] = [("", model)]
    pop, push = stack.pop, stack.append
    while stack:
        prefix, module = pop()
        if type(module).named_modules is not _NAMED_MODULES:
            return _survey_public(model)
        known = names.get(id(module))
        if known is None:
            names[id(module)] = [prefix]
            modules.append(module)
        else:
            known.append(prefix)
        children = module._modules
        if children:
            dot = prefix + "." if prefix else ""
            for name, child in reversed(children.items()):
                if child is not None:
                    push((dot + name, child))
    return names, modules


def _survey_public(model: nn.Module) -> tuple[dict[int, list[str]], list[nn.Module]]:
    names: dict[int, list[str]] = {}
    modules: list[nn.Module] = []
    for name, module in model.named_modules(remove_duplicate=False):
        known = names.get(id(module))
        if known is None:
            names[id(module)] = [name]
            modules.append(module)
        else:
            known.append(name)
    return names, modules


_P = ParamSpec("_P")
_R = TypeVar("_R")


def gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with Python's cyclic garbage collector paused (and restored).

    A trace allocates many small objects (frames, shape tuples, records), which
    triggers collections; in a process holding torch a full collection walks a
    few hundred thousand objects (~0.1-0.3 s). What a trace allocates is freed
    by reference counting or kept in the result, so pausing loses nothing.
    """

    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


def dtype_mismatch(model: nn.Module, inputs_on: Callable[[torch.device | None], Any]) -> str | None:
    """Why the meta pass cannot be trusted with these inputs, or None: floating-point
    inputs of a dtype no floating-point parameter has (a bfloat16 model given
    float32). Meta kernels do not check that dtypes agree, where real ones refuse
    (or the model casts on purpose): only the real forward says which."""
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(params) != 1:
        return None
    inputs = {t.dtype for t in tensors_in(inputs_on(torch.device("meta"))) if t.is_floating_point()}
    if not inputs or inputs <= params:
        return None
    got = ", ".join(sorted(str(d).removeprefix("torch.") for d in inputs))
    want = str(next(iter(params))).removeprefix("torch.")
    return (
        f"not tried: the input is {got} and the parameters are {want}; the meta device does not "
        f"check that dtypes agree, so the real forward decides"
    )
