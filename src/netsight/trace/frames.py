"""The frame: how one module call is recorded while a pass runs.

The recorder (:mod:`netsight.trace.recorder`) writes frames, the op counter
(:mod:`netsight.trace.counter`) and the leaf replay (:mod:`netsight.trace.replay`)
add mult-adds to them, and :mod:`netsight.trace.assembly` turns them into
:class:`~netsight.trace.records.LayerRecord` objects.
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = [
    "DEPTH",
    "FLOPS",
    "INDEX",
    "INPUT",
    "MODULE",
    "OUTPUT",
    "OUTPUT_BYTES",
    "PARENT",
    "UNCOUNTED",
    "Frame",
    "add_uncounted",
]

# One module call is a frame. There is one per call and a model can have tens of
# thousands, so a frame is a plain list (~0.1 us to build, against ~0.8 us for an
# object with slots), read and written through these indices:
MODULE = 0  # the module
INDEX = 1  # position in call order
PARENT = 2  # index of the caller's frame, or None
DEPTH = 3  # number of enclosing calls
INPUT = 4  # Structure of the inputs
OUTPUT = 5  # Structure of the outputs (None until the call returns)
OUTPUT_BYTES = 6
FLOPS = 7  # FLOPs of the ops run directly in this call
UNCOUNTED = 8  # list of heavy ops without a formula, or None
Frame: TypeAlias = list[Any]


def add_uncounted(frame: Frame, op: str) -> None:
    if frame[UNCOUNTED] is None:
        frame[UNCOUNTED] = [op]
    else:
        frame[UNCOUNTED].append(op)
