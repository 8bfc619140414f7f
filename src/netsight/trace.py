"""The trace engine: one forward pass, watched by hooks, recorded as plain data.

:func:`trace` runs the user's model once on an example input and returns a
:class:`Trace`: one :class:`LayerRecord` per module *call* (a module called twice
has two records), with shapes, dtypes, parameters, kernel sizes, mult-adds and
output bytes. Everything netsight draws or prints reads these records.

How it runs. A summary needs shapes, not values, so by default the pass runs on
PyTorch's ``meta`` device: the model's parameters and buffers are swapped for
meta tensors of the same shape for the duration of the call (nothing is
allocated, no arithmetic is done) and swapped back in a ``finally`` block. Models
whose forward needs real values (``.item()``, data-dependent shapes, tensors
created on a fixed device) fail on meta; netsight then runs a real forward under
``torch.no_grad()`` on the model's own device and says so in
:attr:`Trace.execution` and :attr:`Trace.fallback_reason`.

Speed. Many of PyTorch's meta kernels are Python reference implementations
(0.2-10 ms a call), so the meta pass replays repeated calls (same op, same input
shapes, strides, dtypes and arguments) from a per-trace cache of their output
metadata instead of running the kernel again, and computes the outputs of the
slowest kernels (normalisation, activations, convolution, addmm, ...) from
checked rules when a shape is new; see ``_OpCounter`` and ``_RULES``. Repeated
calls of torch.nn's own leaf modules (same class, settings, parameter shapes
and input shapes) are replayed whole, without running ``forward`` or its ops
(``_leaf_runner``); such leaves get their meta tensors only if a call of theirs
really runs, so a replayed leaf's weights are never copied to meta at all
(``_MetaTwins``; an op that meets one of those real tensors elsewhere, tied
weights say, gets its meta twin, and a model that reads one some other way,
``weight.device``, is traced again with every tensor swapped first). The
module tree is walked once and reused for names, hooks, the meta swap, the
training flags and the totals; module calls are watched through a wrapper
that costs less than hooks (``HookSet.add_call_hooks``). The real pass turns
off the fused attention fast paths only for models that have them, and
Python's cyclic garbage collector is paused for the duration of a trace.

Mult-adds are counted at the ATen level (see :mod:`netsight._flops`) and
attributed to the innermost module call that ran them, so functional ops in a
``forward`` (``F.conv2d``, ``x @ w``, attention matmuls) are counted where they
happen.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar

import torch
from torch import nn
from torch._compile import _disable_dynamo
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from netsight._flops import formula_for, is_heavy_uncounted
from netsight.hooks import (
    CallRunner,
    HookSet,
    StopForward,
    check_not_lazy,
    preserve_attributes,
    preserve_state,
    unwrap_compiled,
)

__all__ = [
    "LayerRecord",
    "Structure",
    "TensorMeta",
    "Trace",
    "TraceError",
    "UncalledModule",
    "format_structure",
    "iter_tensor_meta",
    "trace",
]


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of one tensor seen during the trace."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


#: A nested description of a module's inputs or outputs: tensors become
#: :class:`TensorMeta`, containers keep their structure, other values ``None``.
Structure: TypeAlias = (
    "TensorMeta | tuple[Structure, ...] | list[Structure] | dict[str, Structure] | None"
)


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """One call of one module during the traced forward pass.

    Parameter counts follow one rule so that columns add up: a parameter is
    counted once, in the first record whose module owns it (``params``); later
    calls of the same module (weight sharing) and modules reusing a parameter
    already counted show it under ``shared_params`` instead.
    """

    index: int
    name: str
    aliases: tuple[str, ...]
    type_name: str
    depth: int
    parent: int | None
    call: int
    input: Structure
    output: Structure
    params: int
    trainable_params: int
    shared_params: int
    buffers: int
    total_params: int
    total_trainable_params: int
    kernel_size: tuple[int, ...] | None
    mult_adds: int
    total_mult_adds: int
    output_bytes: int
    is_leaf: bool
    repeat_of: int | None
    uncounted_ops: tuple[str, ...]

    @property
    def label(self) -> str:
        """``name`` for submodules, the class name for the root."""
        return self.name if self.name else self.type_name

    @property
    def frozen_params(self) -> int:
        return self.params - self.trainable_params


@dataclass(frozen=True, slots=True)
class UncalledModule:
    """A module of the model that did not run in the traced forward.

    Attributes:
        name: qualified name.
        type_name: class name.
        params: its parameters (counted in the totals).
        trainable_params: of which trainable.
        used_by: the called module whose ``forward`` reads this module's parameters
            directly (``self.out_proj.weight`` in ``nn.MultiheadAttention``), so
            they are used, and their mult-adds are counted in that module's row;
            None when nothing reads them.
    """

    name: str
    type_name: str
    params: int
    trainable_params: int
    used_by: str | None = None


@dataclass(frozen=True)
class Trace:
    """Everything recorded in one traced forward pass."""

    model_type: str
    records: tuple[LayerRecord, ...]
    uncalled: tuple[UncalledModule, ...]
    input: Structure
    output: Structure
    total_params: int
    trainable_params: int
    total_buffers: int
    params_bytes: int
    buffers_bytes: int
    input_bytes: int
    total_mult_adds: int
    uncounted_ops: tuple[str, ...]
    execution: str
    fallback_reason: str | None
    mode: str
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Names of the TorchScript modules that ran (``""``: the model): hooks cannot
    #: see inside them, so their parameters and mult-adds are on their own rows.
    scripted: tuple[str, ...] = ()

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params


class TraceError(RuntimeError):
    """The model's forward failed during a trace.

    Attributes:
        module_name: qualified name of the innermost module that was running.
        module_type: its class name.
        input_shapes: the shapes it received, formatted.
        ran_before: labels of the leaf modules that completed before the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        module_name: str,
        module_type: str,
        input_shapes: str,
        ran_before: tuple[str, ...],
    ) -> None:
        super().__init__(message)
        self.module_name = module_name
        self.module_type = module_type
        self.input_shapes = input_shapes
        self.ran_before = ran_before


# --------------------------------------------------------------------------- structures


# TensorMeta is immutable: one instance per (shape, dtype) is shared by every
# record that shows it, which spares a dataclass construction per tensor.
_TENSOR_META: dict[tuple[Any, Any], TensorMeta] = {}


def _tensor_meta(t: torch.Tensor) -> TensorMeta:
    key = (t.shape, t.dtype)
    meta = _TENSOR_META.get(key)
    if meta is None:
        if len(_TENSOR_META) >= 4096:
            _TENSOR_META.clear()
        meta = TensorMeta(tuple(t.shape), str(t.dtype).removeprefix("torch."))
        _TENSOR_META[key] = meta
    return meta


def _describe(obj: Any) -> Structure:
    if isinstance(obj, torch.Tensor):
        return _tensor_meta(obj)
    if isinstance(obj, tuple):
        return tuple(_describe(o) for o in obj)
    if isinstance(obj, list):
        return [_describe(o) for o in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v) for k, v in obj.items()}
    return None


def _describe_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Structure:
    if not kwargs:
        if len(args) == 1:
            return _describe(args[0])
        return [_describe(a) for a in args]
    described: dict[str, Structure] = {str(i): _describe(a) for i, a in enumerate(args)}
    described.update({k: _describe(v) for k, v in kwargs.items()})
    return described


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    return 0


def iter_tensor_meta(structure: Structure) -> Iterator[TensorMeta]:
    """Every :class:`TensorMeta` in a structure, depth first."""
    if isinstance(structure, TensorMeta):
        yield structure
    elif isinstance(structure, (tuple, list)):
        for item in structure:
            yield from iter_tensor_meta(item)
    elif isinstance(structure, dict):
        for item in structure.values():
            yield from iter_tensor_meta(item)


def format_structure(structure: Structure) -> str:
    """Compact text for shapes: ``[1, 64, 32, 32]``, ``([5, 3, 20], [2, 3, 20])``,
    ``{out: [1, 21, 8, 8]}``; non-tensor values show as ``-``."""
    if isinstance(structure, TensorMeta):
        return "[" + ", ".join(str(d) for d in structure.shape) + "]"
    if isinstance(structure, tuple):
        inner = ", ".join(format_structure(s) for s in structure)
        return f"({inner})"
    if isinstance(structure, list):
        return "[" + ", ".join(format_structure(s) for s in structure) + "]"
    if isinstance(structure, dict):
        return "{" + ", ".join(f"{k}: {format_structure(v)}" for k, v in structure.items()) + "}"
    return "-"


# --------------------------------------------------------------------------- inputs

_Shape = Sequence[int]


def _normalise_sizes(input_size: _Shape | Sequence[_Shape]) -> list[tuple[int, ...]]:
    if not isinstance(input_size, Sequence) or isinstance(input_size, (str, bytes)):
        raise TypeError(
            f"input_size: expected a shape such as (1, 3, 224, 224) or a list of shapes, "
            f"got {input_size!r}"
        )
    items: list[Any] = list(input_size)
    if items and all(isinstance(d, int) for d in items):
        shapes = [tuple(int(d) for d in items)]
    else:
        shapes = []
        for item in items:
            if not isinstance(item, Sequence) or not all(isinstance(d, int) for d in item):
                raise TypeError(
                    f"input_size: expected a shape or a list of shapes of ints, got {input_size!r}"
                )
            shapes.append(tuple(int(d) for d in item))
    if not shapes:
        raise ValueError("input_size: expected at least one shape, got an empty sequence")
    for shape in shapes:
        if any(d < 0 for d in shape):
            raise ValueError(f"input_size: dimensions must be >= 0, got {shape}")
    return shapes


def _make_inputs(
    shapes: list[tuple[int, ...]],
    dtypes: Sequence[torch.dtype] | None,
    device: torch.device,
) -> list[torch.Tensor]:
    if dtypes is None:
        dtypes = [torch.float32] * len(shapes)
    elif len(dtypes) == 1 and len(shapes) > 1:
        dtypes = list(dtypes) * len(shapes)
    if len(dtypes) != len(shapes):
        raise ValueError(f"dtypes: expected one dtype per input ({len(shapes)}), got {len(dtypes)}")
    generator = None
    if device.type != "meta":
        # A private generator: a summary must not move the user's global RNG.
        generator = torch.Generator(device=device).manual_seed(0)
    tensors = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        if device.type == "meta":
            tensors.append(torch.empty(shape, dtype=dtype, device=device))
        elif dtype.is_floating_point or dtype.is_complex:
            tensors.append(torch.randn(shape, dtype=dtype, device=device, generator=generator))
        else:
            # Integer inputs are usually indices (tokens, classes): zeros are always valid.
            tensors.append(torch.zeros(shape, dtype=dtype, device=device))
    return tensors


def _tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_tree_map(fn, o) for o in obj))
    if isinstance(obj, tuple):
        return tuple(_tree_map(fn, o) for o in obj)
    if isinstance(obj, list):
        return [_tree_map(fn, o) for o in obj]
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    return obj


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors_in(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors_in(o)


# --------------------------------------------------------------------------- running

# One module call is a frame. There is one per call and a model can have tens of
# thousands, so a frame is a plain list (~0.1 us to build, against ~0.8 us for an
# object with slots), read and written through these indices:
_MODULE = 0  # the module
_INDEX = 1  # position in call order
_PARENT = 2  # index of the caller's frame, or None
_DEPTH = 3  # number of enclosing calls
_INPUT = 4  # Structure of the inputs
_OUTPUT = 5  # Structure of the outputs (None until the call returns)
_OUTPUT_BYTES = 6
_FLOPS = 7  # FLOPs of the ops run directly in this call
_UNCOUNTED = 8  # list of heavy ops without a formula, or None
_Frame: TypeAlias = list[Any]


def _add_uncounted(frame: _Frame, op: str) -> None:
    if frame[_UNCOUNTED] is None:
        frame[_UNCOUNTED] = [op]
    else:
        frame[_UNCOUNTED].append(op)


class _Recorder:
    """Hook callbacks and the op counter share this state: ``frames`` in call
    order and ``stack``, the calls running now (innermost last)."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.stack: list[_Frame] = []
        frames, stack = self.frames, self.stack
        append, push, pop = frames.append, stack.append, stack.pop
        tensor = torch.Tensor
        known_meta = _TENSOR_META.get

        # Closures over locals rather than methods: these run twice per module
        # call, and every attribute lookup saved counts on large models.
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not kwargs and len(args) == 1 and isinstance(args[0], tensor):
                x = args[0]
                described: Structure = known_meta((x.shape, x.dtype)) or _tensor_meta(x)
            else:
                described = _describe_call(args, kwargs)
            parent = stack[-1][_INDEX] if stack else None
            frame = [module, len(frames), parent, len(stack), described, None, 0, 0, None]
            append(frame)
            push(frame)

        def post_hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            # Pop to this module's frame: inner calls whose exception the model
            # caught itself never reached their post-hook.
            while stack:
                frame = pop()
                if frame[_MODULE] is module:
                    if isinstance(output, tensor):
                        key = (output.shape, output.dtype)
                        frame[_OUTPUT] = known_meta(key) or _tensor_meta(output)
                        frame[_OUTPUT_BYTES] = output.numel() * output.element_size()
                    else:
                        frame[_OUTPUT] = _describe(output)
                        frame[_OUTPUT_BYTES] = _nbytes(output)
                    return

        self.pre_hook = pre_hook
        self.post_hook = post_hook


# --------------------------------------------------------------------------- meta-op cache
#
# Many meta kernels are Python reference implementations (torch._refs) costing
# 0.2-2 ms a call, and a forward pass repeats the same op on the same shapes
# many times (every block of a stage, every layer of a transformer). On meta
# there are no values: an op's outputs are a function of its inputs' metadata
# and its other arguments. So the first call of each (op, argument metadata,
# other arguments) runs the meta kernel and records what came out; later calls
# build the same outputs with ``empty_strided`` in a few microseconds.
#
# Recorded per output: a fresh meta tensor's shape, strides, storage offset,
# dtype and storage size; or "this is argument i itself" (in-place and out=
# ops return their argument); or an immutable Python value. A call is never
# replayed when that could differ from running it: an argument that is not a
# plain strided real-valued meta tensor (a real tensor's values can matter;
# subclasses; complex tensors, which carry conj/neg bits; sparse layouts), an
# argument type the key does not know, ops that change metadata in place
# (tagged ``inplace_view``: transpose_, resize_, set_, ...; and any call whose
# arguments' metadata differ after it ran), outputs that are not plain strided
# meta tensors. Views come back as fresh tensors with the view's exact geometry
# and storage size: on meta there is no data to share. The cache lives for one
# trace.

_META = torch.device("meta")
_STRIDED = torch.strided
_TENSOR = torch.Tensor
_PARAMETER = nn.Parameter
_ATOMS = frozenset(
    {
        int,
        float,
        bool,
        complex,
        str,
        type(None),
        torch.dtype,
        torch.device,
        torch.layout,
        torch.memory_format,
    }
)


_COMPLEX = frozenset(d for d in vars(torch).values() if isinstance(d, torch.dtype) and d.is_complex)


class _Uncacheable(Exception):
    pass


def _add_keys(key: list[Any], items: Iterable[Any]) -> None:
    """Append the hashable metadata of each item to ``key`` (raises _Uncacheable)."""
    append = key.append
    for a in items:
        tp = type(a)
        if tp is _TENSOR or tp is _PARAMETER:
            dtype = a.dtype
            # Complex tensors may carry conj/neg bits: never replayed.
            if not a.is_meta or dtype in _COMPLEX:
                raise _Uncacheable
            append((a.shape, a.stride(), a.storage_offset(), dtype))
        elif tp in _ATOMS:
            # The type is part of the key: add(x, 1) and add(x, 1.0) differ in dtype.
            append((tp, a))
        elif tp is list or tp is tuple:
            types = tuple(map(type, a))
            if _ATOMS.issuperset(types):
                append((tp, types, *a))
            else:
                inner: list[Any] = []
                _add_keys(inner, a)
                append((tp, tuple(inner)))
        else:
            raise _Uncacheable


_default_dtype = torch.get_default_dtype


def _call_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The cache key of one op call (raises _Uncacheable); runs for every op of
    a meta pass."""
    # The default dtype decides int/int division and dtype=None factories.
    # id(func): OpOverload.__hash__ is Python code; the entry keeps func to confirm.
    key: list[Any] = [id(func), _default_dtype()]
    _add_keys(key, args)
    if kwargs:
        # Keyword names are strings: no positional item starts with one.
        key.append(tuple(kwargs))
        _add_keys(key, kwargs.values())
    return tuple(key)


_OutSpec: TypeAlias = tuple[Any, ...]


def _inside_sequences(out: torch.Tensor, items: Iterable[Any]) -> bool:
    for item in items:
        tp = type(item)
        if (tp is list or tp is tuple) and any(
            o is out or _inside_sequences(out, (o,)) for o in item
        ):
            return True
    return False


def _out_spec(out: Any, args: tuple[Any, ...], kwargs: dict[str, Any], seen: set[int]) -> _OutSpec:
    """How to rebuild ``out`` on a later identical call (raises _Uncacheable)."""
    if isinstance(out, torch.Tensor):
        for i, a in enumerate(args):
            if out is a:
                return ("arg", i)
        for k, v in kwargs.items():
            if out is v:
                return ("kwarg", k)
        if (
            type(out) is not torch.Tensor
            or id(out) in seen
            or _inside_sequences(out, args)
            or _inside_sequences(out, kwargs.values())
            or not out.is_meta
            or out.layout is not _STRIDED
            or out.dtype.is_complex
            or out.requires_grad
        ):
            raise _Uncacheable
        seen.add(id(out))
        shape, stride, offset = tuple(out.shape), out.stride(), out.storage_offset()
        dtype, nbytes = out.dtype, out.untyped_storage().nbytes()
        # Cheapest first: clone a kept prototype (the C++ clone of a dense tensor
        # keeps its strides), a new empty_strided, or a view into a fresh storage
        # of the original size. The first that rebuilds the same geometry wins.
        candidates: list[_OutSpec] = []
        if offset == 0:
            proto = torch.empty_strided(shape, stride, dtype=dtype, device=_META)
            if _tensor_class(proto)[3]:
                candidates += [("clone", proto), ("strided", shape, stride, dtype)]
            else:
                # a clone of a tensor with gaps does not keep its strides, and goes
                # through torch._refs' empty_like, whose first call imports sympy
                candidates.append(("strided", shape, stride, dtype))
        itemsize = out.element_size()
        if nbytes % itemsize == 0:
            candidates.append(("view", shape, stride, offset, dtype, nbytes // itemsize))
        for spec in candidates:
            rebuilt = _build(spec, args, kwargs)
            if (
                tuple(rebuilt.shape) == shape
                and rebuilt.stride() == stride
                and rebuilt.storage_offset() == offset
                and rebuilt.dtype == dtype
                and rebuilt.is_meta
                and rebuilt.untyped_storage().nbytes() == nbytes
            ):
                return spec
        raise _Uncacheable
    tp = type(out)
    if tp is tuple or tp is list:
        return ("seq", tp, tuple([_out_spec(o, args, kwargs, seen) for o in out]))
    if tp in _ATOMS:
        return ("value", out)
    raise _Uncacheable


def _build(spec: _OutSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    kind = spec[0]
    if kind == "clone":
        return spec[1].clone()
    if kind == "arg":
        return args[spec[1]]
    if kind == "seq":
        return spec[1]([_build(s, args, kwargs) for s in spec[2]])
    if kind == "strided":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device=_META)
    if kind == "view":
        base = torch.empty((spec[5],), dtype=spec[4], device=_META)
        return base.as_strided(spec[1], spec[2], spec[3])
    if kind == "kwarg":
        return kwargs[spec[1]]
    return spec[1]


#: A cache entry: (op, how to rebuild its outputs, FLOPs or None, name of a heavy
#: op without a formula or None). None in the cache: this call always runs.
_Entry: TypeAlias = tuple[Any, _OutSpec, "int | None", "str | None"]

_NEVER_CACHED: dict[Any, bool] = {}


def _never_cached(func: Any) -> bool:
    never = _NEVER_CACHED.get(func)
    if never is None:
        if isinstance(func, torch._ops.OpOverload):
            # inplace_view: transpose_, resize_, set_, ...; the untagged resize
            # helpers of out= variants (_resize_output_, resize.out) too.
            name = func._schema.name
            never = torch.Tag.inplace_view in func.tags or "resize" in name or "::set_" in name
        else:
            never = True
        _NEVER_CACHED[func] = never
    return never


# --------------------------------------------------------------------------- shortcuts
#
# The cache replays a call only when it has seen the same shapes, and the
# first call of each shape still runs the meta kernel. A few kernels cost
# milliseconds a call on this torch (Python reference implementations):
# hardswish/hardsigmoid/gelu/relu ~1-7 ms, native_batch_norm 2-10 ms,
# native_layer_norm ~3-6 ms, addmm ~1-2 ms, a convolution ~0.1-0.3 ms; CNNs call
# them on a new shape in almost every block. For those ops a *rule* computes the
# outputs from the arguments' metadata in a few microseconds (``_RULES``).
#
# A rule is never trusted blindly. Calls are grouped into classes: the op, the
# default dtype, the exact non-tensor arguments, and per tensor its dtype,
# which sizes are 0, 1 or larger, the order of its strides, its contiguity
# (plain and channels-last), density and whether its offset is 0.
# The first call of a class runs the real kernel and the rule side by side;
# only if every output agrees (shape, strides, offset, dtype, storage size,
# identity with the arguments, view-ness) do later calls of that class use the
# rule. A rule also declines (returns None) any call it does not fully check,
# such as mismatched sizes, so that the kernel raises its own error. Verdicts
# are facts about this torch, not about the model, so they are kept for the
# process, like the flop formulas' checks in ``_flops``.

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_HALF = frozenset({torch.float16, torch.bfloat16})
_Rule: TypeAlias = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _plain_float(t: Any) -> bool:
    return type(t) in (_TENSOR, _PARAMETER) and t.dtype in _FLOATS


def _strides_in_order(
    shape: Sequence[int], stride: Sequence[int], gap: int = 0
) -> tuple[list[int], int]:
    """Strides laid out in ``stride``'s order (innermost first, ties by index),
    each dimension ``gap`` elements longer than its size, and the storage extent
    they span: dense strides with ``gap=0``."""
    strides = [0] * len(shape)
    extent = 1
    for i in sorted(range(len(shape)), key=lambda i: (stride[i], i)):
        strides[i] = extent
        extent *= shape[i] + gap
    return strides, extent


def _fresh_like(x: torch.Tensor) -> torch.Tensor:
    """A new tensor laid out as an element-wise kernel lays out its output: ``x``'s
    strides when ``x`` is dense, else dense strides in ``x``'s stride order (a
    clone of a tensor with gaps would go through torch._refs, whose first call
    imports sympy). Checked against the kernel like every rule."""
    if _tensor_class(x)[3]:
        return x.clone()
    strides, _ = _strides_in_order(x.shape, x.stride())
    return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=_META)


def _rule_pointwise(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One-input element-wise float op: a new tensor laid out like the input."""
    x = args[0]
    return _fresh_like(x) if _plain_float(x) else None


def _rule_pointwise_(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Its in-place form: the input itself."""
    x = args[0]
    return x if _plain_float(x) else None


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _rule_batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # native_batch_norm(input, weight, bias, running_mean, running_var, training,
    #   momentum, eps) -> (output, save_mean, save_invstd)
    if kwargs or len(args) != 8:
        return None
    x = args[0]
    if not _plain_float(x) or x.dim() < 2:
        return None
    channels = x.shape[1]
    for t in args[1:5]:
        if t is not None and (t.dim() != 1 or t.shape[0] != channels):
            return None
    stats = _stats_dtype(x.dtype)
    return (
        x.clone(),
        torch.empty((channels,), dtype=stats, device=_META),
        torch.empty((channels,), dtype=stats, device=_META),
    )


def _rule_layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # native_layer_norm(input, normalized_shape, weight, bias, eps) -> (output, mean, rstd)
    if kwargs or len(args) != 5:
        return None
    x, normalized = args[0], tuple(args[1])
    k = len(normalized)
    if not _plain_float(x) or k == 0 or k > x.dim() or tuple(x.shape[x.dim() - k :]) != normalized:
        return None
    for t in args[2:4]:
        if t is not None and tuple(t.shape) != normalized:
            return None
    stats_shape = tuple(x.shape[: x.dim() - k]) + (1,) * k
    stats = _stats_dtype(x.dtype)
    return (
        torch.empty(x.shape, dtype=x.dtype, device=_META),
        torch.empty(stats_shape, dtype=stats, device=_META),
        torch.empty(stats_shape, dtype=stats, device=_META),
    )


def _rule_addmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # addmm(bias, a, b, *, beta=1, alpha=1) -> bias + a @ b
    if len(args) != 3:
        return None
    bias, a, b = args
    if not (_plain_float(bias) and _plain_float(a) and _plain_float(b)):
        return None
    if not (bias.dtype == a.dtype == b.dtype) or a.dim() != 2 or b.dim() != 2:
        return None
    m, k = a.shape
    k2, n = b.shape
    bias_shape = tuple(bias.shape)
    if k != k2 or bias.dim() > 2:
        return None
    # bias must broadcast to (m, n)
    for size, want in zip(reversed(bias_shape), (n, m), strict=False):
        if size not in (1, want):
            return None
    return torch.empty((m, n), dtype=a.dtype, device=_META)


def _rule_mean_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # mean.dim(input, dim, keepdim=False, *, dtype=None)
    if kwargs or not 2 <= len(args) <= 3:
        return None
    x, dims = args[0], args[1]
    keepdim = args[2] if len(args) == 3 else False
    ndim = x.dim()
    if not _plain_float(x) or type(keepdim) is not bool or ndim == 0 or not dims:
        return None
    wrapped = set()
    for d in dims:
        if type(d) is not int or not -ndim <= d < ndim:
            return None
        wrapped.add(d % ndim)
    if len(wrapped) != len(dims):
        return None
    shape = [1 if i in wrapped else s for i, s in enumerate(x.shape)]
    if not keepdim:
        shape = [s for i, s in enumerate(x.shape) if i not in wrapped]
    return torch.empty(shape, dtype=x.dtype, device=_META)


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    shape = []
    for x, y in zip(a, b, strict=True):
        if x != y and x != 1 and y != 1:
            return None
        shape.append(y if x == 1 else x)
    return tuple(shape)


def _float_operands_shape(a: Any, b: Any) -> tuple[int, ...] | None:
    """The broadcast shape of two float tensors of one dtype, or None."""
    if not (_plain_float(a) and _plain_float(b)) or a.dtype != b.dtype:
        return None
    return _broadcast(a.shape, b.shape)


def _rule_binary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Two-tensor element-wise op, both of one float dtype: the broadcast shape,
    laid out like the operand that has it (or contiguous). With a Python number
    as the second operand: like a one-input op."""
    if len(args) != 2:
        return None
    a, b = args
    if type(b) in (int, float, bool):
        return _rule_pointwise(args, kwargs)
    shape = _float_operands_shape(a, b)
    if shape is None:
        return None
    if shape == tuple(a.shape):
        return _fresh_like(a)
    if shape == tuple(b.shape):
        return _fresh_like(b)
    return torch.empty(shape, dtype=a.dtype, device=_META)


def _rule_binary_(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Its in-place form (``a += b``): ``a`` itself, when ``b`` broadcasts to it."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if type(b) in (int, float, bool):
        return _rule_pointwise_(args, kwargs)
    return a if _float_operands_shape(a, b) == tuple(a.shape) else None


def _rule_softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # _softmax(input, dim, half_to_float); _safe_softmax(input, dim, dtype=None)
    if len(args) not in (2, 3) or (len(args) == 3 and args[2] not in (False, None)):
        return None
    x, dim = args[0], args[1]
    if kwargs.get("dtype") is not None or type(dim) is not int or not _plain_float(x):
        return None
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        return None
    return x.clone()


def _rule_convolution(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # convolution(input, weight, bias, stride, padding, dilation, transposed,
    #   output_padding, groups); not transposed, batched, 1-3 spatial dims
    if kwargs or len(args) != 9:
        return None
    x, weight, bias, stride, padding, dilation, transposed, _, groups = args
    if not (_plain_float(x) and _plain_float(weight)) or transposed is not False:
        return None
    spatial = x.dim() - 2
    if not 1 <= spatial <= 3 or weight.dim() != x.dim() or type(groups) is not int or groups < 1:
        return None
    if not all(len(p) == spatial for p in (stride, padding, dilation)):
        return None
    out_channels = weight.shape[0]
    if x.shape[1] != weight.shape[1] * groups or out_channels % groups:
        return None
    if bias is not None and (not _plain_float(bias) or tuple(bias.shape) != (out_channels,)):
        return None
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        return None
    shape = [x.shape[0], out_channels]
    for i in range(spatial):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        size = (x.shape[2 + i] + 2 * padding[i] - span) // stride[i] + 1
        if size < 1:
            return None
        shape.append(size)
    # torch's meta convolution leaves every output contiguous (no backend to ask)
    return torch.empty(shape, dtype=x.dtype, device=_META)


def _rule_stack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # stack(tensors, dim=0): equal shapes, one new dimension of len(tensors)
    if kwargs or not args or len(args) > 2 or not isinstance(args[0], (list, tuple)):
        return None
    tensors = args[0]
    dim = args[1] if len(args) == 2 else 0
    if not tensors or not isinstance(dim, int):
        return None
    first = tensors[0]
    if not all(_plain_float(t) and t.dtype == first.dtype for t in tensors):
        return None
    shape = tuple(first.shape)
    if any(tuple(t.shape) != shape for t in tensors):
        return None
    rank = len(shape) + 1
    if not -rank <= dim < rank:
        return None
    dim %= rank
    out = (*shape[:dim], len(tensors), *shape[dim:])
    return torch.empty(out, dtype=first.dtype, device=_META)


def _rule_unbind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # unbind(x, dim=0): the views x.select(dim, i), one per index
    if kwargs or not args or len(args) > 2:
        return None
    x = args[0]
    dim = args[1] if len(args) == 2 else 0
    if not _plain_float(x) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        return None
    return [x.select(dim, i) for i in range(x.shape[dim])]


def _rules() -> dict[int, tuple[Any, _Rule]]:
    aten = torch.ops.aten
    table: dict[Any, _Rule] = {
        aten.stack.default: _rule_stack,
        aten.unbind.int: _rule_unbind,
        aten.native_batch_norm.default: _rule_batch_norm,
        aten.native_layer_norm.default: _rule_layer_norm,
        aten.addmm.default: _rule_addmm,
        aten.mean.dim: _rule_mean_dim,
        aten.convolution.default: _rule_convolution,
        aten._softmax.default: _rule_softmax,
    }
    safe_softmax = getattr(aten, "_safe_softmax", None)
    if safe_softmax is not None:
        table[safe_softmax.default] = _rule_softmax
    for name in ("add", "sub", "mul", "div"):
        packet = getattr(aten, name)
        table[packet.Tensor] = _rule_binary
        table[packet.Scalar] = _rule_pointwise
        inplace = getattr(aten, name + "_")
        table[inplace.Tensor] = _rule_binary_
        table[inplace.Scalar] = _rule_pointwise_
    for name in (
        "relu",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "leaky_relu",
        "elu",
        "mish",
    ):
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        table[packet.default] = _rule_pointwise
        inplace = getattr(aten, name + "_", None)
        if inplace is not None:
            table[inplace.default] = _rule_pointwise_
    # By id, confirmed by identity: OpOverload.__hash__ is Python code.
    return {id(op): (op, rule) for op, rule in table.items()}


_RULES = _rules()
#: (op, call class) -> whether the op's rule agreed with its kernel.
_VERDICTS: dict[Any, bool] = {}


#: (shape, strides, offset, dtype) -> the tensor's part of a call class
_TENSOR_CLASSES: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def _tensor_class(t: torch.Tensor) -> tuple[Any, ...]:
    """dtype, sizes as 0/1/more, stride order, density, contiguity (plain and
    channels-last) and whether the offset is 0: all functions of the geometry,
    so they are computed once per geometry. (Parameter or Tensor does not
    matter below the dispatcher, where rules run.)"""
    shape, stride, offset, dtype = t.shape, t.stride(), t.storage_offset(), t.dtype
    geometry = (shape, stride, offset, dtype)
    known = _TENSOR_CLASSES.get(geometry)
    if known is not None:
        return known
    order = tuple(sorted(range(len(shape)), key=lambda i: (stride[i], i)))
    dense, expected = True, 1
    for i in order:
        if shape[i] != 1:
            if stride[i] != expected:
                dense = False
            expected *= shape[i]
    known = (
        dtype,
        tuple(min(s, 2) for s in shape),
        order,
        dense,
        t.is_contiguous(),
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last),
        offset == 0,
    )
    if len(_TENSOR_CLASSES) >= 4096:
        _TENSOR_CLASSES.clear()
    _TENSOR_CLASSES[geometry] = known
    return known


def _class_of(items: Iterable[Any]) -> tuple[Any, ...]:
    """What a rule's verdict holds for: the arguments up to tensor sizes."""
    out: list[Any] = []
    for a in items:
        tp = type(a)
        if tp is _TENSOR or tp is _PARAMETER:
            out.append(_tensor_class(a))
        elif tp is list or tp is tuple:
            out.append((tp, _class_of(a)))
        else:
            out.append((tp, a))
    return tuple(out)


def _geometry(t: torch.Tensor) -> tuple[Any, ...]:
    """Everything about an output tensor that a rule must get right."""
    return (
        t.shape,
        t.stride(),
        t.storage_offset(),
        t.dtype,
        t.layout,
        t.requires_grad,
        t._is_view(),
        t.untyped_storage().nbytes(),
    )


def _same_geometry(kernel: Any, rule: Any, args: tuple[Any, ...]) -> bool:
    """Whether a rule's output matches the kernel's in everything that matters."""
    if isinstance(kernel, torch.Tensor) or isinstance(rule, torch.Tensor):
        if type(kernel) is not type(rule):
            return False
        if kernel is rule:
            return True
        if any(a is kernel or a is rule for a in args):
            return False
        return kernel.is_meta and rule.is_meta and _geometry(kernel) == _geometry(rule)
    tp = type(kernel)
    if tp is tuple or tp is list:
        if type(rule) is not tp or len(kernel) != len(rule):
            return False
        # the same pattern of repeated objects among the outputs
        k_ids, r_ids = [id(o) for o in kernel], [id(o) for o in rule]
        if [k_ids.index(i) for i in k_ids] != [r_ids.index(i) for i in r_ids]:
            return False
        return all(_same_geometry(k, r, args) for k, r in zip(kernel, rule, strict=True))
    return type(rule) is tp and bool(kernel == rule)


def _rule_agrees(rule: _Rule, out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        guess = rule(args, kwargs)
        return guess is not None and _same_geometry(out, guess, args)
    except Exception:
        return False


def _eval_frame_callback_getter() -> Callable[[], Any] | None:
    try:
        from torch._C._dynamo import eval_frame
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    getter = getattr(eval_frame, "get_eval_frame_callback", None)
    return getter if callable(getter) else None


# torch wraps every TorchDispatchMode.__torch_dispatch__ in torch._disable_dynamo
# (~2.5 us a call, paid by every op of a trace) so that torch.compile never traces
# into it. That wrapper only does something while a dynamo frame callback is
# installed, so the op counter checks for one (~50 ns) and goes through the same
# wrapper only then; without the check (another torch) torch's wrapping stays.
_DYNAMO_CALLBACK = _eval_frame_callback_getter()
_is_compiling = torch.compiler.is_compiling


class _OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Adds every ATen op's mult-adds to the innermost running module call; with
    ``cache`` (meta tensors only) it also replays repeated calls and applies the
    checked shortcuts (see above)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return _DYNAMO_CALLBACK is None

    def __init__(
        self, recorder: _Recorder, *, cache: bool = False, twins: _MetaTwins | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._stack = recorder.stack
        self._twins = twins
        self._cache: dict[Any, _Entry | None] | None = {} if cache else None
        # id(func) -> (func, formula, name if heavy and uncounted): OpOverload's
        # __hash__ is Python code, so ops are looked up by id and confirmed.
        self._ops: dict[int, tuple[Any, Any, str | None]] = {}
        self.misses = 0  # calls that ran a kernel or a rule (cache hits are the rest)
        self.shortcuts = 0  # calls answered by a rule

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if _DYNAMO_CALLBACK is not None:
            # is_compiling(): dynamo tracing this frame (it folds the call to True)
            # takes the wrapped path, which it knows to skip; the callback: running
            # compiled code.
            if _is_compiling():
                return _guarded_dispatch(self, func, types, args, kwargs)
            callback = _DYNAMO_CALLBACK()
            if callback is not None and callback is not False:
                return _guarded_dispatch(self, func, types, args, kwargs)
        if kwargs is None:
            kwargs = {}
        cache = self._cache
        key = None
        if cache is not None:
            try:
                key = _call_key(func, args, kwargs)
            except (_Uncacheable, RuntimeError):  # RuntimeError: no strides (sparse)
                twins = self._twins
                if twins is not None and twins.held:
                    # a held leaf's real tensor used outside its own call: its twin
                    swapped = twins.substitute((args, kwargs))
                    if swapped is not _MISSING:
                        return self.__torch_dispatch__(func, types, *swapped)
            else:
                entry = cache.get(key)
                if entry is not None and entry[0] is func:
                    stack = self._stack
                    if stack:
                        if entry[2] is not None:
                            stack[-1][_FLOPS] += entry[2]
                        elif entry[3] is not None:
                            _add_uncounted(stack[-1], entry[3])
                    spec = entry[1]
                    if spec[0] == "clone":  # the usual case, without a call
                        return spec[1].clone()
                    return _build(spec, args, kwargs)
        rule = _RULES.get(id(func)) if key is not None else None
        if rule is not None and rule[0] is func:
            out = self._run_with_rule(func, rule[1], args, kwargs)
        else:
            out = func(*args, **kwargs)
        info = self._ops.get(id(func))
        if info is None or info[0] is not func:
            packet = func._overloadpacket
            formula = formula_for(packet)
            uncounted = formula is None and is_heavy_uncounted(packet)
            info = (func, formula, str(packet) if uncounted else None)
            self._ops[id(func)] = info
        _, formula, heavy = info
        flops = None if formula is None else int(formula(*args, out_val=out, **kwargs))
        stack = self._stack
        if stack:
            if flops is not None:
                stack[-1][_FLOPS] += flops
            elif heavy is not None:
                _add_uncounted(stack[-1], heavy)
        if key is not None and cache is not None and key not in cache:
            self.misses += 1
            replay = None if _never_cached(func) else _replayable(func, key, args, kwargs, out)
            cache[key] = None if replay is None else (func, replay, flops, heavy)
        return out

    def _run_with_rule(
        self, func: Any, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The op's outputs: from its rule once the rule has agreed with the
        kernel on a call of the same class, from the kernel otherwise."""
        try:
            kind = (
                id(func),
                _default_dtype(),
                _class_of(args),
                tuple(kwargs),
                _class_of(kwargs.values()),
            )
        except Exception:
            return func(*args, **kwargs)
        verdict = _VERDICTS.get(kind)
        if verdict is None and "torch._dynamo" not in sys.modules:
            verdict = _witness_verdict(func, rule, args, kwargs)
            if verdict is not None:
                _VERDICTS[kind] = verdict
        if verdict:
            try:
                out = rule(args, kwargs)
            except Exception:  # a rule can only ever hand over to the kernel
                out = None
            if out is not None:
                self.shortcuts += 1
                return out
        out = func(*args, **kwargs)
        if verdict is None:
            if len(_VERDICTS) >= 4096:
                _VERDICTS.clear()
            _VERDICTS[kind] = _rule_agrees(rule, out, args, kwargs)
        return out


# The first verdict on a rule needs the op's meta kernel, and several meta
# kernels (addmm's, relu's) are Python decompositions that call torch._refs
# functions wrapped in torch._disable_dynamo, whose first call imports
# torch._dynamo: about 0.7 s, the whole first-call cost of a model with nn.Linear
# or nn.LSTM in a fresh process. Until something else has imported dynamo, a
# verdict comes instead from torch's C++ CPU kernel on tiny CPU tensors of the
# same class (same dtype, 0/1/more sizes, stride order, density, contiguity),
# compared with the rule on meta copies of those same tensors: the same check,
# on a witness of the class rather than on the call itself.


def _cpu_twin(t: Any) -> Any:
    """A CPU tensor of ``t``'s class with every size above 1 cut to 2 (a view at
    offset 1 of a larger buffer when ``t`` does not start its storage), or None."""
    if type(t) not in (_TENSOR, _PARAMETER):
        return None
    shape = [min(s, 2) for s in t.shape]
    # a dense original gets a dense twin; one with gaps (a slice) gets gaps too
    gap = 0 if _tensor_class(t)[3] else 1
    strides, extent = _strides_in_order(shape, t.stride(), gap)
    offset = 0 if t.storage_offset() == 0 else 1
    if offset or t._is_view():
        twin = torch.zeros(extent + offset, dtype=t.dtype).as_strided(shape, strides, offset)
    else:
        twin = torch.empty_strided(shape, strides, dtype=t.dtype).zero_()
    return twin if _tensor_class(twin) == _tensor_class(t) else None


def _meta_copy(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s geometry: storage size, strides and offset (a view
    of a larger storage, made the same way as ``t``)."""
    size = t.untyped_storage().nbytes() // t.element_size()
    if t.storage_offset() == 0 and size == t.numel():
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return torch.empty(size, dtype=t.dtype, device="meta").as_strided(
        t.shape, t.stride(), t.storage_offset()
    )


def _witness_verdict(
    func: Any, rule: _Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool | None:
    """The rule's verdict on this call's class from the CPU kernel (see above),
    or None when the call has no CPU twin of its class (the meta kernel decides)."""
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    cpu: list[Any] = []
    meta: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if not a.is_meta:
                return None
            twin = _cpu_twin(a)
            if twin is None:
                return None
            cpu.append(twin)
            meta.append(_meta_copy(twin))
        elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            if not all(isinstance(x, torch.Tensor) and x.is_meta for x in a):
                return None
            twins = [_cpu_twin(x) for x in a]
            if any(t is None for t in twins):
                return None
            cpu.append(type(a)(twins))
            meta.append(type(a)(_meta_copy(t) for t in twins))
        else:
            cpu.append(a)
            meta.append(a)
    try:
        kernel = func(*cpu, **kwargs)
        guess = rule(tuple(meta), kwargs)
    except Exception:
        return None
    if guess is None:
        return None
    kernels = list(kernel) if isinstance(kernel, (tuple, list)) else [kernel]
    guesses = list(guess) if isinstance(guess, (tuple, list)) else [guess]
    if type(kernel) is not type(guess) or len(kernels) != len(guesses):
        return False
    for k, g in zip(kernels, guesses, strict=True):
        if not (isinstance(k, torch.Tensor) and isinstance(g, torch.Tensor)):
            return False
        # an output that is an argument must be the same argument on both sides
        k_arg = next((i for i, a in enumerate(cpu) if a is k), None)
        g_arg = next((i for i, a in enumerate(meta) if a is g), None)
        if k_arg != g_arg or _geometry(k) != _geometry(g):
            return False
    return True


def _replayable(
    func: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> _OutSpec | None:
    """How to replay this call, or None when it must always run."""
    try:
        # A call that changed its arguments' metadata cannot be replayed.
        if _call_key(func, args, kwargs) != key:
            return None
        return _out_spec(out, args, kwargs, set())
    except (_Uncacheable, RuntimeError):
        return None


# __torch_dispatch__ as torch would have wrapped it, for when dynamo is active.
_guarded_dispatch = _disable_dynamo(_OpCounter.__torch_dispatch__, recursive=True)


# --------------------------------------------------------------------------- leaf-call cache
#
# The op cache saves the meta kernels, but every op still costs a round trip
# through torch's Python dispatch (~5 us) and every module call its Python
# ``forward`` frames. Models repeat whole layers on the same shapes (the blocks
# of a stage, the layers of a transformer, wide stacks), so the meta pass also
# replays calls of *leaf modules*: the first call of each (class, attributes,
# parameter and buffer metadata, argument metadata) runs and its outputs, mult-
# adds and uncounted ops are recorded; later identical calls rebuild the outputs
# without running ``forward`` or any op.
#
# Only torch.nn's own leaf classes are replayed: their ``forward`` reads nothing
# but the module's attributes, parameters and buffers, its arguments and global
# flags that are fixed during a trace (on meta, autocast does not apply). The key
# holds every attribute in the instance dict other than nn.Module's own
# bookkeeping, so a value the key cannot hold (a real tensor, a function, an
# object) keeps the call running; so do hooks on the module or global module
# hooks, a call that ran other watched modules, a call that changed its
# arguments' or the module's metadata, and outputs the op cache could not replay.

_MISSING: Any = object()
#: nn.Module's own instance attributes (training flag, stores, hook dicts) and the
#: call wrapper of HookSet.add_call_hooks: every other attribute is configuration.
_MODULE_ATTRS = frozenset(nn.Module().__dict__) | {"_compiled_call_impl"}
#: the instance dict's names -> the configuration names among them
_LEAF_CONFIG: dict[tuple[str, ...], tuple[str, ...]] = {}
#: module class -> whether its leaf calls may be replayed
_LEAF_CLASSES: dict[type, bool] = {}
_MODULE_MODULE = nn.Module.__module__
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)

# Rebuilding a replayed output (a clone of a meta prototype) inside the trace's
# dispatch mode would send that clone through the mode too (~5 us, an op the
# model never ran); torch's own guard for "below the Python dispatch keys" skips
# it. Private, hence looked up with a fallback: without it the clone goes through
# the mode, which replays it like any op (same result, slower).
_below_dispatch_modes: Callable[[], contextlib.AbstractContextManager[Any]] = getattr(
    torch._C, "_DisableTorchDispatch", contextlib.nullcontext
)


def _global_module_hooks() -> bool:
    """Whether any global module hook exists (or we cannot tell)."""
    module = sys.modules.get(_MODULE_MODULE)
    return any(getattr(module, name, True) for name in _GLOBAL_HOOKS)


def _replayable_leaf(module: nn.Module) -> bool:
    if module._modules:
        return False
    tp = type(module)
    known = _LEAF_CLASSES.get(tp)
    if known is None:
        known = _LEAF_CLASSES[tp] = tp.__module__.startswith("torch.nn.modules.")
    return known


def _leaf_key(
    module: nn.Module, state: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """The cache key of one leaf-module call (raises _Uncacheable)."""
    names = tuple(state)
    config = _LEAF_CONFIG.get(names)
    if config is None:
        config = tuple(n for n in names if n not in _MODULE_ATTRS)
        if len(_LEAF_CONFIG) >= 4096:
            _LEAF_CONFIG.clear()
        _LEAF_CONFIG[names] = config
    params, buffers = state["_parameters"], state["_buffers"]
    values = tuple([state[n] for n in config])
    types = tuple(map(type, values))
    if _ATOMS.issuperset(types):  # the usual case: ints, floats, bools, strings
        settings: tuple[Any, ...] = (types, values)
    else:
        inner: list[Any] = []
        _add_keys(inner, values)
        settings = (None, tuple(inner))
    # The lengths of the groups after these items are fixed by them, so one
    # flat run of tensor and argument keys is unambiguous.
    key: list[Any] = [
        type(module),
        _default_dtype(),
        state["training"],
        config,
        settings,
        tuple(params),
        tuple(buffers),
        len(args),
        tuple(kwargs),
    ]
    if params:
        _add_state_keys(key, params.values())
    if buffers:
        _add_state_keys(key, buffers.values())
    _add_keys(key, args)
    if kwargs:
        _add_keys(key, kwargs.values())
    return tuple(key)


def _add_state_keys(key: list[Any], tensors: Iterable[Any]) -> None:
    """``_add_keys`` for a module's parameters and buffers, which may still be
    the real tensors of a held module (``_MetaTwins.hold``): a real tensor
    whose twin will have the same geometry (strided, dense: ``empty_like``
    keeps its strides; storage offset 0) is keyed as that twin will be."""
    append = key.append
    for t in tensors:
        tp = type(t)
        if tp is _TENSOR or tp is _PARAMETER:
            dtype = t.dtype
            if dtype in _COMPLEX:
                raise _Uncacheable
            if t.is_meta:
                append((t.shape, t.stride(), t.storage_offset(), dtype))
            elif t.layout is _STRIDED and not t.storage_offset() and t.is_contiguous():
                append((t.shape, t.stride(), 0, dtype))
            else:
                raise _Uncacheable
        else:
            _add_keys(key, (t,))


#: A leaf-cache entry: (FLOPs, heavy ops without a formula, how to rebuild the
#: outputs); None: calls with this key always run.
_LeafEntry: TypeAlias = tuple[int, tuple[str, ...], _OutSpec]


def _leaf_runner(recorder: _Recorder, twins: _MetaTwins | None = None) -> CallRunner:
    """``run`` for HookSet.add_call_hooks: replays repeated leaf-module calls.

    ``twins``: the modules it holds get their meta twins just before a call of
    theirs really runs; a replayed call needs none."""
    cache: dict[tuple[Any, ...], _LeafEntry | None] = {}
    frames, stack = recorder.frames, recorder.stack
    below_modes = _below_dispatch_modes
    held: set[int] = twins.held if twins is not None else set()
    swap: Callable[[nn.Module], None] = twins.swap if twins is not None else lambda module: None

    def run(
        module: nn.Module,
        call_impl: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        state = module.__dict__
        if (
            state["_forward_hooks"]
            or state["_forward_pre_hooks"]
            or state["_backward_hooks"]
            or state["_backward_pre_hooks"]
        ):
            if held and id(module) in held:
                swap(module)
            return call_impl(*args, **kwargs)
        key: tuple[Any, ...] | None
        try:
            key = _leaf_key(module, state, args, kwargs)
        except (_Uncacheable, RuntimeError):  # RuntimeError: no strides (sparse)
            key = None
        frame = stack[-1]  # this call's, pushed by the pre-hook
        entry = cache.get(key, _MISSING) if key is not None else None
        if entry is not None and entry is not _MISSING:
            flops, uncounted, spec = entry
            frame[_FLOPS] += flops
            for op in uncounted:
                _add_uncounted(frame, op)
            with below_modes():
                return spec[1].clone() if spec[0] == "clone" else _build(spec, args, kwargs)
        if held and id(module) in held:
            swap(module)  # this call really runs: its module needs its meta twins
        if key is None or entry is None:
            return call_impl(*args, **kwargs)
        calls = len(frames)
        out = call_impl(*args, **kwargs)
        replay: _LeafEntry | None = None
        if len(frames) == calls and stack and stack[-1] is frame:
            try:
                if _leaf_key(module, state, args, kwargs) == key:
                    with below_modes():
                        spec = _out_spec(out, args, kwargs, set())
                    replay = (frame[_FLOPS], tuple(frame[_UNCOUNTED] or ()), spec)
            except (_Uncacheable, RuntimeError):
                pass
        cache[key] = replay
        return out

    return run


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


class _MetaTwins:
    """Meta stand-ins for a model's parameters and buffers.

    ``swap(module)`` puts a meta tensor of the same shape, strides and dtype in
    place of each of the module's own tensors (one twin per tensor, so a tensor
    shared by several modules gets one twin); ``restore()`` puts every original
    back. A module can also be *held* (:meth:`hold`): left as it is until
    something needs its tensors on meta (see ``_leaf_runner``), which spares
    the twins of leaf calls that are replayed and never run.
    """

    def __init__(self) -> None:
        self._swapped: list[tuple[dict[str, Any], str, Any]] = []
        self._twins: dict[int, torch.Tensor] = {}
        self._rnns: list[nn.RNNBase] = []
        #: id(module) of the held modules not swapped yet
        self.held: set[int] = set()
        self._held_modules: list[nn.Module] = []
        #: id(tensor) -> tensor, for every tensor of a held module (built on demand)
        self._held_tensors: dict[int, torch.Tensor] | None = None

    def twin(self, tensor: torch.Tensor) -> torch.Tensor:
        meta = self._twins.get(id(tensor))
        if meta is None:
            # Made below the trace's dispatch mode when called during the pass:
            # the mode would see a real tensor and ask for its twin again.
            with _below_dispatch_modes():
                meta = self._make_twin(tensor)
            self._twins[id(tensor)] = meta
        return meta

    @staticmethod
    def _make_twin(tensor: torch.Tensor) -> torch.Tensor:
        tp = type(tensor)
        # (isinstance(x, nn.Parameter) runs Python code for any other type)
        if tp is _PARAMETER or (tp is not _TENSOR and isinstance(tensor, _PARAMETER)):
            # nn.Parameter(meta, requires_grad), without its Python __new__ or the
            # detached alias Tensor._make_subclass makes (~4 us a parameter): a
            # fresh leaf whose class is set, as torch's UninitializedParameter.
            # materialize does.
            meta = torch.empty_like(tensor, device=_META, requires_grad=tensor.requires_grad)
            meta.__class__ = _PARAMETER
            return meta
        return torch.empty_like(tensor, device=_META)

    def swap_all(self, modules: Iterable[nn.Module], *, skip: set[int] | None = None) -> None:
        """:meth:`swap` for every module (but those whose id is in ``skip``)."""
        record = self._swapped.append
        known = self._twins.get
        twin = self.twin
        for module in modules:
            if skip and id(module) in skip:
                continue
            stores: tuple[dict[str, Any], dict[str, Any]] = (module._parameters, module._buffers)
            for store in stores:
                if not store:
                    continue
                for key, tensor in store.items():
                    if tensor is None or tensor.is_meta:
                        continue
                    meta = known(id(tensor))
                    if meta is None:
                        meta = twin(tensor)
                    record((store, key, tensor))
                    store[key] = meta  # a value replaced, not a key added: iteration goes on
            if isinstance(module, nn.RNNBase):
                self._rnns.append(module)
                module._init_flat_weights()  # RNNs cache references to their weights

    def swap(self, module: nn.Module) -> None:
        """Give ``module`` its twins (a held module stops being held)."""
        self.held.discard(id(module))
        self.swap_all((module,))

    def hold(self, modules: list[nn.Module]) -> None:
        # Updated in place: the leaf runner made before this call reads this set.
        self._held_modules = modules
        self.held.clear()
        self.held.update(map(id, modules))

    @property
    def held_any(self) -> bool:
        """Whether any module was held during the pass."""
        return bool(self._held_modules)

    def substitute(self, obj: Any) -> Any:
        """``obj`` with the tensors of held modules replaced by their twins, or
        ``_MISSING`` if it holds none (a held leaf's tensors used outside its
        own call: tied weights, ``module.forward(x)`` called directly)."""
        if self._held_tensors is None:
            self._held_tensors = {
                id(t): t
                for m in self._held_modules
                for store in (m._parameters, m._buffers)
                for t in store.values()
                if t is not None
            }
        held = self._held_tensors
        found = False

        def twin_of(t: torch.Tensor) -> torch.Tensor:
            nonlocal found
            if held.get(id(t)) is t and not t.is_meta:
                found = True
                return self.twin(t)
            return t

        result = _tree_map(twin_of, obj)
        return result if found else _MISSING

    def restore(self) -> None:
        swapped, self._swapped = self._swapped, []
        for store, key, tensor in reversed(swapped):
            store[key] = tensor
        rnns, self._rnns = self._rnns, []
        for rnn in rnns:
            rnn._init_flat_weights()


@contextlib.contextmanager
def _swapped_to_meta(modules: list[nn.Module]) -> Iterator[None]:
    """Replace every parameter and buffer of ``modules`` (every module of the
    model) by a meta tensor of the same shape for the block; put the originals
    back on every path. (Tensors the forward puts in plain attributes are the
    caller's to restore: :func:`~netsight.hooks.preserve_attributes`.)"""
    twins = _MetaTwins()
    try:
        twins.swap_all(modules)
        yield
    finally:
        twins.restore()


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _run(
    model: nn.Module,
    modules: list[nn.Module],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: dict[int, list[str]],
    *,
    real: bool,
    twins: _MetaTwins | None = None,
) -> _Recorder:
    """One watched forward. ``twins`` (meta pass): swap every module's tensors
    for meta twins first, except those of the leaves the replay wrapper holds."""
    recorder = _Recorder()
    fused_paths = real and any(isinstance(m, _FUSED_PATH_MODULES) for m in modules)
    with HookSet() as hooks:
        pre_hook, post_hook = recorder.pre_hook, recorder.post_hook
        if real or _global_module_hooks():
            hooks.add_call_hooks(modules, pre_hook, post_hook)
            if twins is not None:
                twins.swap_all(modules)
        else:
            leaves: list[nn.Module] = []
            others: list[nn.Module] = []
            for module in modules:
                (leaves if _replayable_leaf(module) else others).append(module)
            hooks.add_call_hooks(others, pre_hook, post_hook)
            wrapped = hooks.add_call_hooks(
                leaves, pre_hook, post_hook, run=_leaf_runner(recorder, twins)
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
            with torch.no_grad(), fused_off, _OpCounter(recorder, cache=not real, twins=twins):
                model(*args, **kwargs)
        except StopForward:
            raise  # a netsight hook ended the pass on purpose: not the model's failure
        except Exception as exc:
            raise _trace_error(exc, recorder, names) from exc
    return recorder


def _run_meta(
    model: nn.Module,
    modules: list[nn.Module],
    inputs_on: InputMaker,
    names: dict[int, list[str]],
    *,
    on_meta: bool,
) -> _Recorder:
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
) -> _Recorder:
    """The meta pass. Replayed leaf calls never need their module's tensors on
    meta, so leaves are held (``_MetaTwins.hold``) and get twins only when they
    really run. If that pass fails, it is run again with every tensor swapped
    first (a model can read a held leaf's tensor in ways no op shows, e.g.
    ``weight.device``) before the caller turns to a real forward."""
    if on_meta:  # nothing to swap
        args, kwargs = inputs_on(_META)
        return _run(model, modules, args, kwargs, names, real=False)
    twins = _MetaTwins()
    try:
        args, kwargs = inputs_on(_META)
        return _run(model, modules, args, kwargs, names, real=False, twins=twins)
    except TraceError:
        if not twins.held_any:
            raise
    finally:
        twins.restore()
    args, kwargs = inputs_on(_META)
    with _swapped_to_meta(modules):
        return _run(model, modules, args, kwargs, names, real=False)


def _trace_error(exc: Exception, recorder: _Recorder, names: dict[int, list[str]]) -> TraceError:
    def label(frame: _Frame) -> str:
        module = frame[_MODULE]
        name = names.get(id(module), [""])[0]
        return name or type(module).__name__

    stack = recorder.stack
    if stack:
        failing = stack[-1]
        module_name = label(failing)
        module_type = type(failing[_MODULE]).__name__
        inputs = format_structure(failing[_INPUT])
        path = " > ".join(f"{label(f)} ({type(f[_MODULE]).__name__})" for f in stack)
    else:
        module_name, module_type, inputs, path = "", "", "", ""
    parents = {f[_PARENT] for f in recorder.frames}
    running = {f[_INDEX] for f in stack}
    done = tuple(
        f"{label(f)} -> {format_structure(f[_OUTPUT])}"
        for f in recorder.frames
        if f[_INDEX] not in parents and f[_INDEX] not in running and f[_OUTPUT] is not None
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


# --------------------------------------------------------------------------- assembling

_MODULE_GETATTR = nn.Module.__getattr__
_OBJECT_GETATTRIBUTE = object.__getattribute__
#: module class -> whether ``module.__dict__.get("kernel_size")`` gives what
#: ``getattr(module, "kernel_size", None)`` gives (no class attribute or
#: property of that name, the usual attribute lookup). getattr on a module
#: without the attribute raises inside Module.__getattr__: ~4 us a module.
_KERNEL_IN_DICT: dict[type, bool] = {}


def _kernel_in_dict(tp: type[nn.Module]) -> bool:
    in_dict = _KERNEL_IN_DICT.get(tp)
    if in_dict is None:
        in_dict = (
            tp.__getattr__ is _MODULE_GETATTR
            and tp.__getattribute__ is _OBJECT_GETATTRIBUTE
            and not any("kernel_size" in vars(klass) for klass in tp.__mro__)
        )
        if len(_KERNEL_IN_DICT) >= 4096:
            _KERNEL_IN_DICT.clear()
        _KERNEL_IN_DICT[tp] = in_dict
    return in_dict


def _kernel_size(module: nn.Module) -> tuple[int, ...] | None:
    tp = type(module)
    in_dict = _KERNEL_IN_DICT.get(tp)
    if in_dict is None:
        in_dict = _kernel_in_dict(tp)
    # Module.__getattr__ only finds parameters, buffers and submodules, which
    # are never ints or tuples: the instance dict is where a kernel size can be.
    if in_dict:
        k = module.__dict__.get("kernel_size")
        if k is None:
            return None
    else:
        k = getattr(module, "kernel_size", None)
    if isinstance(k, int):
        # MaxPool2d(3) stores 3: expand it to the layer's dimensionality.
        name = tp.__name__
        dims = int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else 1
        return (k,) * dims
    if isinstance(k, tuple) and all(isinstance(d, int) for d in k):
        return tuple(k)
    return None


_RECORD_FIELDS = (
    "index",
    "name",
    "aliases",
    "type_name",
    "depth",
    "parent",
    "call",
    "input",
    "output",
    "params",
    "trainable_params",
    "shared_params",
    "buffers",
    "total_params",
    "total_trainable_params",
    "kernel_size",
    "mult_adds",
    "total_mult_adds",
    "output_bytes",
    "is_leaf",
    "repeat_of",
    "uncounted_ops",
)


def _record_factory() -> Callable[..., LayerRecord]:
    """``LayerRecord(*values)`` at ~30% of the cost. A frozen dataclass's
    ``__init__`` sets every field through ``object.__setattr__``; a plain
    (unfrozen) dataclass with the same slots sets them with ordinary attribute
    stores, and an object of it can then take LayerRecord's class: Python
    allows that ``__class__`` assignment only between classes of the same
    memory layout. The result is the same object (no ``__post_init__``;
    equality, hashing and immutability come from the class). Falls back to the
    class itself if the fields or the layout ever differ."""
    if tuple(f.name for f in fields(LayerRecord)) != _RECORD_FIELDS:
        return LayerRecord
    builder = make_dataclass(
        "_LayerRecordBuilder", [(f.name, f.type) for f in fields(LayerRecord)], slots=True
    )
    record_class = LayerRecord

    def make(*values: Any) -> LayerRecord:
        record = builder(*values)
        record.__class__ = record_class
        return record  # type: ignore[no-any-return]

    try:
        probe = make(*range(len(_RECORD_FIELDS)))
    except TypeError:  # layouts differ: "object layout differs"
        return LayerRecord
    if probe != LayerRecord(*range(len(_RECORD_FIELDS))):
        return LayerRecord
    return make


_new_record = _record_factory()


@dataclass
class _Totals:
    """Sums over the model's unique parameters and buffers."""

    params: int = 0
    trainable: int = 0
    params_bytes: int = 0
    buffers: int = 0
    buffers_bytes: int = 0


def _packed_weights(module: nn.Module) -> tuple[int, list[torch.Tensor]] | None:
    """(identity, tensors) of a quantized module's packed weight and bias, which
    are not parameters (``torch.ao.nn.quantized`` Linear and Conv, static and
    dynamic, keep them in ``_packed_params`` and give them through ``weight()`` and
    ``bias()``); None for every other module."""
    state = module.__dict__
    packed = state.get("_packed_params")
    if packed is None:
        children = state.get("_modules")  # a ScriptModule's is not a dict
        packed = children.get("_packed_params") if type(children) is dict else None
    if packed is None or isinstance(module, torch.jit.ScriptModule):
        return None
    weight = getattr(module, "weight", None)
    if not callable(weight) or isinstance(weight, torch.Tensor):
        return None
    try:
        tensors = [weight()]
        bias = getattr(module, "bias", None)
        value = bias() if callable(bias) and not isinstance(bias, torch.Tensor) else None
    except Exception:  # an unusual packed format: not counted rather than wrong
        return None
    if isinstance(value, torch.Tensor):
        tensors.append(value)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    return id(packed), tensors


@functools.cache
def _forward_reads(forward: Callable[..., Any]) -> frozenset[tuple[str, str]]:
    """``(child, attribute)`` pairs that a ``forward`` method's source reads as
    ``self.child.attribute`` without calling ``self.child``: parameters of a
    submodule used functionally (``F.multi_head_attention_forward(...,
    self.out_proj.weight, ...)``). Empty when the source is not available."""
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return frozenset()
    return frozenset(re.findall(r"\bself\.(\w+)\.(\w+)\b", source))


def _functional_user(name: str, module: nn.Module, called: dict[str, nn.Module]) -> str | None:
    """The called parent whose ``forward`` reads ``module``'s parameters (see
    :func:`_forward_reads`), or None."""
    own = set(module._parameters)
    if not own or not name:
        return None
    # only the direct parent's forward can read ``self.<child>.<param>``
    parent_name, _, child = name.rpartition(".")
    parent = called.get(parent_name)
    if parent is None:
        return None
    reads = _forward_reads(type(parent).forward)
    return (parent_name or "(model)") if any(c == child and a in own for c, a in reads) else None


def _scripted_owner(name: str, scripted: dict[str, int]) -> int | None:
    """The frame of the called TorchScript module that ``name`` is inside, or None."""
    for prefix, frame in scripted.items():
        if prefix == "" or name.startswith(prefix + "."):
            return frame
    return None


def _assemble(
    modules: list[nn.Module],
    recorder: _Recorder,
    names: dict[int, list[str]],
) -> tuple[list[LayerRecord], list[UncalledModule], int, _Totals, tuple[str, ...]]:
    frames = recorder.frames
    n = len(frames)
    seen_params: set[int] = set()
    seen_buffers: set[int] = set()
    totals = _Totals()
    # id(module) -> (first frame index, name, aliases, type name, kernel size)
    facts: dict[int, tuple[int, str, tuple[str, ...], str, tuple[int, ...] | None]] = {}
    frame_facts: list[tuple[int, str, tuple[str, ...], str, tuple[int, ...] | None]] = []
    add_facts = frame_facts.append
    calls: dict[int, int] = {}
    call = [0] * n
    own_params = [0] * n
    own_trainable = [0] * n
    shared = [0] * n
    buffers = [0] * n
    is_leaf = [True] * n
    no_names = [""]
    for i, frame in enumerate(frames):
        module = frame[_MODULE]
        key = id(module)
        parent = frame[_PARENT]
        if parent is not None:
            is_leaf[parent] = False
        known = facts.get(key)
        if known is not None:
            add_facts(known)
            call[i] = calls[key] = calls.get(key, 0) + 1
            for p in module._parameters.values():
                if p is not None:
                    shared[i] += p.numel()
            continue
        module_names = names.get(key, no_names)
        known = facts[key] = (
            i,
            module_names[0],
            tuple(module_names[1:]) if len(module_names) > 1 else (),
            type(module).__name__,
            _kernel_size(module),
        )
        add_facts(known)
        params = module._parameters
        if params:
            for p in params.values():
                if p is None:
                    continue
                numel = p.numel()
                pid = id(p)
                if pid in seen_params:
                    shared[i] += numel
                    continue
                seen_params.add(pid)
                own_params[i] += numel
                totals.params_bytes += numel * p.element_size()
                if p.requires_grad:
                    own_trainable[i] += numel
        else:
            packed = _packed_weights(module)
            if packed is not None and packed[0] not in seen_params:
                seen_params.add(packed[0])
                for t in packed[1]:
                    own_params[i] += t.numel()
                    totals.params_bytes += t.numel() * t.element_size()
        module_buffers = module._buffers
        if module_buffers:
            for b in module_buffers.values():
                if b is not None and id(b) not in seen_buffers:
                    seen_buffers.add(id(b))
                    numel = b.numel()
                    buffers[i] += numel
                    totals.buffers_bytes += numel * b.element_size()

    # modules that did not run: inside a called TorchScript module (hooks cannot see
    # its calls; its parameters belong to its row), used functionally by a called
    # ancestor, or not used at all
    uncalled = []
    scripted: dict[str, int] = {}
    called_by_name: dict[str, nn.Module] | None = None
    for module in modules:
        key = id(module)
        if key in facts:
            if isinstance(module, torch.jit.ScriptModule) and facts[key][1] not in scripted:
                scripted[facts[key][1]] = facts[key][0]
            continue
        count = trainable = 0
        for p in module._parameters.values():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                numel = p.numel()
                count += numel
                trainable += numel if p.requires_grad else 0
                totals.params_bytes += numel * p.element_size()
        packed = _packed_weights(module) if not module._parameters else None
        if packed is not None and packed[0] not in seen_params:
            seen_params.add(packed[0])
            for t in packed[1]:
                count += t.numel()
                totals.params_bytes += t.numel() * t.element_size()
        name = names.get(key, [""])[0]
        owner = _scripted_owner(name, scripted) if scripted else None
        if owner is not None:
            own_params[owner] += count
            own_trainable[owner] += trainable
            module_buffers = module._buffers
            for b in module_buffers.values():
                if b is not None and id(b) not in seen_buffers:
                    seen_buffers.add(id(b))
                    buffers[owner] += b.numel()
                    totals.buffers_bytes += b.numel() * b.element_size()
            continue
        for b in module._buffers.values():
            if b is not None and id(b) not in seen_buffers:
                seen_buffers.add(id(b))
                totals.buffers += b.numel()
                totals.buffers_bytes += b.numel() * b.element_size()
        totals.params += count
        totals.trainable += trainable
        used_by = None
        if count:
            if called_by_name is None:
                called_by_name = {names.get(id(m), [""])[0]: m for m in modules if id(m) in facts}
            used_by = _functional_user(name, module, called_by_name)
        uncalled.append(UncalledModule(name, type(module).__name__, count, trainable, used_by))

    total_params = list(own_params)
    total_trainable = list(own_trainable)
    total_flops = [f[_FLOPS] for f in frames]
    for i in range(n - 1, -1, -1):
        parent = frames[i][_PARENT]
        if parent is not None:
            total_params[parent] += total_params[i]
            total_trainable[parent] += total_trainable[i]
            total_flops[parent] += total_flops[i]

    records = []
    record = _new_record
    for i, frame in enumerate(frames):
        first, name, aliases, type_name, kernel = frame_facts[i]
        uncounted = frame[_UNCOUNTED]
        records.append(
            record(
                i,
                name,
                aliases,
                type_name,
                frame[_DEPTH],
                frame[_PARENT],
                call[i],
                frame[_INPUT],
                frame[_OUTPUT],
                own_params[i],
                own_trainable[i],
                shared[i],
                buffers[i],
                total_params[i],
                total_trainable[i],
                kernel,
                frame[_FLOPS] // 2,
                total_flops[i] // 2,
                frame[_OUTPUT_BYTES],
                is_leaf[i],
                None if first == i else first,
                tuple(sorted(set(uncounted))) if uncounted else (),
            )
        )
    totals.params += sum(own_params)
    totals.trainable += sum(own_trainable)
    totals.buffers += sum(buffers)

    flops = sum(f[_FLOPS] for f in frames) // 2
    return records, uncalled, flops, totals, tuple(scripted)


_NAMED_MODULES = nn.Module.named_modules


def _survey(model: nn.Module) -> tuple[dict[int, list[str]], list[nn.Module]]:
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


def _check_inputs(model_device: torch.device, tensors: list[torch.Tensor]) -> None:
    if model_device.type == "meta":
        return
    for i, t in enumerate(tensors):
        if t.device.type != "meta" and t.device != model_device:
            raise ValueError(
                f"input tensor {i} (shape {list(t.shape)}) is on {t.device}, but the model's "
                f"parameters are on {model_device}; move the input with .to({str(model_device)!r}) "
                f"(netsight never moves your model)"
            )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
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


InputMaker: TypeAlias = Callable[[torch.device | None], tuple[tuple[Any, ...], dict[str, Any]]]


def _input_maker(
    input_size: Sequence[int] | Sequence[Sequence[int]] | None,
    input_data: Any,
    *,
    dtypes: Sequence[torch.dtype] | None,
    mode: str,
    execution: str,
    forward_kwargs: Mapping[str, Any] | None,
    model_device: torch.device,
    default_device: torch.device,
) -> InputMaker:
    """Check the options of a traced run and return ``inputs_on(device)``, which
    builds ``(args, kwargs)`` for the forward: from ``input_size`` on ``device`` (or
    ``default_device``), or ``input_data`` as given (``device=None``) or as empty
    tensors of the same metadata on ``device`` (the meta pass)."""
    if mode not in ("eval", "train", "same"):
        raise ValueError(f"mode: expected 'eval', 'train' or 'same', got {mode!r}")
    if execution not in ("auto", "meta", "real"):
        raise ValueError(f"execution: expected 'auto', 'meta' or 'real', got {execution!r}")
    if (input_size is None) == (input_data is None):
        raise TypeError("pass exactly one of input_size or input_data")
    extra_kwargs = dict(forward_kwargs or {})
    shapes = _normalise_sizes(input_size) if input_size is not None else None
    if input_data is not None:
        _check_inputs(model_device, list(_tensors_in((input_data, extra_kwargs))))

    def inputs_on(dev: torch.device | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if shapes is not None:
            return tuple(_make_inputs(shapes, dtypes, dev or default_device)), dict(extra_kwargs)
        data, kw = input_data, dict(extra_kwargs)
        if dev is not None:

            def to_dev(t: torch.Tensor) -> torch.Tensor:
                return torch.empty_like(t, device=dev)

            data = _tree_map(to_dev, data)
            kw = _tree_map(to_dev, kw)
        if isinstance(data, dict):
            return (), {**data, **kw}
        if isinstance(data, (tuple, list)):
            return tuple(data), kw
        return (data,), kw

    return inputs_on


@_gc_paused
def trace(
    model: nn.Module,
    input_size: _Shape | Sequence[_Shape] | None = None,
    input_data: Any = None,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    mode: str = "eval",
    execution: str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
) -> Trace:
    """Run ``model`` once on an example input and record every module call.

    Args:
        model: the network; it is left exactly as it came (no hooks, same
            training flags, same parameters, buffers, ``requires_grad`` and device).
        input_size: one shape including the batch dimension, e.g. ``(1, 3, 224, 224)``,
            or a list of shapes for a model with several inputs.
        input_data: real input instead of ``input_size``: a tensor, a tuple/list of
            positional inputs, or a dict passed as keyword arguments. To pass a dict
            as one positional argument, wrap it in a list: ``[{"image": x}]``.
        dtypes: dtypes for the tensors made from ``input_size`` (default float32).
        device: where inputs from ``input_size`` are made for a real pass (default:
            the model's device). The model is never moved.
        mode: ``"eval"`` (default), ``"train"`` or ``"same"``: the mode the pass runs
            in; every module's own flag is restored afterwards.
        execution: ``"auto"`` (meta first, real forward if the model needs values),
            ``"meta"`` or ``"real"``.
        forward_kwargs: extra keyword arguments for ``model.forward``.

    Returns:
        A :class:`Trace`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or the input is malformed.
        TraceError: the forward failed; the message names the module that failed,
            its input shapes and the layers that ran before it.
        StopForward: a netsight hook ended the forward on purpose; passed through
            unchanged (:class:`netsight.hooks.StopForward`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_compiled(model)
    check_not_lazy(model)
    model_device = _model_device(model)
    target_device = torch.device(device) if device is not None else model_device
    if device is not None and model_device.type != "meta" and target_device != model_device:
        raise ValueError(
            f"device={str(target_device)!r}, but the model's parameters are on {model_device}; "
            f"netsight never moves your model: call model.to({str(target_device)!r}) first"
        )
    inputs_on = _input_maker(
        input_size,
        input_data,
        dtypes=dtypes,
        mode=mode,
        execution=execution,
        forward_kwargs=forward_kwargs,
        model_device=model_device,
        default_device=target_device,
    )

    names, modules = _survey(model)
    on_meta_already = model_device.type == "meta"
    fallback_reason: str | None = None
    recorder: _Recorder | None = None

    mismatch = None
    if execution == "auto" and not on_meta_already:
        mismatch = _dtype_mismatch(model, inputs_on)
        fallback_reason = mismatch

    with preserve_state(model, mode, modules=modules):
        if (execution in ("auto", "meta") and mismatch is None) or on_meta_already:
            try:
                recorder = _run_meta(model, modules, inputs_on, names, on_meta=on_meta_already)
                ran = "meta"
            except TraceError as exc:
                if execution == "meta" or on_meta_already:
                    raise
                fallback_reason = str(exc).splitlines()[1].strip()
        if recorder is None:
            args, kwargs = inputs_on(None)
            buffers = [(b, b.detach().clone()) for b in model.buffers()]
            try:
                # the real pass leaves the model as it came too: RNG, buffers and
                # the tensors in plain attributes (caches, moved anchors)
                with torch.random.fork_rng(devices=[]), preserve_attributes(modules):
                    recorder = _run(model, modules, args, kwargs, names, real=True)
            finally:
                with torch.no_grad():
                    # restore what the forward changed (BatchNorm's running stats
                    # in train mode; its kernel does not bump _version): an
                    # untouched buffer is not written, so its _version stays too
                    for b, saved in buffers:
                        if not torch.equal(b, saved):
                            b.copy_(saved)
            ran = "real"

    records, uncalled, total_mult_adds, totals, scripted = _assemble(modules, recorder, names)
    root_input = records[0].input if records else None
    uncounted = sorted({op for f in recorder.frames if f[_UNCOUNTED] for op in f[_UNCOUNTED]})
    aliases = {r.name: r.aliases for r in records if r.aliases and r.call == 0}
    return Trace(
        model_type=type(model).__name__,
        records=tuple(records),
        uncalled=tuple(uncalled),
        input=root_input,
        output=records[0].output if records else None,
        total_params=totals.params,
        trainable_params=totals.trainable,
        total_buffers=totals.buffers,
        params_bytes=totals.params_bytes,
        buffers_bytes=totals.buffers_bytes,
        input_bytes=sum(
            t.numel * _DTYPE_BYTES.get(t.dtype, 4) for t in iter_tensor_meta(root_input)
        ),
        total_mult_adds=total_mult_adds,
        uncounted_ops=tuple(uncounted),
        execution=ran,
        fallback_reason=fallback_reason,
        mode=mode,
        aliases=aliases,
        scripted=scripted,
    )


def _dtype_mismatch(
    model: nn.Module, inputs_on: Callable[[torch.device | None], Any]
) -> str | None:
    """Why the meta pass cannot be trusted with these inputs, or None: floating-point
    inputs of a dtype no floating-point parameter has (a bfloat16 model given
    float32). Meta kernels do not check that dtypes agree, where real ones refuse
    (or the model casts on purpose): only the real forward says which."""
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(params) != 1:
        return None
    inputs = {
        t.dtype for t in _tensors_in(inputs_on(torch.device("meta"))) if t.is_floating_point()
    }
    if not inputs or inputs <= params:
        return None
    got = ", ".join(sorted(str(d).removeprefix("torch.") for d in inputs))
    want = str(next(iter(params))).removeprefix("torch.")
    return (
        f"not tried: the input is {got} and the parameters are {want}; the meta device does not "
        f"check that dtypes agree, so the real forward decides"
    )


_DTYPE_BYTES = {
    str(dt).removeprefix("torch."): torch.empty((), dtype=dt).element_size()
    for dt in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
