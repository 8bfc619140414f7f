"""The frame recorder: the hook callbacks that write one frame per module call.

Performance-critical: its pre- and post-hook run for every module call of a
trace, so they are closures over locals rather than methods.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netsight.trace.frames import INDEX, MODULE, OUTPUT, OUTPUT_BYTES, Frame
from netsight.trace.records import (
    TENSOR_META_CACHE,
    Structure,
    describe,
    describe_call,
    nbytes,
    tensor_meta,
)

__all__ = ["FrameRecorder"]


class FrameRecorder:
    """Hook callbacks and the op counter share this state: ``frames`` in call
    order and ``stack``, the calls running now (innermost last)."""

    def __init__(self) -> None:
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
