"""Perturbation methods: Score-CAM and Ablation-CAM.

Both weigh each channel by how the target score reacts when the input or the
layer is changed along that channel, with one extra forward per (image, channel)
pair. What makes them cheaper here than in the usual implementations:

* **Chunks.** The extra forwards run in chunks of ``batch_size`` inputs, so memory
  is bounded by the chunk, never by batch x channels; the masked inputs of a chunk
  are built (upsampled, normalised, multiplied) just before its forward.
* **Inference mode.** The extra forwards run under ``torch.inference_mode()`` (no
  autograd or version-counter bookkeeping); their inputs are never kept.
* **Channels-last convolutions** (Score-CAM by default, Ablation-CAM on request).
  On the CPU, a model with 4-D convolution weights runs the whole computation with
  channels-last copies of those weights swapped in and a channels-last input (about
  1.3-1.5x faster for ResNets on x86 CPUs). The caller's parameters are put back in
  ``finally``; ``channels_last=False`` turns this off. Results differ from the
  default layout by float rounding only.
* **Known answers are not recomputed.** Score-CAM: channels with the same
  min-max-normalised map give the same mask, so each distinct mask is run once
  (constant channels, typically all zero, share one forward of a zero image).
  Ablation-CAM: zeroing an all-zero channel changes nothing (weight 0), and only
  the part of the model after the target layer is re-run on the ablated copies.

Both also take ``approx=k``, a documented approximation with at most ``k`` extra
forwards (Score-CAM) or ablations (Ablation-CAM) per image; see the classes.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netsight.cam.base import (
    BaseCAM,
    CAMWarning,
    RawMaps,
    Reshape,
    Targets,
    TargetSpec,
    noise_generator,
    resolve_targets,
)
from netsight.capture import LayerSpec
from netsight.hooks import HookSet

__all__ = ["ISCAM", "SSCAM", "AblationCAM", "ScoreCAM"]

#: Lloyd iterations of Score-CAM's approximate mode (k-means on the channel maps).
_KMEANS_STEPS = 10
#: Score-CAM: normalised channel maps this close (largest difference) share a mask.
_SAME_MASK = 1e-6


class _PerturbationCAM(BaseCAM):
    #: Whether ``approx=`` needs the gradient of the scores at the target layer.
    _approx_needs_gradients = False
    #: Whether ``channels_last=None`` may switch channels-last on (see the classes).
    _auto_channels_last = True
    #: Whether the masked forwards may run on a private copy with BatchNorm folded
    #: into the convolution before it (see :func:`_folded_copy`).
    _fold_norms = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        batch_size: int = 32,
        approx: int | None = None,
        channels_last: bool | None = None,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        if approx is not None and (
            isinstance(approx, bool) or not isinstance(approx, int) or approx < 1
        ):
            raise ValueError(f"approx: expected None (exact) or an int >= 1, got {approx!r}")
        if channels_last not in (None, True, False):
            raise TypeError(f"channels_last: expected None, True or False, got {channels_last!r}")
        self.batch_size = batch_size
        self.approx = approx
        self.channels_last = channels_last
        self._fast: nn.Module | None = None

    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        if x.dim() != 4:
            raise ValueError(
                f"{self.method} masks or ablates (B, C, H, W) images; for a video model's "
                f"(B, C, T, H, W) clips use a gradient method (gradcam, layercam, ...) or "
                f"eigencam"
            )
        enabled = self.channels_last
        if enabled is None and not self._auto_channels_last:
            enabled = False
        self._fast = None
        try:
            with _channels_last(self.model, x, enabled) as x_fast:
                return self._compute_weighted(x_fast, targets, layers)
        finally:
            self._fast = None  # the private copy lives for one call

    def _masked_model(self, x: torch.Tensor, targets: Targets, scores: torch.Tensor) -> nn.Module:
        """The model the masked forwards run on: a private copy with BatchNorm
        folded when :func:`_folded_copy` makes one and it gives the plain forward's
        scores on ``x`` up to rounding, else the model itself (built once per call)."""
        if self._fast is None:
            fast = _folded_copy(self.model) if self._fold_norms else None
            if fast is not None and not _agrees(fast, x, targets, scores):
                fast = None
            self._fast = self.model if fast is None else fast
        return self._fast

    def _compute_weighted(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        grad = self.approx is not None and self._approx_needs_gradients
        if grad and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{self.method} with approx= ranks channels by a gradient, but it was called "
                f"inside torch.inference_mode(), which disables autograd; call it outside "
                f"inference_mode (inside torch.no_grad() is fine) or use approx=None"
            )
        record = self._forward(x, layers, grad=grad)
        gradients: dict[str, torch.Tensor] = {}
        with torch.enable_grad() if grad else torch.no_grad():
            resolved = resolve_targets(targets, record.output, x.shape[0])
            scores = resolved.scores(record.output)
        if grad:
            kept = list(record.activations.values())
            if not scores.requires_grad:
                raise ValueError(
                    f"the target scores do not depend on the target layer(s) "
                    f"{', '.join(map(repr, record.activations))}; choose layers the output uses"
                )
            found = torch.autograd.grad(scores.sum(), kept, allow_unused=True)
            for name, found_grad in zip(record.activations, found, strict=True):
                if found_grad is not None:
                    gradients[name] = found_grad
        scores = scores.detach()
        output = record.output
        if isinstance(output, torch.Tensor):
            output = output.detach()
        maps = {}
        for name, kept_activation in record.activations.items():
            if record.calls[name] > 1:
                raise ValueError(
                    f"layer {name!r} ran {record.calls[name]} times in one forward; "
                    f"{self.method} needs a target layer that runs once"
                )
            activation = kept_activation.detach()
            with torch.inference_mode():
                weights = self.channel_weights(
                    x,
                    name,
                    layers[record.layer_of(name)],
                    activation,
                    resolved,
                    scores,
                    gradients.get(name),
                )
            weights = weights.clone()  # a normal tensor again, outside inference mode
            with torch.no_grad():
                a = self.spatial(name, activation)
                maps[name] = self.reduce_channels(weights[:, :, None, None] * a)
        return RawMaps(maps, output, resolved, scores)

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        gradient: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(B, C)`` channel weights (run under ``torch.inference_mode()``)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- channels-last
@contextmanager
def _channels_last(
    model: nn.Module, x: torch.Tensor, enabled: bool | None
) -> Iterator[torch.Tensor]:
    """Swap channels-last copies of the model's 4-D floating-point parameters in for
    the block and yield ``x`` in channels-last layout; the caller's parameters are
    put back on every path. ``enabled=None``: only on the CPU, for a model with a
    ``Conv2d`` and a 4-D input; ``False``: yield ``x`` unchanged."""
    if enabled is False or x.dim() != 4:
        yield x
        return
    if enabled is None and not (
        x.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    ):
        yield x
        return
    fmt = torch.channels_last
    swapped: list[tuple[dict[str, Any], str, nn.Parameter]] = []
    copies: dict[int, nn.Parameter] = {}  # shared (tied) parameters share one copy
    try:
        for module in model.modules():
            params = module._parameters
            for key, param in params.items():
                if (
                    param is None
                    or param.dim() != 4
                    or not param.is_floating_point()
                    or param.device != x.device
                    or param.is_contiguous(memory_format=fmt)
                ):
                    continue
                copy = copies.get(id(param))
                if copy is None:
                    data = param.detach().contiguous(memory_format=fmt)
                    copy = copies[id(param)] = nn.Parameter(data, requires_grad=False)
                swapped.append((params, key, param))
                params[key] = copy
        yield x.contiguous(memory_format=fmt)
    finally:
        for params, key, param in reversed(swapped):
            params[key] = param


# --------------------------------------------------------------------------- folded copy
def _has_hooks(model: nn.Module) -> bool:
    """Whether any module of ``model`` has a forward or backward hook, or a global
    module hook is registered (a traced copy would not call them all)."""
    from torch.nn.modules import module as module_globals

    globals_ = (
        module_globals._global_forward_hooks,
        module_globals._global_forward_pre_hooks,
        module_globals._global_backward_hooks,
    )
    if any(len(hooks) for hooks in globals_):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in model.modules()
    )


def _folded_copy(model: nn.Module) -> nn.Module | None:
    """A private copy of ``model`` for the masked forwards, with every BatchNorm2d
    in eval mode that only normalises the output of a Conv2d folded into that
    convolution: ``W' = W * g``, ``b' = (b - mean) * g + beta`` with
    ``g = gamma / sqrt(var + eps)`` (computed in float64), the BatchNorm dropped.
    Exact up to rounding (the normalisation is affine); it saves one pass over
    every normalised activation per forward, whatever the CPU.

    The copy shares every other parameter and buffer with ``model`` (nothing is
    copied but the module objects), is traced with ``torch.fx``, and is never
    seen by the caller. ``None`` when there is nothing to fold, a module has a
    hook, or the model cannot be copied or traced."""
    norms = [
        m
        for m in model.modules()
        if type(m) is nn.BatchNorm2d
        and not m.training
        and m.running_mean is not None
        and m.running_var is not None
    ]
    if not norms or _has_hooks(model):
        return None
    shared: dict[int, Any] = {id(t): t for t in model.parameters()}
    shared.update({id(t): t for t in model.buffers()})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = copy.deepcopy(model, shared)
            traced = torch.fx.symbolic_trace(twin)
    except Exception:  # any model fx cannot copy or trace keeps the plain path
        return None
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    folded = 0
    with torch.inference_mode(False), torch.no_grad():
        for node in list(traced.graph.nodes):
            if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
                continue
            norm = modules[str(node.target)]
            source = node.args[0]
            if (
                norm not in norms
                or not isinstance(source, torch.fx.Node)
                or source.op != "call_module"
                or len(source.users) != 1
                or calls[source.target] != 1
            ):
                continue
            conv = modules[str(source.target)]
            if type(conv) is not nn.Conv2d or not conv.weight.is_floating_point():
                continue
            assert isinstance(norm, nn.BatchNorm2d)
            assert norm.running_mean is not None and norm.running_var is not None
            weight = conv.weight
            mean = norm.running_mean.double()
            gain = torch.rsqrt(norm.running_var.double() + norm.eps)
            if norm.weight is not None:
                gain = gain * norm.weight.double()
            shift = -mean * gain
            if conv.bias is not None:
                shift = shift + conv.bias.double() * gain
            if norm.bias is not None:
                shift = shift + norm.bias.double()
            layout = (
                torch.channels_last
                if weight.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            new_weight = (weight.double() * gain.view(-1, 1, 1, 1)).to(weight.dtype)
            conv.weight = nn.Parameter(
                new_weight.contiguous(memory_format=layout), requires_grad=False
            )
            conv.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=False)
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
            folded += 1
    if not folded:
        return None
    traced.recompile()
    return traced


def _agrees(fast: nn.Module, x: torch.Tensor, targets: Targets, expected: torch.Tensor) -> bool:
    """Whether ``fast`` gives the target scores of the plain forward on ``x`` up
    to rounding (``4 * sqrt(eps)`` of the larger of the score and the output's
    largest value, as :func:`_same_score`)."""
    try:
        out = fast(x)
        got = targets.scores(out)
    except Exception:  # a copy that fails is not used
        return False
    if got.shape != expected.shape:
        return False
    size = float(out.detach().abs().amax()) if isinstance(out, torch.Tensor) else 0.0
    tolerance = 4 * torch.finfo(got.dtype).eps ** 0.5
    scale = torch.clamp(expected.abs().to(got.dtype), min=size)
    return bool(((got - expected.to(got.dtype)).abs() <= tolerance * scale).all())


# --------------------------------------------------------------------------- Score-CAM
class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al., 2020), as pytorch-grad-cam defines it: each channel
    is upsampled to the input size (bilinear, corners aligned), min-max normalised
    to a mask, the input is multiplied by it, and the target score of the masked
    input is read; the weights are the softmax of those scores over channels.

    Exact by default: one masked forward per distinct channel map and image.
    Channels whose maps are equal after min-max normalisation, to within 1e-6 at
    every position (e.g. channels positive at one and the same position only, or
    copies at another scale), have the same mask up to rounding and share one
    forward; constant channels (all zero, typically) share one forward of a
    zero image. A constant channel's mask is taken as exactly zero
    (pytorch-grad-cam divides a rounding residue by ``1e-8`` there). The masked
    forwards run on a private copy of the model with every eval-mode BatchNorm
    that follows a convolution folded into it (exact up to rounding; the
    model's own forward is not touched; see ``_folded_copy``), when the model
    can be traced by ``torch.fx`` and has no hooks.

    ``approx=k``: at most ``k`` masked forwards per image (plus the shared zero
    image). The normalised channel maps of the image are grouped into ``k // 2``
    clusters (k-means at layer resolution, seeded deterministically by farthest
    points, 10 steps); the channel nearest each cluster's centre is run, and every
    channel gets the score of its nearest run channel. The remaining ``k - k // 2``
    forwards go to the channels with the largest estimated share of the map
    (``exp(score) x summed activation``), whose exact scores then replace the
    estimates. Masks that are close give close scores, and the softmax is dominated
    by the few highest scores, which the second round measures. Measured against
    exact Score-CAM (Pearson r of the maps, worst image; ``benchmarks/bench_cam.py``,
    BENCHMARKS.md): on the trained demo VGG-16 (``layer5.8``, 512 channels at 2 x 2,
    8 test digits) r = 0.982 at ``approx=32``, 0.986 at 40 and 0.997 at 48 (8.7x,
    7.0x and 5.9x fewer forwards); on a seeded random resnet18 (``layer4``, 512 at
    7 x 7) r = 0.999 at 48 (10x fewer forwards, 9x faster). Fewer forwards than
    about 32 lose the dominant channels (demo: r = 0.50 at 16). Images with at most
    ``k`` distinct maps are computed exactly.

    Args:
        batch_size: masked inputs per forward (bounds memory).
        approx: ``None`` (exact) or the number of masked forwards per image.
        channels_last: run convolutions channels-last (``None``: on the CPU when
            the model has a ``Conv2d``); see :mod:`netsight.cam.perturbation`.
        **options: see :class:`~netsight.cam.base.BaseCAM`.

    Example:
        >>> maps = ScoreCAM(model, "layer4", approx=48)(x)  # ~10x fewer forwards
    """

    method = "scorecam"
    _fold_norms = True

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        gradient: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        batch, channels, h, w = a.shape
        normed, constant = _normalised(a)
        mass = a.flatten(2).sum(2)  # (B, C): what each channel adds to the map, before weights
        model = self._masked_model(x, targets, scores)
        channel_scores = torch.zeros((batch, channels), dtype=scores.dtype, device=scores.device)
        if bool(constant.any()):
            zero_scores = _zero_image_scores(model, x, targets)  # (B,)
            owners = constant.nonzero()[:, 0]
            channel_scores[constant] = zero_scores[owners].to(channel_scores.dtype)
        runner = _MaskRunner(model, x, targets, (h, w), self.batch_size)
        # Distinct normalised maps of each image: (rows, which row each channel uses).
        groups = []
        for image, chosen, rows, inverse in _groups(normed, constant):
            row_mass = torch.zeros(rows.shape[0], dtype=mass.dtype, device=mass.device)
            row_mass.index_add_(0, inverse, mass[image, chosen])
            groups.append((image, chosen, rows, inverse, row_mass))
        limit = self.approx
        row_scores: dict[int, torch.Tensor] = {}
        # Round 1: every row (exact), or the cluster representatives (approx).
        first: dict[int, torch.Tensor] = {}
        for image, _, rows, _, row_mass in groups:
            if limit is None or rows.shape[0] <= limit:
                first[image] = torch.arange(rows.shape[0], device=rows.device)
            else:
                first[image] = _representatives(rows, row_mass, max(1, limit // 2))
        measured = runner.scores({image: rows[first[image]] for image, _, rows, _, _ in groups})
        second: dict[int, torch.Tensor] = {}
        for image, _, rows, _, row_mass in groups:
            picked = first[image]
            if picked.shape[0] == rows.shape[0]:
                row_scores[image] = measured[image]
                continue
            nearest = torch.cdist(rows, rows[picked]).argmin(1)
            estimate = measured[image][nearest]
            estimate[picked] = measured[image]
            row_scores[image] = estimate
            assert limit is not None
            budget = min(limit - picked.shape[0], rows.shape[0] - picked.shape[0])
            if budget > 0:
                share = torch.exp(estimate - estimate.max()) * row_mass.clamp(min=0)
                share[picked] = -1.0
                second[image] = share.topk(budget).indices
        if second:
            refined = runner.scores(
                {image: rows[second[image]] for image, _, rows, _, _ in groups if image in second}
            )
            for image, indices in second.items():
                row_scores[image][indices] = refined[image]
        for image, chosen, _, inverse, _ in groups:
            channel_scores[image, chosen] = row_scores[image][inverse].to(channel_scores.dtype)
        return torch.softmax(channel_scores, dim=1).to(a.dtype)


# --------------------------------------------------------------------------- SS-CAM, IS-CAM
def _normalised(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, h*w)`` channel maps min-max normalised at layer resolution, and the
    ``(B, C)`` constant channels (their rows are zero; NaN maps count as constant).
    Normalising before upsampling changes no mask: bilinear upsampling is linear
    and keeps constants, and the mask is min-max normalised again after it."""
    flat = a.flatten(2)
    low = flat.amin(2, keepdim=True)
    span = flat.amax(2, keepdim=True) - low
    constant = ~(span[..., 0] > 0)
    normed = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(constant[..., None], torch.zeros_like(normed), normed), constant


def _groups(
    normed: torch.Tensor, constant: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image with a non-constant channel: ``(image, its non-constant channels,
    their distinct rows, which row each channel uses)``."""
    for image in range(normed.shape[0]):
        chosen = (~constant[image]).nonzero().flatten()
        if chosen.numel() == 0:
            continue
        rows, inverse = _distinct(normed[image, chosen])
        yield image, chosen, rows, inverse


def _check_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
    return num_samples


def _check_std(std: Any) -> float:
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
        raise ValueError(f"std: expected a number >= 0, got {std!r}")
    return float(std)


class ISCAM(_PerturbationCAM):
    """IS-CAM, Integrated Score-CAM (Naidu et al., 2020), as torchcam 0.5 computes
    it: Score-CAM whose channel score is averaged over ``N = num_samples`` masked
    inputs ``c_i * (M_k * x)`` with the accumulated coefficients
    ``c_i = sum_{j<=i} j / N`` (``1/N, 3/N, ..., (N + 1) / 2``); the weights are
    the softmax over channels of those averages (torchcam subtracts the score of
    the unmasked input first, which a softmax ignores).

    The mask ``M_k`` is the channel upsampled to the input size (bilinear, corners
    not aligned, as torchcam) and then min-max normalised, as the Score-CAM,
    SS-CAM and IS-CAM papers define it, ``s(Up(A_k))``. torchcam 0.5 normalises
    before upsampling, which leaves a mask's interior peaks below 1; the maps
    agree to Pearson r >= 0.999 (tests/test_cam_reference_torchcam.py).

    No randomness, so the Score-CAM shortcuts apply: channels with the same
    normalised map share their ``N`` forwards, constant channels share the
    zero image's score (``c_i * 0 * x`` is the zero image), the masked inputs
    run ``batch_size`` at a time in inference mode on channels-last weights,
    and BatchNorm is folded into the convolutions of a private copy (see
    :class:`ScoreCAM`).

    Args:
        num_samples: integration steps ``N`` (torchcam's default 10).
        batch_size: masked inputs per forward.
        channels_last: see :class:`ScoreCAM`.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    interactive = False  # num_samples masked forwards per channel
    method = "iscam"
    _fold_norms = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        num_samples: int = 10,
        batch_size: int = 32,
        channels_last: bool | None = None,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__(
            model,
            target_layers,
            batch_size=batch_size,
            channels_last=channels_last,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        self.num_samples = _check_samples(num_samples)

    def coefficients(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The ``N`` scales ``c_i = sum_{j=1}^{i} j / N`` of the masked inputs."""
        n = self.num_samples
        steps = torch.arange(1, n + 1, dtype=torch.float64) / n
        return steps.cumsum(0).to(dtype)

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        gradient: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        batch, channels, h, w = a.shape
        normed, constant = _normalised(a)
        model = self._masked_model(x, targets, scores)
        channel_scores = torch.zeros((batch, channels), dtype=scores.dtype, device=scores.device)
        if bool(constant.any()):
            zero_scores = _zero_image_scores(model, x, targets)
            owners = constant.nonzero()[:, 0]
            channel_scores[constant] = zero_scores[owners].to(channel_scores.dtype)
        runner = _MaskRunner(model, x, targets, (h, w), self.batch_size, align_corners=False)
        coefficients = self.coefficients().to(x.device)
        n = self.num_samples
        groups = list(_groups(normed, constant))
        rows = {image: rows.repeat(n, 1) for image, _, rows, _ in groups}
        scales = {
            image: coefficients.repeat_interleave(distinct.shape[0])
            for image, _, distinct, _ in groups
        }
        measured = runner.scores(rows, scales=scales)
        for image, chosen, distinct, inverse in groups:
            mean = measured[image].view(n, distinct.shape[0]).double().mean(0)
            channel_scores[image, chosen] = mean[inverse].to(channel_scores.dtype)
        return torch.softmax(channel_scores, dim=1).to(a.dtype)


class SSCAM(_PerturbationCAM):
    """SS-CAM, Smoothed Score-CAM (Wang, Naidu et al., 2020), as torchcam 0.5
    computes it: Score-CAM whose channel score is averaged over ``num_samples``
    masked inputs ``(M_k + delta) * x`` with Gaussian noise
    ``delta ~ N(0, std^2)`` drawn at input resolution, independently for every
    image, channel and sample; the weights are the softmax over channels of the
    averages. The mask ``M_k`` is as in :class:`ISCAM` (``s(Up(A_k))``, the
    papers' order; torchcam normalises before upsampling).

    Randomness: sample ``s`` draws one ``(B, C, H, W)`` tensor of standard normals (channels
    of the target layer, input size) times ``std``, in sample order, from
    ``generator=``, or from a new generator seeded with ``seed=`` (the same maps on
    every call), or else from a copy of torch's global RNG (its next numbers; the global
    state is not moved), in the dtype of the input. That is torchcam's order: with the
    global RNG seeded alike, both draw the same noise. Every (image, channel, sample)
    has its own noise, so no forward is shared; what is faster than torchcam is each
    forward (inference mode, channels-last weights, BatchNorm folded into a private
    copy's convolutions; see :class:`ScoreCAM`), and masks are built per chunk rather
    than all at input resolution at once.

    Args:
        num_samples: noisy masks per channel (torchcam's default 35).
        std: the noise's standard deviation (torchcam's default 2.0; masks are
            in ``[0, 1]``). ``std=0`` is Score-CAM with this mask.
        seed: seed of a private generator (reproducible maps).
        generator: a ``torch.Generator`` on the input's device to draw from.
        batch_size: masked inputs per forward.
        channels_last: see :class:`ScoreCAM`.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    interactive = False  # num_samples masked forwards per channel
    method = "sscam"
    _fold_norms = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        num_samples: int = 35,
        std: float = 2.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 32,
        channels_last: bool | None = None,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        super().__init__(
            model,
            target_layers,
            batch_size=batch_size,
            channels_last=channels_last,
            reshape=reshape,
            relu=relu,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            mode=mode,
        )
        self.num_samples = _check_samples(num_samples)
        self.std = _check_std(std)
        device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
        noise_generator(seed, generator, device)  # the argument checks
        self.seed = seed
        self.generator = generator

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        gradient: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        batch, channels, h, w = a.shape
        normed, _ = _normalised(a)
        model = self._masked_model(x, targets, scores)
        runner = _MaskRunner(model, x, targets, (h, w), self.batch_size, align_corners=False)
        generator = noise_generator(self.seed, self.generator, x.device)
        size = (batch, channels, x.shape[-2], x.shape[-1])
        total = torch.zeros((batch, channels), dtype=torch.float64, device=scores.device)
        rows = {image: normed[image] for image in range(batch)}
        for _ in range(self.num_samples):
            noise = torch.randn(size, generator=generator, dtype=x.dtype, device=x.device)
            noise.mul_(self.std)
            measured = runner.scores(rows, offsets={image: noise[image] for image in rows})
            total += torch.stack([measured[image] for image in rows]).double()
            del noise
        mean = (total / self.num_samples).to(scores.dtype)
        return torch.softmax(mean, dim=1).to(a.dtype)


class _MaskRunner:
    """Target scores of masked inputs, built and run ``batch_size`` at a time.

    A mask is a normalised channel map upsampled to the input size and min-max
    normalised again (:func:`_masks`); ``scores`` may also scale each mask
    (IS-CAM) or add a noise image to it (SS-CAM) before it multiplies the input.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        targets: Targets,
        shape: tuple[int, int],
        batch_size: int,
        *,
        align_corners: bool = True,
    ) -> None:
        self.model = model
        self.x = x
        self.targets = targets
        self.shape = shape
        self.batch_size = batch_size
        self.align_corners = align_corners
        self._buffer: torch.Tensor | None = None

    def scores(
        self,
        rows: dict[int, torch.Tensor],
        *,
        scales: dict[int, torch.Tensor] | None = None,
        offsets: dict[int, torch.Tensor] | None = None,
    ) -> dict[int, torch.Tensor]:
        """``{image: (n,) scores}`` for ``{image: (n, h*w) normalised maps}``; with
        ``scales`` (``{image: (n,)}``) the masked input ``mask * x`` is multiplied
        by the row's scale, with ``offsets`` (``{image: (n, H, W)}``) the offset is
        added to the mask first."""
        if not rows:
            return {}
        device = self.x.device
        owners = torch.cat(
            [torch.full((r.shape[0],), i, dtype=torch.long, device=device) for i, r in rows.items()]
        )
        everything = torch.cat(list(rows.values()))
        scale = torch.cat([scales[i] for i in rows]) if scales is not None else None
        offset = torch.cat([offsets[i] for i in rows]) if offsets is not None else None
        values = []
        for start in range(0, everything.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            images = owners[part]
            masked = self._masked(
                images,
                everything[part],
                None if scale is None else scale[part],
                None if offset is None else offset[part],
            )
            values.append(self.targets.scores(self.model(masked), images))
        sizes = [r.shape[0] for r in rows.values()]
        return dict(zip(rows, torch.split(torch.cat(values), sizes), strict=True))

    def _masked(
        self,
        images: torch.Tensor,
        rows: torch.Tensor,
        scale: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x[images]`` times the upsampled, renormalised masks, in a reused buffer
        laid out like ``x`` (channels-last when ``x`` is)."""
        n = rows.shape[0]
        x = self.x
        masks = _masks(
            rows.view(n, *self.shape).to(x.dtype),
            (x.shape[-2], x.shape[-1]),
            align_corners=self.align_corners,
        )
        if offset is not None:
            masks = masks + offset[:, None].to(masks.dtype)
        if self._buffer is None or self._buffer.shape[0] < n:
            layout = (
                torch.channels_last
                if x.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            self._buffer = torch.empty(
                (n, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=layout
            )
        out = self._buffer[:n]
        first = int(images[0])
        if bool((images == first).all()):  # the usual chunk: one image, broadcast
            torch.mul(x[first : first + 1], masks, out=out)
        else:
            torch.mul(x[images], masks, out=out)
        if scale is not None:
            out.mul_(scale.to(out.dtype).view(n, *([1] * (out.dim() - 1))))
        return out


def _distinct(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distinct rows, index of each row's stand-in)``: rows within ``_SAME_MASK``
    (largest difference) of an earlier stand-in share it; the first row of each
    group stands for the group."""
    n = rows.shape[0]
    if n <= 1:
        return rows, torch.zeros(n, dtype=torch.long, device=rows.device)
    close = torch.cdist(rows.double(), rows.double(), p=float("inf")) <= _SAME_MASK
    owner = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    leaders: list[int] = []
    for i in range(n):  # one step per group; pairs are compared in cdist above
        if int(owner[i]) >= 0:
            continue
        owner[close[i] & (owner < 0)] = len(leaders)
        leaders.append(i)
    return rows[leaders], owner


def _representatives(rows: torch.Tensor, mass: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` rows that stand for all: k-means (farthest-point start
    from the heaviest row, a fixed number of Lloyd steps; no randomness), then per
    cluster the member nearest its centre."""
    data = rows.double()
    chosen = [int(mass.argmax())]
    distance = (data - data[chosen[0]]).norm(dim=1)
    for _ in range(count - 1):
        index = int(distance.argmax())
        chosen.append(index)
        distance = torch.minimum(distance, (data - data[index]).norm(dim=1))
    centres = data[chosen].clone()
    for _ in range(_KMEANS_STEPS):
        assign = torch.cdist(data, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=count).to(data.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    assign = torch.cdist(data, centres).argmin(1)
    gap = (data - centres[assign]).norm(dim=1)
    # Per cluster, the member with the smallest gap: sort by (cluster, gap), take firsts.
    order = torch.argsort(gap, stable=True)
    order = order[torch.argsort(assign[order], stable=True)]
    firsts = torch.ones_like(order, dtype=torch.bool)
    firsts[1:] = assign[order][1:] != assign[order][:-1]
    return order[firsts]


def _zero_image_scores(model: nn.Module, x: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Each image's target score on an all-zero input (one forward when the output
    is a tensor)."""
    out = model(torch.zeros_like(x[:1]))
    if isinstance(out, torch.Tensor):
        return targets.scores(out.expand(x.shape[0], *out.shape[1:]))
    return targets.scores(model(torch.zeros_like(x)))


def _masks(
    maps: torch.Tensor, size: tuple[int, int], *, align_corners: bool = True
) -> torch.Tensor:
    """``(n, h, w)`` maps upsampled (bilinear) to ``(n, 1, H, W)`` masks in ``[0, 1]``."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=align_corners)
    low = up.amin(dim=(1, 2, 3), keepdim=True)
    high = up.amax(dim=(1, 2, 3), keepdim=True)
    return (up - low) / (high - low + 1e-8)


# --------------------------------------------------------------------------- Ablation-CAM
class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channel ``k`` weighs
    ``(y - y_k) / y``, where ``y`` is the target score and ``y_k`` the score with
    channel ``k`` of the target layer set to zero.

    Only the part of the model after the target layer is re-run: a forward hook
    replaces the layer's output for one image with a chunk of ablated copies, so
    the layers before it run once per chunk on a single image. Every chunk carries
    one unablated copy as a control; if its score differs from the plain forward
    (a model that mixes the batch, or reads the batch size before the layer), the
    whole input is repeated instead. All-zero channels are skipped (weight 0).

    pytorch-grad-cam ablates to zero only when the layer's minimum is 0 and
    otherwise to ``min - 1e7``; netsight always ablates to zero, as in the paper.

    ``approx=k``: at most ``k`` ablations per image. The first forward also takes
    the gradient ``G`` of each image's score at the target layer (one backward
    through the part after it), which gives every channel its first-order effect
    ``y - y_k ~ sum(G_k * A_k)``; the ``k`` channels with the largest ``|effect|``
    are ablated exactly and the others keep the first-order value. Where the head
    after the layer is linear (global pooling + linear, as after a ResNet's last
    stage) the first-order value is exact. Measured against exact Ablation-CAM
    (Pearson r of the maps, worst image): r = 1.0000 at ``approx=16`` on a seeded
    random resnet18 (``layer4``) and 0.9999 on the trained demo VGG-16
    (``layer5.8``, whose head has ReLUs), 14-17x faster.
    Needs autograd, so it cannot run inside ``torch.inference_mode()``.

    Args:
        batch_size: ablated copies per forward (bounds memory).
        approx: ``None`` (exact) or the number of channels ablated per image.
        channels_last: run convolutions channels-last (``None``: off). Off by
            default because the weights are differences of nearly equal scores: a
            different layout rounds them differently, and where a layer's effect is
            at float32 rounding level (an untrained VGG-16's first block: 1e-6 of
            the score) the maps of any float32 implementation are mostly rounding,
            so they would no longer equal pytorch-grad-cam's. Only the part after
            the target layer runs once per chunk, so the gain is smaller here.
        **options: see :class:`~netsight.cam.base.BaseCAM`.
    """

    method = "ablationcam"
    _approx_needs_gradients = True
    _auto_channels_last = False

    def channel_weights(
        self,
        x: torch.Tensor,
        name: str,
        module: nn.Module,
        activation: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
        gradient: torch.Tensor | None,
    ) -> torch.Tensor:
        a = self.spatial(name, activation)
        positions = self._channel_positions(name, activation)  # (C, P) flat indices
        active = a.flatten(2).ne(0).any(2)  # (B, C)
        # drop[b, k] = y - y_k: 0 for all-zero channels (nothing changes).
        drop = torch.zeros(a.shape[:2], dtype=scores.dtype, device=scores.device)
        effect = None
        if self.approx is not None and gradient is not None:
            effect = (self.spatial(name, gradient) * a).flatten(2).sum(2)  # (B, C)
            drop = effect.to(drop.dtype)  # first order: y - y_k ~ G_k . A_k
        chunk_size = max(1, self.batch_size - 1)  # room for the control copy
        for image in range(x.shape[0]):
            channels = active[image].nonzero().flatten()
            if effect is not None and self.approx is not None and channels.numel() > self.approx:
                top = effect[image, channels].abs().topk(self.approx).indices
                channels = channels[top.sort().values]
            for chunk in torch.split(channels, chunk_size):
                ablated = self._ablated_scores(
                    x, image, module, activation, positions[chunk], targets, scores
                )
                # y - y_k against the control copy of the same forward: the same
                # kernels and batch, so rounding cancels out of small differences.
                drop[image, chunk] = (ablated[-1] - ablated[:-1]).to(drop.dtype)
        _warn_if_rounding(name, drop, active, scores)
        return (drop / scores[:, None]).to(a.dtype)

    def _channel_positions(self, name: str, activation: torch.Tensor) -> torch.Tensor:
        """For each channel of the spatial map, its flat positions in one image's
        raw layer output (works through any reshape that only moves values)."""
        count = activation[0].numel()
        index = torch.arange(count, dtype=torch.float64, device=activation.device)
        grid = self.spatial(name, index.view(1, *activation.shape[1:]))
        return grid[0].flatten(1).long()

    def _ablated_scores(
        self,
        x: torch.Tensor,
        image: int,
        module: nn.Module,
        activation: torch.Tensor,
        positions: torch.Tensor,
        targets: Targets,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        """Target scores of ``n`` ablated copies of ``image``'s layer output, then of
        one unablated control copy (``n + 1`` values)."""
        n = positions.shape[0]
        copies = activation[image : image + 1].repeat(n + 1, *([1] * (activation.dim() - 1)))
        rows = torch.arange(n, device=copies.device)[:, None].expand_as(positions)
        copies.view(n + 1, -1)[rows, positions] = 0  # the last copy is the control
        if activation.dim() == 4 and activation.is_contiguous(memory_format=torch.channels_last):
            # the layout the rest of the model saw in the plain forward
            copies = copies.contiguous(memory_format=torch.channels_last)
        owners = torch.full((n + 1,), image, dtype=torch.long, device=scores.device)
        fast = _suffix_scores(self.model, x[image : image + 1], module, copies, targets, owners)
        if fast is not None and _same_score(*fast, scores[image]):
            return fast[0]
        repeated = x[image : image + 1].expand(n + 1, *x.shape[1:])
        full = _suffix_scores(self.model, repeated, module, copies, targets, owners)
        if full is None or not _same_score(*full, scores[image]):
            got = "no score" if full is None else f"{float(full[0][-1]):.8g}"
            raise RuntimeError(
                f"{type(self.model).__name__}: replacing the target layer's output with its own "
                f"value changed the target score of image {image} ({float(scores[image]):.8g} "
                f"-> {got}); the model is not deterministic in eval mode, so Ablation-CAM "
                f"cannot be computed"
            )
        return full[0]


#: Ablation-CAM: a largest score change within this many rounding units (eps) of
#: the score means the weights are mostly rounding.
_ROUNDING_UNITS = 1000


def _warn_if_rounding(
    name: str, drop: torch.Tensor, active: torch.Tensor, scores: torch.Tensor
) -> None:
    """Warn for images where no channel moves the target score by more than
    ``_ROUNDING_UNITS`` rounding units of it (1.2e-4 of the score in float32).

    Seen on a random 13-layer VGG whose BatchNorm keeps its initial statistics:
    the logits are about 0.01 and a channel of the first block changes them by
    about 1e-8; the float32 weights are then 7-16 % off the float64 ones, and two
    correct implementations on two CPUs disagree (r = 0.89). The map is not wrong
    so much as unmeasurable at this precision."""
    eps = torch.finfo(scores.dtype).eps
    largest = torch.where(active, drop.abs(), torch.zeros_like(drop)).amax(1)
    weak = active.any(1) & (largest <= _ROUNDING_UNITS * eps * scores.abs())
    if bool(weak.any()):
        images = ", ".join(str(i) for i in weak.nonzero().flatten().tolist())
        worst = float((largest[weak] / scores[weak].abs()).max())
        warnings.warn(
            f"ablationcam: layer {name!r}: for image(s) {images} no channel changes the "
            f"target score by more than {worst:.2g} of it, within {_ROUNDING_UNITS} rounding "
            f"units of {scores.dtype}; the weights are mostly rounding noise (a layer far "
            f"from the output in a model whose signal fades, e.g. untrained BatchNorm "
            f"statistics); try a later layer or float64",
            CAMWarning,
            stacklevel=5,
        )


def _suffix_scores(
    model: nn.Module,
    x: torch.Tensor,
    module: nn.Module,
    copies: torch.Tensor,
    targets: Targets,
    owners: torch.Tensor,
) -> tuple[torch.Tensor, float] | None:
    """Target scores of ``model(x)`` with ``module``'s output replaced by ``copies``,
    and the size of the last copy's output (its largest absolute value, or 0 when
    the output is not a tensor); ``None`` when the model cannot run that way."""

    def replace(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return copies
        return type(output)([copies, *output[1:]])

    with HookSet() as hooks:
        hooks.add(module.register_forward_hook(replace))
        try:
            out = model(x)
            result = targets.scores(out, owners)
        except (RuntimeError, IndexError, ValueError):
            return None
    if result.shape[0] != copies.shape[0]:
        return None
    size = 0.0
    if isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == copies.shape[0]:
        size = float(out[-1].detach().abs().amax()) if out[-1].numel() else 0.0
    return result, size


def _same_score(scores: torch.Tensor, size: float, expected: torch.Tensor) -> bool:
    """Whether the control copy's score (the last of ``scores``) is the plain
    forward's ``expected`` score up to rounding.

    The two come from forwards of different batch sizes, which CPU kernels may
    round differently (oneDNN and the native convolutions block by batch), and
    the rounding of a logit follows the size of the values summed into it, not
    the logit itself: a logit of 0.008 next to others of 0.3 was seen 1.2e-5 off
    (native kernels). So the tolerance is ``4 * sqrt(eps)`` of the dtype (1.4e-3
    for float32) times the larger of the score and the output's largest value. A
    model that mixes the batch or reads the batch size changes the score by far
    more than that."""
    value = scores[-1]
    tolerance = 4 * torch.finfo(value.dtype).eps ** 0.5
    scale = max(abs(float(expected)), size)
    return bool(torch.isclose(value, expected.to(value.dtype), rtol=0.0, atol=tolerance * scale))
