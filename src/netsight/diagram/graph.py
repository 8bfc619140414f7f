"""Dataflow graphs of a model: trace, graph model, DOT text and Graphviz rendering.

Three steps, kept apart:

1. :func:`record_dataflow` runs the model once through netsight's runner
   (:func:`netsight.trace.runner.run`: on the ``meta`` device when it can, else
   on real tensors under ``torch.no_grad()``) with a wrapper around
   every module call and a ``TorchFunctionMode`` that sees the functional ops in
   ``forward`` methods (``out += identity``, ``torch.cat``, ``x @ w``). Every
   tensor is tagged with the step that produced it, so edges follow the real
   data flow. The result, a :class:`Dataflow`, is a flat list of steps in
   execution order plus the tree of module calls.
2. :func:`build_graph` collapses that to a depth: a module call at the chosen
   depth (or a leaf above it) is one node; functional ops stay visible only
   where they join two or more different nodes (residual additions,
   concatenations); everything else passes its producers through. Repeated
   identical consecutive sibling blocks can be rolled into one node marked
   "x N". The result is a :class:`Graph` of frozen :class:`Node` and :class:`Edge`.
3. :func:`to_dot` writes DOT text (every user string escaped for HTML-like
   labels) and :func:`render` runs Graphviz's ``dot`` on it.

For an interactive explorer (record once, redraw on every click):
``build_graph(flow, expanded=..., collapsed=..., unrolled=...)`` opens or
closes single modules and unrolls single runs by qualified name;
:attr:`Node.expandable`, :attr:`Node.rolled_names`, :attr:`Cluster.names` and
:meth:`Graph.module_nodes` map drawn boxes back to modules and modules to
boxes. ``record_dataflow(..., partial=True)`` keeps what a failing forward
recorded (:attr:`Dataflow.error`, :attr:`Dataflow.failed_call`); the failed
node is drawn with a red border and the error in the title.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import html
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_module
from torch.overrides import TorchFunctionMode

from netsight.errors import GraphvizNotFoundError, TraceError
from netsight.hooks import HookSet
from netsight.options import Execution, Mode
from netsight.trace import runner
from netsight.trace.inputs import SEARCH_DEPTH, tensors_in
from netsight.trace.runner import Failure, Forward, gc_paused

__all__ = [
    "CATEGORY_COLORS",
    "Call",
    "Cluster",
    "Dataflow",
    "Edge",
    "Graph",
    "GraphvizNotFoundError",
    "Node",
    "Step",
    "StepKind",
    "build_graph",
    "record_dataflow",
    "render",
    "to_dot",
]

Shape = tuple[int, ...]

# --------------------------------------------------------------------------- recording


class StepKind(enum.Enum):
    """What produced the tensors of a :class:`Step`."""

    INPUT = "input"  #: a tensor the model was given
    MODULE = "module"  #: a module call
    OP = "op"  #: a functional op in a ``forward`` (``torch.cat``, ``+=``, ``x @ w``)
    CONST = "constant"  #: non-tensor values a module was called with (``self.identity(5)``)


def _constant_label(value: Any) -> str:
    """A short label for a non-tensor argument of a module call."""
    text = repr(value)
    return text if len(text) <= 24 else text[:23] + "…"


def _plain_holdings(
    model: nn.Module, names: Mapping[int, list[str]], modules: Sequence[nn.Module]
) -> dict[int, str]:
    """Modules the model holds outside its registered tree (in plain lists,
    tuples, dicts or objects kept as attributes), by id, with a name such as
    ``branches[1]`` or ``heads['a'].0``."""
    found: dict[int, str] = {}

    def visit(value: Any, path: str, depth: int) -> None:
        if depth > SEARCH_DEPTH:
            return
        if isinstance(value, nn.Module):
            if id(value) in names or id(value) in found:
                return
            for sub_name, sub in value.named_modules():
                if id(sub) not in names and id(sub) not in found:
                    found[id(sub)] = f"{path}.{sub_name}" if sub_name else path
            return
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{path}[{i}]", depth + 1)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                visit(item, f"{path}[{key!r}]", depth + 1)
        elif not isinstance(value, (type, str, bytes, int, float, bool, torch.Tensor)):
            state = getattr(value, "__dict__", None)
            if isinstance(state, dict):
                for key, item in state.items():
                    visit(item, f"{path}.{key}", depth + 1)

    for module in modules:
        prefix = names[id(module)][0]
        for key, value in vars(module).items():
            if key.startswith("_") or isinstance(value, (torch.Tensor, str, int, float)):
                continue
            visit(value, f"{prefix}.{key}" if prefix else key, 0)
    return found


@dataclass(frozen=True, slots=True)
class Step:
    """One producer of tensors: a model input, a module call, a functional op or
    the constant values of a module call.

    Attributes:
        kind: what it is (:class:`StepKind`).
        name: the op's name, the input's or the constants' label; ``""`` for a
            module call (its name is on the :class:`Call`).
        owner: index of the module call running when it happened (-1: none).
        inputs: the steps that produced the tensors it read, in order, repeats dropped.
        in_shapes: shapes of the tensors it read.
        out_shapes: shapes of the tensors it produced.
        call: for a module step, the index of its :class:`Call` (-1 otherwise).
    """

    kind: StepKind
    name: str
    owner: int
    inputs: tuple[int, ...]
    in_shapes: tuple[Shape, ...]
    out_shapes: tuple[Shape, ...] = ()
    call: int = -1


@dataclass(frozen=True, slots=True)
class Call:
    """One module call, a node of the call tree.

    Attributes:
        module: the module.
        name: its qualified name (``""`` for the model; a path such as
            ``branches[1]`` for a module held outside the registered tree).
        parent: index of the enclosing call (-1 for the model's own call).
        depth: number of enclosing calls.
        step: index of its :class:`Step` (kind ``MODULE``).
        start: steps ``[start, end)`` happened during the call, its own included.
        end: see ``start``; in a partial :class:`Dataflow` (a failed forward) a
            call still open at the failure ends at the number of steps recorded.
        children: indices of the calls made directly inside it.
        in_shapes: shapes of the tensors it was called with.
        out_shapes: shapes of the tensors it returned (``()`` if it never returned).
        registered: False for a module held in a plain list, dict or attribute,
            not in the model's tree.
    """

    module: nn.Module
    name: str
    parent: int
    depth: int
    step: int
    start: int
    end: int
    children: tuple[int, ...]
    in_shapes: tuple[Shape, ...]
    out_shapes: tuple[Shape, ...]
    registered: bool = True


@dataclass
class _StepDraft:
    """A :class:`Step` while the pass runs."""

    kind: StepKind
    name: str
    owner: int
    inputs: list[int]
    in_shapes: list[Shape]
    out_shapes: list[Shape] = field(default_factory=list)
    call: int = -1

    def done(self) -> Step:
        return Step(
            self.kind,
            self.name,
            self.owner,
            tuple(self.inputs),
            tuple(self.in_shapes),
            tuple(self.out_shapes),
            self.call,
        )


@dataclass
class _CallDraft:
    """A :class:`Call` while the pass runs."""

    module: nn.Module
    name: str
    parent: int
    depth: int
    step: int
    start: int
    end: int = -1
    children: list[int] = field(default_factory=list)
    in_shapes: list[Shape] = field(default_factory=list)
    out_shapes: list[Shape] = field(default_factory=list)
    registered: bool = True

    def done(self) -> Call:
        return Call(
            self.module,
            self.name,
            self.parent,
            self.depth,
            self.step,
            self.start,
            self.end,
            tuple(self.children),
            tuple(self.in_shapes),
            tuple(self.out_shapes),
            self.registered,
        )


@dataclass(frozen=True)
class Dataflow:
    """What one traced forward recorded: steps in execution order and module calls.

    Attributes:
        model_type: class name of the model.
        steps: producers of tensors, in execution order.
        calls: module calls, in call order; ``calls[0]`` is the model itself.
        inputs: step indices of the model inputs.
        outputs: (producing step, shape) for every tensor the model returned.
        execution: ``"meta"`` or ``"real"``.
        notes: things the reader of the drawing must know (fallbacks,
            value-dependent control flow).
        error: for a partial dataflow (``record_dataflow(..., partial=True)`` of
            a forward that failed), the :class:`~netsight.trace.TraceError`'s
            message; None when the forward completed.
        failed_call: for a partial dataflow, the index in :attr:`calls` of the
            innermost call open when the forward failed (None when the forward
            completed, or when it failed outside every module call).
    """

    model_type: str
    steps: tuple[Step, ...]
    calls: tuple[Call, ...]
    inputs: tuple[int, ...]
    outputs: tuple[tuple[int, Shape], ...]
    execution: str
    notes: tuple[str, ...]
    error: str | None = None
    failed_call: int | None = None


#: Tensor methods that turn a value into Python control flow.
_VALUE_READS = frozenset(
    {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__len__"}
)
#: Attribute reads and bookkeeping that produce nothing worth tracking.
_IGNORED = frozenset({"__get__", "__set__", "size", "dim", "numel", "__format__", "__repr__"})


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        name = type(func).__name__
    return name


class _Recorder(TorchFunctionMode):
    """Watches module calls (through :class:`HookSet`) and functional ops: the
    diagram's :class:`~netsight.trace.runner.Recorder`.

    Tensors are keyed by ``id``; ``self.alive`` holds every tagged tensor for the
    duration of the trace so an id is never reused by a new tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: Mapping[int, list[str]] = {}
        self.model_type = ""  # class name of the model that runs
        self.real = False  # a real pass (else meta)
        self.holdings: Mapping[int, str] = {}
        self.inputs: list[int] = []  # steps of the model's inputs
        self.unregistered: list[str] = []  # names of unregistered modules that ran
        self.thread = threading.get_ident()
        self.steps: list[_StepDraft] = []
        self.calls: list[_CallDraft] = []
        self.stack: list[int] = []  # open call indices
        self.producer: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []
        self.notes: list[str] = []
        self._noted: set[tuple[str, str]] = set()
        self._leaf_depth = 0  # > 0 while inside a module without submodules

    # -- the runner's Recorder protocol

    def watch(self, hooks: HookSet, forward: Forward) -> contextlib.AbstractContextManager[object]:
        """Tag the inputs, hook every module call (registered modules through
        their own hooks, modules held outside the tree through global ones) and
        watch the functional ops: this mode is the forward's context."""
        self.names = forward.names
        self.model_type = type(forward.model).__name__
        self.real = forward.real
        self.holdings = _plain_holdings(forward.model, forward.names, forward.modules)
        self.inputs = self.add_inputs(forward.args, forward.kwargs)
        hooks.add_call_hooks(forward.modules, self.pre_hook, self.post_hook)
        hooks.add(module_module.register_module_forward_pre_hook(self.global_pre_hook))
        hooks.add(module_module.register_module_forward_hook(self.global_post_hook))
        return self

    def failure(self) -> Failure:
        """The innermost open call, the open calls, and the leaf calls that returned."""
        calls = self.calls

        def label(call: _CallDraft) -> str:
            return call.name or type(call.module).__name__

        def shapes(items: list[Shape]) -> str:
            return ", ".join(_fmt_shape(s) for s in items)

        done = tuple(
            f"{label(c)} -> {shapes(c.out_shapes)}" for c in calls if c.end >= 0 and not c.children
        )
        if not self.stack:
            return Failure(ran_before=done)
        call = calls[self.stack[-1]]
        return Failure(
            module_name=label(call),
            module_type=type(call.module).__name__,
            input_shapes=shapes(call.in_shapes) or "-",
            call_stack=tuple(
                f"{label(calls[i])} ({type(calls[i].module).__name__})" for i in self.stack
            ),
            ran_before=done,
        )

    # -- tagging

    def _sources(self, obj: Any) -> tuple[list[int], list[Shape]]:
        steps: list[int] = []
        shapes: list[Shape] = []
        for t in tensors_in(obj, deep=True):
            src = self.producer.get(id(t))
            if src is not None and src not in steps:
                steps.append(src)
            shapes.append(tuple(t.shape))
        return steps, shapes

    def _tag(self, obj: Any, step: int) -> list[Shape]:
        shapes = []
        for t in tensors_in(obj, deep=True):
            self.producer[id(t)] = step
            self.alive.append(t)
            shapes.append(tuple(t.shape))
        return shapes

    def add_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[int]:
        found: list[int] = []
        items = [(f"input {i}" if len(args) > 1 else "input", a) for i, a in enumerate(args)]
        items += [(str(k), v) for k, v in kwargs.items()]
        for label, value in items:
            for t in tensors_in(value, deep=True):
                if id(t) in self.producer:
                    continue
                index = len(self.steps)
                self.steps.append(_StepDraft(StepKind.INPUT, label, -1, [], [], [tuple(t.shape)]))
                self._tag(t, index)
                found.append(index)
        return found

    # -- module calls

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        parent = self.stack[-1] if self.stack else -1
        index = len(self.calls)
        step = len(self.steps)
        sources, shapes = self._sources((args, kwargs))
        if not sources and (args or kwargs):
            # called with values only (``self.identity(5)``): the values are its source
            values = [*args, *kwargs.values()]
            label = ", ".join(_constant_label(v) for v in values[:3])
            if len(values) > 3:
                label += ", …"
            sources = [len(self.steps)]
            self.steps.append(_StepDraft(StepKind.CONST, label, parent, [], []))
            step = len(self.steps)
        self.steps.append(_StepDraft(StepKind.MODULE, "", parent, sources, shapes, call=index))
        known = self.names.get(id(module))
        name = known[0] if known is not None else self._unregistered_name(module)
        depth = self.calls[parent].depth + 1 if parent >= 0 else 0
        self.calls.append(
            _CallDraft(
                module, name, parent, depth, step, step, in_shapes=shapes, registered=bool(known)
            )
        )
        if parent >= 0:
            self.calls[parent].children.append(index)
        self.stack.append(index)
        if not module._modules:
            self._leaf_depth += 1

    def _unregistered_name(self, module: nn.Module) -> str:
        name = self.holdings.get(id(module)) or f"<{type(module).__name__} not in the model>"
        self.unregistered.append(name)
        return name

    # global hooks: module calls of modules the model does not register
    # (kept in plain lists or attributes); registered ones have their own hooks

    def global_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if id(module) not in self.names and threading.get_ident() == self.thread:
            self.pre_hook(module, args, {})

    def global_post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if (
            id(module) not in self.names
            and threading.get_ident() == self.thread
            and self.stack
            and self.calls[self.stack[-1]].module is module
        ):
            self.post_hook(module, args, {}, output)

    def post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        index = self.stack.pop()
        call = self.calls[index]
        if not module._modules:
            self._leaf_depth -= 1
        if call.children:
            # a container: its output tensors keep the producers inside it
            call.out_shapes = [tuple(t.shape) for t in tensors_in(output, deep=True)]
        else:
            call.out_shapes = self._tag(output, call.step)
            self.steps[call.step].out_shapes = call.out_shapes
        call.end = len(self.steps)

    # -- functional ops

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._leaf_depth:
            return func(*args, **kwargs)
        name = _func_name(func)
        if name in _IGNORED:
            return func(*args, **kwargs)
        sources, shapes = self._sources((args, kwargs))
        if name in _VALUE_READS and sources:
            self._note_value_read(name)
        out = func(*args, **kwargs)
        if sources and name not in _VALUE_READS:
            owner = self.stack[-1] if self.stack else -1
            index = len(self.steps)
            self.steps.append(_StepDraft(StepKind.OP, name.strip("_"), owner, sources, shapes))
            self.steps[index].out_shapes = self._tag(out, index)
        return out

    def _note_value_read(self, name: str) -> None:
        if self.stack:
            call = self.calls[self.stack[-1]]
            where = f"'{call.name or '(model)'}' ({type(call.module).__name__})"
        else:
            where = "the model's caller"
        if (name, where) in self._noted:
            return
        self._noted.add((name, where))
        self.notes.append(
            f"value-dependent control flow: Tensor.{name} in {where}; "
            f"the drawing shows the path this input took"
        )


@gc_paused
def record_dataflow(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    mode: Mode | str = "eval",
    execution: Execution | str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> Dataflow:
    """Run ``model`` once and record its dataflow (see the module docstring).

    Args:
        model: the network; it leaves exactly as it came (no hooks, same
            training flags, parameters, buffers and device).
        input_size: a shape with the batch dimension, or a list of shapes.
        input_data: real input instead: a tensor, a tuple/list of positional
            inputs, or a dict of keyword arguments.
        dtypes: dtypes for tensors made from ``input_size`` (default float32).
        mode: ``"eval"`` (default), ``"train"`` or ``"same"``.
        execution: ``"auto"`` (meta first, real if the model needs values),
            ``"meta"`` or ``"real"``.
        forward_kwargs: extra keyword arguments for ``model.forward``.
        partial: when the forward fails, return what was recorded up to the
            failure instead of raising: a :class:`Dataflow` with
            :attr:`~Dataflow.error` (the TraceError's message) and
            :attr:`~Dataflow.failed_call` (the innermost call open at the
            failure), from the last pass the runner tried. Calls still open end
            at the last step recorded and have no output shapes; the model has
            no outputs. :func:`build_graph` marks the failed call's node
            (:attr:`Node.failed`) and :func:`to_dot` draws it red.

    The run follows netsight's rules (:func:`netsight.trace.runner.run`, with the
    diagram's recorder); unlike a summary it keeps the meta pass when the
    input's dtype differs from the parameters': the drawing needs shapes only.

    Raises:
        TraceError: the forward failed (and ``partial`` is False); the message
            names the layer, its input, the call stack and the layers that ran
            before it.
    """
    if not isinstance(partial, bool):
        raise TypeError(f"partial: expected True or False, got {partial!r}")
    made: list[_Recorder] = []  # the recorders of the passes tried, the last one last

    def recorder() -> _Recorder:
        rec = _Recorder()
        made.append(rec)
        return rec

    try:
        result = runner.run(
            model,
            recorder,
            input_size,
            input_data,
            dtypes=dtypes,
            mode=mode,
            execution=execution,
            forward_kwargs=forward_kwargs,
            dtype_check=False,
        )
    except TraceError as exc:
        if not partial or not made:
            raise
        return _partial_flow(made[-1], exc, tried=len(made))
    rec = result.recorder
    notes: list[str] = []
    if result.fallback_reason is not None:
        notes.append(f"traced on real tensors (the meta pass failed: {result.fallback_reason})")
    notes += _unregistered_notes(rec)
    outputs = tuple(
        (rec.producer.get(id(t), -1), tuple(t.shape)) for t in tensors_in(result.output, deep=True)
    )
    rec.alive.clear()
    return Dataflow(
        model_type=type(result.model).__name__,
        steps=tuple(step.done() for step in rec.steps),
        calls=tuple(call.done() for call in rec.calls),
        inputs=tuple(rec.inputs),
        outputs=outputs,
        execution=result.execution.value,
        notes=tuple(notes + rec.notes),
    )


def _unregistered_notes(rec: _Recorder) -> list[str]:
    if not rec.unregistered:
        return []
    shown = ", ".join(dict.fromkeys(rec.unregistered))
    if len(shown) > 120:
        shown = shown[:119] + "…"
    return [
        f"modules the model does not register ran (held in plain lists, dicts or "
        f"attributes; not in model.parameters(), not moved by .to()): {shown}; "
        f"drawn as 'unregistered'"
    ]


def _partial_flow(rec: _Recorder, exc: TraceError, *, tried: int) -> Dataflow:
    """What ``rec`` recorded before the forward failed with ``exc``: calls still
    open end at the last step recorded; the model has no outputs."""
    failed = rec.stack[-1] if rec.stack else None
    for index in rec.stack:
        rec.calls[index].end = len(rec.steps)
    notes: list[str] = []
    if rec.real and tried > 1:
        notes.append("traced on real tensors (the meta pass failed too)")
    notes += _unregistered_notes(rec)
    rec.alive.clear()
    return Dataflow(
        model_type=rec.model_type,
        steps=tuple(step.done() for step in rec.steps),
        calls=tuple(call.done() for call in rec.calls),
        inputs=tuple(rec.inputs),
        outputs=(),
        execution="real" if rec.real else "meta",
        notes=tuple(notes + rec.notes),
        error=str(exc),
        failed_call=failed,
    )


# --------------------------------------------------------------------------- graph model

#: Fill colour per layer kind (light, so black text stays readable).
CATEGORY_COLORS: dict[str, str] = {
    "conv": "#a6cee3",
    "norm": "#b2df8a",
    "activation": "#fdbf6f",
    "pool": "#cab2d6",
    "linear": "#fb9a99",
    "attention": "#ffd92f",
    "dropout": "#d9d9d9",
    "embedding": "#8dd3c7",
    "recurrent": "#bebada",
    "container": "#ffffff",
    "layer": "#f0f0f0",
    "op": "#ffffb3",
    "io": "#e0e0e0",
}

_ACTIVATIONS = frozenset(
    name for name in dir(nn.modules.activation) if name not in ("MultiheadAttention", "Module")
)


def _category(module: nn.Module, has_children: bool) -> str:
    tp = type(module)
    name = tp.__name__
    lowered = name.lower()
    if isinstance(module, nn.MultiheadAttention) or "attention" in lowered:
        return "attention"
    if not has_children and (isinstance(module, nn.modules.conv._ConvNd) or "conv" in lowered):
        return "conv"
    if "norm" in lowered and not has_children:
        return "norm"
    if name in _ACTIVATIONS and tp.__module__.startswith("torch.nn"):
        return "activation"
    if "pool" in lowered:
        return "pool"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    if isinstance(module, nn.modules.dropout._DropoutNd) or "dropout" in lowered:
        return "dropout"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.RNNBase):
        return "recurrent"
    if has_children:
        return "container"
    return "layer"


@dataclass(frozen=True)
class Node:
    """One box of the drawing.

    Attributes:
        id: DOT identifier (``n0``, ``n1``, ...).
        kind: ``"input"``, ``"output"``, ``"module"``, ``"op"`` or ``"constant"``
            (non-tensor values a module was called with, e.g. ``self.identity(5)``).
        name: qualified module name, op name or input name.
        type_name: module class name or op name.
        category: colour key (see :data:`CATEGORY_COLORS`).
        out_shapes: shapes of the tensors it produces (its input for ``"output"``).
        params: parameters of the module (of one block when rolled).
        repeat: how many identical consecutive blocks it stands for.
        cluster: the rolled expanded block it is drawn inside, if any.
        expandable: a module node whose module has children: naming it in
            ``build_graph(expanded=...)`` draws them instead.
        rolled_names: when the node stands for more than one module call (a
            rolled node, or a node inside a rolled block's cluster), the
            qualified names of every call it stands for, in call order (the
            node's own :attr:`name` first): ``("layer1.0", "layer1.1")``;
            ``()`` otherwise.
        failed: the forward of a partial :class:`Dataflow` failed in this node
            (its module call, or one inside it, was open at the failure).
    """

    id: str
    kind: str
    name: str
    type_name: str
    category: str
    out_shapes: tuple[Shape, ...]
    params: int = 0
    repeat: int = 1
    cluster: str | None = None
    expandable: bool = False
    rolled_names: tuple[str, ...] = ()
    failed: bool = False


@dataclass(frozen=True)
class Edge:
    """Data flowing from node ``src`` to node ``dst`` (ids)."""

    src: str
    dst: str


@dataclass(frozen=True)
class Cluster:
    """A rolled block drawn expanded: its first instance, boxed and marked "x N".

    Attributes:
        id: DOT identifier (``cluster_<call index>``).
        label: what the box says (``"layer1.0 … layer1.1: BasicBlock x 2"``).
        repeat: how many blocks it stands for.
        names: the qualified names of those blocks, in call order (the drawn
            first one first); their common parent's name in
            ``build_graph(unrolled=...)`` draws each of them.
    """

    id: str
    label: str
    repeat: int
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Graph:
    """A collapsed, possibly rolled dataflow graph, ready to be written as DOT."""

    model_type: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    clusters: tuple[Cluster, ...]
    notes: tuple[str, ...]
    depth: int
    execution: str
    #: the message of the error a partial :class:`Dataflow` ended with (None: none)
    error: str | None = None
    #: (qualified module name, node id) pairs; see :meth:`module_nodes`
    module_index: tuple[tuple[str, str], ...] = ()

    def module_nodes(self) -> dict[str, str]:
        """Qualified module name -> id of the node that draws it, for every
        module call drawn: a module drawn as a box maps to its node, a module
        inside a box to that box, every block a rolled node (or a node in a
        rolled cluster) stands for to that node. Modules drawn open (their
        insides shown) and modules that never ran are not in it. A module
        called more than once maps to the node of its first call. The model
        itself is ``""``."""
        return dict(self.module_index)

    def node(self, name: str) -> Node:
        """The node named ``name`` (module name, op or input name)."""
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes[:20])
        raise KeyError(f"no node named {name!r}; nodes include: {known}")


def _signature(flow: Dataflow, index: int) -> tuple[Any, ...]:
    """What must match for two calls to roll into one: class, shapes and the
    kinds of everything that ran inside, in order."""
    call = flow.calls[index]
    inner: list[Any] = []
    for step in flow.steps[call.start + 1 : call.end]:
        if step.kind is StepKind.MODULE:
            sub = flow.calls[step.call]
            inner.append((type(sub.module), sub.depth - call.depth, tuple(sub.out_shapes)))
        else:
            inner.append((step.name, tuple(step.out_shapes)))
    return (
        type(call.module),
        tuple(call.in_shapes),
        tuple(call.out_shapes),
        tuple(inner),
    )


def _runs(
    flow: Dataflow,
    is_open: Callable[[int], bool],
    layout: Callable[[int], tuple[bool, ...]],
    unrolled: Collection[str],
) -> list[list[int]]:
    """Runs of consecutive identical sibling calls whose only link to the rest
    is the chain from one to the next, among the children of the calls drawn
    open (``is_open``: neither a box nor inside one) and not ``unrolled``;
    blocks drawn differently (``layout``) do not roll together."""
    calls = flow.calls
    steps = flow.steps
    # step -> steps that read it
    readers: dict[int, list[int]] = {}
    for i, step in enumerate(steps):
        for src in step.inputs:
            readers.setdefault(src, []).append(i)
    for src, _shape in flow.outputs:
        readers.setdefault(src, []).append(len(steps))

    def chained(a: Call, b: Call) -> bool:
        first = steps[b.step]
        if not any(a.start <= s < a.end for s in first.inputs):
            return False
        for s in range(a.start, a.end):
            for r in readers.get(s, ()):
                if not (a.start <= r < a.end or b.start <= r < b.end):
                    return False
        return True

    runs: list[list[int]] = []
    for index, call in enumerate(calls):
        if len(call.children) < 2 or call.name in unrolled or not is_open(index):
            continue
        sigs = [(_signature(flow, c), layout(c)) for c in call.children]
        run = [call.children[0]]
        for prev_i, cur_i in enumerate(range(1, len(call.children))):
            prev, cur = call.children[prev_i], call.children[cur_i]
            if sigs[cur_i] == sigs[prev_i] and chained(calls[prev], calls[cur]):
                run.append(cur)
                continue
            if len(run) > 1:
                runs.append(run)
            run = [cur]
        if len(run) > 1:
            runs.append(run)
    return runs


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _module_names(flow: Dataflow, value: Any, what: str) -> frozenset[str]:
    """``value`` (a collection of qualified module names) checked against the
    calls of ``flow``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise TypeError(
            f"{what}: expected a collection of qualified module names "
            f"(e.g. {{'layer1'}}), got {value!r}"
        )
    names = frozenset(value)
    wrong = sorted((repr(n) for n in names if not isinstance(n, str)), key=str)
    if wrong:
        raise TypeError(f"{what}: module names must be strings, got {', '.join(wrong)}")
    known = dict.fromkeys(c.name for c in flow.calls)
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        candidates = [n for n in known if n]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
            if close:
                hints.append(f"{name!r}: did you mean {', '.join(map(repr, close))}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"{what}: no module call named {', '.join(map(repr, unknown))} in "
            f"{flow.model_type}{hint}; the names are qualified module names that ran, "
            f"such as {', '.join(map(repr, candidates[:5]))}"
        )
    return names


def build_graph(
    flow: Dataflow,
    *,
    depth: int = 3,
    roll: bool = True,
    expanded: Collection[str] = (),
    collapsed: Collection[str] = (),
    unrolled: Collection[str] = (),
) -> Graph:
    """Collapse a :class:`Dataflow` to ``depth`` and (optionally) roll repeats.

    A module call is drawn as one box when its name is in ``collapsed``, or
    when it is at ``depth`` or deeper and its name is not in ``expanded``; the
    first such call on the path from the model wins (everything inside it is
    in its box). A call without submodules is always one box. The names are
    qualified module names (:attr:`Call.name`, ``""`` for the model); a name
    stands for every call of that module.

    Args:
        flow: from :func:`record_dataflow`.
        depth: module calls at this depth are single nodes; the model itself is
            depth 0, its children depth 1.
        roll: draw runs of identical consecutive sibling blocks once, marked "x N".
        expanded: modules whose children are drawn although they are at
            ``depth`` or deeper (expanding ``layer1`` at depth 1 draws
            ``layer1.0``, ``layer1.1``, ...; those stay boxes unless expanded too).
        collapsed: modules drawn as one box although they are above ``depth``
            (wins over ``expanded``).
        unrolled: parents whose runs of repeated blocks are not rolled: each
            block is drawn (``{"layer1"}`` draws ``layer1.0`` and ``layer1.1``).
            A rolled node's :attr:`Node.rolled_names` and a rolled cluster's
            :attr:`Cluster.names` say which blocks it stands for. Blocks are
            rolled only when they are drawn alike, so expanding one block of a
            rolled node (and not the others) draws the blocks apart; expand
            every name in its ``rolled_names`` to expand the rolled node.

    Raises:
        ValueError: a bad ``depth``, or a name in ``expanded``, ``collapsed``
            or ``unrolled`` that is not a module call of ``flow`` (with the
            closest names).
        TypeError: those are not collections of strings.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth: expected an integer >= 0, got {depth!r}")
    expand = _module_names(flow, expanded, "expanded")
    collapse = _module_names(flow, collapsed, "collapsed")
    unroll = _module_names(flow, unrolled, "unrolled")
    calls, steps = flow.calls, flow.steps

    def boxed(index: int) -> bool:
        """Whether call ``index`` is drawn as one box, were it visible."""
        call = calls[index]
        return call.name in collapse or (call.depth >= depth and call.name not in expand)

    def chain_of(index: int) -> list[int]:
        """The calls from the model's down to ``index``."""
        chain = []
        i = index
        while i >= 0:
            chain.append(i)
            i = calls[i].parent
        chain.reverse()
        return chain

    def shown_call(index: int) -> int | None:
        """The call drawn as one node for a step owned by call ``index``, or
        None when that call is drawn open (its insides shown)."""
        for i in chain_of(index):
            if boxed(i):
                return i
        if not calls[index].children:
            return index
        return None

    def is_open(index: int) -> bool:
        return shown_call(index) is None

    call_ends: list[int] = []  # call -> index of the first call after its insides
    for index, call in enumerate(calls):
        j = index + 1
        while j < len(calls) and call.start <= calls[j].step < call.end:
            j += 1
        call_ends.append(j)

    def layout(index: int) -> tuple[bool, ...]:
        return tuple(boxed(j) for j in range(index, call_ends[index]))

    # roll: steps of the 2nd..Nth block stand for the same step of the 1st
    same_as: dict[int, int] = {}
    rolled: dict[int, tuple[int, int]] = {}  # first call -> (repeat, last call)
    run_of: dict[int, list[int]] = {}  # first call -> the calls of its run
    if roll:
        for run in _runs(flow, is_open, layout, unroll):
            first = calls[run[0]]
            rolled[run[0]] = (len(run), run[-1])
            run_of[run[0]] = run
            for other in run[1:]:
                c = calls[other]
                for s in range(c.start, c.end):
                    same_as[s] = first.start + (s - c.start)

    def drawn_step(step: int) -> int:
        """The step drawn for ``step`` (itself unless it is in a rolled block)."""
        seen = 0
        while step in same_as and seen <= len(steps):
            step = same_as[step]
            seen += 1
        return step

    # module call -> every call it stands for (itself first), rolled ones included
    twins: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        drawn = steps[drawn_step(call.step)]
        twins.setdefault(drawn.call if drawn.kind is StepKind.MODULE else index, []).append(index)

    def cluster_of(index: int) -> int | None:
        i = index
        found = None
        while i >= 0:
            if i in rolled:
                found = i
            i = calls[i].parent
        return found

    nodes: list[Node] = []
    edges: dict[tuple[str, str], None] = {}
    node_of_call: dict[int, str] = {}
    clusters: dict[int, Cluster] = {}
    resolved: dict[int, tuple[str, ...]] = {}

    def new_id() -> str:
        return f"n{len(nodes)}"

    def cluster_id(owner: int) -> str | None:
        c = cluster_of(owner) if owner >= 0 else None
        if c is None or (shown_call(c) == c):
            return None
        if c not in clusters:
            repeat, last = rolled[c]
            label = (
                f"{calls[c].name} … {calls[last].name}: {type(calls[c].module).__name__} x {repeat}"
            )
            names = tuple(calls[i].name for i in run_of[c])
            clusters[c] = Cluster(f"cluster_{c}", label, repeat, names)
        return clusters[c].id

    def module_node(index: int) -> str:
        existing = node_of_call.get(index)
        if existing is not None:
            return existing
        call = calls[index]
        repeat = rolled[index][0] if index in rolled else 1
        out_shapes = call.out_shapes
        if index in rolled:
            out_shapes = calls[rolled[index][1]].out_shapes
        type_name = type(call.module).__name__
        if not call.registered:
            type_name += " (unregistered)"
        stands_for = twins.get(index, [index])
        node = Node(
            id=new_id(),
            kind="module",
            name=call.name or flow.model_type,
            type_name=type_name,
            category=_category(call.module, bool(call.children)),
            out_shapes=tuple(out_shapes),
            params=_own_params(call.module),
            repeat=repeat,
            cluster=cluster_id(call.parent),
            expandable=bool(call.children),
            rolled_names=tuple(calls[i].name for i in stands_for) if len(stands_for) > 1 else (),
        )
        nodes.append(node)
        node_of_call[index] = node.id
        return node.id

    def link(sources: Sequence[int], dst: str) -> None:
        for src in sources:
            for s in resolved.get(src, ()):
                if s != dst:
                    edges[(s, dst)] = None

    for i, step in enumerate(steps):
        if i in same_as:
            resolved[i] = resolved.get(same_as[i], ())
            continue
        if step.kind is StepKind.INPUT:
            node = Node(new_id(), "input", step.name, "input", "io", tuple(step.out_shapes))
            nodes.append(node)
            resolved[i] = (node.id,)
            continue
        if step.kind is StepKind.CONST:
            # values passed to a module call instead of tensors: a source of their own,
            # unless the call is inside a node drawn as one box
            if step.owner >= 0 and shown_call(step.owner) is not None:
                resolved[i] = ()
                continue
            node = Node(new_id(), "constant", step.name, "constant", "io", ())
            nodes.append(node)
            resolved[i] = (node.id,)
            continue
        owner = step.call if step.kind is StepKind.MODULE else step.owner
        shown = None if owner < 0 else shown_call(owner)
        if step.kind is StepKind.MODULE and shown is None:
            continue  # an expanded container: its insides are drawn
        if shown is not None:
            nid = module_node(shown)
            link(step.inputs, nid)
            resolved[i] = (nid,)
            continue
        # a functional op between drawn nodes: visible only where branches join
        sources: list[str] = []
        for src in step.inputs:
            for nid in resolved.get(src, ()):
                if nid not in sources:
                    sources.append(nid)
        if len(sources) >= 2:
            node = Node(
                id=new_id(),
                kind="op",
                name=step.name,
                type_name=step.name,
                category="op",
                out_shapes=tuple(step.out_shapes),
                cluster=cluster_id(owner),
            )
            nodes.append(node)
            for nid in sources:
                edges[(nid, node.id)] = None
            resolved[i] = (node.id,)
        else:
            resolved[i] = tuple(sources)

    for k, (src, shape) in enumerate(flow.outputs):
        label = "output" if len(flow.outputs) == 1 else f"output {k}"
        node = Node(new_id(), "output", label, "output", "io", (shape,))
        nodes.append(node)
        for nid in resolved.get(src, ()) if src >= 0 else ():
            edges[(nid, node.id)] = None

    module_index: dict[str, str] = {}
    for index, call in enumerate(calls):
        shown = shown_call(index)
        if shown is None:
            continue
        for nid in resolved.get(calls[shown].step, ())[:1]:
            module_index.setdefault(call.name, nid)

    if flow.failed_call is not None and 0 <= flow.failed_call < len(calls):
        shown = shown_call(flow.failed_call)
        failed_ids = set(resolved.get(calls[shown].step, ())) if shown is not None else set()
        nodes = [
            dataclasses.replace(n, failed=True) if n.id in failed_ids and n.kind == "module" else n
            for n in nodes
        ]

    return Graph(
        model_type=flow.model_type,
        nodes=tuple(nodes),
        edges=tuple(Edge(a, b) for a, b in edges),
        clusters=tuple(clusters.values()),
        notes=flow.notes,
        depth=depth,
        execution=flow.execution,
        error=flow.error,
        module_index=tuple(module_index.items()),
    )


# --------------------------------------------------------------------------- DOT


def _fmt_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


#: Border of the node a partial graph's forward failed in, and of the error in its title.
FAILED_COLOR = "#d62728"


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: str) -> str:
    """Escape text for a Graphviz HTML-like label."""
    return html.escape(text, quote=True)


def _label(node: Node) -> str:
    shapes = " ".join(_fmt_shape(s) for s in node.out_shapes[:3])
    if len(node.out_shapes) > 3:
        shapes += " …"
    lines: list[str] = []
    if node.kind == "constant":
        lines.append(f"<I>{_esc(node.name)}</I>")
    elif node.kind in ("input", "output") or node.kind == "op":
        lines.append(f"<B>{_esc(node.name)}</B>")
        lines.append(_esc(shapes))
    else:
        title = f"<B>{_esc(node.name)}</B>"
        if node.repeat > 1:
            title += f" <B>x {node.repeat}</B>"
        lines.append(title)
        lines.append(_esc(node.type_name))
        lines.append(_esc(shapes))
        if node.params:
            each = " each" if node.repeat > 1 else ""
            lines.append(_esc(f"{node.params:,} params{each}"))
    return "<" + "<BR/>".join(lines) + ">"


def to_dot(graph: Graph, *, direction: str = "TB", legend: bool = True) -> str:
    """DOT text for ``graph``; every user string is escaped.

    For a partial graph (a failed forward) the title adds the error's first
    line (the failing layer) and the exception, and the failed node
    (:attr:`Node.failed`) has a red border.

    Args:
        graph: from :func:`build_graph`.
        direction: ``"TB"`` (top to bottom) or ``"LR"`` (left to right).
        legend: add a legend of the colours used.
    """
    if direction not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"direction: expected 'TB' or 'LR', got {direction!r}")
    out = [
        "digraph netsight {",
        f"  rankdir={direction};",
        '  graph [fontname="Helvetica", fontsize=10, newrank=true];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
        'fillcolor="#ffffff", penwidth=1];',
        '  edge [color="#555555", arrowsize=0.7];',
    ]
    title = [f"<B>{_esc(graph.model_type)}</B>"]
    if graph.error is not None:
        lines = [line.strip() for line in graph.error.splitlines() if line.strip()]
        # the first line names the failing layer, the second is the exception
        title += [
            f'<FONT COLOR="{FAILED_COLOR}">{_esc(_shorten(line))}</FONT>' for line in lines[:2]
        ]
    title += [_esc(note) for note in graph.notes]
    out.append(f'  label=<{"<BR/>".join(title)}>; labelloc="t";')

    def node_line(node: Node, indent: str) -> str:
        shape = ""
        if node.kind == "op":
            shape = ", shape=ellipse, style=filled"
        elif node.kind in ("input", "output"):
            shape = ", shape=box, style=filled"
        elif node.kind == "constant":
            shape = ", shape=note, style=filled"
        elif node.repeat > 1:
            shape = ', peripheries=2, style="rounded,filled"'
        if node.failed:
            shape += f', color="{FAILED_COLOR}", penwidth=2.5'
        color = CATEGORY_COLORS.get(node.category, "#ffffff")
        return f'{indent}{node.id} [label={_label(node)}, fillcolor="{color}"{shape}];'

    by_cluster: dict[str | None, list[Node]] = {}
    for node in graph.nodes:
        by_cluster.setdefault(node.cluster, []).append(node)
    out.extend(node_line(n, "  ") for n in by_cluster.get(None, []))
    for cluster in graph.clusters:
        out.append(f"  subgraph {cluster.id} {{")
        out.append(f'    label=<<B>{_esc(cluster.label)}</B>>; style="dashed,rounded";')
        out.extend(node_line(n, "    ") for n in by_cluster.get(cluster.id, []))
        out.append("  }")
    out.extend(f"  {e.src} -> {e.dst};" for e in graph.edges)
    if legend:
        used = [c for c in CATEGORY_COLORS if any(n.category == c for n in graph.nodes)]
        out.append("  subgraph cluster_legend {")
        out.append('    label=<<B>legend</B>>; style="rounded"; color="#999999";')
        for c in used:
            out.append(
                f'    legend_{c} [label="{c}", fillcolor="{CATEGORY_COLORS[c]}", fontsize=9];'
            )
        out.extend(
            f"    legend_{a} -> legend_{b} [style=invis];" for a, b in itertools.pairwise(used)
        )
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- rendering


RENDER_FORMATS = ("svg", "png", "pdf")


def find_dot(executable: str | os.PathLike[str] | None = None) -> str:
    """Path of Graphviz's ``dot``, or :class:`GraphvizNotFoundError` naming the package."""
    name = os.fspath(executable) if executable is not None else "dot"
    found = shutil.which(name)
    if found is None:
        raise GraphvizNotFoundError(
            f"Graphviz's {name!r} program was not found on PATH; install the Debian/Ubuntu "
            f"package graphviz (sudo apt-get install graphviz; macOS: brew install graphviz). "
            f"The DOT text does not need it: Diagram.dot, or save to a .dot file"
        )
    return found


def render(dot: str, format: str = "svg", *, executable: str | None = None) -> bytes:
    """Run Graphviz's ``dot`` on DOT text.

    Args:
        dot: DOT text.
        format: ``"svg"``, ``"png"`` or ``"pdf"``.
        executable: the ``dot`` program (default: ``dot`` on PATH).

    Raises:
        GraphvizNotFoundError: ``dot`` is not installed.
        RuntimeError: ``dot`` failed; its message is included.
    """
    if format not in RENDER_FORMATS:
        raise ValueError(f"format: expected one of {', '.join(RENDER_FORMATS)}, got {format!r}")
    program = find_dot(executable)
    proc = subprocess.run(
        [program, f"-T{format}"],
        input=dot.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"Graphviz dot failed (exit {proc.returncode}): {message}")
    return proc.stdout
