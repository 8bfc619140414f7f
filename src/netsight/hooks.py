"""One context manager that registers hooks and always removes them.

Every netsight feature that watches a model goes through :class:`HookSet`, so
"no hook is left behind" is proved once, here, and tested for every public call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookSet", "count_hooks", "preserve_state"]


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

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every hook; calling it again is harmless."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


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


@contextmanager
def preserve_state(model: nn.Module, mode: str = "same") -> Iterator[None]:
    """Set ``mode`` ("eval", "train" or "same") for the block, then restore every
    module's own training flag, whatever happened inside."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield
    finally:
        for module, flag in flags:
            module.training = flag
