"""Inputs of a traced run: example tensors from shapes, the input maker, checks.

Owns how ``input_size``/``input_data`` become the forward's ``(args, kwargs)``
on any device (:func:`input_maker`), the checks of those options, and the
container walks over inputs and outputs (:func:`tree_map`, :func:`tensors_in`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import torch

__all__ = ["InputMaker", "Shape", "input_maker", "tensors_in", "tree_map"]

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


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors_in(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from tensors_in(o)


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
    mode: str,
    execution: str,
    forward_kwargs: Mapping[str, Any] | None,
    model_device: torch.device,
    default_device: torch.device,
) -> InputMaker:
    """Check the options of a traced run and return ``inputs_on(device)``, which
    builds ``(args, kwargs)`` for the forward: from ``input_size`` on ``device`` (or
    ``default_device``), or ``input_data`` as given (``device=None``) or as empty
    tensors of the same metadata on ``device`` (the meta pass)."""
    if mode not in ("eval", "train", "same"):
        raise ValueError(f"mode: expected 'eval', 'train' or 'same', got {mode!r}")
    if execution not in ("auto", "meta", "real"):
        raise ValueError(f"execution: expected 'auto', 'meta' or 'real', got {execution!r}")
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
