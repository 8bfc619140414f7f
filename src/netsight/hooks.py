"""One context manager that registers hooks and always removes them.

Every netsight feature that watches a model goes through :class:`HookSet`, so
"no hook is left behind" is proved once, here, and tested for every public call.
The small model helpers those features share live here too: the training flags
and attributes restored after a pass, the lazy-module check, the compiled
wrapper's original, and the device the model is on (:func:`model_device`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, overload

import torch
from torch import nn
from torch.nn.modules import module as module_module
from torch.utils.hooks import RemovableHandle

from netsight.errors import LazyModuleError

__all__ = [
    "COMPILED_PREFIX",
    "HookSet",
    "LazyModuleError",
    "StopForward",
    "check_not_lazy",
    "count_hooks",
    "model_device",
    "preserve_attributes",
    "preserve_state",
    "unwrap_compiled",
]

#: What ``torch.compile`` puts before every name of the model it wraps.
COMPILED_PREFIX = "_orig_mod."


def check_not_lazy(model: nn.Module) -> None:
    """Refuse a model with uninitialised lazy parameters or buffers.

    A lazy module (``nn.LazyLinear``, ``nn.LazyConv2d`` ...) becomes its ordinary
    counterpart on its first forward, with new weights: a netsight pass would be
    that first forward and change the user's model. The user's own first forward
    (or ``torch.nn.modules.lazy.LazyModuleMixin.initialize_parameters``) should.

    Raises:
        LazyModuleError: naming the uninitialised modules and what to do.
    """
    lazy = []
    for name, module in model.named_modules():
        tensors = [*module._parameters.values(), *module._buffers.values()]
        if any(t is not None and nn.parameter.is_lazy(t) for t in tensors):
            lazy.append(f"{name or '(model)'} ({type(module).__name__})")
    if lazy:
        shown = ", ".join(lazy[:5]) + (f" and {len(lazy) - 5} more" if len(lazy) > 5 else "")
        raise LazyModuleError(
            f"the model has lazy modules whose parameters are not initialised yet: {shown}. "
            f"Their first forward creates the weights and turns them into ordinary modules, "
            f"and netsight does not change your model: run one forward pass first "
            f"(model(example_input)), then call netsight again"
        )


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The model a ``torch.compile``'d module wraps (``OptimizedModule._orig_mod``),
    through any number of wrappings; any other module as it is.

    netsight runs and names the original module: the compiled wrapper shares its
    parameters, and its own names all start with ``_orig_mod.``; dynamo's graph
    would hide the module calls that hooks watch.
    """
    while type(model).__name__ == "OptimizedModule":
        inner = model.__dict__.get("_orig_mod", None) or model._modules.get("_orig_mod")
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


_CPU = torch.device("cpu")


@overload
def model_device(model: nn.Module, default: torch.device = ...) -> torch.device: ...


@overload
def model_device(model: nn.Module, default: None) -> torch.device | None: ...


def model_device(model: nn.Module, default: torch.device | None = _CPU) -> torch.device | None:
    """The device of the model's first parameter, else of its first buffer, else
    ``default`` (the CPU; ``None`` for callers that then leave their inputs where
    they are). A model built on the meta device answers ``meta``.
    """
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return default


PreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
PostHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]
#: ``run(module, call_impl, args, kwargs) -> output``: how a wrapped call runs between
#: its hooks (``call_impl(*args, **kwargs)`` runs the module as usual).
CallRunner = Callable[[nn.Module, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


class StopForward(Exception):
    """Raised by a netsight hook to end a forward pass once what it needs has run.

    It is no failure of the model: the trace engine (:func:`netsight.trace`) and
    :func:`netsight.features.run_forward` let it through unchanged instead of
    reporting it as the error, or re-running the forward to find a failing layer.
    Subclass it for each purpose, so that a caller catches only its own.
    """


class HookSet:
    """Collects hook handles and removes all of them on exit, exceptions included.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.add(model.register_forward_hook(fn))
        ...     model(x)
        >>> # every hook is gone here, whatever happened inside
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        # (hook id, modules) of every add_forward_hooks call
        self._bulk: list[tuple[int, list[nn.Module]]] = []
        # (module, whether its instance dict had _compiled_call_impl) per add_call_hooks wrapper
        self._wrapped: list[tuple[nn.Module, bool]] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def add_forward_hooks(
        self, modules: Iterable[nn.Module], pre_hook: PreHook, post_hook: PostHook
    ) -> None:
        """Give every module ``pre_hook(module, args, kwargs)`` and
        ``post_hook(module, args, kwargs, output)``: the same as
        ``register_forward_pre_hook(pre_hook, with_kwargs=True)`` and
        ``register_forward_hook(post_hook, with_kwargs=True)`` on each, without
        two handle objects per module (~5 us a module, which adds up on models
        with thousands of modules). Removed by :meth:`remove` like the others.
        """
        # One id, reserved from torch's own counter, keys the hooks in every
        # module's dicts (ids only have to be unique within one dict).
        hook_id = RemovableHandle(OrderedDict()).id
        done: list[nn.Module] = []
        self._bulk.append((hook_id, done))
        for module in modules:
            try:
                pre, pre_kwargs = module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs
                post, post_kwargs = module._forward_hooks, module._forward_hooks_with_kwargs
            except AttributeError:  # not set up by nn.Module.__init__: the public way
                self.add(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
                self.add(module.register_forward_hook(post_hook, with_kwargs=True))
                continue
            done.append(module)
            pre[hook_id] = pre_hook
            pre_kwargs[hook_id] = True
            post[hook_id] = post_hook
            post_kwargs[hook_id] = True

    def add_call_hooks(
        self,
        modules: Iterable[nn.Module],
        pre_hook: PreHook,
        post_hook: PostHook,
        *,
        run: CallRunner | None = None,
    ) -> list[nn.Module]:
        """Run ``pre_hook(module, args, kwargs)`` before and ``post_hook(module,
        args, kwargs, output)`` after every call of every module, exactly when
        :meth:`add_forward_hooks` would, for less: ~1 us a call instead of ~4 us.

        ``module(...)`` runs ``Module._wrapped_call_impl``, which calls the
        instance's ``_compiled_call_impl`` when one is set (``module.compile()``
        sets it) and ``_call_impl`` (hooks, then ``forward``) otherwise. Setting
        it to a wrapper around ``_call_impl`` watches the same calls as hooks do
        (``module.forward(...)`` called directly is not watched either way) and
        spares ``_call_impl`` its hook-running path. The wrapper is used only
        where nothing could tell the difference from a last-registered pair of
        hooks: the class keeps ``Module.__call__``, the module is not compiled,
        and no forward pre-hook of its own or a global one would run before
        ours. Any other module gets real hooks (:meth:`add_forward_hooks`).

        ``run``: for wrapped modules, ``run(module, call_impl, args, kwargs)``
        produces the output between the two hooks instead of ``call_impl(*args,
        **kwargs)`` (a trace uses it to answer a repeated call from a cache).
        Modules that get real hooks always run as usual.

        Returns the modules that got the wrapper (the others got real hooks).
        """
        hooked: list[nn.Module] = []
        wrapped: list[nn.Module] = []
        wrappable = _WRAPPED_CALL_IMPL is not None and not _global_pre_hooks()
        plain_call: dict[type, bool] = {}  # class -> keeps Module.__call__
        for module in modules:
            tp = type(module)
            plain = plain_call.get(tp)
            if plain is None:
                plain = plain_call[tp] = (
                    tp.__call__ is _MODULE_CALL and tp._wrapped_call_impl is _WRAPPED_CALL_IMPL
                )
            if (
                wrappable
                and plain
                and module._compiled_call_impl is None
                and not module._forward_pre_hooks
            ):
                state = module.__dict__
                self._wrapped.append((module, "_compiled_call_impl" in state))
                state["_compiled_call_impl"] = _call_wrapper(module, pre_hook, post_hook, run)
                wrapped.append(module)
            else:
                hooked.append(module)
        if hooked:
            self.add_forward_hooks(hooked, pre_hook, post_hook)
        return wrapped

    def remove(self) -> None:
        """Remove every hook; calling it again is harmless."""
        handles, self._handles = self._handles, []
        bulk, self._bulk = self._bulk, []
        wrapped, self._wrapped = self._wrapped, []
        for module, had_entry in wrapped:
            if had_entry:
                module.__dict__["_compiled_call_impl"] = None  # it was None (checked)
            else:
                module.__dict__.pop("_compiled_call_impl", None)
        for hook_id, modules in bulk:
            for module in modules:
                module._forward_pre_hooks.pop(hook_id, None)
                module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
                module._forward_hooks.pop(hook_id, None)
                module._forward_hooks_with_kwargs.pop(hook_id, None)
        for handle in handles:
            handle.remove()

    def __len__(self) -> int:
        bulk = sum(len(modules) for _, modules in self._bulk)
        return len(self._handles) + 2 * (bulk + len(self._wrapped))

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


_MODULE_CALL = nn.Module.__call__
_WRAPPED_CALL_IMPL = getattr(nn.Module, "_wrapped_call_impl", None)


def _global_pre_hooks() -> bool:
    """Whether global forward pre-hooks exist (or we cannot tell)."""
    hooks = getattr(module_module, "_global_forward_pre_hooks", None)
    return hooks is None or bool(hooks)


def _call_wrapper(
    module: nn.Module, pre_hook: PreHook, post_hook: PostHook, run: CallRunner | None
) -> Callable[..., Any]:
    call_impl: Callable[..., Any] = module._call_impl
    if run is None:

        def call(*args: Any, **kwargs: Any) -> Any:
            pre_hook(module, args, kwargs)
            output = call_impl(*args, **kwargs)
            post_hook(module, args, kwargs, output)
            return output

        return call
    runner: CallRunner = run

    def run_call(*args: Any, **kwargs: Any) -> Any:
        pre_hook(module, args, kwargs)
        output = runner(module, call_impl, args, kwargs)
        post_hook(module, args, kwargs, output)
        return output

    return run_call


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def count_hooks(model: nn.Module) -> int:
    """Number of forward/backward hooks on ``model`` and all its submodules."""
    total = 0
    for module in model.modules():
        for attr in _HOOK_DICTS:
            hooks: dict[Any, Any] | None = getattr(module, attr, None)
            if hooks:
                total += len(hooks)
    return total


_TRAIN = nn.Module.train
_EVAL = nn.Module.eval
_SETATTR = nn.Module.__setattr__
_set_attribute = object.__setattr__


def _types(modules: list[nn.Module]) -> set[type[nn.Module]]:
    return set(map(type, modules))


def _set_training(model: nn.Module, modules: list[nn.Module], flag: bool) -> None:
    """``model.train(flag)``; when no class involved overrides ``train``/``eval``,
    only the flags that differ are written (each write is a ~4 us
    ``Module.__setattr__``; ``train`` would write every module's flag)."""
    overridden = type(model).eval is not _EVAL if not flag else False
    if overridden or any(tp.train is not _TRAIN for tp in _types(modules)):
        if flag:
            model.train()
        else:
            model.eval()
        return
    _write_flags(modules, [flag] * len(modules))


def _write_flags(modules: list[nn.Module], flags: list[bool]) -> None:
    """Give each module its flag, writing only those that differ.

    ``module.training = flag`` goes through ``Module.__setattr__`` (~3 us: it
    looks the name up in the parameter, module and buffer stores first). For a
    class that keeps ``Module.__setattr__``, a bool named ``training`` ends in
    ``object.__setattr__`` there, so that is called directly (~0.1 us); any
    other class gets the real assignment.
    """
    plain: dict[type, bool] = {}
    for module, flag in zip(modules, flags, strict=True):
        if module.training is flag:
            continue
        tp = type(module)
        keeps = plain.get(tp)
        if keeps is None:
            keeps = plain[tp] = tp.__setattr__ is _SETATTR
        if keeps:
            _set_attribute(module, "training", flag)
        else:
            module.training = flag


@contextmanager
def preserve_state(
    model: nn.Module, mode: str = "same", *, modules: list[nn.Module] | None = None
) -> Iterator[None]:
    """Set ``mode`` ("eval", "train" or "same") for the block, then restore every
    module's own training flag, whatever happened inside.

    ``modules``: ``list(model.modules())`` when the caller has it already.
    """
    if modules is None:
        modules = list(model.modules())
    flags = [module.training for module in modules]
    try:
        if mode == "eval":
            _set_training(model, modules, False)
        elif mode == "train":
            _set_training(model, modules, True)
        yield
    finally:
        _write_flags(modules, flags)


#: nn.Module's own bookkeeping in ``__dict__``: never a user's tensor.
_MODULE_INTERNALS = frozenset(
    {
        "training",
        "_parameters",
        "_buffers",
        "_non_persistent_buffers_set",
        "_modules",
        "_backward_pre_hooks",
        "_backward_hooks",
        "_is_full_backward_hook",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
    }
)


_MISSING = object()


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth >= 2:
        return False
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    return False


@contextmanager
def preserve_attributes(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Put back, on every path, the tensors that ``modules`` hold in plain
    attributes (not parameters or buffers), directly or in lists, tuples and dicts.

    A forward may replace them (torchvision's ``AnchorGenerator`` sets
    ``self.cell_anchors = [a.to(device) ...]``; ``torch.nn.utils.prune`` sets
    ``module.weight`` before every call) or cache new ones. On the meta device
    those would be meta tensors left in the user's model, and every later
    forward would fail. Restored: the attribute's original object (and a list's
    or dict's original contents, if they were changed in place, also an empty one
    the block filled with tensors); attributes the
    block added that hold tensors are removed. torch.nn's own layers without
    hooks of their own set no attributes in their forward: on those only added
    attributes are removed (a tensor swapped into an existing attribute of such a
    layer from outside it is not seen).
    """
    saved: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    # torch.nn's own layers set no attribute in their forward: for those without
    # hooks of their own only the number of attributes is kept (cheap on 8,000
    # leaves); a dict keeps insertion order, so what was added comes after it
    counted: list[tuple[dict[str, Any], int]] = []
    plain: dict[type, bool] = {}
    for module in modules:
        attributes = module.__dict__
        tp = type(module)
        builtin = plain.get(tp)
        if builtin is None:
            builtin = plain[tp] = tp.__module__.startswith("torch.nn.")
        if builtin and not (module._forward_pre_hooks or module._forward_hooks):
            counted.append((attributes, len(attributes)))
            continue
        kept = {k: v for k, v in attributes.items() if k not in _MODULE_INTERNALS}
        contents: dict[str, Any] = {}
        for key, value in kept.items():
            # an empty one too: a cache the forward fills (timm's attention_bias_cache)
            if isinstance(value, list) and (not value or _holds_tensor(value)):
                contents[key] = list(value)
            elif isinstance(value, dict) and (not value or _holds_tensor(value)):
                contents[key] = dict(value)
        saved.append((attributes, kept, contents))
    try:
        yield
    finally:
        for attributes, count in counted:
            if len(attributes) > count:
                for key in list(attributes)[count:]:
                    if _holds_tensor(attributes[key]):
                        del attributes[key]
        for attributes, kept, contents in saved:
            for key in [k for k in attributes if k not in kept and k not in _MODULE_INTERNALS]:
                if _holds_tensor(attributes[key]):
                    del attributes[key]  # a tensor cached by the block
            for key, value in kept.items():
                now = attributes.get(key, _MISSING)
                if now is not value and (_holds_tensor(now) or _holds_tensor(value)):
                    attributes[key] = value
                before = contents.get(key)
                if before is not None and (before or _holds_tensor(value)):
                    _restore_contents(value, before)


def _restore_contents(value: Any, before: Any) -> None:
    """Put a list's or dict's original items back if the block changed them."""
    if isinstance(value, list):
        if len(value) != len(before) or any(a is not b for a, b in zip(value, before, strict=True)):
            value[:] = before
    elif isinstance(value, dict) and (
        value.keys() != before.keys() or any(value[k] is not before[k] for k in before)
    ):
        value.clear()
        value.update(before)
