"""Meta twins: the meta stand-ins of a model's parameters and buffers.

Owns :class:`MetaTwins` (swap, hold, substitute, restore) and
:func:`swapped_to_meta`, which swaps every tensor of a model for a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from netsight.trace.inputs import tree_map
from netsight.trace.keys import META, MISSING, PARAMETER, TENSOR, below_dispatch_modes

__all__ = ["MetaTwins", "swapped_to_meta"]


class MetaTwins:
    """Meta stand-ins for a model's parameters and buffers.

    ``swap(module)`` puts a meta tensor of the same shape, strides and dtype in
    place of each of the module's own tensors (one twin per tensor, so a tensor
    shared by several modules gets one twin); ``restore()`` puts every original
    back. A module can also be *held* (:meth:`hold`): left as it is until
    something needs its tensors on meta (see ``leaf_runner``), which spares
    the twins of leaf calls that are replayed and never run.
    """

    def __init__(self) -> None:
        self._swapped: list[tuple[dict[str, Any], str, Any]] = []
        self._twins: dict[int, torch.Tensor] = {}
        self._rnns: list[nn.RNNBase] = []
        #: id(module) of the held modules not swapped yet
        self.held: set[int] = set()
        self._held_modules: list[nn.Module] = []
        #: id(tensor) -> tensor, for every tensor of a held module (built on demand)
        self._held_tensors: dict[int, torch.Tensor] | None = None

    def twin(self, tensor: torch.Tensor) -> torch.Tensor:
        meta = self._twins.get(id(tensor))
        if meta is None:
            # Made below the trace's dispatch mode when called during the pass:
            # the mode would see a real tensor and ask for its twin again.
            with below_dispatch_modes():
                meta = self._make_twin(tensor)
            self._twins[id(tensor)] = meta
        return meta

    @staticmethod
    def _make_twin(tensor: torch.Tensor) -> torch.Tensor:
        tp = type(tensor)
        # (isinstance(x, nn.Parameter) runs Python code for any other type)
        if tp is PARAMETER or (tp is not TENSOR and isinstance(tensor, PARAMETER)):
            # nn.Parameter(meta, requires_grad), without its Python __new__ or the
            # detached alias Tensor._make_subclass makes (~4 us a parameter): a
            # fresh leaf whose class is set, as torch's UninitializedParameter.
            # materialize does.
            meta = torch.empty_like(tensor, device=META, requires_grad=tensor.requires_grad)
            meta.__class__ = PARAMETER
            return meta
        return torch.empty_like(tensor, device=META)

    def swap_all(self, modules: Iterable[nn.Module], *, skip: set[int] | None = None) -> None:
        """:meth:`swap` for every module (but those whose id is in ``skip``)."""
        record = self._swapped.append
        known = self._twins.get
        twin = self.twin
        for module in modules:
            if skip and id(module) in skip:
                continue
            stores: tuple[dict[str, Any], dict[str, Any]] = (module._parameters, module._buffers)
            for store in stores:
                if not store:
                    continue
                for key, tensor in store.items():
                    if tensor is None or tensor.is_meta:
                        continue
                    meta = known(id(tensor))
                    if meta is None:
                        meta = twin(tensor)
                    record((store, key, tensor))
                    store[key] = meta  # a value replaced, not a key added: iteration goes on
            if isinstance(module, nn.RNNBase):
                self._rnns.append(module)
                module._init_flat_weights()  # RNNs cache references to their weights

    def swap(self, module: nn.Module) -> None:
        """Give ``module`` its twins (a held module stops being held)."""
        self.held.discard(id(module))
        self.swap_all((module,))

    def hold(self, modules: list[nn.Module]) -> None:
        # Updated in place: the leaf runner made before this call reads this set.
        self._held_modules = modules
        self.held.clear()
        self.held.update(map(id, modules))

    @property
    def held_any(self) -> bool:
        """Whether any module was held during the pass."""
        return bool(self._held_modules)

    def substitute(self, obj: Any) -> Any:
        """``obj`` with the tensors of held modules replaced by their twins, or
        ``MISSING`` if it holds none (a held leaf's tensors used outside its
        own call: tied weights, ``module.forward(x)`` called directly)."""
        if self._held_tensors is None:
            self._held_tensors = {
                id(t): t
                for m in self._held_modules
                for store in (m._parameters, m._buffers)
                for t in store.values()
                if t is not None
            }
        held = self._held_tensors
        found = False

        def twin_of(t: torch.Tensor) -> torch.Tensor:
            nonlocal found
            if held.get(id(t)) is t and not t.is_meta:
                found = True
                return self.twin(t)
            return t

        result = tree_map(twin_of, obj)
        return result if found else MISSING

    def restore(self) -> None:
        swapped, self._swapped = self._swapped, []
        for store, key, tensor in reversed(swapped):
            store[key] = tensor
        rnns, self._rnns = self._rnns, []
        for rnn in rnns:
            rnn._init_flat_weights()


@contextlib.contextmanager
def swapped_to_meta(modules: list[nn.Module]) -> Iterator[None]:
    """Replace every parameter and buffer of ``modules`` (every module of the
    model) by a meta tensor of the same shape for the block; put the originals
    back on every path. (Tensors the forward puts in plain attributes are the
    caller's to restore: :func:`~netsight.hooks.preserve_attributes`.)"""
    twins = MetaTwins()
    try:
        twins.swap_all(modules)
        yield
    finally:
        twins.restore()
