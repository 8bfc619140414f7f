"""Capture the activations (and gradients) of chosen layers while the user runs
their own forward and backward.

Example:
    >>> with netsight.capture(model, layers=["features.0", nn.Conv2d], gradients=True) as cap:
    ...     loss = model(x).logsumexp(1).sum()
    ...     loss.backward()
    >>> cap.activations["features.0"].shape, cap.gradients["features.0"].shape

Why it is built this way:

* Outputs are copied inside the forward hook, because the next layer may
  overwrite them in place: the tutorials' VGG runs ``nn.ReLU(inplace=True)`` right
  after every conv/BN, and a kept reference would show the ReLU'd values instead
  of the conv output. On the CPU the copy is a copy-on-write one
  (``torch._lazy_clone``): the captured tensor shares the output's memory until
  either side is written, and the first write copies the data, inside PyTorch,
  before it changes anything. So the conv output under an in-place ReLU is copied
  then (what ``clone()`` would have cost), while an output that nothing
  overwrites, such as a ResNet conv's (read by BatchNorm), is never copied: no
  time and no second buffer. Other devices (on CUDA, writing a copy-on-write
  tensor on another stream or during graph capture raises), tensor subclasses,
  views of a larger buffer (which would keep all of it alive), storages PyTorch
  cannot share lazily (numpy, shared memory), code under ``torch.compile`` and
  a torch without ``_lazy_clone`` get a plain ``clone()``.
* Gradients are taken by a tensor hook on each captured output, registered in
  the forward hook. Such a hook sees the gradient with respect to the value the
  module produced, even when an in-place op modifies the tensor afterwards; the
  module-level full backward hooks do not survive in-place ops (pytorch#61519)
  and ``register_backward_hook`` is deprecated.
* Every hook lives only inside the ``with`` block and is removed on exit, also
  when the block raises.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeAlias

import torch
from torch import nn

from netsight.errors import CaptureBudgetError
from netsight.hooks import COMPILED_PREFIX, HookSet, unwrap_compiled

# torch._lazy_clone: a copy-on-write clone (private; missing from older torch versions).
_LAZY_CLONE: Callable[[torch.Tensor], torch.Tensor] | None = getattr(torch, "_lazy_clone", None)
_IS_COMPILING: Callable[[], bool] | None = getattr(torch.compiler, "is_compiling", None)

__all__ = [
    "Capture",
    "CaptureBudgetError",
    "LayerSpec",
    "capture",
    "list_layers",
    "resolve_layers",
]

#: A layer given by qualified name, glob pattern, module instance or module type.
LayerSpec: TypeAlias = "str | nn.Module | type[nn.Module]"


def list_layers(model: nn.Module, types: Iterable[type[nn.Module]] | None = None) -> list[str]:
    """Qualified names of the model's modules (each module once, by its first name).

    Args:
        model: the network.
        types: keep only modules that are instances of these types.

    Example:
        >>> netsight.list_layers(torchvision.models.resnet18(), types=[nn.Conv2d])[:2]
        ['conv1', 'layer1.0.conv1']
    """
    wanted = tuple(types) if types is not None else None
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        if wanted is None or isinstance(module, wanted):
            names.append(name)
    return names


def resolve_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec]
) -> dict[str, nn.Module]:
    """Map layer specs to ``{qualified name: module}``, in model order.

    Specs: a qualified name (``"features.3"``, aliases accepted), a glob
    (``"layer*.*.conv2"``), a module instance, or a module type (``nn.Conv2d``:
    every module of that type).

    Raises:
        KeyError: a name matches nothing; the message lists close matches.
        TypeError: a spec of another kind.
    """
    model = unwrap_compiled(model)
    if isinstance(layers, (str, nn.Module, type)):
        specs: list[LayerSpec] = [layers]
    elif isinstance(layers, Iterable):
        specs = list(layers)
    else:
        raise TypeError(
            f"layers: expected a layer name, glob, module or module type (or a list of "
            f"them), got {type(layers).__name__} {layers!r}; netsight.list_layers(model) "
            f"lists the names"
        )
    # names copied from a torch.compile'd model's state_dict or named_modules
    specs = [s.removeprefix(COMPILED_PREFIX) if isinstance(s, str) else s for s in specs]
    if not specs:
        raise ValueError("layers: expected at least one layer, got an empty list")
    canonical: dict[int, str] = {}
    for name, module in model.named_modules():
        canonical[id(module)] = name
    all_names: dict[str, nn.Module] = dict(model.named_modules(remove_duplicate=False))
    chosen: dict[int, nn.Module] = {}
    for spec in specs:
        if isinstance(spec, str):
            if spec in all_names:
                matches = [all_names[spec]]
            elif any(ch in spec for ch in "*?["):
                matches = [m for n, m in all_names.items() if n and fnmatch.fnmatchcase(n, spec)]
                if not matches:
                    raise KeyError(_unknown(spec, all_names, "pattern"))
            else:
                raise KeyError(_unknown(spec, all_names, "layer"))
        elif isinstance(spec, nn.Module):
            if id(spec) not in canonical:
                raise KeyError(
                    f"layers: the {type(spec).__name__} module given is not part of this model"
                )
            matches = [spec]
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            matches = [m for n, m in all_names.items() if n and isinstance(m, spec)]
            if not matches:
                raise KeyError(f"layers: the model has no {spec.__name__} module")
        else:
            raise TypeError(f"layers: expected a name, glob, module or module type, got {spec!r}")
        for module in matches:
            chosen[id(module)] = module
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    ordered = sorted(chosen.values(), key=lambda m: order[id(m)])
    return {canonical[id(m)] or type(m).__name__: m for m in ordered}


def _unknown(spec: str, names: dict[str, nn.Module], what: str) -> str:
    close = difflib.get_close_matches(spec, [n for n in names if n], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"layers: no {what} named {spec!r} in {type(names['']).__name__}{hint} "
        f"(netsight.list_layers(model) lists them)"
    )


def _copy(data: torch.Tensor) -> torch.Tensor:
    """An independent copy of ``data`` (already detached): a later in-place write to
    either one never shows in the other. Copy-on-write when that is safe (see the
    module docstring), else ``clone()``."""
    if (
        _LAZY_CLONE is not None
        and data.device.type == "cpu"
        and type(data) is torch.Tensor
        and data.layout == torch.strided
        and not (data.is_quantized or data.is_conj() or data.is_neg())
        and data.storage_offset() == 0
        and (
            data.is_contiguous()
            or data.is_contiguous(memory_format=torch.channels_last)
            or data.is_contiguous(memory_format=torch.channels_last_3d)
        )
        and not (_IS_COMPILING is not None and _IS_COMPILING())
    ):
        try:
            # Only when the tensor is its whole buffer, so that keeping the copy
            # keeps no more memory than the tensor's own bytes.
            if data.untyped_storage().nbytes() == data.numel() * data.element_size():
                return _LAZY_CLONE(data)
        except (RuntimeError, NotImplementedError):
            pass  # no storage (functorch), or one that cannot be shared lazily
    return data.clone()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class Capture:
    """What :func:`capture` recorded. Filled while the ``with`` block runs.

    Attributes:
        layers: ``{name: module}`` of the watched layers.
        calls: every captured output per layer, one tensor per call, in call order.
        grad_calls: the gradient with respect to each captured output, per call
            (``None`` for a call whose output got no gradient).
        input_calls: captured inputs per call (first tensor argument), when asked.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        *,
        gradients: bool,
        inputs: bool,
        to_cpu: bool,
        batch: int | slice | Sequence[int] | None,
        max_bytes: int | None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.gradients_enabled = gradients
        self.inputs_enabled = inputs
        self.calls: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.grad_calls: dict[str, list[torch.Tensor | None]] = {name: [] for name in layers}
        self.input_calls: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.stored_bytes = 0
        self._to_cpu = to_cpu
        self._batch = batch
        self._max_bytes = max_bytes
        self._hooks = HookSet()
        self._tensor_hooks = HookSet()
        self._active = False

    # ------------------------------------------------------------------ access
    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """The last captured output of each layer that ran (all calls: ``calls``)."""
        return {name: calls[-1] for name, calls in self.calls.items() if calls}

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        """The gradient for the last call of each layer that received one."""
        found = {}
        for name, grads in self.grad_calls.items():
            if grads and grads[-1] is not None:
                found[name] = grads[-1]
        return found

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {name: calls[-1] for name, calls in self.input_calls.items() if calls}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.layers:
            raise KeyError(_unknown(name, {"": self.model, **self.layers}, "captured layer"))
        calls = self.calls[name]
        if not calls:
            raise KeyError(
                f"layer {name!r} was watched but never ran in the forward pass; "
                f"layers that ran: {', '.join(n for n, c in self.calls.items() if c) or 'none'}"
            )
        return calls[-1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.calls.get(name))

    def __repr__(self) -> str:
        ran = sum(1 for c in self.calls.values() if c)
        return (
            f"Capture({len(self.layers)} layers, {ran} ran, "
            f"{self.stored_bytes / 1e6:.2f} MB stored, gradients={self.gradients_enabled})"
        )

    # ------------------------------------------------------------------ storing
    def _keep(self, name: str, tensor: torch.Tensor, what: str) -> torch.Tensor:
        data = tensor.detach()
        if self._batch is not None and data.dim() > 0:
            data = (
                data[self._batch]
                if not isinstance(self._batch, int)
                else data[self._batch : self._batch + 1]
            )
        nbytes = data.numel() * data.element_size()
        if self._max_bytes is not None and self.stored_bytes + nbytes > self._max_bytes:
            raise CaptureBudgetError(
                f"capturing the {what} of layer {name!r} ({list(data.shape)}, "
                f"{nbytes / 1e6:.2f} MB) would exceed max_bytes={self._max_bytes:,} "
                f"({self.stored_bytes / 1e6:.2f} MB already stored); raise the budget, watch "
                f"fewer layers, or keep fewer batch items with batch=..."
            )
        self.stored_bytes += nbytes
        if self._to_cpu and data.device.type != "cpu":
            return data.to("cpu")
        return _copy(data)

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                return
            if self.inputs_enabled:
                first_input = _first_tensor(args)
                if first_input is not None:
                    self.input_calls[name].append(self._keep(name, first_input, "input"))
            self.calls[name].append(self._keep(name, tensor, "output"))
            if self.gradients_enabled:
                index = len(self.grad_calls[name])
                self.grad_calls[name].append(None)
                if tensor.requires_grad:
                    handle = tensor.register_hook(  # type: ignore[no-untyped-call]
                        self._make_grad_hook(name, index)
                    )
                    self._tensor_hooks.add(handle)

        return hook

    def _make_grad_hook(self, name: str, index: int) -> Callable[[torch.Tensor], None]:
        def grad_hook(grad: torch.Tensor) -> None:
            self.grad_calls[name][index] = self._keep(name, grad, "gradient")

        return grad_hook

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Capture:
        if self._active:
            raise RuntimeError("this capture is already active")
        self._active = True
        try:
            for name, module in self.layers.items():
                self._hooks.add(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._hooks.remove()
            self._active = False
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._hooks.remove()
        self._tensor_hooks.remove()
        self._active = False

    def close(self) -> None:
        """Remove every hook now (the ``with`` block does this for you)."""
        self.__exit__(None, None, None)


def capture(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] = nn.Conv2d,
    *,
    gradients: bool = False,
    inputs: bool = False,
    to_cpu: bool = False,
    batch: int | slice | Sequence[int] | None = None,
    max_bytes: int | None = None,
) -> Capture:
    """Watch layers of ``model`` while you run its forward (and backward).

    Args:
        model: the network; nothing is changed on it, and every hook is removed
            when the ``with`` block ends, also on an exception.
        layers: names (``"features.3"``), globs (``"layer*.*.conv2"``), module
            instances or types (default: every ``nn.Conv2d``).
        gradients: also keep the gradient with respect to each captured output
            (run ``backward`` or ``torch.autograd.grad`` inside the block).
        inputs: also keep each layer's first input tensor.
        to_cpu: copy captured tensors to the CPU (default: stay on their device).
        batch: keep only these batch items (an index, a slice or a list).
        max_bytes: a budget for everything stored; checked before each copy, with
            an error naming the layer that would exceed it.

    Returns:
        A :class:`Capture`, to be used as a context manager.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes: expected >= 0, got {max_bytes}")
    model = unwrap_compiled(model)
    resolved = resolve_layers(model, layers)
    return Capture(
        model,
        resolved,
        gradients=gradients,
        inputs=inputs,
        to_cpu=to_cpu,
        batch=batch,
        max_bytes=max_bytes,
    )
