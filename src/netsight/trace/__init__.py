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

The package's modules, in import order: :mod:`~netsight.trace.records` (the
public record types), :mod:`~netsight.trace.frames` (one module call while the
pass runs), :mod:`~netsight.trace.inputs`, :mod:`~netsight.trace.keys` (the meta
caches' keys), :mod:`~netsight.trace.rules` (shape rules),
:mod:`~netsight.trace.twins` (meta twins), :mod:`~netsight.trace.recorder`,
:mod:`~netsight.trace.counter` (the op counter), :mod:`~netsight.trace.replay`
(the leaf-call cache), :mod:`~netsight.trace.assembly` (frames to records) and
:mod:`~netsight.trace.runner` (running the passes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netsight.hooks import (
    check_not_lazy,
    preserve_attributes,
    preserve_state,
    unwrap_compiled,
)
from netsight.trace.assembly import DTYPE_BYTES, assemble
from netsight.trace.frames import UNCOUNTED
from netsight.trace.inputs import InputMaker as InputMaker
from netsight.trace.inputs import Shape, input_maker
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
from netsight.trace.runner import (
    device_of,
    dtype_mismatch,
    gc_paused,
    run_meta,
    run_pass,
    survey,
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


@gc_paused
def trace(
    model: nn.Module,
    input_size: Shape | Sequence[Shape] | None = None,
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
    model_device = device_of(model)
    target_device = torch.device(device) if device is not None else model_device
    if device is not None and model_device.type != "meta" and target_device != model_device:
        raise ValueError(
            f"device={str(target_device)!r}, but the model's parameters are on {model_device}; "
            f"netsight never moves your model: call model.to({str(target_device)!r}) first"
        )
    inputs_on = input_maker(
        input_size,
        input_data,
        dtypes=dtypes,
        mode=mode,
        execution=execution,
        forward_kwargs=forward_kwargs,
        model_device=model_device,
        default_device=target_device,
    )

    names, modules = survey(model)
    on_meta_already = model_device.type == "meta"
    fallback_reason: str | None = None
    recorder: FrameRecorder | None = None

    mismatch = None
    if execution == "auto" and not on_meta_already:
        mismatch = dtype_mismatch(model, inputs_on)
        fallback_reason = mismatch

    with preserve_state(model, mode, modules=modules):
        if (execution in ("auto", "meta") and mismatch is None) or on_meta_already:
            try:
                recorder = run_meta(model, modules, inputs_on, names, on_meta=on_meta_already)
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
                    recorder = run_pass(model, modules, args, kwargs, names, real=True)
            finally:
                with torch.no_grad():
                    # restore what the forward changed (BatchNorm's running stats
                    # in train mode; its kernel does not bump _version): an
                    # untouched buffer is not written, so its _version stays too
                    for b, saved in buffers:
                        if not torch.equal(b, saved):
                            b.copy_(saved)
            ran = "real"

    records, uncalled, total_mult_adds, totals, scripted = assemble(modules, recorder, names)
    root_input = records[0].input if records else None
    uncounted = sorted({op for f in recorder.frames if f[UNCOUNTED] for op in f[UNCOUNTED]})
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
            t.numel * DTYPE_BYTES.get(t.dtype, 4) for t in iter_tensor_meta(root_input)
        ),
        total_mult_adds=total_mult_adds,
        uncounted_ops=tuple(uncounted),
        execution=ran,
        fallback_reason=fallback_reason,
        mode=mode,
        aliases=aliases,
        scripted=scripted,
    )
