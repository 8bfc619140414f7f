"""Shape rules: the outputs of the slowest meta kernels, computed from metadata.

Owns the rules (:data:`RULES`), the process-wide verdicts on them
(:data:`VERDICTS`), the call classes a verdict holds for (:func:`class_of`),
and the two checks of a rule against a kernel: on the call itself
(:func:`rule_agrees`) and on a tiny CPU witness of the call's class
(:func:`witness_verdict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import torch

from netsight.trace.keys import META, PARAMETER, TENSOR, tensor_class

__all__ = ["RULES", "VERDICTS", "Rule", "class_of", "rule_agrees", "witness_verdict"]

# The op cache (:mod:`netsight.trace.keys`) replays a call only when it has seen
# the same shapes, and the first call of each shape still runs the meta kernel.
# A few kernels cost milliseconds a call on this torch (Python reference
# implementations):
# hardswish/hardsigmoid/gelu/relu ~1-7 ms, native_batch_norm 2-10 ms,
# native_layer_norm ~3-6 ms, addmm ~1-2 ms, a convolution ~0.1-0.3 ms; CNNs call
# them on a new shape in almost every block. For those ops a *rule* computes the
# outputs from the arguments' metadata in a few microseconds (``RULES``).
#
# A rule is never trusted blindly. Calls are grouped into classes: the op, the
# default dtype, the exact non-tensor arguments, and per tensor its dtype,
# which sizes are 0, 1 or larger, the order of its strides, its contiguity
# (plain and channels-last), density and whether its offset is 0.
# The first call of a class runs the real kernel and the rule side by side;
# only if every output agrees (shape, strides, offset, dtype, storage size,
# identity with the arguments, view-ness) do later calls of that class use the
# rule. A rule also declines (returns None) any call it does not fully check,
# such as mismatched sizes, so that the kernel raises its own error. Verdicts
# are facts about this torch, not about the model, so they are kept for the
# process, like the flop formulas' checks in ``_flops``.

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_HALF = frozenset({torch.float16, torch.bfloat16})
Rule: TypeAlias = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _plain_float(t: Any) -> bool:
    return type(t) in (TENSOR, PARAMETER) and t.dtype in _FLOATS


def _strides_in_order(
    shape: Sequence[int], stride: Sequence[int], gap: int = 0
) -> tuple[list[int], int]:
    """Strides laid out in ``stride``'s order (innermost first, ties by index),
    each dimension ``gap`` elements longer than its size, and the storage extent
    they span: dense strides with ``gap=0``."""
    strides = [0] * len(shape)
    extent = 1
    for i in sorted(range(len(shape)), key=lambda i: (stride[i], i)):
        strides[i] = extent
        extent *= shape[i] + gap
    return strides, extent


def _fresh_like(x: torch.Tensor) -> torch.Tensor:
    """A new tensor laid out as an element-wise kernel lays out its output: ``x``'s
    strides when ``x`` is dense, else dense strides in ``x``'s stride order (a
    clone of a tensor with gaps would go through torch._refs, whose first call
    imports sympy). Checked against the kernel like every rule."""
    if tensor_class(x)[3]:
        return x.clone()
    strides, _ = _strides_in_order(x.shape, x.stride())
    return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=META)


def _rule_pointwise(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One-input element-wise float op: a new tensor laid out like the input."""
    x = args[0]
    return _fresh_like(x) if _plain_float(x) else None


def _rule_pointwise_(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Its in-place form: the input itself."""
    x = args[0]
    return x if _plain_float(x) else None


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _rule_batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # native_batch_norm(input, weight, bias, running_mean, running_var, training,
    #   momentum, eps) -> (output, save_mean, save_invstd)
    if kwargs or len(args) != 8:
        return None
    x = args[0]
    if not _plain_float(x) or x.dim() < 2:
        return None
    channels = x.shape[1]
    for t in args[1:5]:
        if t is not None and (t.dim() != 1 or t.shape[0] != channels):
            return None
    stats = _stats_dtype(x.dtype)
    return (
        x.clone(),
        torch.empty((channels,), dtype=stats, device=META),
        torch.empty((channels,), dtype=stats, device=META),
    )


def _rule_layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # native_layer_norm(input, normalized_shape, weight, bias, eps) -> (output, mean, rstd)
    if kwargs or len(args) != 5:
        return None
    x, normalized = args[0], tuple(args[1])
    k = len(normalized)
    if not _plain_float(x) or k == 0 or k > x.dim() or tuple(x.shape[x.dim() - k :]) != normalized:
        return None
    for t in args[2:4]:
        if t is not None and tuple(t.shape) != normalized:
            return None
    stats_shape = tuple(x.shape[: x.dim() - k]) + (1,) * k
    stats = _stats_dtype(x.dtype)
    return (
        torch.empty(x.shape, dtype=x.dtype, device=META),
        torch.empty(stats_shape, dtype=stats, device=META),
        torch.empty(stats_shape, dtype=stats, device=META),
    )


def _rule_addmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # addmm(bias, a, b, *, beta=1, alpha=1) -> bias + a @ b
    if len(args) != 3:
        return None
    bias, a, b = args
    if not (_plain_float(bias) and _plain_float(a) and _plain_float(b)):
        return None
    if not (bias.dtype == a.dtype == b.dtype) or a.dim() != 2 or b.dim() != 2:
        return None
    m, k = a.shape
    k2, n = b.shape
    bias_shape = tuple(bias.shape)
    if k != k2 or bias.dim() > 2:
        return None
    # bias must broadcast to (m, n)
    for size, want in zip(reversed(bias_shape), (n, m), strict=False):
        if size not in (1, want):
            return None
    return torch.empty((m, n), dtype=a.dtype, device=META)


def _rule_mean_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # mean.dim(input, dim, keepdim=False, *, dtype=None)
    if kwargs or not 2 <= len(args) <= 3:
        return None
    x, dims = args[0], args[1]
    keepdim = args[2] if len(args) == 3 else False
    ndim = x.dim()
    if not _plain_float(x) or type(keepdim) is not bool or ndim == 0 or not dims:
        return None
    wrapped = set()
    for d in dims:
        if type(d) is not int or not -ndim <= d < ndim:
            return None
        wrapped.add(d % ndim)
    if len(wrapped) != len(dims):
        return None
    shape = [1 if i in wrapped else s for i, s in enumerate(x.shape)]
    if not keepdim:
        shape = [s for i, s in enumerate(x.shape) if i not in wrapped]
    return torch.empty(shape, dtype=x.dtype, device=META)


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    shape = []
    for x, y in zip(a, b, strict=True):
        if x != y and x != 1 and y != 1:
            return None
        shape.append(y if x == 1 else x)
    return tuple(shape)


def _float_operands_shape(a: Any, b: Any) -> tuple[int, ...] | None:
    """The broadcast shape of two float tensors of one dtype, or None."""
    if not (_plain_float(a) and _plain_float(b)) or a.dtype != b.dtype:
        return None
    return _broadcast(a.shape, b.shape)


def _rule_binary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Two-tensor element-wise op, both of one float dtype: the broadcast shape,
    laid out like the operand that has it (or contiguous). With a Python number
    as the second operand: like a one-input op."""
    if len(args) != 2:
        return None
    a, b = args
    if type(b) in (int, float, bool):
        return _rule_pointwise(args, kwargs)
    shape = _float_operands_shape(a, b)
    if shape is None:
        return None
    if shape == tuple(a.shape):
        return _fresh_like(a)
    if shape == tuple(b.shape):
        return _fresh_like(b)
    return torch.empty(shape, dtype=a.dtype, device=META)


def _rule_binary_(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Its in-place form (``a += b``): ``a`` itself, when ``b`` broadcasts to it."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if type(b) in (int, float, bool):
        return _rule_pointwise_(args, kwargs)
    return a if _float_operands_shape(a, b) == tuple(a.shape) else None


def _rule_softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # _softmax(input, dim, half_to_float); _safe_softmax(input, dim, dtype=None)
    if len(args) not in (2, 3) or (len(args) == 3 and args[2] not in (False, None)):
        return None
    x, dim = args[0], args[1]
    if kwargs.get("dtype") is not None or type(dim) is not int or not _plain_float(x):
        return None
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        return None
    return x.clone()


def _rule_convolution(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # convolution(input, weight, bias, stride, padding, dilation, transposed,
    #   output_padding, groups); not transposed, batched, 1-3 spatial dims
    if kwargs or len(args) != 9:
        return None
    x, weight, bias, stride, padding, dilation, transposed, _, groups = args
    if not (_plain_float(x) and _plain_float(weight)) or transposed is not False:
        return None
    spatial = x.dim() - 2
    if not 1 <= spatial <= 3 or weight.dim() != x.dim() or type(groups) is not int or groups < 1:
        return None
    if not all(len(p) == spatial for p in (stride, padding, dilation)):
        return None
    out_channels = weight.shape[0]
    if x.shape[1] != weight.shape[1] * groups or out_channels % groups:
        return None
    if bias is not None and (not _plain_float(bias) or tuple(bias.shape) != (out_channels,)):
        return None
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        return None
    shape = [x.shape[0], out_channels]
    for i in range(spatial):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        size = (x.shape[2 + i] + 2 * padding[i] - span) // stride[i] + 1
        if size < 1:
            return None
        shape.append(size)
    # torch's meta convolution leaves every output contiguous (no backend to ask)
    return torch.empty(shape, dtype=x.dtype, device=META)


def _rule_stack(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # stack(tensors, dim=0): equal shapes, one new dimension of len(tensors)
    if kwargs or not args or len(args) > 2 or not isinstance(args[0], (list, tuple)):
        return None
    tensors = args[0]
    dim = args[1] if len(args) == 2 else 0
    if not tensors or not isinstance(dim, int):
        return None
    first = tensors[0]
    if not all(_plain_float(t) and t.dtype == first.dtype for t in tensors):
        return None
    shape = tuple(first.shape)
    if any(tuple(t.shape) != shape for t in tensors):
        return None
    rank = len(shape) + 1
    if not -rank <= dim < rank:
        return None
    dim %= rank
    out = (*shape[:dim], len(tensors), *shape[dim:])
    return torch.empty(out, dtype=first.dtype, device=META)


def _rule_unbind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # unbind(x, dim=0): the views x.select(dim, i), one per index
    if kwargs or not args or len(args) > 2:
        return None
    x = args[0]
    dim = args[1] if len(args) == 2 else 0
    if not _plain_float(x) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        return None
    return [x.select(dim, i) for i in range(x.shape[dim])]


def _rules() -> dict[int, tuple[Any, Rule]]:
    aten = torch.ops.aten
    table: dict[Any, Rule] = {
        aten.stack.default: _rule_stack,
        aten.unbind.int: _rule_unbind,
        aten.native_batch_norm.default: _rule_batch_norm,
        aten.native_layer_norm.default: _rule_layer_norm,
        aten.addmm.default: _rule_addmm,
        aten.mean.dim: _rule_mean_dim,
        aten.convolution.default: _rule_convolution,
        aten._softmax.default: _rule_softmax,
    }
    safe_softmax = getattr(aten, "_safe_softmax", None)
    if safe_softmax is not None:
        table[safe_softmax.default] = _rule_softmax
    for name in ("add", "sub", "mul", "div"):
        packet = getattr(aten, name)
        table[packet.Tensor] = _rule_binary
        table[packet.Scalar] = _rule_pointwise
        inplace = getattr(aten, name + "_")
        table[inplace.Tensor] = _rule_binary_
        table[inplace.Scalar] = _rule_pointwise_
    for name in (
        "relu",
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "leaky_relu",
        "elu",
        "mish",
    ):
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        table[packet.default] = _rule_pointwise
        inplace = getattr(aten, name + "_", None)
        if inplace is not None:
            table[inplace.default] = _rule_pointwise_
    # By id, confirmed by identity: OpOverload.__hash__ is Python code.
    return {id(op): (op, rule) for op, rule in table.items()}


RULES = _rules()
#: (op, call class) -> whether the op's rule agreed with its kernel.
VERDICTS: dict[Any, bool] = {}


def class_of(items: Iterable[Any]) -> tuple[Any, ...]:
    """What a rule's verdict holds for: the arguments up to tensor sizes."""
    out: list[Any] = []
    for a in items:
        tp = type(a)
        if tp is TENSOR or tp is PARAMETER:
            out.append(tensor_class(a))
        elif tp is list or tp is tuple:
            out.append((tp, class_of(a)))
        else:
            out.append((tp, a))
    return tuple(out)


def _geometry(t: torch.Tensor) -> tuple[Any, ...]:
    """Everything about an output tensor that a rule must get right."""
    return (
        t.shape,
        t.stride(),
        t.storage_offset(),
        t.dtype,
        t.layout,
        t.requires_grad,
        t._is_view(),
        t.untyped_storage().nbytes(),
    )


def _same_geometry(kernel: Any, rule: Any, args: tuple[Any, ...]) -> bool:
    """Whether a rule's output matches the kernel's in everything that matters."""
    if isinstance(kernel, torch.Tensor) or isinstance(rule, torch.Tensor):
        if type(kernel) is not type(rule):
            return False
        if kernel is rule:
            return True
        if any(a is kernel or a is rule for a in args):
            return False
        return kernel.is_meta and rule.is_meta and _geometry(kernel) == _geometry(rule)
    tp = type(kernel)
    if tp is tuple or tp is list:
        if type(rule) is not tp or len(kernel) != len(rule):
            return False
        # the same pattern of repeated objects among the outputs
        k_ids, r_ids = [id(o) for o in kernel], [id(o) for o in rule]
        if [k_ids.index(i) for i in k_ids] != [r_ids.index(i) for i in r_ids]:
            return False
        return all(_same_geometry(k, r, args) for k, r in zip(kernel, rule, strict=True))
    return type(rule) is tp and bool(kernel == rule)


def rule_agrees(rule: Rule, out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        guess = rule(args, kwargs)
        return guess is not None and _same_geometry(out, guess, args)
    except Exception:
        return False


# The first verdict on a rule needs the op's meta kernel, and several meta
# kernels (addmm's, relu's) are Python decompositions that call torch._refs
# functions wrapped in torch._disable_dynamo, whose first call imports
# torch._dynamo: about 0.7 s, the whole first-call cost of a model with nn.Linear
# or nn.LSTM in a fresh process. Until something else has imported dynamo, a
# verdict comes instead from torch's C++ CPU kernel on tiny CPU tensors of the
# same class (same dtype, 0/1/more sizes, stride order, density, contiguity),
# compared with the rule on meta copies of those same tensors: the same check,
# on a witness of the class rather than on the call itself.


def _cpu_twin(t: Any) -> Any:
    """A CPU tensor of ``t``'s class with every size above 1 cut to 2 (a view at
    offset 1 of a larger buffer when ``t`` does not start its storage), or None."""
    if type(t) not in (TENSOR, PARAMETER):
        return None
    shape = [min(s, 2) for s in t.shape]
    # a dense original gets a dense twin; one with gaps (a slice) gets gaps too
    gap = 0 if tensor_class(t)[3] else 1
    strides, extent = _strides_in_order(shape, t.stride(), gap)
    offset = 0 if t.storage_offset() == 0 else 1
    if offset or t._is_view():
        twin = torch.zeros(extent + offset, dtype=t.dtype).as_strided(shape, strides, offset)
    else:
        twin = torch.empty_strided(shape, strides, dtype=t.dtype).zero_()
    return twin if tensor_class(twin) == tensor_class(t) else None


def _meta_copy(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s geometry: storage size, strides and offset (a view
    of a larger storage, made the same way as ``t``)."""
    size = t.untyped_storage().nbytes() // t.element_size()
    if t.storage_offset() == 0 and size == t.numel():
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return torch.empty(size, dtype=t.dtype, device="meta").as_strided(
        t.shape, t.stride(), t.storage_offset()
    )


def witness_verdict(
    func: Any, rule: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool | None:
    """The rule's verdict on this call's class from the CPU kernel (see above),
    or None when the call has no CPU twin of its class (the meta kernel decides)."""
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    cpu: list[Any] = []
    meta: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if not a.is_meta:
                return None
            twin = _cpu_twin(a)
            if twin is None:
                return None
            cpu.append(twin)
            meta.append(_meta_copy(twin))
        elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            if not all(isinstance(x, torch.Tensor) and x.is_meta for x in a):
                return None
            twins = [_cpu_twin(x) for x in a]
            if any(t is None for t in twins):
                return None
            cpu.append(type(a)(twins))
            meta.append(type(a)(_meta_copy(t) for t in twins))
        else:
            cpu.append(a)
            meta.append(a)
    try:
        kernel = func(*cpu, **kwargs)
        guess = rule(tuple(meta), kwargs)
    except Exception:
        return None
    if guess is None:
        return None
    kernels = list(kernel) if isinstance(kernel, (tuple, list)) else [kernel]
    guesses = list(guess) if isinstance(guess, (tuple, list)) else [guess]
    if type(kernel) is not type(guess) or len(kernels) != len(guesses):
        return False
    for k, g in zip(kernels, guesses, strict=True):
        if not (isinstance(k, torch.Tensor) and isinstance(g, torch.Tensor)):
            return False
        # an output that is an argument must be the same argument on both sides
        k_arg = next((i for i, a in enumerate(cpu) if a is k), None)
        g_arg = next((i for i, a in enumerate(meta) if a is g), None)
        if k_arg != g_arg or _geometry(k) != _geometry(g):
            return False
    return True
