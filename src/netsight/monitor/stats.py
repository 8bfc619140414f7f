"""Per-layer gradient and weight statistics, computed in one fused pass.

A *layer* here is a module that owns parameters directly (a ``Conv2d``, a
``BatchNorm2d``, a ``Linear``); its statistics pool all of its own trainable
parameters (weight and bias). Every norm comes from ``torch._foreach_norm`` over
all gradients at once (three calls for L1, L2 and max), grouped per layer with one
``index_add_``, and read back with a single ``.tolist()``: one device sync per
logging step, whatever the depth of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "GradientStats",
    "LayerGroups",
    "layer_groups",
    "snapshot_weights",
    "unwrap_parallel",
    "update_ratios",
]


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel`` or ``DataParallel`` wrappers.

    The wrapper prefixes every parameter name with ``module.``, and a DDP forward runs
    collectives (it broadcasts buffers such as BatchNorm's running statistics), so a
    probe forward through it on rank 0 alone would wait forever for the other ranks.
    The wrapped module has the same parameters, so its gradients are the synchronised
    ones all the same.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


@dataclass(frozen=True)
class LayerGroups:
    """Which trainable parameter belongs to which layer.

    Attributes:
        names: layer names in registration order (the order of ``named_parameters``).
        params: the trainable parameters, each once (shared ones are not repeated).
        param_names: each parameter's qualified name.
        index: ``index[i]`` is the layer of ``params[i]``.
        numel: elements per layer.
    """

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]
    param_names: tuple[str, ...]
    index: tuple[int, ...]
    numel: tuple[int, ...]


def layer_groups(model: nn.Module) -> LayerGroups:
    """Group the model's trainable parameters by the module that owns them (named
    without the ``module.`` prefix of a data-parallel wrapper)."""
    model = unwrap_parallel(model)
    names: list[str] = []
    position: dict[str, int] = {}
    params: list[nn.Parameter] = []
    param_names: list[str] = []
    index: list[int] = []
    numel: list[int] = []
    for qualified, param in model.named_parameters():  # each shared parameter once
        if not param.requires_grad:
            continue
        layer = qualified.rpartition(".")[0] or "(model)"
        if layer not in position:
            position[layer] = len(names)
            names.append(layer)
            numel.append(0)
        params.append(param)
        param_names.append(qualified)
        index.append(position[layer])
        numel[position[layer]] += param.numel()
    return LayerGroups(tuple(names), tuple(params), tuple(param_names), tuple(index), tuple(numel))


@dataclass(frozen=True)
class GradientStats:
    """Gradient and weight statistics of every layer at one step.

    Layers whose parameters have no gradient (``.grad is None``: unused in this step,
    or frozen) are left out of ``layers`` and listed in ``missing``.

    Attributes:
        layers: layer names, registration order.
        grad_mean: mean ``|grad|`` of each layer (the tutorials' "average gradient").
        grad_max: max ``|grad|``.
        grad_norm: L2 norm of the layer's gradient.
        weight_norm: L2 norm of the layer's parameters.
        nonfinite: per layer, whether its gradient holds NaN or Inf.
        total_grad_norm: L2 norm of all gradients together (what clipping uses).
        missing: layers with no gradient at this step.
    """

    layers: tuple[str, ...]
    grad_mean: tuple[float, ...]
    grad_max: tuple[float, ...]
    grad_norm: tuple[float, ...]
    weight_norm: tuple[float, ...]
    nonfinite: tuple[bool, ...]
    total_grad_norm: float
    missing: tuple[str, ...]

    @classmethod
    def compute(cls, groups: LayerGroups) -> GradientStats | None:
        """Read the current ``.grad`` of every grouped parameter; ``None`` when no
        parameter has a gradient (``step()`` before ``backward()``)."""
        keep = [i for i, p in enumerate(groups.params) if p.grad is not None]
        if not keep:
            return None
        grads = [groups.params[i].grad for i in keep]
        weights = [groups.params[i].detach() for i in keep]
        layer_of = [groups.index[i] for i in keep]
        present = sorted(set(layer_of))
        slot = {layer: k for k, layer in enumerate(present)}
        with torch.no_grad():
            dense = [
                g if g.layout == torch.strided else g.to_dense() for g in grads if g is not None
            ]
            l1 = torch.stack(torch._foreach_norm(dense, 1)).float()
            l2 = torch.stack(torch._foreach_norm(dense, 2)).float()
            linf = torch.stack(torch._foreach_norm(dense, float("inf"))).float()
            w2 = torch.stack(torch._foreach_norm(weights, 2)).float()
            where = torch.tensor([slot[layer] for layer in layer_of], device=l1.device)
            count = len(present)
            per_l1 = torch.zeros(count, device=l1.device).index_add_(0, where, l1)
            per_l2 = torch.zeros(count, device=l1.device).index_add_(0, where, l2.square())
            per_w2 = torch.zeros(count, device=l1.device).index_add_(0, where, w2.square())
            # only the parameters that have a gradient count towards a layer's mean
            have = torch.zeros(count, device=l1.device).index_add_(
                0, where, torch.tensor([float(p.numel()) for p in dense], device=l1.device)
            )
            table = torch.stack([per_l1 / have, per_l2.sqrt(), per_w2.sqrt()])
            total = per_l2.sum().sqrt()
            values = torch.cat([table.flatten(), total.view(1), linf]).tolist()
        rows = [values[k * count : (k + 1) * count] for k in range(3)]
        maxima = [-math.inf] * count  # per layer, the max over its parameters' max |grad|
        for layer, top in zip(layer_of, values[3 * count + 1 :], strict=True):
            maxima[slot[layer]] = max(maxima[slot[layer]], top)
        # NaN propagates through the L1 norm, Inf through the max
        bad = [
            not (math.isfinite(a) and math.isfinite(b))
            for a, b in zip(rows[0], maxima, strict=True)
        ]
        names = tuple(groups.names[layer] for layer in present)
        missing = tuple(n for k, n in enumerate(groups.names) if k not in slot)
        return cls(
            layers=names,
            grad_mean=tuple(rows[0]),
            grad_max=tuple(maxima),
            grad_norm=tuple(rows[1]),
            weight_norm=tuple(rows[2]),
            nonfinite=tuple(bad),
            total_grad_norm=float(values[3 * count]),
            missing=missing,
        )

    def first_nonfinite(self) -> str | None:
        """Where NaN or Inf first appears in the backward pass: the last layer in
        registration order (roughly forward order) whose gradient is non-finite.
        Gradients flow from the loss backwards, so the layers after it (nearer the
        loss) still have finite gradients and the ones before it inherit its NaN."""
        for name, bad in zip(reversed(self.layers), reversed(self.nonfinite), strict=True):
            if bad:
                return name
        return None


def snapshot_weights(groups: LayerGroups) -> list[torch.Tensor]:
    """A copy of every grouped parameter (for the update-to-weight ratio)."""
    with torch.no_grad():
        return [p.detach().clone() for p in groups.params]


def update_ratios(groups: LayerGroups, before: list[torch.Tensor]) -> dict[str, float]:
    """``||w_now - w_before|| / ||w_before||`` per layer: how far one optimizer step
    moved each layer relative to its size (about 1e-3 is the usual healthy value)."""
    with torch.no_grad():
        now = [p.detach() for p in groups.params]
        diff = torch._foreach_sub(now, before)
        d2 = torch.stack(torch._foreach_norm(diff, 2)).float().square()
        b2 = torch.stack(torch._foreach_norm(before, 2)).float().square()
        where = torch.tensor(groups.index, device=d2.device)
        count = len(groups.names)
        per_d = torch.zeros(count, device=d2.device).index_add_(0, where, d2).sqrt()
        per_b = torch.zeros(count, device=d2.device).index_add_(0, where, b2).sqrt()
        ratio = (per_d / per_b.clamp_min(1e-12)).tolist()
    return dict(zip(groups.names, ratio, strict=True))
