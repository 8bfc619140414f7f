"""Inputs of a traced run: example tensors from shapes, the input maker, checks.

Owns how ``input_size``/``input_data`` become the forward's ``(args, kwargs)``
on any device (:func:`input_maker`), the checks of those options, and the
container walks over inputs and outputs (:func:`tree_map`, :func:`tensors_in`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn

__all__ = ["SEARCH_DEPTH", "InputMaker", "Shape", "input_maker", "tensors_in", "tree_map"]

Shape = Sequence[int]


def _normalise_sizes(input_size: Shape | Sequence[Shape]) -> list[tuple[int, ...]]:
    if not isinstance(input_size, Sequence) or isinstance(input_size, (str, bytes)):
        raise TypeError(
            f"input_size: expected a shape such as (1, 3, 224, 224) or a list of shapes, "
            f"got {input_size!r}"
        )
    items: list[Any] = list(input_size)
    if items and all(isinstance(d, int) for d in items):
        shapes = [tuple(int(d) for d in items)]
    else:
        shapes = []
        for item in items:
            if not isinstance(item, Sequence) or not all(isinstance(d, int) for d in item):
                raise TypeError(
                    f"input_size: expected a shape or a list of shapes of ints, got {input_size!r}"
                )
            shapes.append(tuple(int(d) for d in item))
    if not shapes:
        raise ValueError("input_size: expected at least one shape, got an empty sequence")
    for shape in shapes:
        if any(d < 0 for d in shape):
            raise ValueError(f"input_size: dimensions must be >= 0, got {shape}")
    return shapes


def _make_inputs(
    shapes: list[tuple[int, ...]],
    dtypes: Sequence[torch.dtype] | None,
    device: torch.device,
) -> list[torch.Tensor]:
    if dtypes is None:
        dtypes = [torch.float32] * len(shapes)
    elif len(dtypes) == 1 and len(shapes) > 1:
        dtypes = list(dtypes) * len(shapes)
    if len(dtypes) != len(shapes):
        raise ValueError(f"dtypes: expected one dtype per input ({len(shapes)}), got {len(dtypes)}")
    generator = None
    if device.type != "meta":
        # A private generator: a summary must not move the user's global RNG.
        generator = torch.Generator(device=device).manual_seed(0)
    tensors = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        if device.type == "meta":
            tensors.append(torch.empty(shape, dtype=dtype, device=device))
        elif dtype.is_floating_point or dtype.is_complex:
            tensors.append(torch.randn(shape, dtype=dtype, device=device, generator=generator))
        else:
            # Integer inputs are usually indices (tokens, classes): zeros are always valid.
            tensors.append(torch.zeros(shape, dtype=dtype, device=device))
    return tensors


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(tree_map(fn, o) for o in obj))
    if isinstance(obj, tuple):
        return tuple(tree_map(fn, o) for o in obj)
    if isinstance(obj, list):
        return [tree_map(fn, o) for o in obj]
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


#: How many levels of containers and objects :func:`tensors_in` looks into with ``deep``.
SEARCH_DEPTH = 4


def tensors_in(obj: Any, *, deep: bool = False) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj``, depth first: itself, or inside tuples, lists and
    mappings, at any depth.

    With ``deep`` also inside dataclasses' fields and plain objects' attributes
    (torchvision's ``ImageList`` keeps the batch in ``.tensors``), at most
    :data:`SEARCH_DEPTH` levels down; modules are not searched: their tensors are
    weights, not data flowing between calls."""
    return _tensors_deep(obj, 0) if deep else _tensors(obj)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors(o)


def _tensors_deep(obj: Any, depth: int) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth >= SEARCH_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors_deep(o, depth + 1)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors_deep(o, depth + 1)
    elif isinstance(obj, nn.Module):
        return
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors_deep(getattr(obj, f.name, None), depth + 1)
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict) and not isinstance(obj, type):
            for o in state.values():
                yield from _tensors_deep(o, depth + 1)


def _check_inputs(model_device: torch.device, tensors: list[torch.Tensor]) -> None:
    if model_device.type == "meta":
        return
    for i, t in enumerate(tensors):
        if t.device.type != "meta" and t.device != model_device:
            raise ValueError(
                f"input tensor {i} (shape {list(t.shape)}) is on {t.device}, but the model's "
                f"parameters are on {model_device}; move the input with .to({str(model_device)!r}) "
                f"(netsight never moves your model)"
            )


InputMaker: TypeAlias = Callable[[torch.device | None], tuple[tuple[Any, ...], dict[str, Any]]]


def input_maker(
    input_size: Sequence[int] | Sequence[Sequence[int]] | None,
    input_data: Any,
    *,
    dtypes: Sequence[torch.dtype] | None,
    forward_kwargs: Mapping[str, Any] | None,
    model_device: torch.device,
    default_device: torch.device,
) -> InputMaker:
    """Check the inputs of a traced run and return ``inputs_on(device)``, which
    builds ``(args, kwargs)`` for the forward: from ``input_size`` on ``device`` (or
    ``default_device``), or ``input_data`` as given (``device=None``) or as empty
    tensors of the same metadata on ``device`` (the meta pass)."""
    if (input_size is None) == (input_data is None):
        raise TypeError("pass exactly one of input_size or input_data")
    extra_kwargs = dict(forward_kwargs or {})
    shapes = _normalise_sizes(input_size) if input_size is not None else None
    if input_data is not None:
        _check_inputs(model_device, list(tensors_in((input_data, extra_kwargs))))

    def inputs_on(dev: torch.device | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if shapes is not None:
            return tuple(_make_inputs(shapes, dtypes, dev or default_device)), dict(extra_kwargs)
        data, kw = input_data, dict(extra_kwargs)
        if dev is not None:

            def to_dev(t: torch.Tensor) -> torch.Tensor:
                return torch.empty_like(t, device=dev)

            data = tree_map(to_dev, data)
            kw = tree_map(to_dev, kw)
        if isinstance(data, dict):
            return (), {**data, **kw}
        if isinstance(data, (tuple, list)):
            return tuple(data), kw
        return (data,), kw

    return inputs_on
