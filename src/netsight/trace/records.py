"""What a trace records: the public record types and their structure helpers.

Owns :class:`TensorMeta`, :class:`LayerRecord`, :class:`UncalledModule`,
:class:`Trace` and :class:`TraceError`, the :data:`Structure` of a call's inputs
and outputs, and the helpers that describe live values as structures
(:func:`describe`, :func:`tensor_meta`, :func:`nbytes`) or read structures back
(:func:`iter_tensor_meta`, :func:`format_structure`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch

from netsight.errors import TraceError

__all__ = [
    "TENSOR_META_CACHE",
    "LayerRecord",
    "Structure",
    "TensorMeta",
    "Trace",
    "TraceError",
    "UncalledModule",
    "describe",
    "describe_call",
    "format_structure",
    "iter_tensor_meta",
    "nbytes",
    "tensor_meta",
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


# TensorMeta is immutable: one instance per (shape, dtype) is shared by every
# record that shows it, which spares a dataclass construction per tensor.
TENSOR_META_CACHE: dict[tuple[Any, Any], TensorMeta] = {}


def tensor_meta(t: torch.Tensor) -> TensorMeta:
    key = (t.shape, t.dtype)
    meta = TENSOR_META_CACHE.get(key)
    if meta is None:
        if len(TENSOR_META_CACHE) >= 4096:
            TENSOR_META_CACHE.clear()
        meta = TensorMeta(tuple(t.shape), str(t.dtype).removeprefix("torch."))
        TENSOR_META_CACHE[key] = meta
    return meta


def describe(obj: Any) -> Structure:
    if isinstance(obj, torch.Tensor):
        return tensor_meta(obj)
    if isinstance(obj, tuple):
        return tuple(describe(o) for o in obj)
    if isinstance(obj, list):
        return [describe(o) for o in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in obj.items()}
    return None


def describe_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Structure:
    if not kwargs:
        if len(args) == 1:
            return describe(args[0])
        return [describe(a) for a in args]
    described: dict[str, Structure] = {str(i): describe(a) for i, a in enumerate(args)}
    described.update({k: describe(v) for k, v in kwargs.items()})
    return described


def nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(o) for o in obj)
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
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
