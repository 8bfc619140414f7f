"""The frame recorder: the summary's :class:`~netsight.trace.runner.Recorder`.

Owns :class:`FrameRecorder`: the hook callbacks that write one frame per module
call, how they are installed for a pass (module-call wrappers, the leaf-call
replay and the op counter on meta, the fused attention paths turned off on a
real pass) and the :class:`~netsight.trace.runner.Failure` read from the frames.
Performance-critical: its pre- and post-hook run for every module call of a
trace, so they are closures over locals rather than methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from netsight.hooks import HookSet
from netsight.trace.counter import OpCounter
from netsight.trace.frames import INDEX, INPUT, MODULE, OUTPUT, OUTPUT_BYTES, PARENT, Frame
from netsight.trace.records import (
    TENSOR_META_CACHE,
    Structure,
    describe,
    describe_call,
    format_structure,
    nbytes,
    tensor_meta,
)
from netsight.trace.replay import global_module_hooks, leaf_runner, replayable_leaf
from netsight.trace.runner import Failure, Forward

__all__ = ["FrameRecorder"]


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


class FrameRecorder:
    """Records one frame per module call (see :mod:`netsight.trace.frames`).

    Hook callbacks and the op counter share this state: ``frames`` in call
    order and ``stack``, the calls running now (innermost last).

    Args:
        count: count mult-adds (the op counter, with the meta pass's op cache and
            leaf-call replay). Without it only module calls are recorded: enough
            to name where a forward failed.
    """

    def __init__(self, *, count: bool = True) -> None:
        self.count = count
        self.names: Mapping[int, list[str]] = {}
        self.frames: list[Frame] = []
        self.stack: list[Frame] = []
        frames, stack = self.frames, self.stack
        append, push, pop = frames.append, stack.append, stack.pop
        tensor = torch.Tensor
        known_meta = TENSOR_META_CACHE.get

        # Closures over locals rather than methods: these run twice per module
        # call, and every attribute lookup saved counts on large models.
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not kwargs and len(args) == 1 and isinstance(args[0], tensor):
                x = args[0]
                described: Structure = known_meta((x.shape, x.dtype)) or tensor_meta(x)
            else:
                described = describe_call(args, kwargs)
            parent = stack[-1][INDEX] if stack else None
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
                if frame[MODULE] is module:
                    if isinstance(output, tensor):
                        key = (output.shape, output.dtype)
                        frame[OUTPUT] = known_meta(key) or tensor_meta(output)
                        frame[OUTPUT_BYTES] = output.numel() * output.element_size()
                    else:
                        frame[OUTPUT] = describe(output)
                        frame[OUTPUT_BYTES] = nbytes(output)
                    return

        self.pre_hook = pre_hook
        self.post_hook = post_hook

    def watch(self, hooks: HookSet, forward: Forward) -> contextlib.AbstractContextManager[object]:
        """Hooks on every module call; on a meta pass without global module hooks,
        torch.nn's leaves are replayed when repeated (and held: they get meta twins
        only if a call of theirs really runs). The forward runs in the op counter,
        and on a real pass of a model with fused attention paths, outside them."""
        self.names = forward.names
        modules, twins = forward.modules, forward.twins
        pre_hook, post_hook = self.pre_hook, self.post_hook
        if not self.count:
            hooks.add_call_hooks(modules, pre_hook, post_hook)
            return contextlib.nullcontext()
        if forward.real or global_module_hooks():
            hooks.add_call_hooks(modules, pre_hook, post_hook)
        else:
            leaves: list[nn.Module] = []
            others: list[nn.Module] = []
            for module in modules:
                (leaves if replayable_leaf(module) else others).append(module)
            hooks.add_call_hooks(others, pre_hook, post_hook)
            wrapped = hooks.add_call_hooks(
                leaves, pre_hook, post_hook, run=leaf_runner(self.frames, self.stack, twins)
            )
            if twins is not None:
                twins.hold([m for m in wrapped if not isinstance(m, nn.RNNBase)])
        counter = OpCounter(self.stack, cache=not forward.real, twins=twins)
        if forward.real and any(isinstance(m, _FUSED_PATH_MODULES) for m in modules):
            return _both(_NoFusedPaths(), counter)
        return counter

    def failure(self) -> Failure:
        """The innermost running frame, the stack, and the leaf calls that returned."""
        names = self.names

        def label(frame: Frame) -> str:
            module = frame[MODULE]
            name = names.get(id(module), [""])[0]
            return name or type(module).__name__

        frames, stack = self.frames, self.stack
        parents = {f[PARENT] for f in frames}
        running = {f[INDEX] for f in stack}
        done = tuple(
            f"{label(f)} -> {format_structure(f[OUTPUT])}"
            for f in frames
            if f[INDEX] not in parents and f[INDEX] not in running and f[OUTPUT] is not None
        )
        if not stack:
            return Failure(ran_before=done)
        failing = stack[-1]
        return Failure(
            module_name=label(failing),
            module_type=type(failing[MODULE]).__name__,
            input_shapes=format_structure(failing[INPUT]),
            call_stack=tuple(f"{label(f)} ({type(f[MODULE]).__name__})" for f in stack),
            ran_before=done,
        )


@contextlib.contextmanager
def _both(
    outer: contextlib.AbstractContextManager[object],
    inner: contextlib.AbstractContextManager[object],
) -> Iterator[None]:
    with outer, inner:
        yield
