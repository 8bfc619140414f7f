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
checked rules when a shape is new; see ``OpCounter`` and ``RULES``. Repeated
calls of torch.nn's own leaf modules (same class, settings, parameter shapes
and input shapes) are replayed whole, without running ``forward`` or its ops
(``leaf_runner``); such leaves get their meta tensors only if a call of theirs
really runs, so a replayed leaf's weights are never copied to meta at all
(``MetaTwins``; an op that meets one of those real tensors elsewhere, tied
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

The package's modules, lowest first (each imports only modules above it):
:mod:`~netsight.trace.records` (the public record types and structures),
:mod:`~netsight.trace.frames` (one module call while a pass runs),
:mod:`~netsight.trace.inputs` (example inputs and their checks),
:mod:`~netsight.trace.keys` (the meta caches' keys and output specs),
:mod:`~netsight.trace.rules` (checked shape rules), :mod:`~netsight.trace.twins`
(meta twins), :mod:`~netsight.trace.runner` (the one runner: the rules every
netsight pass over a user's model follows, for any recorder),
:mod:`~netsight.trace.counter` (the op counter), :mod:`~netsight.trace.replay`
(the leaf-call cache), :mod:`~netsight.trace.recorder` (the summary's recorder)
and :mod:`~netsight.trace.assembly` (frames to a :class:`Trace`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netsight.options import Execution, Mode
from netsight.trace.assembly import assemble
from netsight.trace.inputs import InputMaker as InputMaker
from netsight.trace.inputs import Shape
from netsight.trace.recorder import FrameRecorder
from netsight.trace.records import (
    LayerRecord,
    Structure,
    TensorMeta,
    Trace,
    TraceError,
    UncalledModule,
    format_structure,
    iter_tensor_meta,
)
from netsight.trace.runner import gc_paused, run

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


@gc_paused
def trace(
    model: nn.Module,
    input_size: Shape | Sequence[Shape] | None = None,
    input_data: Any = None,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    mode: Mode | str = "eval",
    execution: Execution | str = "auto",
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
        A :class:`Trace`: :func:`netsight.trace.runner.run` with a
        :class:`~netsight.trace.recorder.FrameRecorder`, assembled.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or the input is malformed.
        ValueError: a bad ``mode`` or ``execution``, or inputs or ``device`` other
            than the model's.
        TraceError: the forward failed; the message names the module that failed,
            its input shapes and the layers that ran before it.
        StopForward: a netsight hook ended the forward on purpose; passed through
            unchanged (:class:`netsight.hooks.StopForward`).
    """
    return assemble(
        run(
            model,
            FrameRecorder,
            input_size,
            input_data,
            dtypes=dtypes,
            device=device,
            mode=mode,
            execution=execution,
            forward_kwargs=forward_kwargs,
        )
    )
