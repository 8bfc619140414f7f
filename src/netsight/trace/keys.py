"""Keys of the meta pass's caches and how a cached call's outputs are rebuilt.

Owns the tensor and value constants the hot paths compare against, the cache
key of an op call (:func:`call_key`), the class of a tensor's geometry
(:func:`tensor_class`), and the output specs a repeated call is replayed from
(:func:`out_spec`, :func:`rebuild`). Used by the op counter
(:mod:`netsight.trace.counter`) and the leaf replay (:mod:`netsight.trace.replay`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import torch
from torch import nn

__all__ = [
    "ATOMS",
    "COMPLEX",
    "META",
    "MISSING",
    "PARAMETER",
    "STRIDED",
    "TENSOR",
    "OutSpec",
    "Uncacheable",
    "add_keys",
    "below_dispatch_modes",
    "call_key",
    "default_dtype",
    "out_spec",
    "rebuild",
    "tensor_class",
]

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

META = torch.device("meta")
STRIDED = torch.strided
TENSOR = torch.Tensor
PARAMETER = nn.Parameter
ATOMS = frozenset(
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


COMPLEX = frozenset(d for d in vars(torch).values() if isinstance(d, torch.dtype) and d.is_complex)


class Uncacheable(Exception):
    pass


def add_keys(key: list[Any], items: Iterable[Any]) -> None:
    """Append the hashable metadata of each item to ``key`` (raises Uncacheable)."""
    append = key.append
    for a in items:
        tp = type(a)
        if tp is TENSOR or tp is PARAMETER:
            dtype = a.dtype
            # Complex tensors may carry conj/neg bits: never replayed.
            if not a.is_meta or dtype in COMPLEX:
                raise Uncacheable
            append((a.shape, a.stride(), a.storage_offset(), dtype))
        elif tp in ATOMS:
            # The type is part of the key: add(x, 1) and add(x, 1.0) differ in dtype.
            append((tp, a))
        elif tp is list or tp is tuple:
            types = tuple(map(type, a))
            if ATOMS.issuperset(types):
                append((tp, types, *a))
            else:
                inner: list[Any] = []
                add_keys(inner, a)
                append((tp, tuple(inner)))
        else:
            raise Uncacheable


default_dtype = torch.get_default_dtype


def call_key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The cache key of one op call (raises Uncacheable); runs for every op of
    a meta pass."""
    # The default dtype decides int/int division and dtype=None factories.
    # id(func): OpOverload.__hash__ is Python code; the entry keeps func to confirm.
    key: list[Any] = [id(func), default_dtype()]
    add_keys(key, args)
    if kwargs:
        # Keyword names are strings: no positional item starts with one.
        key.append(tuple(kwargs))
        add_keys(key, kwargs.values())
    return tuple(key)


OutSpec: TypeAlias = tuple[Any, ...]


def _inside_sequences(out: torch.Tensor, items: Iterable[Any]) -> bool:
    for item in items:
        tp = type(item)
        if (tp is list or tp is tuple) and any(
            o is out or _inside_sequences(out, (o,)) for o in item
        ):
            return True
    return False


def out_spec(out: Any, args: tuple[Any, ...], kwargs: dict[str, Any], seen: set[int]) -> OutSpec:
    """How to rebuild ``out`` on a later identical call (raises Uncacheable)."""
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
            or out.layout is not STRIDED
            or out.dtype.is_complex
            or out.requires_grad
        ):
            raise Uncacheable
        seen.add(id(out))
        shape, stride, offset = tuple(out.shape), out.stride(), out.storage_offset()
        dtype, nbytes = out.dtype, out.untyped_storage().nbytes()
        # Cheapest first: clone a kept prototype (the C++ clone of a dense tensor
        # keeps its strides), a new empty_strided, or a view into a fresh storage
        # of the original size. The first that rebuilds the same geometry wins.
        candidates: list[OutSpec] = []
        if offset == 0:
            proto = torch.empty_strided(shape, stride, dtype=dtype, device=META)
            if tensor_class(proto)[3]:
                candidates += [("clone", proto), ("strided", shape, stride, dtype)]
            else:
                # a clone of a tensor with gaps does not keep its strides, and goes
                # through torch._refs' empty_like, whose first call imports sympy
                candidates.append(("strided", shape, stride, dtype))
        itemsize = out.element_size()
        if nbytes % itemsize == 0:
            candidates.append(("view", shape, stride, offset, dtype, nbytes // itemsize))
        for spec in candidates:
            rebuilt = rebuild(spec, args, kwargs)
            if (
                tuple(rebuilt.shape) == shape
                and rebuilt.stride() == stride
                and rebuilt.storage_offset() == offset
                and rebuilt.dtype == dtype
                and rebuilt.is_meta
                and rebuilt.untyped_storage().nbytes() == nbytes
            ):
                return spec
        raise Uncacheable
    tp = type(out)
    if tp is tuple or tp is list:
        return ("seq", tp, tuple([out_spec(o, args, kwargs, seen) for o in out]))
    if tp in ATOMS:
        return ("value", out)
    raise Uncacheable


def rebuild(spec: OutSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    kind = spec[0]
    if kind == "clone":
        return spec[1].clone()
    if kind == "arg":
        return args[spec[1]]
    if kind == "seq":
        return spec[1]([rebuild(s, args, kwargs) for s in spec[2]])
    if kind == "strided":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device=META)
    if kind == "view":
        base = torch.empty((spec[5],), dtype=spec[4], device=META)
        return base.as_strided(spec[1], spec[2], spec[3])
    if kind == "kwarg":
        return kwargs[spec[1]]
    return spec[1]


#: (shape, strides, offset, dtype) -> the tensor's part of a call class (see
#: :mod:`netsight.trace.rules`; the output specs use its density too)
_TENSOR_CLASSES: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def tensor_class(t: torch.Tensor) -> tuple[Any, ...]:
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


#: A sentinel: no cache entry, nothing found.
MISSING: Any = object()

# Rebuilding a replayed output (a clone of a meta prototype) inside the trace's
# dispatch mode would send that clone through the mode too (~5 us, an op the
# model never ran); torch's own guard for "below the Python dispatch keys" skips
# it. Private, hence looked up with a fallback: without it the clone goes through
# the mode, which replays it like any op (same result, slower).
below_dispatch_modes: Callable[[], contextlib.AbstractContextManager[Any]] = getattr(
    torch._C, "_DisableTorchDispatch", contextlib.nullcontext
)
