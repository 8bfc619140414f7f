"""Mult-add counting at the ATen level.

Convention (documented in the README): one *mult-add* is one multiplication
followed by one addition, the unit torchvision's ``_ops`` metadata, torchinfo
and most papers use. We read FLOP formulas from
:mod:`torch.utils.flop_counter` (which counts a mult-add as two FLOPs) and
halve them. Only the ops that dominate the cost are counted: matrix products,
convolutions and attention. Element-wise ops (activations, normalisation,
pooling, bias additions) are not, as in the references.

PyTorch's formula table has no entry for a few fused CPU kernels. We add
formulas for the ones a summary meets in practice (oneDNN's LSTM layer, the
CPU flash-attention kernel, the fused multi-head-attention kernel); any other
heavy-looking op without a formula is reported as *uncounted* rather than
silently counted as zero.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

__all__ = ["count_flops", "formula_for", "is_heavy_uncounted"]

_Formula = Callable[..., int]


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _mkldnn_rnn_layer(*args: Any, **kwargs: Any) -> int:
    # aten.mkldnn_rnn_layer(input (T, B, I), w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh, ...)
    # One layer, one direction: per time step and batch item, x @ w_ih.T and h @ w_hh.T.
    inp, w_ih, w_hh = args[0], args[1], args[2]
    steps_times_batch = inp.shape[0] * inp.shape[1]
    return int(2 * steps_times_batch * (w_ih.numel() + w_hh.numel()))


def _sdpa_cpu(*args: Any, **kwargs: Any) -> int:
    # aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, ...): (B, H, L, E)
    q, k, v = args[0], args[1], args[2]
    return int(sdpa_flop_count(_shape(q), _shape(k), _shape(v)))  # type: ignore[no-untyped-call]


def _native_mha(*args: Any, **kwargs: Any) -> int:
    # aten._native_multi_head_attention(query, key, value, embed_dim, num_head,
    #   qkv_weight, qkv_bias, proj_weight, proj_bias, ...): query (B, L, E), key (B, S, E).
    q, k = args[0], args[1]
    embed_dim = int(args[3])
    batch, tgt_len = q.shape[0], q.shape[1]
    src_len = k.shape[1]
    proj_in = batch * (tgt_len + 2 * src_len) * embed_dim * embed_dim
    scores = batch * tgt_len * src_len * embed_dim
    mixing = batch * tgt_len * src_len * embed_dim
    proj_out = batch * tgt_len * embed_dim * embed_dim
    return int(2 * (proj_in + scores + mixing + proj_out))


def _mv(*args: Any, **kwargs: Any) -> int:
    # aten.mv(matrix (n, m), vector (m,)) and aten.addmv(bias, matrix, vector)
    matrix = args[0] if len(args) == 2 else args[1]
    return int(2 * matrix.numel())


def _dot(*args: Any, **kwargs: Any) -> int:
    return int(2 * args[0].numel())


def _quantized_linear(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # quantized::linear(X, packed W, scale, zero_point), linear_dynamic(X, packed W, ...)
    # and their _relu forms: X (..., in) @ W.T (in, out), one multiply-add per pair.
    return int(2 * args[0].numel() * out_val.shape[-1])


def _quantized_conv(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # quantized::conv{1,2,3}d(X, packed W, scale, zero_point) and the _relu forms:
    # every output element is a dot product over (in / groups) x kernel.
    weight = args[1].unpack()[0]
    return int(2 * out_val.numel() * weight[0].numel())


def _quantized_formulas() -> dict[Any, _Formula]:
    """Formulas for the quantized ops of ``torch.ao.nn.quantized`` (static and
    dynamic Linear and Conv), which FlopCounterMode does not know."""
    table: dict[Any, _Formula] = {}
    ops = getattr(torch.ops, "quantized", None)
    if ops is None:
        return table
    for name, fn in (
        ("linear", _quantized_linear),
        ("linear_relu", _quantized_linear),
        ("linear_dynamic", _quantized_linear),
        ("linear_relu_dynamic", _quantized_linear),
        ("linear_dynamic_fp16", _quantized_linear),
        ("conv1d", _quantized_conv),
        ("conv2d", _quantized_conv),
        ("conv3d", _quantized_conv),
        ("conv1d_relu", _quantized_conv),
        ("conv2d_relu", _quantized_conv),
        ("conv3d_relu", _quantized_conv),
    ):
        try:
            packet = getattr(ops, name)
        except (AttributeError, RuntimeError):
            continue
        table[packet] = fn
    return table


def _extra_formulas() -> dict[Any, _Formula]:
    table: dict[Any, _Formula] = {}
    aten = torch.ops.aten
    for name, fn in (
        ("mkldnn_rnn_layer", _mkldnn_rnn_layer),
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu),
        ("_native_multi_head_attention", _native_mha),
        ("mv", _mv),
        ("addmv", _mv),
        ("dot", _dot),
        ("vdot", _dot),
    ):
        packet = getattr(aten, name, None)
        if packet is not None and packet not in flop_registry:
            table[packet] = fn
    table.update(_quantized_formulas())
    return table


_EXTRA = _extra_formulas()

# Ops that do real arithmetic on large operands. When one of these has no
# formula, the count would be wrong, so we say so.
_HEAVY = re.compile(
    r"(^|[_.])(mm|mv|addmv|dot|bmm|addmm|baddbmm|addbmm|matmul|conv|convolution|linear|einsum|"
    r"attention|rnn|lstm|gru|transformer|mkldnn)"
)


def _shapes(obj: Any) -> Any:
    """``tree_map(get_shape, obj)`` for the containers ATen arguments use (tensors,
    tuples, lists, scalars); raises ``TypeError`` on anything else."""
    if isinstance(obj, torch.Tensor):
        return obj.shape
    tp = type(obj)
    if tp is torch.Size:  # a pytree leaf
        return obj
    if tp is tuple or tp is list:
        return tp(_shapes(o) for o in obj)
    if isinstance(obj, (dict, tuple, list)):  # dicts, namedtuples, subclasses
        raise TypeError(tp.__name__)
    return obj


def _fast(raw: _Formula, wrapped: _Formula) -> _Formula:
    """A registry formula without ``tree_map``: tensors are replaced by their
    shapes here, exactly as ``shape_wrapper`` does, or the original wrapper is
    called when an argument is a container we do not walk."""

    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        try:
            shaped_args = _shapes(args)
            out_shape = _shapes(out_val)
            shaped_kwargs = {k: _shapes(v) for k, v in kwargs.items()}
        except TypeError:
            return int(wrapped(*args, out_val=out_val, **kwargs))
        return int(raw(*shaped_args, out_shape=out_shape, **shaped_kwargs))

    return formula


def _shape_wrapper_code() -> Any:
    return shape_wrapper(lambda: 0).__code__  # type: ignore[no-untyped-call]


_NF_CODE = _shape_wrapper_code()


# Direct formulas for the products that dominate most models. They compute what
# torch's registry computes (2 * m * n * k), but from the tensors themselves: the
# registry's shape_wrapper walks every argument with tree_map, and addmm's
# formula calls mm's wrapped formula again: ~65 us a call against ~1 us. Each is
# checked against the registry once (see _direct) and only used when they agree.


def _mm(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    m, k = a.shape
    n = b.shape[1]
    return int(m * n * 2 * k)


def _addmm(bias: Any, a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return _mm(a, b)


def _bmm(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    batch, m, k = a.shape
    n = b.shape[2]
    return int(batch * m * n * 2 * k)


def _baddbmm(bias: Any, a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return _bmm(a, b)


def _direct_formulas() -> dict[Any, tuple[_Formula, tuple[tuple[int, ...], ...]]]:
    aten = torch.ops.aten
    return {
        aten.mm: (_mm, ((3, 5), (5, 7))),
        aten.addmm: (_addmm, ((7,), (3, 5), (5, 7))),
        aten.bmm: (_bmm, ((2, 3, 5), (2, 5, 7))),
        aten.baddbmm: (_baddbmm, ((2, 3, 7), (2, 3, 5), (2, 5, 7))),
    }


_DIRECT = _direct_formulas()


def _direct(packet: Any, registered: _Formula) -> _Formula | None:
    """The direct formula for ``packet`` if it gives the registry's count on a probe."""
    entry = _DIRECT.get(packet)
    if entry is None:
        return None
    direct, shapes = entry
    # tiny CPU tensors, not meta ones: several meta kernels (addmm's) are Python
    # decompositions whose first call imports torch._dynamo (~0.7 s); C++ CPU
    # kernels on 3 x 5 matrices cost microseconds
    probe = [torch.zeros(shape) for shape in shapes]
    out = packet(*probe)
    try:
        agrees = int(direct(*probe, out_val=out)) == int(registered(*probe, out_val=out))
    except Exception:
        agrees = False
    return direct if agrees else None


def _resolve(packet: Any) -> _Formula | None:
    formula = flop_registry.get(packet)
    if formula is not None:
        direct = _direct(packet, formula)
        if direct is not None:
            return direct
        raw = getattr(formula, "__wrapped__", None)
        if raw is not None and getattr(formula, "__code__", None) is _NF_CODE:
            return _fast(raw, formula)
        return lambda *args, out_val=None, **kwargs: int(formula(*args, **kwargs, out_val=out_val))
    extra = _EXTRA.get(packet)
    if extra is not None:
        return lambda *args, out_val=None, **kwargs: int(extra(*args, out_val=out_val, **kwargs))
    return None


# One resolved formula (or None) per op packet, forgotten whenever torch's
# registry grows (register_flop_formula after netsight has run).
_RESOLVED: dict[Any, _Formula | None] = {}
_RESOLVED_FOR = [len(flop_registry)]


def formula_for(packet: Any) -> _Formula | None:
    """The mult-add formula of an op packet, called as ``f(*args, out_val=out, **kwargs)``
    and returning FLOPs, or ``None`` when no formula is known."""
    if len(flop_registry) != _RESOLVED_FOR[0]:
        _RESOLVED.clear()
        _RESOLVED_FOR[0] = len(flop_registry)
    try:
        return _RESOLVED[packet]
    except KeyError:
        pass
    resolved = _resolve(packet)
    _RESOLVED[packet] = resolved
    return resolved


def count_flops(packet: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int | None:
    """FLOPs of one ATen call, or ``None`` when no formula is known."""
    formula = formula_for(packet)
    if formula is None:
        return None
    return int(formula(*args, out_val=out, **kwargs))


@functools.cache
def is_heavy_uncounted(packet: Any) -> bool:
    """Whether an op without a formula is one whose cost matters."""
    name = str(packet).removeprefix("aten.")
    if name.endswith("_backward"):
        return False
    return bool(_HEAVY.search(name))
