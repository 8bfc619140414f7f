"""Assembling: the frames of a finished pass become a :class:`~netsight.trace.Trace`.

Owns :func:`assemble` (one :class:`~netsight.trace.records.LayerRecord` per
frame, parameters counted once, uncalled modules, TorchScript owners, the
totals) and the per-module facts it reads (kernel sizes, packed quantized
weights, functional users of a child's parameters).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

import torch
from torch import nn

from netsight.trace.frames import (
    DEPTH,
    FLOPS,
    INPUT,
    MODULE,
    OUTPUT,
    OUTPUT_BYTES,
    PARENT,
    UNCOUNTED,
    Frame,
)
from netsight.trace.recorder import FrameRecorder
from netsight.trace.records import LayerRecord, Trace, UncalledModule, iter_tensor_meta
from netsight.trace.runner import Run

__all__ = ["assemble"]

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


def _records(
    modules: list[nn.Module],
    frames: list[Frame],
    names: dict[int, list[str]],
) -> tuple[list[LayerRecord], list[UncalledModule], int, _Totals, tuple[str, ...]]:
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
        module = frame[MODULE]
        key = id(module)
        parent = frame[PARENT]
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
    total_flops = [f[FLOPS] for f in frames]
    for i in range(n - 1, -1, -1):
        parent = frames[i][PARENT]
        if parent is not None:
            total_params[parent] += total_params[i]
            total_trainable[parent] += total_trainable[i]
            total_flops[parent] += total_flops[i]

    records = []
    record = _new_record
    for i, frame in enumerate(frames):
        first, name, aliases, type_name, kernel = frame_facts[i]
        uncounted = frame[UNCOUNTED]
        records.append(
            record(
                i,
                name,
                aliases,
                type_name,
                frame[DEPTH],
                frame[PARENT],
                call[i],
                frame[INPUT],
                frame[OUTPUT],
                own_params[i],
                own_trainable[i],
                shared[i],
                buffers[i],
                total_params[i],
                total_trainable[i],
                kernel,
                frame[FLOPS] // 2,
                total_flops[i] // 2,
                frame[OUTPUT_BYTES],
                is_leaf[i],
                None if first == i else first,
                tuple(sorted(set(uncounted))) if uncounted else (),
            )
        )
    totals.params += sum(own_params)
    totals.trainable += sum(own_trainable)
    totals.buffers += sum(buffers)

    flops = sum(f[FLOPS] for f in frames) // 2
    return records, uncalled, flops, totals, tuple(scripted)


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


def assemble(run: Run[FrameRecorder]) -> Trace:
    """The :class:`~netsight.trace.Trace` of a run recorded by a
    :class:`~netsight.trace.recorder.FrameRecorder`."""
    frames = run.recorder.frames
    records, uncalled, total_mult_adds, totals, scripted = _records(run.modules, frames, run.names)
    root_input = records[0].input if records else None
    uncounted = sorted({op for f in frames if f[UNCOUNTED] for op in f[UNCOUNTED]})
    aliases = {r.name: r.aliases for r in records if r.aliases and r.call == 0}
    return Trace(
        model_type=type(run.model).__name__,
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
        execution=run.execution.value,
        fallback_reason=run.fallback_reason,
        mode=run.mode.value,
        aliases=aliases,
        scripted=scripted,
    )
