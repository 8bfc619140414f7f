"""The op counter: the ``TorchDispatchMode`` every op of a pass goes through.

Owns :class:`OpCounter` (mult-adds per module call; on meta, the per-trace op
cache and the checked shape rules of :mod:`netsight.trace.rules`) and the guard
that keeps torch's dynamo wrapper off its hot path. Performance-critical: it
runs for every ATen op of a trace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import torch
from torch._compile import _disable_dynamo
from torch.utils._python_dispatch import TorchDispatchMode

from netsight._flops import formula_for, is_heavy_uncounted
from netsight.trace.frames import FLOPS, Frame, add_uncounted
from netsight.trace.keys import (
    MISSING,
    OutSpec,
    Uncacheable,
    call_key,
    default_dtype,
    out_spec,
    rebuild,
)
from netsight.trace.rules import RULES, VERDICTS, Rule, class_of, rule_agrees, witness_verdict
from netsight.trace.twins import MetaTwins

__all__ = ["OpCounter"]

#: A cache entry: (op, how to rebuild its outputs, FLOPs or None, name of a heavy
#: op without a formula or None). None in the cache: this call always runs.
_Entry: TypeAlias = tuple[Any, OutSpec, "int | None", "str | None"]

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


def _eval_frame_callback_getter() -> Callable[[], Any] | None:
    try:
        from torch._C._dynamo import eval_frame
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    getter = getattr(eval_frame, "get_eval_frame_callback", None)
    return getter if callable(getter) else None


# torch wraps every TorchDispatchMode.__torch_dispatch__ in torch._disable_dynamo
# (~2.5 us a call, paid by every op of a trace) so that torch.compile never traces
# into it. That wrapper only does something while a dynamo frame callback is
# installed, so the op counter checks for one (~50 ns) and goes through the same
# wrapper only then; without the check (another torch) torch's wrapping stays.
_DYNAMO_CALLBACK = _eval_frame_callback_getter()
_is_compiling = torch.compiler.is_compiling


class OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Adds every ATen op's mult-adds to the innermost running module call; with
    ``cache`` (meta tensors only) it also replays repeated calls and applies the
    checked shortcuts (see :mod:`netsight.trace.keys` and :mod:`netsight.trace.rules`)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return _DYNAMO_CALLBACK is None

    def __init__(
        self, stack: list[Frame], *, cache: bool = False, twins: MetaTwins | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._stack = stack
        self._twins = twins
        self._cache: dict[Any, _Entry | None] | None = {} if cache else None
        # id(func) -> (func, formula, name if heavy and uncounted): OpOverload's
        # __hash__ is Python code, so ops are looked up by id and confirmed.
        self._ops: dict[int, tuple[Any, Any, str | None]] = {}
        self.misses = 0  # calls that ran a kernel or a rule (cache hits are the rest)
        self.shortcuts = 0  # calls answered by a rule

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if _DYNAMO_CALLBACK is not None:
            # is_compiling(): dynamo tracing this frame (it folds the call to True)
            # takes the wrapped path, which it knows to skip; the callback: running
            # compiled code.
            if _is_compiling():
                return _guarded_dispatch(self, func, types, args, kwargs)
            callback = _DYNAMO_CALLBACK()
            if callback is not None and callback is not False:
                return _guarded_dispatch(self, func, types, args, kwargs)
        if kwargs is None:
            kwargs = {}
        cache = self._cache
        key = None
        if cache is not None:
            try:
                key = call_key(func, args, kwargs)
            except (Uncacheable, RuntimeError):  # RuntimeError: no strides (sparse)
                twins = self._twins
                if twins is not None and twins.held:
                    # a held leaf's real tensor used outside its own call: its twin
                    swapped = twins.substitute((args, kwargs))
                    if swapped is not MISSING:
                        return self.__torch_dispatch__(func, types, *swapped)
            else:
                entry = cache.get(key)
                if entry is not None and entry[0] is func:
                    stack = self._stack
                    if stack:
                        if entry[2] is not None:
                            stack[-1][FLOPS] += entry[2]
                        elif entry[3] is not None:
                            add_uncounted(stack[-1], entry[3])
                    spec = entry[1]
                    if spec[0] == "clone":  # the usual case, without a call
                        return spec[1].clone()
                    return rebuild(spec, args, kwargs)
        rule = RULES.get(id(func)) if key is not None else None
        if rule is not None and rule[0] is func:
            out = self._run_with_rule(func, rule[1], args, kwargs)
        else:
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
                stack[-1][FLOPS] += flops
            elif heavy is not None:
                add_uncounted(stack[-1], heavy)
        if key is not None and cache is not None and key not in cache:
            self.misses += 1
            replay = None if _never_cached(func) else _replayable(func, key, args, kwargs, out)
            cache[key] = None if replay is None else (func, replay, flops, heavy)
        return out

    def _run_with_rule(
        self, func: Any, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The op's outputs: from its rule once the rule has agreed with the
        kernel on a call of the same class, from the kernel otherwise."""
        try:
            kind = (
                id(func),
                default_dtype(),
                class_of(args),
                tuple(kwargs),
                class_of(kwargs.values()),
            )
        except Exception:
            return func(*args, **kwargs)
        verdict = VERDICTS.get(kind)
        if verdict is None and "torch._dynamo" not in sys.modules:
            verdict = witness_verdict(func, rule, args, kwargs)
            if verdict is not None:
                VERDICTS[kind] = verdict
        if verdict:
            try:
                out = rule(args, kwargs)
            except Exception:  # a rule can only ever hand over to the kernel
                out = None
            if out is not None:
                self.shortcuts += 1
                return out
        out = func(*args, **kwargs)
        if verdict is None:
            if len(VERDICTS) >= 4096:
                VERDICTS.clear()
            VERDICTS[kind] = rule_agrees(rule, out, args, kwargs)
        return out


def _replayable(
    func: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> OutSpec | None:
    """How to replay this call, or None when it must always run."""
    try:
        # A call that changed its arguments' metadata cannot be replayed.
        if call_key(func, args, kwargs) != key:
            return None
        return out_spec(out, args, kwargs, set())
    except (Uncacheable, RuntimeError):
        return None


# __torch_dispatch__ as torch would have wrapped it, for when dynamo is active.
_guarded_dispatch = _disable_dynamo(OpCounter.__torch_dispatch__, recursive=True)
