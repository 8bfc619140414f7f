"""The leaf-call cache: repeated calls of torch.nn's leaf modules replayed whole.

Owns :func:`leaf_runner` (the ``run`` of ``HookSet.add_call_hooks`` for leaves),
which leaves may be replayed (:func:`replayable_leaf`) and the check for global
module hooks that turns replay off (:func:`global_module_hooks`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from torch import nn

from netsight.hooks import CallRunner
from netsight.trace.frames import FLOPS, UNCOUNTED, Frame, add_uncounted
from netsight.trace.keys import (
    ATOMS,
    COMPLEX,
    MISSING,
    PARAMETER,
    STRIDED,
    TENSOR,
    OutSpec,
    Uncacheable,
    add_keys,
    below_dispatch_modes,
    default_dtype,
    out_spec,
    rebuild,
)
from netsight.trace.twins import MetaTwins

__all__ = ["global_module_hooks", "leaf_runner", "replayable_leaf"]

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


def global_module_hooks() -> bool:
    """Whether any global module hook exists (or we cannot tell)."""
    module = sys.modules.get(_MODULE_MODULE)
    return any(getattr(module, name, True) for name in _GLOBAL_HOOKS)


def replayable_leaf(module: nn.Module) -> bool:
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
    """The cache key of one leaf-module call (raises Uncacheable)."""
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
    if ATOMS.issuperset(types):  # the usual case: ints, floats, bools, strings
        settings: tuple[Any, ...] = (types, values)
    else:
        inner: list[Any] = []
        add_keys(inner, values)
        settings = (None, tuple(inner))
    # The lengths of the groups after these items are fixed by them, so one
    # flat run of tensor and argument keys is unambiguous.
    key: list[Any] = [
        type(module),
        default_dtype(),
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
    add_keys(key, args)
    if kwargs:
        add_keys(key, kwargs.values())
    return tuple(key)


def _add_state_keys(key: list[Any], tensors: Iterable[Any]) -> None:
    """``add_keys`` for a module's parameters and buffers, which may still be
    the real tensors of a held module (``MetaTwins.hold``): a real tensor
    whose twin will have the same geometry (strided, dense: ``empty_like``
    keeps its strides; storage offset 0) is keyed as that twin will be."""
    append = key.append
    for t in tensors:
        tp = type(t)
        if tp is TENSOR or tp is PARAMETER:
            dtype = t.dtype
            if dtype in COMPLEX:
                raise Uncacheable
            if t.is_meta:
                append((t.shape, t.stride(), t.storage_offset(), dtype))
            elif t.layout is STRIDED and not t.storage_offset() and t.is_contiguous():
                append((t.shape, t.stride(), 0, dtype))
            else:
                raise Uncacheable
        else:
            add_keys(key, (t,))


#: A leaf-cache entry: (FLOPs, heavy ops without a formula, how to rebuild the
#: outputs); None: calls with this key always run.
_LeafEntry: TypeAlias = tuple[int, tuple[str, ...], OutSpec]


def leaf_runner(
    frames: list[Frame], stack: list[Frame], twins: MetaTwins | None = None
) -> CallRunner:
    """``run`` for HookSet.add_call_hooks: replays repeated leaf-module calls.

    ``frames`` and ``stack``: the recorder's (its pre-hook has pushed the call's
    frame when ``run`` starts). ``twins``: the modules it holds get their meta
    twins just before a call of theirs really runs; a replayed call needs none."""
    cache: dict[tuple[Any, ...], _LeafEntry | None] = {}
    below_modes = below_dispatch_modes
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
        except (Uncacheable, RuntimeError):  # RuntimeError: no strides (sparse)
            key = None
        frame = stack[-1]  # this call's, pushed by the pre-hook
        entry = cache.get(key, MISSING) if key is not None else None
        if entry is not None and entry is not MISSING:
            flops, uncounted, spec = entry
            frame[FLOPS] += flops
            for op in uncounted:
                add_uncounted(frame, op)
            with below_modes():
                return spec[1].clone() if spec[0] == "clone" else rebuild(spec, args, kwargs)
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
                        spec = out_spec(out, args, kwargs, set())
                    replay = (frame[FLOPS], tuple(frame[UNCOUNTED] or ()), spec)
            except (Uncacheable, RuntimeError):
                pass
        cache[key] = replay
        return out

    return run
