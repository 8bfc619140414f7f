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
(0.2-2 ms a call), so the meta pass replays repeated calls (same op, same input
shapes, strides, dtypes and arguments) from a per-trace cache of their output
metadata instead of running the kernel again; see ``_OpCounter``. The real pass
turns off the fused attention fast paths only for models that have them, and
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeAlias, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from netsight._flops import formula_for, is_heavy_uncounted
from netsight.hooks import HookSet, preserve_state

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
    """A module of the model that did not run in the traced forward."""

    name: str
    type_name: str
    params: int
    trainable_params: int


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


class _Frame:
    __slots__ = (
        "call",
        "children",
        "depth",
        "flops",
        "index",
        "input",
        "module",
        "output",
        "output_bytes",
        "parent",
        "uncounted",
    )

    def __init__(
        self, module: nn.Module, index: int, parent: int | None, depth: int, call: int
    ) -> None:
        self.module = module
        self.index = index
        self.parent = parent
        self.depth = depth
        self.call = call
        self.input: Structure = None
        self.output: Structure = None
        self.output_bytes = 0
        self.flops = 0
        self.uncounted: list[str] = []
        self.children = 0


class _Recorder:
    """Hook callbacks and the op counter share this state."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.stack: list[_Frame] = []
        self.calls: dict[int, int] = {}

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        stack = self.stack
        frames = self.frames
        key = id(module)
        call = self.calls.get(key, 0)
        self.calls[key] = call + 1
        if stack:
            parent = stack[-1]
            parent.children += 1
            frame = _Frame(module, len(frames), parent.index, parent.depth + 1, call)
        else:
            frame = _Frame(module, len(frames), None, 0, call)
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            frame.input = _tensor_meta(args[0])
        else:
            frame.input = _describe_call(args, kwargs)
        frames.append(frame)
        stack.append(frame)

    def post_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        # Pop to this module's frame: inner calls whose exception the model
        # caught itself never reached their post-hook.
        stack = self.stack
        while stack:
            frame = stack.pop()
            if frame.module is module:
                if isinstance(output, torch.Tensor):
                    frame.output = _tensor_meta(output)
                    frame.output_bytes = output.numel() * output.element_size()
                else:
                    frame.output = _describe(output)
                    frame.output_bytes = _nbytes(output)
                return


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


class _Uncacheable(Exception):
    pass


def _key_of(items: Sequence[Any]) -> tuple[Any, ...]:
    """Hashable metadata of a call's arguments (raises _Uncacheable)."""
    key: list[Any] = []
    for a in items:
        tp = type(a)
        if tp is torch.Tensor or tp is nn.Parameter:
            dtype = a.dtype
            # Complex tensors may carry conj/neg bits: never replayed.
            if not a.is_meta or dtype.is_complex:
                raise _Uncacheable
            key.append((a.shape, a.stride(), a.storage_offset(), dtype))
        elif tp in _ATOMS:
            # The type is part of the key: add(x, 1) and add(x, 1.0) differ in dtype.
            key.append((tp, a))
        elif tp is list or tp is tuple:
            types = tuple(map(type, a))
            if _ATOMS.issuperset(types):
                key.append((tp, types, *a))
            else:
                key.append((tp, _key_of(a)))
        else:
            raise _Uncacheable
    return tuple(key)


def _call_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # The default dtype decides int/int division and dtype=None factories.
    # id(func): OpOverload.__hash__ is Python code; the entry keeps func to confirm.
    kw = (tuple(kwargs), _key_of(tuple(kwargs.values()))) if kwargs else ()
    return (id(func), torch.get_default_dtype(), _key_of(args), kw)


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
            candidates += [("clone", proto), ("strided", shape, stride, dtype)]
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
    if kind == "strided":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device=_META)
    if kind == "seq":
        return spec[1]([_build(s, args, kwargs) for s in spec[2]])
    if kind == "arg":
        return args[spec[1]]
    if kind == "view":
        base = torch.empty((spec[5],), dtype=spec[4], device=_META)
        return base.as_strided(spec[1], spec[2], spec[3])
    if kind == "kwarg":
        return kwargs[spec[1]]
    return spec[1]


class _Cached:
    __slots__ = ("flops", "func", "heavy", "spec")

    def __init__(self, func: Any, spec: _OutSpec, flops: int | None, heavy: str | None) -> None:
        self.func = func
        self.spec = spec
        self.flops = flops
        self.heavy = heavy


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


class _OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Adds every ATen op's mult-adds to the innermost running module call; with
    ``cache`` (meta tensors only) it also replays repeated calls (see above)."""

    def __init__(self, recorder: _Recorder, *, cache: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._stack = recorder.stack
        self._cache: dict[Any, _Cached | None] | None = {} if cache else None
        # id(func) -> (func, formula, name if heavy and uncounted): OpOverload's
        # __hash__ is Python code, so ops are looked up by id and confirmed.
        self._ops: dict[int, tuple[Any, Any, str | None]] = {}
        self.hits = 0
        self.misses = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if kwargs is None:
            kwargs = {}
        cache = self._cache
        key = None
        if cache is not None:
            try:
                key = _call_key(func, args, kwargs)
            except (_Uncacheable, RuntimeError):  # RuntimeError: no strides (sparse)
                pass
            else:
                entry = cache.get(key)
                if entry is not None and entry.func is func:
                    self.hits += 1
                    stack = self._stack
                    if stack:
                        if entry.flops is not None:
                            stack[-1].flops += entry.flops
                        elif entry.heavy is not None:
                            stack[-1].uncounted.append(entry.heavy)
                    return _build(entry.spec, args, kwargs)
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
                stack[-1].flops += flops
            elif heavy is not None:
                stack[-1].uncounted.append(heavy)
        if key is not None and cache is not None and key not in cache:
            self.misses += 1
            replay = None if _never_cached(func) else _replayable(func, key, args, kwargs, out)
            cache[key] = None if replay is None else _Cached(func, replay, flops, heavy)
        return out


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


@contextlib.contextmanager
def _swapped_to_meta(model: nn.Module) -> Iterator[None]:
    """Replace every parameter and buffer by a meta tensor of the same shape for
    the block; put the originals back on every path."""
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    replacements: dict[int, torch.Tensor] = {}
    rnns: list[nn.RNNBase] = []
    make_parameter = torch.Tensor._make_subclass
    try:
        for module in model.modules():
            stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
            for store in stores:
                for key, tensor in store.items():
                    if tensor is None or tensor.is_meta:
                        continue
                    meta: torch.Tensor | None = replacements.get(id(tensor))
                    if meta is None:
                        meta = torch.empty_like(tensor, device=_META)
                        tp = type(tensor)
                        # (isinstance(x, nn.Parameter) runs Python code for any other type)
                        if tp is nn.Parameter or (
                            tp is not torch.Tensor and isinstance(tensor, nn.Parameter)
                        ):
                            # nn.Parameter(meta, requires_grad), without its Python __new__
                            meta = make_parameter(nn.Parameter, meta, tensor.requires_grad)
                        replacements[id(tensor)] = meta
                    swapped.append((store, key, tensor))
                    store[key] = meta
            if isinstance(module, nn.RNNBase):
                rnns.append(module)
                module._init_flat_weights()  # RNNs cache references to their weights
        yield
    finally:
        for store, key, tensor in reversed(swapped):
            store[key] = tensor
        for rnn in rnns:
            rnn._init_flat_weights()


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _run(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: dict[int, list[str]],
    *,
    real: bool,
) -> _Recorder:
    recorder = _Recorder()
    pre_hook, post_hook = recorder.pre_hook, recorder.post_hook
    fused_paths = False
    with HookSet() as hooks:
        add = hooks.add
        for module in model.modules():
            add(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            add(module.register_forward_hook(post_hook, with_kwargs=True))
            if real and isinstance(module, _FUSED_PATH_MODULES):
                fused_paths = True
        fused_off: contextlib.AbstractContextManager[Any] = (
            _NoFusedPaths() if fused_paths else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), fused_off, _OpCounter(recorder, cache=not real):
                model(*args, **kwargs)
        except Exception as exc:
            raise _trace_error(exc, recorder, names) from exc
    return recorder


def _trace_error(exc: Exception, recorder: _Recorder, names: dict[int, list[str]]) -> TraceError:
    def label(frame: _Frame) -> str:
        name = names.get(id(frame.module), [""])[0]
        return name or type(frame.module).__name__

    if recorder.stack:
        failing = recorder.stack[-1]
        module_name = label(failing)
        module_type = type(failing.module).__name__
        inputs = format_structure(failing.input)
        path = " > ".join(f"{label(f)} ({type(f.module).__name__})" for f in recorder.stack)
    else:
        module_name, module_type, inputs, path = "", "", "", ""
    done = tuple(
        f"{label(f)} -> {format_structure(f.output)}"
        for f in recorder.frames
        if f.children == 0 and f not in recorder.stack and f.output is not None
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


def _kernel_size(module: nn.Module) -> tuple[int, ...] | None:
    k = getattr(module, "kernel_size", None)
    if isinstance(k, int):
        # MaxPool2d(3) stores 3: expand it to the layer's dimensionality.
        name = type(module).__name__
        dims = int(name[-2]) if name[-2:] in ("1d", "2d", "3d") else 1
        return (k,) * dims
    if isinstance(k, tuple) and all(isinstance(d, int) for d in k):
        return tuple(k)
    return None


def _assemble(
    model: nn.Module,
    recorder: _Recorder,
    names: dict[int, list[str]],
) -> tuple[list[LayerRecord], list[UncalledModule], int]:
    frames = recorder.frames
    n = len(frames)
    seen_params: set[int] = set()
    seen_buffers: set[int] = set()
    first_index: dict[int, int] = {}
    own_params = [0] * n
    own_trainable = [0] * n
    shared = [0] * n
    buffers = [0] * n
    for frame in frames:
        module = frame.module
        key = id(module)
        if key in first_index:
            for p in module._parameters.values():
                if p is not None:
                    shared[frame.index] += p.numel()
            continue
        first_index[key] = frame.index
        for p in module._parameters.values():
            if p is None:
                continue
            if id(p) in seen_params:
                shared[frame.index] += p.numel()
                continue
            seen_params.add(id(p))
            own_params[frame.index] += p.numel()
            if p.requires_grad:
                own_trainable[frame.index] += p.numel()
        for b in module._buffers.values():
            if b is not None and id(b) not in seen_buffers:
                seen_buffers.add(id(b))
                buffers[frame.index] += b.numel()

    total_params = list(own_params)
    total_trainable = list(own_trainable)
    total_flops = [f.flops for f in frames]
    for i in range(n - 1, -1, -1):
        parent = frames[i].parent
        if parent is not None:
            total_params[parent] += total_params[i]
            total_trainable[parent] += total_trainable[i]
            total_flops[parent] += total_flops[i]

    records = []
    for frame in frames:
        module = frame.module
        module_names = names.get(id(module), [""])
        first = first_index[id(module)]
        records.append(
            LayerRecord(
                index=frame.index,
                name=module_names[0],
                aliases=tuple(module_names[1:]),
                type_name=type(module).__name__,
                depth=frame.depth,
                parent=frame.parent,
                call=frame.call,
                input=frame.input,
                output=frame.output,
                params=own_params[frame.index],
                trainable_params=own_trainable[frame.index],
                shared_params=shared[frame.index],
                buffers=buffers[frame.index],
                total_params=total_params[frame.index],
                total_trainable_params=total_trainable[frame.index],
                kernel_size=_kernel_size(module),
                mult_adds=frame.flops // 2,
                total_mult_adds=total_flops[frame.index] // 2,
                output_bytes=frame.output_bytes,
                is_leaf=frame.children == 0,
                repeat_of=None if first == frame.index else first,
                uncounted_ops=tuple(sorted(set(frame.uncounted))),
            )
        )

    uncalled = []
    seen_modules: set[int] = set()
    for module in model.modules():
        if id(module) in first_index or id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        count = trainable = 0
        for p in module._parameters.values():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                count += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        uncalled.append(
            UncalledModule(names.get(id(module), [""])[0], type(module).__name__, count, trainable)
        )
    return records, uncalled, sum(f.flops for f in frames) // 2


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


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
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if mode not in ("eval", "train", "same"):
        raise ValueError(f"mode: expected 'eval', 'train' or 'same', got {mode!r}")
    if execution not in ("auto", "meta", "real"):
        raise ValueError(f"execution: expected 'auto', 'meta' or 'real', got {execution!r}")
    if (input_size is None) == (input_data is None):
        raise TypeError("pass exactly one of input_size or input_data")

    model_device = _model_device(model)
    target_device = torch.device(device) if device is not None else model_device
    if device is not None and model_device.type != "meta" and target_device != model_device:
        raise ValueError(
            f"device={str(target_device)!r}, but the model's parameters are on {model_device}; "
            f"netsight never moves your model: call model.to({str(target_device)!r}) first"
        )
    extra_kwargs = dict(forward_kwargs or {})

    shapes = _normalise_sizes(input_size) if input_size is not None else None
    if input_data is not None:
        _check_inputs(model_device, list(_tensors_in((input_data, extra_kwargs))))

    def inputs_on(dev: torch.device | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if shapes is not None:
            return tuple(_make_inputs(shapes, dtypes, dev or target_device)), dict(extra_kwargs)
        data, kw = input_data, dict(extra_kwargs)
        if dev is not None:

            def to_meta(t: torch.Tensor) -> torch.Tensor:
                return torch.empty_like(t, device=dev)

            data = _tree_map(to_meta, data)
            kw = _tree_map(to_meta, kw)
        if isinstance(data, dict):
            return (), {**data, **kw}
        if isinstance(data, (tuple, list)):
            return tuple(data), kw
        return (data,), kw

    names = _module_names(model)
    on_meta_already = model_device.type == "meta"
    meta = torch.device("meta")
    fallback_reason: str | None = None
    recorder: _Recorder | None = None

    with preserve_state(model, mode):
        if execution in ("auto", "meta") or on_meta_already:
            try:
                args, kwargs = inputs_on(meta)
                with _swapped_to_meta(model):
                    recorder = _run(model, args, kwargs, names, real=False)
                ran = "meta"
            except TraceError as exc:
                if execution == "meta" or on_meta_already:
                    raise
                fallback_reason = str(exc).splitlines()[1].strip()
        if recorder is None:
            args, kwargs = inputs_on(None)
            buffers = [(b, b.detach().clone()) for b in model.buffers()]
            try:
                with torch.random.fork_rng(devices=[]):
                    recorder = _run(model, args, kwargs, names, real=True)
            finally:
                with torch.no_grad():
                    for b, saved in buffers:
                        b.copy_(saved)
            ran = "real"

    records, uncalled, total_mult_adds = _assemble(model, recorder, names)
    root = recorder.frames[0] if recorder.frames else None
    unique_params = list(model.parameters())
    unique_buffers = list(model.buffers())
    uncounted = sorted({op for r in records for op in r.uncounted_ops})
    aliases = {r.name: r.aliases for r in records if r.aliases and r.call == 0}
    return Trace(
        model_type=type(model).__name__,
        records=tuple(records),
        uncalled=tuple(uncalled),
        input=root.input if root is not None else None,
        output=root.output if root is not None else None,
        total_params=sum(p.numel() for p in unique_params),
        trainable_params=sum(p.numel() for p in unique_params if p.requires_grad),
        total_buffers=sum(b.numel() for b in unique_buffers),
        params_bytes=sum(p.numel() * p.element_size() for p in unique_params),
        buffers_bytes=sum(b.numel() * b.element_size() for b in unique_buffers),
        input_bytes=sum(
            t.numel * _DTYPE_BYTES.get(t.dtype, 4)
            for t in iter_tensor_meta(root.input if root is not None else None)
        ),
        total_mult_adds=total_mult_adds,
        uncounted_ops=tuple(uncounted),
        execution=ran,
        fallback_reason=fallback_reason,
        mode=mode,
        aliases=aliases,
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
