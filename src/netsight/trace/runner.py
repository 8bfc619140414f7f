"""The runner: one forward of a model under netsight's rules, watched by a recorder.

Every netsight feature that runs a user's model to look at it (the summary's
:func:`~netsight.trace.trace`, the diagram's
:func:`~netsight.diagram.graph.record_dataflow`, the named error of a failed
feature forward, the CAM layer probe) goes through :func:`run`, which owns the
rules such a run follows, once:

* the model is an ``nn.Module`` (a ``torch.compile`` wrapper is unwrapped), has
  no uninitialised lazy module, and the inputs and ``device`` agree with its
  device (netsight never moves a model);
* ``mode`` (:class:`~netsight.options.Mode`) is set for the run and every
  module's own training flag restored after it;
* ``execution`` (:class:`~netsight.options.Execution`): ``"auto"`` runs on the
  ``meta`` device first (parameters and buffers swapped for meta twins,
  nothing allocated) and falls back to a real forward under ``torch.no_grad()``
  when the model needs values, with the reason kept
  (:attr:`Run.fallback_reason`); ``"meta"`` and ``"real"`` run only that pass;
* the model leaves as it came: parameters, buffers (a real pass restores what
  the forward wrote, BatchNorm's running statistics in train mode), tensors in
  plain attributes, the global RNG (forked), hooks (all removed);
* a failure of the model's forward becomes a :class:`~netsight.trace.TraceError`
  naming the module that failed, its input, the call stack and the layers
  that ran before it (:func:`trace_error`); a
  :class:`~netsight.hooks.StopForward` passes through unchanged;
* Python's cyclic garbage collector is paused for the run (:func:`gc_paused`).

What is watched is the recorder's business (:class:`Recorder`): :func:`run`
makes a fresh one per pass with ``recorder()``, asks it to
:meth:`~Recorder.watch` the pass and, if the forward fails, for the
:meth:`~Recorder.failure`. The summary's recorder is
:class:`~netsight.trace.recorder.FrameRecorder`.

Example:
    >>> from torch import nn
    >>> from netsight.trace.recorder import FrameRecorder
    >>> from netsight.trace.runner import run
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> result = run(model, FrameRecorder, input_size=(2, 3))
    >>> result.execution, len(result.recorder.frames), result.output.shape
    (<Execution.META: 'meta'>, 3, torch.Size([2, 4]))

:func:`netsight.trace.trace` is that call followed by
:func:`netsight.trace.assembly.assemble`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, Protocol, TypeAlias, TypeVar

import torch
from torch import nn

from netsight.hooks import (
    HookSet,
    StopForward,
    check_not_lazy,
    preserve_attributes,
    preserve_state,
    unwrap_compiled,
)
from netsight.hooks import (
    model_device as device_of,
)
from netsight.options import Execution, Mode
from netsight.trace.inputs import InputMaker, Shape, input_maker, tensors_in
from netsight.trace.keys import META
from netsight.trace.records import TraceError
from netsight.trace.twins import MetaTwins, swapped_to_meta

__all__ = [
    "Failure",
    "Forward",
    "Recorder",
    "Run",
    "gc_paused",
    "run",
    "survey",
    "trace_error",
]


@dataclass(frozen=True)
class Forward:
    """One forward the runner is about to make, as a recorder sees it.

    Attributes:
        model: the model that runs (a ``torch.compile`` wrapper's original module).
        modules: its unique modules, in ``model.modules()`` order.
        names: ``id(module)`` -> every qualified name of the module, the first
            canonical (``""`` for the model).
        args: the positional inputs of this pass (meta tensors on a meta pass).
        kwargs: the keyword inputs of this pass.
        real: a real forward (else a meta pass).
        twins: on a meta pass, the meta twins the runner swaps in once the
            recorder's hooks are in place: every parameter and buffer except
            those of the modules the recorder holds (:meth:`MetaTwins.hold`),
            which get theirs when they really run. None when there is nothing
            to swap (a real pass, a model on meta, every tensor swapped already).
    """

    model: nn.Module
    modules: list[nn.Module]
    names: Mapping[int, list[str]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    real: bool
    twins: MetaTwins | None


@dataclass(frozen=True)
class Failure:
    """Where a failed forward was, as a recorder saw it (see :func:`trace_error`).

    Attributes:
        module_name: label of the innermost module that was running: its
            qualified name, the class name for the model itself; ``""`` when no
            module was running.
        module_type: its class name.
        input_shapes: the inputs it received, formatted.
        call_stack: ``"label (Type)"`` of every module running, outermost first.
        ran_before: ``"label -> output shapes"`` of every leaf call that
            completed before the failure, in call order.
    """

    module_name: str = ""
    module_type: str = ""
    input_shapes: str = ""
    call_stack: tuple[str, ...] = ()
    ran_before: tuple[str, ...] = ()


class Recorder(Protocol):
    """What the runner asks of a recorder (one instance per pass)."""

    def watch(self, hooks: HookSet, forward: Forward) -> contextlib.AbstractContextManager[object]:
        """Start watching ``forward``: add hooks to ``hooks`` (the runner removes them
        when the pass ends, whatever happens) and return the context the forward
        runs in (dispatch or function modes; ``contextlib.nullcontext()`` for none).
        On a meta pass the recorder may hold modules whose calls it replays without
        running them (``forward.twins.hold``): the runner swaps every other
        module's tensors for their meta twins after this returns."""
        ...

    def failure(self) -> Failure:
        """Where the forward was when it raised (called only then)."""
        ...


#: The type of recorder a run was given.
R = TypeVar("R", bound=Recorder)


@dataclass(frozen=True)
class Run(Generic[R]):
    """What :func:`run` did.

    Attributes:
        model: the model that ran (a ``torch.compile`` wrapper's original module).
        modules: its unique modules, in ``model.modules()`` order.
        names: ``id(module)`` -> every qualified name, the first canonical.
        recorder: the recorder of the pass that succeeded.
        output: what the model returned (meta tensors after a meta pass).
        execution: ``Execution.META`` or ``Execution.REAL``: the pass that succeeded.
        fallback_reason: why a real pass ran when meta was allowed: the meta
            pass's error (``"ExcType: message"``, its first line) or why it was not
            tried; None otherwise.
        mode: the mode the pass ran in.
    """

    model: nn.Module
    modules: list[nn.Module]
    names: dict[int, list[str]]
    recorder: R
    output: Any
    execution: Execution
    fallback_reason: str | None
    mode: Mode


def trace_error(exc: BaseException, failure: Failure) -> TraceError:
    """The :class:`~netsight.trace.TraceError` for a forward that raised ``exc``
    where ``failure`` says: the failing module, its input, the call stack and the
    last five of the layers that ran before it; ``exc`` itself is in
    :attr:`~netsight.trace.TraceError.reason` (and should be the error's cause)."""
    reason = f"{type(exc).__name__}: {exc}"
    done = failure.ran_before
    shown = done[-5:]
    lines = [
        f"the forward pass failed in '{failure.module_name}' ({failure.module_type}) "
        f"with input {failure.input_shapes}:",
        f"  {reason}",
    ]
    if failure.call_stack:
        lines.append(f"  call stack: {' > '.join(failure.call_stack)}")
    if shown:
        lines.append(f"  layers that ran before it (last {len(shown)} of {len(done)}):")
        lines.extend(f"    {item}" for item in shown)
    else:
        lines.append("  no layer completed before it")
    return TraceError(
        "\n".join(lines),
        module_name=failure.module_name,
        module_type=failure.module_type,
        input_shapes=failure.input_shapes,
        ran_before=done,
        reason=reason.splitlines()[0].strip(),
    )


_P = ParamSpec("_P")
_T = TypeVar("_T")


def gc_paused(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``fn`` with Python's cyclic garbage collector paused (and restored).

    A trace allocates many small objects (frames, shape tuples, records), which
    triggers collections; in a process holding torch a full collection walks a
    few hundred thousand objects (~0.1-0.3 s). What a trace allocates is freed
    by reference counting or kept in the result, so pausing loses nothing.
    """

    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


@gc_paused
def run(
    model: nn.Module,
    recorder: Callable[[], R],
    input_size: Shape | Sequence[Shape] | None = None,
    input_data: Any = None,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    mode: Mode | str = Mode.EVAL,
    execution: Execution | str = Execution.AUTO,
    forward_kwargs: Mapping[str, Any] | None = None,
    dtype_check: bool = True,
) -> Run[R]:
    """Run ``model`` once on an example input under netsight's rules (see the
    module docstring), watched by a fresh ``recorder()`` per pass.

    Args:
        model: the network; it leaves exactly as it came.
        recorder: makes the :class:`Recorder` of one pass (a class will do).
        input_size, input_data, dtypes, device, mode, execution, forward_kwargs:
            as :func:`netsight.trace.trace` takes them.
        dtype_check: with ``execution="auto"``, skip the meta pass when the
            floating-point inputs have a dtype no floating-point parameter has
            (a bfloat16 model given float32): meta kernels do not check that
            dtypes agree, so only the real forward can say whether the model
            accepts them.

    Returns:
        A :class:`Run` holding the recorder of the pass that succeeded.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or the input is malformed.
        ValueError: a bad option, or inputs or ``device`` other than the model's.
        LazyModuleError: the model has uninitialised lazy modules.
        TraceError: the forward failed (on a real pass, or on the only pass allowed).
        StopForward: a netsight hook ended the forward on purpose.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_compiled(model)
    check_not_lazy(model)
    model_device = device_of(model)
    target_device = torch.device(device) if device is not None else model_device
    if device is not None and model_device.type != "meta" and target_device != model_device:
        raise ValueError(
            f"device={str(target_device)!r}, but the model's parameters are on {model_device}; "
            f"netsight never moves your model: call model.to({str(target_device)!r}) first"
        )
    run_mode = Mode.parse(mode, "mode")
    how = Execution.parse(execution, "execution")
    inputs_on = input_maker(
        input_size,
        input_data,
        dtypes=dtypes,
        forward_kwargs=forward_kwargs,
        model_device=model_device,
        default_device=target_device,
    )
    names, modules = survey(model)
    on_meta = model_device.type == "meta"
    reason: str | None = None
    if how is Execution.AUTO and not on_meta and dtype_check:
        reason = _dtype_mismatch(model, inputs_on)

    def attempt(real: bool, twins: MetaTwins | None) -> tuple[R, Any]:
        """One watched forward by a fresh recorder, on new inputs."""
        args, kwargs = inputs_on(None if real else META)
        rec = recorder()
        return rec, _forward(rec, Forward(model, modules, names, args, kwargs, real, twins))

    with preserve_state(model, run_mode, modules=modules):
        if on_meta or (how is not Execution.REAL and reason is None):
            try:
                rec, output = _meta_pass(attempt, modules, on_meta=on_meta)
            except TraceError as exc:
                if how is Execution.META or on_meta:
                    raise
                reason = exc.reason
            else:
                return Run(model, modules, names, rec, output, Execution.META, reason, run_mode)
        rec, output = _real_pass(attempt, model, modules)
    return Run(model, modules, names, rec, output, Execution.REAL, reason, run_mode)


#: ``attempt(real, twins)``: one watched forward of the run (see :func:`run`).
_Attempt: TypeAlias = Callable[[bool, "MetaTwins | None"], tuple[R, Any]]


def _forward(recorder: Recorder, forward: Forward) -> Any:
    """One watched forward; its failure becomes a TraceError."""
    with HookSet() as hooks:
        context = recorder.watch(hooks, forward)
        if forward.twins is not None:
            forward.twins.swap_all(forward.modules, skip=forward.twins.held)
        # no_grad, not inference_mode: under inference_mode composite ops
        # (linear, conv2d, lstm, ...) reach a dispatch mode undecomposed, so the
        # ATen-level formulas would not see their matmuls and convolutions.
        try:
            with torch.no_grad(), context:
                return forward.model(*forward.args, **forward.kwargs)
        except StopForward:
            raise  # a netsight hook ended the pass on purpose: not the model's failure
        except Exception as exc:
            raise trace_error(exc, recorder.failure()) from exc


def _meta_pass(attempt: _Attempt[R], modules: list[nn.Module], *, on_meta: bool) -> tuple[R, Any]:
    """The meta pass. A recorder may hold modules whose calls it replays without
    running them (they then need no meta twins unless a call of theirs really
    runs); if that pass fails, it is run again with every tensor swapped first (a
    model can read a held module's tensor in ways no op shows, e.g.
    ``weight.device``) before the caller turns to a real forward. Afterwards every
    tensor the model holds in plain attributes is as it was: a forward that stores
    tensors in attributes (torchvision's anchor generators) would otherwise leave
    meta tensors in the user's model, and the real fallback would fail on them."""
    with preserve_attributes(modules):
        if on_meta:  # nothing to swap
            return attempt(False, None)
        twins = MetaTwins()
        try:
            return attempt(False, twins)
        except TraceError:
            if not twins.held_any:
                raise
        finally:
            twins.restore()
        with swapped_to_meta(modules):
            return attempt(False, None)


def _real_pass(attempt: _Attempt[R], model: nn.Module, modules: list[nn.Module]) -> tuple[R, Any]:
    """The real pass, which leaves the model as it came too: RNG, buffers and the
    tensors in plain attributes (caches, moved anchors)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]), preserve_attributes(modules):
            return attempt(True, None)
    finally:
        with torch.no_grad():
            # restore what the forward changed (BatchNorm's running stats in
            # train mode; its kernel does not bump _version): an untouched
            # buffer is not written, so its _version stays too
            for b, saved in buffers:
                if not torch.equal(b, saved):
                    b.copy_(saved)


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


def _dtype_mismatch(model: nn.Module, inputs_on: InputMaker) -> str | None:
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
