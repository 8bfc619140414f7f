"""The machinery every class-activation-map method shares.

A method only says how it turns a layer's activations (and, for the gradient
family, their gradients) into a signed map per image; :class:`BaseCAM` does the
rest: input checks, choosing the target layer, running the model with hooks that
are always removed, reading target scores, and turning raw maps into ``[0, 1]``
maps at input resolution.

How the gradient forward works (see :func:`run_forward`): the model runs under
``torch.no_grad()`` until the earliest target layer; that layer's forward hook
switches grad on, keeps its output as a fresh leaf (``out.detach()
.requires_grad_()``) and passes a clone downstream, so an in-place ReLU after the
layer cannot touch the kept tensor. Only the head after the target layer builds
a graph, the gradient comes from one ``torch.autograd.grad`` for the whole batch,
and no parameter's ``.grad`` is ever written.
"""

from __future__ import annotations

import math
import operator
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from netsight.cam.layout import LayerLayout, Layout, LayoutError, layer_layout
from netsight.cam.projection import principal_projection
from netsight.capture import LayerSpec, resolve_layers
from netsight.errors import CAMWarning
from netsight.features import run_forward as named_forward
from netsight.hooks import (
    HookSet,
    check_not_lazy,
    model_device,
    preserve_state,
    unwrap_compiled,
)
from netsight.images import expected_channels, minmax_scale
from netsight.options import Mode

__all__ = [
    "BaseCAM",
    "CAMResult",
    "CAMWarning",
    "ForwardRecord",
    "Frame",
    "Reshape",
    "ScoreTarget",
    "TargetSpec",
    "Targets",
    "check_classes",
    "find_target_layer",
    "is_detections",
    "level_name",
    "noise_generator",
    "resolve_targets",
    "run_forward",
    "tokens_to_grid",
]

#: A callable target: takes one image's model output, returns its scalar score.
ScoreTarget: TypeAlias = Callable[[Any], torch.Tensor]
#: What ``targets=`` accepts.
TargetSpec: TypeAlias = (
    "int | Sequence[int] | torch.Tensor | ScoreTarget | Sequence[ScoreTarget] | Targets | None"
)
#: Turns a layer's output into a ``(B, C, H, W)`` map (e.g. transformer tokens).
Reshape: TypeAlias = Callable[[torch.Tensor], torch.Tensor]

_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class CAMResult:
    """What one :meth:`BaseCAM.explain` call computed.

    Attributes:
        maps: ``(B, H, W)`` float maps, in ``[0, 1]`` with ``normalize=True``, at
            input resolution with ``upsample=True``.
        raw: ``{layer name: (B, h, w)}`` signed maps at layer resolution, before
            ReLU, resizing and normalisation (``{"input": ...}`` for saliency).
        logits: the model output when it is a ``(B, classes)`` tensor, else ``None``.
        classes: the explained class of each image (``None`` for callable targets).
        scores: ``(B,)`` target score of each image on the unchanged input.
        layers: the target layers' qualified names.
        method: the method's registry name (``"gradcam"``, ...).
        attribution: ``(B, C, H, W)`` per-pixel, per-channel attribution at input
            resolution, for the methods that make one: the guided-backpropagation
            gradient (:class:`~netsight.cam.guided.GuidedBackprop`) or that gradient
            times the Grad-CAM map (:class:`~netsight.cam.guided.GuidedGradCAM`);
            ``None`` for the others.
    """

    maps: torch.Tensor
    raw: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    classes: tuple[int | None, ...]
    scores: torch.Tensor
    layers: tuple[str, ...]
    method: str
    attribution: torch.Tensor | None = None


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Targets:
    """Resolved targets for a batch: class indices or one callable per image.

    With both, the callables give the scores and the classes only name the class
    each image is explained for (Finer-CAM's scores compare a class with others).
    """

    classes: torch.Tensor | None = None
    fns: tuple[ScoreTarget, ...] | None = None

    @property
    def labels(self) -> tuple[int | None, ...]:
        if self.classes is not None:
            return tuple(int(c) for c in self.classes.tolist())
        assert self.fns is not None
        return tuple(None for _ in self.fns)

    def scores(self, output: Any, images: torch.Tensor | None = None) -> torch.Tensor:
        """Target score of every row of ``output``; row ``j`` belongs to image
        ``images[j]`` (default: row ``j`` is image ``j``)."""
        if self.fns is None:
            assert self.classes is not None
            logits = _logits_or_error(output)
            classes = self.classes if images is None else self.classes[images]
            return logits.gather(1, classes.to(logits.device).view(-1, 1))[:, 0]
        owners = range(len(self.fns)) if images is None else images.tolist()
        values = []
        for row, owner in enumerate(owners):
            value = self.fns[owner](_select(output, row, len(owners)))
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError(
                    f"targets: the callable for image {owner} returned "
                    f"{_describe(value)}; it must return a scalar tensor (one score)"
                )
            values.append(value.reshape(()))
        return torch.stack(values)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        return f"a dict (keys {list(value)[:5]})"
    return f"a {type(value).__name__}"


def _select(output: Any, row: int, rows: int | None = None) -> Any:
    """One image's part of a model output of ``rows`` images: tensors sliced along
    dim 0, and a list of one dict per image (a torchvision detector's output)
    indexed."""
    if isinstance(output, torch.Tensor):
        return output[row]
    if isinstance(output, dict):
        return {key: _select(value, row, rows) for key, value in output.items()}
    if (
        isinstance(output, list)
        and rows is not None
        and len(output) == rows
        and all(isinstance(item, Mapping) for item in output)
    ):
        return output[row]
    if isinstance(output, (tuple, list)):
        return type(output)(_select(value, row, rows) for value in output)
    return output


def _logits_or_error(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return output
    raise TypeError(
        f"the model returned {_describe(output)}, not a (batch, classes) logits tensor, so "
        f"class indices cannot be read from it; pass targets= as a callable that takes one "
        f"image's output and returns its score, e.g. targets=lambda out: out['logits'][3]"
    )


def check_classes(
    values: Any,
    classes: int | None,
    *,
    name: str,
    noun: str = "class",
    count: int | None = None,
) -> list[int]:
    """Class indices given by the user, refused unless they can be classes of the model.

    The one check behind ``targets=`` (:class:`BaseCAM`), ``labels`` in
    :func:`netsight.cam.evaluate` and ``labels=`` in :func:`netsight.report`.

    Example:
        >>> check_classes([3, 1], 10, name="labels", noun="label", count=2)
        [3, 1]

    Args:
        values: a sequence of ints (numpy or 0-d tensor ints too) or a 1-D
            integer tensor.
        classes: the model's number of classes; ``None`` when unknown (only
            negative indices are refused then).
        name: the argument's name, which starts every message.
        noun: what one value is called in the messages (``"class"``, ``"label"``).
        count: how many values there must be (one per image), if known.

    Returns:
        The values as plain ints.

    Raises:
        TypeError: not a sequence, or a value that is not an int (bools and
            floats are refused too).
        ValueError: the wrong number of values, or one out of range.
    """
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.dtype == torch.bool:
            raise TypeError(
                f"{name}: expected a 1-D integer tensor of {noun} indices, got "
                f"{values.dtype} of shape {list(values.shape)}"
            )
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of {noun} indices, got {_describe(values)}")
    items = []
    for value in values:
        try:
            if isinstance(value, bool):
                raise TypeError
            items.append(operator.index(value))
        except TypeError:
            raise TypeError(
                f"{name}: expected int {noun} indices, got {value!r} ({type(value).__name__})"
            ) from None
    if count is not None and len(items) != count:
        raise ValueError(f"{name}: {len(items)} {noun}s for {count} images")
    for item in items:
        if item < 0 or (classes is not None and item >= classes):
            where = (
                f"the model has {classes} classes (0 to {classes - 1})"
                if classes is not None
                else "class indices start at 0"
            )
            raise ValueError(f"{name}: {noun} {item} is out of range; {where}")
    return items


def resolve_targets(targets: TargetSpec, output: Any, batch: int) -> Targets:
    """Turn a ``targets=`` argument into :class:`Targets` for a batch.

    Args:
        targets: ``None`` (top-1 class of each image; a detector's most confident
            box, :class:`netsight.cam.targets.Detection`), an int (that class for every
            image), one int per image (list or tensor), a callable on one image's
            output (used for every image) or one callable per image.
        output: the model's output on the batch.
        batch: the batch size.

    Raises:
        TypeError: targets of an unknown kind, or class targets for a model whose
            output is not a logits tensor.
        ValueError: a class out of range, or a list of the wrong length.
    """
    if isinstance(targets, Targets):
        return targets
    if targets is None:
        if is_detections(output):  # a detector: each image's most confident box
            from netsight.cam.targets import Detection

            return Targets(fns=_bound((Detection(0),) * batch, output))
        logits = _logits_or_error(output)
        return Targets(classes=logits.detach().argmax(1))
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return Targets(fns=_bound((targets,) * batch, output))
    if isinstance(targets, torch.Tensor):
        if targets.dim() > 1 or targets.is_floating_point() or targets.is_complex():
            raise TypeError(
                f"targets: expected an integer tensor of shape () or (B,), got "
                f"{targets.dtype} of shape {list(targets.shape)}"
            )
        items: list[Any] = [int(targets)] if targets.dim() == 0 else targets.tolist()
        single = targets.dim() == 0
    elif isinstance(targets, int) and not isinstance(targets, bool):
        items, single = [targets], True
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        items, single = list(targets), False
    else:
        raise TypeError(f"targets: expected None, ints or callables, got {_describe(targets)}")
    if not single and len(items) != batch:
        raise ValueError(f"targets: got {len(items)} targets for a batch of {batch} images")
    if items and all(callable(item) for item in items):
        return Targets(fns=_bound(tuple(items), output))
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise TypeError("targets: a list must hold only ints or only callables")
    logits = _logits_or_error(output)
    check_classes(items, logits.shape[1], name="targets")
    values = items * batch if single else items
    return Targets(classes=torch.tensor(values, dtype=torch.long, device=logits.device))


def _bound(fns: tuple[ScoreTarget, ...], output: Any) -> tuple[ScoreTarget, ...]:
    """Targets that fix what they score from the unchanged output (a ``bind(one
    image's output)`` method, e.g. :class:`netsight.cam.targets.Detection`, which
    becomes the box it found) bound per image; others as they are."""
    if not any(callable(getattr(fn, "bind", None)) for fn in fns):
        return fns
    bound = []
    for i, fn in enumerate(fns):
        bind = getattr(fn, "bind", None)
        bound.append(bind(_select(output, i, len(fns))) if callable(bind) else fn)
    return tuple(bound)


def noise_generator(
    seed: int | None, generator: torch.Generator | None, device: torch.device
) -> torch.Generator:
    """The generator a noisy method draws from: ``generator`` (on ``device``), a
    new one seeded with ``seed``, or a copy of torch's global RNG (the numbers it
    would give next; the global state itself is left where it was).

    Raises:
        TypeError: ``generator`` is not a ``torch.Generator``, or ``seed`` not an int.
        ValueError: both given, or the generator is on another device.
    """
    if generator is not None and seed is not None:
        raise ValueError("pass seed= or generator=, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            kind = type(generator).__name__
            raise TypeError(f"generator: expected a torch.Generator, got {kind}")
        if generator.device.type != device.type:
            raise ValueError(
                f"generator: it draws on {generator.device}, but the input is on {device}; "
                f"pass torch.Generator(device={str(device)!r})"
            )
        return generator
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        return torch.Generator(device=device).manual_seed(seed)
    # A copy of torch's global RNG for the device: the same numbers as drawing
    # from it (torchcam's noise), without moving the caller's global state.
    copied = torch.Generator(device=device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        copied.set_state(torch.cuda.get_rng_state(index))
    else:
        copied.set_state(torch.get_rng_state())
    return copied


# --------------------------------------------------------------------------- layers
def tokens_to_grid(tokens: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """``(B, N, C)`` transformer tokens as a ``(B, C, h, w)`` map.

    When ``N`` is a perfect square the tokens are the grid; when ``N - 1`` is, the
    first (class) token is dropped.

    Raises:
        ValueError: neither ``N`` nor ``N - 1`` is a perfect square.
    """
    batch, count, channels = tokens.shape
    for drop in (0, 1):
        side = math.isqrt(max(count - drop, 0))
        if count - drop > 1 and side * side == count - drop:
            grid = tokens[:, drop:, :].reshape(batch, side, side, channels)
            return grid.permute(0, 3, 1, 2)
    raise ValueError(
        f"layer {name!r} has a (B, N, C) output with N = {count} tokens; neither N nor N - 1 "
        f"is a square patch grid, so pass reshape= to turn it into a (B, C, H, W) map"
    )


def _is_token_grid(out: Any) -> bool:
    """A ``(B, N, C)`` output whose ``N`` (or ``N - 1``, a class token) is a square."""
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        return False
    count = out.shape[1]
    return any(
        count - drop > 1 and math.isqrt(count - drop) ** 2 == count - drop for drop in (0, 1)
    )


def _is_attention(module: nn.Module) -> bool:
    """An attention module, by type or class name (``Attention``, ``WindowAttention``,
    CoaT's ``FactorAttnConvRelPosEnc``)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    name = type(module).__name__
    return name.endswith("Attention") or "Attn" in name


def find_target_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the layer a CAM explains when none is given.

    For a convolutional network: the last layer (in forward order) whose output is
    a spatial map (channels first or last, as :func:`~netsight.cam.layout.layer_layout`
    reads it from the model) with more than one position, adaptive pooling
    excluded. When token layers (``(B, N, C)`` whose patch tokens, after the
    model's prefix tokens, make a grid) come after the last spatial map, as in a
    vision transformer: the last token layer that finished before the last
    attention module started, i.e. the input of the last attention block (the
    norm before it). Later token outputs feed the head only through the class
    token, so their patch tokens get no gradient and their maps are blank.
    Outputs whose layout cannot be told (attention heads, windows) are skipped.
    For a detector (an output that is a list of per-image dicts with ``"boxes"``):
    the last layer returning a dict of maps, its feature pyramid (torchvision's
    ``backbone``), every level of which is explained and the maps fused.

    Runs one probe forward on the first image under ``no_grad``; when it fails,
    :func:`netsight.features.run_forward` runs it again through netsight's runner
    so that the error names the layer.

    Raises:
        TraceError: the probe forward failed; the message names the layer.
        ValueError: no layer qualifies.
    """
    order = list(model.named_modules())
    names = {id(module): name for name, module in order}
    hw = (x.shape[-2], x.shape[-1])
    # (kind, name, module) in the order the events happened
    events: list[tuple[str, str, nn.Module]] = []

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if _is_attention(module):
            events.append(("attention", names[id(module)], module))

    def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if _is_levels(out) and all(v.shape[0] == 1 and v.dim() == 4 for v in out.values()):
            events.append(("levels", names[id(module)], module))
            return
        if isinstance(out, torch.Tensor) and out.dim() == 5 == x.dim() and out.shape[0] == 1:
            if out.shape[2:].numel() > 1:  # a video layer's (1, C, T, h, w) map
                events.append(("spatial", names[id(module)], module))
            return
        if not isinstance(out, torch.Tensor) or out.shape[0] != 1 or out.dim() not in (3, 4):
            return  # not one image's map (e.g. attention windows batched together)
        if isinstance(module, _ADAPTIVE_POOLS):
            return
        name = names[id(module)]
        try:
            layout = layer_layout(model, module, name, out, hw, order=order)
        except LayoutError:
            return
        if layout.layout is Layout.TOKENS:
            events.append(("tokens", name, module))
        elif layout.to_nchw(out).shape[2:].numel() > 1:
            events.append(("spatial", name, module))

    modules = [m for m in model.modules() if m is not model]
    with HookSet() as hooks:
        hooks.add_forward_hooks(modules, pre, post)
        output = named_forward(model, x[:1])
    pyramids = [name for kind, name, _ in events if kind == "levels"]
    if pyramids and is_detections(output):
        return pyramids[-1]
    maps = [i for i, (kind, _, _) in enumerate(events) if kind in ("spatial", "tokens")]
    if maps and events[maps[-1]][0] == "spatial":
        return events[maps[-1]][1]
    if maps:  # a token model: the input of the last attention block
        attention = [i for i, (kind, _, _) in enumerate(events) if kind == "attention"]
        last = attention[-1] if attention else len(events)
        before = [i for i in maps if i < last]
        return events[(before or maps)[-1]][1]
    raise ValueError(
        f"{type(model).__name__} has no layer with a spatial (B, C, H, W) output for input "
        f"{list(x.shape[1:])}; pass target_layers= (and reshape= for token layers)"
    )


def is_detections(output: Any) -> bool:
    """A detector's output: a list of one dict per image (boxes, labels, scores)."""
    return (
        isinstance(output, list)
        and len(output) > 0
        and all(isinstance(item, Mapping) and "boxes" in item for item in output)
    )


# The automatic layer of each model, per module set and input kind: finding it costs a
# probe forward of one image, which a caller that builds an explainer per batch (as
# pytorch-grad-cam's API encourages) would otherwise pay on every call. The key holds
# the ids of all modules, so adding, removing or replacing a module finds it anew;
# the weak key lets the model be collected.
_AUTO_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def _automatic_layer(model: nn.Module, x: torch.Tensor) -> str:
    """:func:`find_target_layer`, remembered per model and input kind."""
    key = (
        tuple(id(m) for m in model.modules()),
        tuple(x.shape[1:]),
        x.dtype,
        x.device,
    )
    known = _AUTO_LAYERS.setdefault(model, {})
    if key not in known:
        if len(known) >= 8:  # a model rebuilt over and over: keep the memory bounded
            known.clear()
        known[key] = find_target_layer(model, x)
    return known[key]


# --------------------------------------------------------------------------- forward
@dataclass
class ForwardRecord:
    """One hooked forward: the model output and the kept output of each target layer
    (last call), with how often each layer ran."""

    output: Any
    activations: dict[str, torch.Tensor]
    calls: dict[str, int] = field(default_factory=dict)
    #: ``{entry: layer}`` for entries that are one level of a layer's dict of maps
    #: (``"backbone[0]"`` of a detector's feature pyramid ``"backbone"``).
    sources: dict[str, str] = field(default_factory=dict)
    #: Where the maps sit in the input when the model resizes and pads it first.
    frame: Frame | None = None

    def layer_of(self, entry: str) -> str:
        """The target layer an activation entry comes from."""
        return self.sources.get(entry, entry)


def _is_levels(output: Any) -> bool:
    """A dict of spatial maps: a feature pyramid (a torchvision detector's backbone
    returns ``{"0": ..., "1": ..., "pool": ...}``)."""
    return (
        isinstance(output, Mapping)
        and len(output) > 0
        and all(isinstance(v, torch.Tensor) and v.dim() >= 4 for v in output.values())
    )


def level_name(layer: str, key: object) -> str:
    """The entry name of one level of a layer's dict of maps: ``"backbone[pool]"``."""
    return f"{layer}[{key}]"


@dataclass(frozen=True)
class Frame:
    """Where a layer's maps sit in the input, for a model that resizes and pads its
    input before the layers run (torchvision's detectors: a
    ``GeneralizedRCNNTransform`` scales each image, then pads the batch to a
    multiple of 32). The maps cover the padded ``canvas``; each image fills the
    top-left ``image_sizes[i]`` of it."""

    canvas: tuple[int, int]
    image_sizes: tuple[tuple[int, int], ...]

    def to_input(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, h, w)`` maps over the canvas as ``(B, H, W)`` maps over the input:
        each image's part of the canvas, resampled bilinearly (pixel centres)."""
        batch = maps.shape[0]
        height, width = size
        rows = []
        for i in range(batch):
            used_h, used_w = self.image_sizes[i] if i < len(self.image_sizes) else self.canvas
            # Output pixel centres in the canvas, in grid_sample's [-1, 1] units.
            ys = (torch.arange(height, dtype=maps.dtype) + 0.5) * (used_h / height)
            xs = (torch.arange(width, dtype=maps.dtype) + 0.5) * (used_w / width)
            gy = ys / self.canvas[0] * 2 - 1
            gx = xs / self.canvas[1] * 2 - 1
            grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
            rows.append(grid.to(maps.device))
        sampled = F.grid_sample(
            maps[:, None],
            torch.stack(rows),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return sampled[:, 0]


def _frame_hook(model: nn.Module, record: ForwardRecord) -> Any:
    """A hook keeping the :class:`Frame` of a torchvision detector's resize step
    (its ``GeneralizedRCNNTransform``, returning an ``ImageList``), or ``None``."""
    transform = next(
        (m for m in model.modules() if type(m).__name__ == "GeneralizedRCNNTransform"), None
    )
    if transform is None:
        return None

    def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        images = output[0] if isinstance(output, tuple) else output
        sizes = getattr(images, "image_sizes", None)
        tensors = getattr(images, "tensors", None)
        if sizes is not None and isinstance(tensors, torch.Tensor):
            canvas = (int(tensors.shape[-2]), int(tensors.shape[-1]))
            record.frame = Frame(canvas, tuple((int(h), int(w)) for h, w in sizes))

    return transform.register_forward_hook(keep)


def _output_tensor(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"layer {name!r} returned {_describe(output)}; a CAM needs a layer whose output is "
        f"a tensor (or a tuple starting with one)"
    )


def _with_tensor(output: Any, tensor: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return tensor
    return type(output)([tensor, *output[1:]])


def run_forward(
    model: nn.Module,
    x: torch.Tensor,
    layers: dict[str, nn.Module],
    *,
    grad: bool,
) -> ForwardRecord:
    """Run ``model(x)`` under ``no_grad`` and keep the target layers' outputs.

    With ``grad=True`` the first target layer to run switches grad on and its
    output is kept as a fresh leaf; later target layers keep their output as it is
    (already in the graph) or as a leaf when it is not. Every layer passes a clone
    downstream. Hooks are removed and the grad mode restored on every path.

    Raises:
        ValueError: a target layer did not run in the forward.
    """
    record = ForwardRecord(output=None, activations={}, calls={name: 0 for name in layers})

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if not grad:
            return tensor.detach()
        if tensor.requires_grad and torch.is_grad_enabled():
            return tensor
        torch.set_grad_enabled(True)
        return tensor.detach().requires_grad_()

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            record.calls[name] += 1
            if _is_levels(output):  # a feature pyramid: each level is a map
                passed = []
                for key, value in output.items():
                    entry = level_name(name, key)
                    record.activations[entry] = kept = keep(value)
                    record.sources[entry] = name
                    passed.append((key, kept.clone()))
                return type(output)(passed)
            kept = keep(_output_tensor(output, name))
            record.activations[name] = kept
            return _with_tensor(output, kept.clone())

        return hook

    previous = torch.is_grad_enabled()
    with HookSet() as hooks:
        for name, module in layers.items():
            hooks.add(module.register_forward_hook(make_hook(name)))
        frame = _frame_hook(model, record)
        if frame is not None:
            hooks.add(frame)
        try:
            with torch.no_grad():
                record.output = model(x)
        finally:
            torch.set_grad_enabled(previous)
    missing = [name for name, count in record.calls.items() if count == 0]
    if missing:
        raise ValueError(
            f"target layer(s) {', '.join(map(repr, missing))} did not run in the forward pass "
            f"of {type(model).__name__} (modules that forward() never calls cannot be "
            f"explained; netsight.list_layers(model) lists the names)"
        )
    return record


# --------------------------------------------------------------------------- maps
def _resize(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(B, h, w)`` maps resized bilinearly to ``size``; ``(B, t, h, w)`` video maps
    trilinearly to ``(T, H, W)``."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def _images(flags: torch.Tensor) -> str:
    return ", ".join(str(i) for i in flags.nonzero().flatten().tolist())


def _minmax(maps: torch.Tensor, *, what: str | None) -> torch.Tensor:
    """Per-image min-max to ``[0, 1]``; constant maps become zeros (warned when
    ``what`` names the maps)."""
    if maps.dim() == 4:  # (B, T, H, W) video maps: one range per image over all frames
        flat = maps.reshape(maps.shape[0], -1, maps.shape[-1])
        return _minmax(flat, what=what).view(maps.shape)
    scaled, varies = minmax_scale(maps)
    if what is not None and not bool(varies.all()):
        warnings.warn(
            f"{what}: the map of image(s) {_images(~varies.flatten())} is constant (all zero "
            f"after ReLU: nothing in the layer raises the target score); returned as zeros",
            CAMWarning,
            stacklevel=4,
        )
    return scaled


def _finite(name: str, maps: torch.Tensor) -> torch.Tensor:
    bad = ~torch.isfinite(maps)
    if bool(bad.any()):
        images = bad.flatten(1).any(1)
        warnings.warn(
            f"layer {name!r}: {int(bad.sum())} NaN/Inf values in the map of image(s) "
            f"{_images(images)} (non-finite activations or gradients) were set to 0",
            CAMWarning,
            stacklevel=4,
        )
        maps = torch.where(bad, torch.zeros_like(maps), maps)
    return maps


# --------------------------------------------------------------------------- base class
@dataclass
class RawMaps:
    """What a method's :meth:`BaseCAM._compute` returns."""

    maps: dict[str, torch.Tensor]
    output: Any
    targets: Targets
    scores: torch.Tensor
    #: ``(B, C, H, W)`` input-resolution attribution (see :class:`CAMResult`).
    attribution: torch.Tensor | None = None


class BaseCAM:
    """A class-activation-map method: ``cam(x, targets)`` returns ``(B, H, W)`` maps.

    Args:
        model: the network; it is left exactly as it came (no hooks, the same
            training flags, ``requires_grad`` and ``.grad``).
        target_layers: names, globs, modules or module types (several layers are
            fused by averaging their normalised maps at input resolution). Default:
            the last layer with a spatial map, found with one probe forward of a
            single image per input shape.
        reshape: turns a layer's output into ``(B, C, H, W)``. Without it the
            layout of each layer's output (channels first, channels last as in
            Swin, or ``(B, N, C)`` tokens after the model's prefix tokens) is read
            from the model (see :mod:`netsight.cam.layout`), and a layer whose
            layout cannot be told is refused with a :class:`LayoutError`.
        relu: keep only positive evidence (before resizing and normalising).
        normalize: per-image min-max to ``[0, 1]``; a constant map is returned as
            zeros with a :class:`CAMWarning`, never NaN.
        upsample: resize maps bilinearly to the input size.
        aug_smooth: average the maps over a horizontal flip and intensity scales
            0.9, 1.0, 1.1 (as pytorch-grad-cam), flipping back; the targets are
            those of the unchanged input.
        eigen_smooth: replace the channel sum of the weighted activations by their
            first principal component (pytorch-grad-cam's ``eigen_smooth``), with
            the sign that agrees with the channel sum, i.e. with the map it smooths
            (:func:`~netsight.cam.projection.principal_projection`). Refused by the
            methods that weigh no channels (Eigen-CAM and Eigen-Grad-CAM, which are
            projections already, saliency, guided backpropagation).
        mode: ``"eval"`` (default), ``"train"`` or ``"same"``; restored afterwards.

    Calling inside ``torch.no_grad()`` works (gradients are switched on where they
    are needed); gradient methods raise inside ``torch.inference_mode()``.
    Non-finite values in a map are set to 0 with a :class:`CAMWarning`.
    """

    #: Registry name of the method.
    method: ClassVar[str] = "base"
    #: Whether the method needs gradients (and so cannot run in inference mode).
    needs_gradients: ClassVar[bool] = False
    #: Whether the method reads target layers (saliency works on the input).
    uses_layers: ClassVar[bool] = True
    #: Whether a map costs few enough forwards for a click in ``netsight explore``
    #: (the smoothed perturbation methods cost tens of thousands on a ResNet).
    interactive: ClassVar[bool] = True
    #: Whether ``eigen_smooth=True`` means something for the method.
    supports_eigen_smooth: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        mode: str = "eval",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        model = unwrap_compiled(model)
        check_not_lazy(model)
        mode = Mode.parse(mode, "mode")
        if reshape is not None and not callable(reshape):
            raise TypeError("reshape: expected a callable (tensor -> (B, C, H, W) tensor)")
        self.model = model
        self.reshape = reshape
        self.relu = relu
        self.normalize = normalize
        self.upsample = upsample
        self.aug_smooth = aug_smooth
        if eigen_smooth and not self.supports_eigen_smooth:
            raise ValueError(
                f"{self.method}: eigen_smooth=True is not supported (the method weighs no "
                f"channels whose principal component could smooth its map); expected "
                f"eigen_smooth=False"
            )
        self.eigen_smooth = eigen_smooth
        self.mode = mode
        self._spec = target_layers
        self._layouts: dict[str, LayerLayout] = {}
        # The last forward's Frame (a detector resizes and pads its input): read by
        # _maps to put each map back on its image.
        self._frame: Frame | None = None
        # Frames per video layer (see spatial()), to unstack its maps.
        self._depths: dict[str, int] = {}
        if target_layers is not None:
            if not self.uses_layers:
                raise ValueError(f"{self.method}: works on the input; target_layers must be None")
            resolve_layers(model, target_layers)  # fail early on unknown names

    def __repr__(self) -> str:
        layers = "auto" if self._spec is None else repr(self._spec)
        return f"{type(self).__name__}({type(self.model).__name__}, target_layers={layers})"

    # ------------------------------------------------------------------ public
    def __call__(self, x: torch.Tensor, targets: TargetSpec = None) -> torch.Tensor:
        """``(B, H, W)`` maps for ``x``; see :meth:`explain`."""
        return self.explain(x, targets).maps

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> CAMResult:
        """Explain a batch.

        Args:
            x: ``(B, C, H, W)`` input batch (moved to the model's device).
            targets: ``None`` (top-1 class per image), an int (that class for
                every image), one int per image, a callable on one image's output
                returning its score (for every image), or one callable per image.

        Returns:
            A :class:`CAMResult` with the maps, raw maps, logits and targets.
        """
        x = self._check_input(x)
        self._frame = None
        with preserve_state(self.model, self.mode):
            layers = self._layers(x) if self.uses_layers else {}
            run = self._compute(x, targets, layers)
            maps = self._maps(run.maps, tuple(x.shape[2:]), quiet=False)
            if self.aug_smooth:
                maps = self._smooth(x, run.targets, layers, maps)
        output = run.output
        logits = output.detach() if isinstance(output, torch.Tensor) else None
        return CAMResult(
            maps=maps,
            raw={name: self._unstack(name, m.detach()) for name, m in run.maps.items()},
            logits=logits,
            classes=run.targets.labels,
            scores=run.scores.detach(),
            layers=tuple(run.maps) if not layers else tuple(layers),
            method=self.method,
            attribution=None if run.attribution is None else run.attribution.detach(),
        )

    # ------------------------------------------------------------------ for methods
    def _compute(
        self, x: torch.Tensor, targets: TargetSpec, layers: dict[str, nn.Module]
    ) -> RawMaps:
        """Signed ``(B, h, w)`` maps per layer; implemented by each method."""
        raise NotImplementedError

    def reduce_channels(self, weighted: torch.Tensor) -> torch.Tensor:
        """The ``(B, h, w)`` map of ``(B, C, h, w)`` weighted activations: their
        channel sum, or with ``eigen_smooth=True`` their first principal component
        (:func:`~netsight.cam.projection.principal_projection`)."""
        if self.eigen_smooth:
            return principal_projection(weighted).to(weighted.dtype)
        return weighted.sum(1)

    def spatial(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A layer's output (or its gradient) as ``(B, C, H, W)``.

        A video layer's ``(B, C, T, h, w)`` output comes back with its frames
        stacked along the height, ``(B, C, T * h, w)``: every method reads a map
        as a set of positions, so it works on all frames at once, and the maps are
        unstacked to ``(B, T, h, w)`` before they are resized to the input.

        Raises:
            ValueError: the layer has no spatial map.
        """
        if self.reshape is None and tensor.dim() == 5:
            self._depths[name] = int(tensor.shape[2])
            return tensor.flatten(2, 3)
        if self.reshape is not None:
            tensor = self.reshape(tensor)
        elif name in self._layouts:
            tensor = self._layouts[name].to_nchw(tensor)
        elif tensor.dim() == 3:
            tensor = tokens_to_grid(tensor, name)
        if tensor.dim() != 4:
            raise ValueError(
                f"layer {name!r} has output shape {list(tensor.shape)}: not a spatial "
                f"(B, C, H, W) map; choose a layer before global pooling (e.g. the last "
                f"convolutional block) or pass reshape= to make one"
            )
        return tensor

    def _forward(self, x: torch.Tensor, layers: dict[str, nn.Module], grad: bool) -> ForwardRecord:
        record = run_forward(self.model, x, layers, grad=grad)
        self._frame = record.frame
        if self.reshape is None:
            for name, tensor in record.activations.items():
                if tensor.dim() not in (3, 4):
                    continue  # spatial() says why it is not a map
                if tensor.shape[0] != x.shape[0]:
                    raise LayoutError(
                        f"layer {name!r} has output shape {list(tensor.shape)} for a batch of "
                        f"{x.shape[0]}: not one map per image (e.g. attention windows batched "
                        f"together); choose another target_layers= or pass reshape="
                    )
                if name in record.sources and tensor.dim() == 4:
                    # a level of a feature pyramid: channels first, as torchvision's are
                    self._layouts[name] = LayerLayout(
                        Layout.NCHW, int(tensor.shape[1]), evidence="a level of a dict of maps"
                    )
                    continue
                self._layouts[name] = layer_layout(
                    self.model,
                    layers[record.layer_of(name)],
                    name,
                    tensor,
                    (x.shape[-2], x.shape[-1]) if record.frame is None else record.frame.canvas,
                )
        for name, tensor in record.activations.items():
            self.spatial(name, tensor.detach())  # shape check before any further work
        return record

    # ------------------------------------------------------------------ internals
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked and on the model's device; a gradient method refuses
        inference mode."""
        if self.needs_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{self.method} needs gradients, but it was called inside "
                f"torch.inference_mode(), which disables autograd for every tensor made "
                f"there and cannot be switched off by netsight; call it outside "
                f"inference_mode (inside torch.no_grad() is fine)"
            )
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a (B, C, H, W) tensor, got {type(x).__name__}")
        if x.dim() not in (4, 5):
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
            raise ValueError(
                f"x: expected a (B, C, H, W) batch (or (B, C, T, H, W) for a video model), "
                f"got shape {list(x.shape)}{hint}"
            )
        if x.shape[0] == 0:
            raise ValueError("x: the batch is empty")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        wanted = expected_channels(self.model)
        if wanted is not None and x.shape[1] != wanted:
            raise ValueError(
                f"x has {x.shape[1]} channel(s) but the first convolution of "
                f"{type(self.model).__name__} expects {wanted}: convert the image "
                f"(e.g. x.expand(-1, {wanted}, -1, -1) for grayscale to RGB, or "
                f"netsight.load_image(path, model=model))"
            )
        device = model_device(self.model, default=None)
        if device is not None and x.device != device:
            x = x.to(device)
        if x.is_inference() and not torch.is_inference_mode_enabled():
            x = x.clone()  # an inference tensor cannot take part in autograd
        return x

    def _layers(self, x: torch.Tensor) -> dict[str, nn.Module]:
        if self._spec is not None:
            return resolve_layers(self.model, self._spec)
        return resolve_layers(self.model, _automatic_layer(self.model, x))

    def _unstack(self, name: str, layer_map: torch.Tensor) -> torch.Tensor:
        """A video layer's ``(B, T * h, w)`` map as ``(B, T, h, w)`` (see :meth:`spatial`)."""
        depth = self._depths.get(name)
        if depth is None or layer_map.dim() != 3:
            return layer_map
        batch, stacked, width = layer_map.shape
        return layer_map.reshape(batch, depth, stacked // depth, width)

    def _maps(
        self, raw: dict[str, torch.Tensor], size: tuple[int, ...], *, quiet: bool
    ) -> torch.Tensor:
        what = None if quiet else self.method
        maps = []
        for name, stacked in raw.items():
            layer_map = self._unstack(name, stacked)
            # float32 at least; a float64 model keeps its precision
            wide = torch.promote_types(layer_map.dtype, torch.float32)
            cleaned = _finite(name, layer_map.detach().to(wide))
            if self.relu:
                cleaned = cleaned.clamp(min=0)
            if self.upsample:
                frame = self._frame
                cleaned = (
                    _resize(cleaned, size)
                    if frame is None or len(size) != 2
                    else frame.to_input(cleaned, (size[0], size[1]))
                )
            maps.append(cleaned)
        if len(maps) == 1:
            return _minmax(maps[0], what=what) if self.normalize else maps[0]
        common = size if self.upsample else max((tuple(m.shape[1:]) for m in maps), key=_area)
        shape = tuple(int(side) for side in common)
        fused = torch.stack([_minmax(_resize(m, shape), what=None) for m in maps]).mean(0)
        return _minmax(fused, what=what) if self.normalize else fused

    def _smooth(
        self,
        x: torch.Tensor,
        targets: Targets,
        layers: dict[str, nn.Module],
        first: torch.Tensor,
    ) -> torch.Tensor:
        size = tuple(x.shape[2:])
        total = first.clone()
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                if not flip and factor == 1.0:
                    continue  # the plain run is ``first``
                augmented = x * factor
                if flip:
                    augmented = augmented.flip(-1)
                maps = self._maps(self._compute(augmented, targets, layers).maps, size, quiet=True)
                total += maps.flip(-1) if flip else maps
        mean = total / 6
        return _minmax(mean, what=None) if self.normalize else mean


def _area(shape: tuple[int, ...]) -> int:
    return math.prod(int(side) for side in shape)
