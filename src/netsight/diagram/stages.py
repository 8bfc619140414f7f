"""A CNN as a row of 3D boxes: stage extraction and sizing shared by the TikZ
drawing (:mod:`netsight.diagram.tikz`) and the block picture
(:mod:`netsight.diagram.blocks`).

Three steps, kept apart so both renderers draw the same picture:

1. :func:`extract` runs the model once through
   :func:`netsight.diagram.graph.record_dataflow` (the meta device when it can,
   real tensors under ``no_grad`` otherwise; the model leaves as it came) and
   turns the leaf module calls, in execution order, into :class:`Stage` boxes:
   a convolution swallows the normalisation, activation and dropout layers
   that follow it; pools, fully connected layers and softmax are their own
   stages; flatten/identity/view pass through. Functional pools, activations
   and softmax in a ``forward`` (``F.max_pool2d``, ``F.relu``) count like
   their modules.
2. Residual blocks are found by watching the additions, not by module names:
   an ``add``/``+=`` in a ``forward`` that joins two tensors with a common
   ancestor is a skip connection. Walking back from both operands to their
   fork, the shorter path is the shortcut: empty for an identity shortcut,
   the layers of a projection (torchvision's ``downsample``) otherwise. The
   shortcut's layers are not drawn as boxes; the skip becomes an arc from the
   stage that produced the fork to the last stage before the addition (the
   arc is dashed and labelled for a projection). Concatenations are not
   drawn as branches.
3. :func:`layout` sizes and places the boxes in centimetres: thickness along
   the flow grows with ``sqrt(channels)``, height and depth with
   ``sqrt(size / largest size)`` (so a 32x32 and a 224x224 network both start
   with a box of the same height), all clamped; stages group into blocks that
   touch (conv, conv, pool), blocks are separated by arrows; the whole row is
   scaled down uniformly when it is wider than the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from netsight.diagram.graph import Dataflow, StepKind, record_dataflow

__all__ = [
    "COLORS",
    "KIND_LABELS",
    "Arc",
    "Box",
    "Label",
    "Layout",
    "Network",
    "Skip",
    "Stage",
    "extract",
    "fmt_size",
    "layout",
    "project",
]

#: Fill colours by stage kind (``"relu"`` is the band on a conv box with an activation).
COLORS: dict[str, str] = {
    "input": "#C8C8C8",
    "conv": "#F7D774",
    "relu": "#E39B3A",
    "pool": "#D9534F",
    "fc": "#7FA8D9",
    "softmax": "#B05FB0",
    "other": "#8CCB96",
    "skip": "#3B5B92",
}

#: Legend text by kind.
KIND_LABELS: dict[str, str] = {
    "input": "input",
    "conv": "convolution",
    "relu": "activation",
    "pool": "pooling",
    "fc": "fully connected",
    "softmax": "softmax",
    "other": "other layer",
    "skip": "skip connection",
}

#: The oblique projection: a point (x, y, z) is drawn at (x + ZX*z, y + ZY*z) cm.
ZX, ZY = 0.42, 0.30

_ADD_OPS = frozenset({"add", "iadd", "radd"})
_POOL_OPS = frozenset(
    {
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "lp_pool2d",
    }
)
_ACT_OPS = frozenset(
    {
        "relu",
        "relu6",
        "gelu",
        "silu",
        "elu",
        "selu",
        "leaky_relu",
        "hardswish",
        "hardsigmoid",
        "mish",
        "sigmoid",
        "tanh",
        "softplus",
    }
)
_SOFTMAX_OPS = frozenset({"softmax", "log_softmax"})
_DROPOUT_OPS = frozenset({"dropout", "dropout2d", "dropout1d", "dropout3d", "alpha_dropout"})
_NORM_OPS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm"})


@dataclass(frozen=True)
class Stage:
    """One box: a layer and the layers merged into it.

    Attributes:
        kind: ``"input"``, ``"conv"``, ``"pool"``, ``"fc"``, ``"softmax"`` or ``"other"``.
        name: qualified name of its first layer (an op name for a functional layer).
        layers: qualified names of every layer drawn as this box.
        types: their class (or op) names.
        shape: output shape without the batch dimension.
        activation: class name of a merged activation, if any.
        group: index of the block of touching boxes it belongs to.
    """

    kind: str
    name: str
    layers: tuple[str, ...]
    types: tuple[str, ...]
    shape: tuple[int, ...]
    activation: str | None
    group: int

    @property
    def channels(self) -> int:
        """Channels of a feature map, features of a vector."""
        if not self.shape:
            return 1
        return (
            self.shape[0]
            if len(self.shape) >= 2 and self.kind not in ("fc", "softmax")
            else (self.shape[-1])
        )

    @property
    def spatial(self) -> tuple[int, ...]:
        """Spatial size ``(H, W)`` (``(L,)``, ``(D, H, W)``); empty for vectors."""
        if self.kind in ("fc", "softmax") or len(self.shape) < 2:
            return ()
        return self.shape[1:]


@dataclass(frozen=True)
class Skip:
    """A skip connection: the output of stage ``src`` is added after stage ``dst``.

    Attributes:
        projection: a short description of the shortcut's layers (``"1×1 conv, /2"``)
            or ``None`` for an identity shortcut.
        container: qualified name of the module whose ``forward`` does the addition.
    """

    src: int
    dst: int
    projection: str | None
    container: str


@dataclass(frozen=True)
class Network:
    """The stages, groups and skips of a traced model."""

    model_type: str
    stages: tuple[Stage, ...]
    skips: tuple[Skip, ...]
    captions: tuple[str, ...]  # one per group
    notes: tuple[str, ...]

    def count(self, kind: str) -> int:
        return sum(s.kind == kind for s in self.stages)


# --------------------------------------------------------------------------- extraction


def _module_kind(module: nn.Module) -> str:
    """``conv``, ``pool``, ``fc``, ``softmax``, ``norm``, ``act``, ``dropout``,
    ``pass`` (drawn as nothing) or ``other``."""
    tp = type(module)
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(
        module,
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.modules.pooling._LPPoolNd,
        ),
    ):
        return "pool"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "fc"
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)):
        return "softmax"
    if isinstance(
        module,
        (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm),
    ):
        return "norm"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return "dropout"
    if isinstance(module, (nn.Flatten, nn.Unflatten, nn.Identity)):
        return "pass"
    if tp.__module__ == "torch.nn.modules.activation" and tp is not nn.MultiheadAttention:
        return "act"
    return "other"


def _op_kind(name: str) -> str | None:
    if name in _POOL_OPS:
        return "pool"
    if name in _ACT_OPS:
        return "act"
    if name in _SOFTMAX_OPS:
        return "softmax"
    if name in _DROPOUT_OPS:
        return "dropout"
    if name in _NORM_OPS:
        return "norm"
    if name == "linear":
        return "fc"
    if name in ("conv1d", "conv2d", "conv3d"):
        return "conv"
    return None


def _chain(flow: Dataflow, start: int) -> list[int]:
    """Steps from ``start`` back to a model input, following first operands."""
    out: list[int] = []
    seen: set[int] = set()
    step = start
    while step >= 0 and step not in seen:
        seen.add(step)
        out.append(step)
        inputs = flow.steps[step].inputs
        step = inputs[0] if inputs else -1
    return out


def _describe_shortcut(flow: Dataflow, side: Sequence[int]) -> str | None:
    """``"1×1 conv, /2"`` for the layers of a projection shortcut, None if empty."""
    parts: list[str] = []
    for step in side:
        s = flow.steps[step]
        if s.kind is StepKind.MODULE:
            module = flow.calls[s.call].module
            if isinstance(module, nn.modules.conv._ConvNd):
                k = fmt_size(module.kernel_size)
                stride = max(module.stride) if module.stride else 1
                parts.append(f"{k} conv" + (f", /{stride}" if stride > 1 else ""))
            elif _module_kind(module) not in ("norm", "act", "dropout", "pass"):
                parts.append(type(module).__name__)
        elif s.kind is StepKind.OP and _op_kind(s.name) == "pool":
            parts.append(s.name)
    if side and not parts:
        parts.append("projection")
    return "; ".join(parts) if parts else None


def _find_skips(flow: Dataflow) -> list[tuple[int, int, list[int], int]]:
    """(fork step, main operand step, shortcut steps, owner call) per residual add."""
    found = []
    for step in flow.steps:
        if step.kind is not StepKind.OP or step.name not in _ADD_OPS or len(step.inputs) != 2:
            continue
        a, b = step.inputs
        chain_a, chain_b = _chain(flow, a), _chain(flow, b)
        where_a = {s: k for k, s in enumerate(chain_a)}
        fork = next((s for s in chain_b if s in where_a), None)
        if fork is None:
            continue  # two unrelated inputs: not a skip connection
        len_a, len_b = where_a[fork], chain_b.index(fork)
        if len_a == len_b == 0:
            continue  # x + x
        if len_b <= len_a:
            main, side = a, chain_b[:len_b]
        else:
            main, side = b, chain_a[:len_a]
        found.append((fork, main, side, step.owner))
    return found


def _batchless(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape[1:]) if len(shape) >= 2 else tuple(int(d) for d in shape)


@dataclass
class _Draft:
    kind: str
    name: str
    layers: list[str]
    types: list[str]
    shape: tuple[int, ...]
    activation: str | None
    parent: int  # the module call whose forward ran the first layer
    nested: bool  # that call is a submodule, not the model itself


def extract(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    **run_options: Any,
) -> Network:
    """Trace ``model`` once and return its stages, groups and skip connections.

    ``run_options`` (``dtypes``, ``mode``, ``execution``, ``forward_kwargs``) go to
    :func:`~netsight.diagram.graph.record_dataflow`.

    Raises:
        TraceError: the model cannot run on this input; the message names the layer.
    """
    flow = record_dataflow(model, input_size, input_data, **run_options)
    return _stages_of(flow)


def _stages_of(flow: Dataflow) -> Network:
    steps, calls = flow.steps, flow.calls
    skips_found = _find_skips(flow)
    on_shortcut = {s for _f, _m, side, _o in skips_found for s in side}

    drafts: list[_Draft] = []
    stage_of: dict[int, int] = {}
    notes = list(flow.notes)
    if len(flow.inputs) > 1:
        notes.append("only the first input is drawn")
    for index in flow.inputs[:1]:
        shape = _batchless(steps[index].out_shapes[0]) if steps[index].out_shapes else ()
        drafts.append(_Draft("input", "input", [], [], shape, None, -1, False))
        stage_of[index] = 0

    def passthrough(i: int) -> None:
        ins = steps[i].inputs
        if ins and ins[0] in stage_of:
            stage_of[i] = stage_of[ins[0]]

    for i, step in enumerate(steps):
        if step.kind is StepKind.MODULE:
            call = calls[step.call]
            if call.children:
                continue  # a container: its leaves are drawn
            kind = _module_kind(call.module)
            name, type_name, parent = call.name, type(call.module).__name__, call.parent
        elif step.kind is StepKind.OP:
            op_kind = _op_kind(step.name)
            if op_kind is None:
                passthrough(i)
                continue
            kind, name, type_name, parent = op_kind, step.name, step.name, step.owner
        else:
            continue
        if i in on_shortcut:
            continue
        out = _batchless(step.out_shapes[0]) if step.out_shapes else ()
        last = drafts[-1] if drafts else None
        if kind == "pass" or not out:
            passthrough(i)
            continue
        if kind in ("norm", "act", "dropout"):
            if last is not None and last.kind != "input":
                last.layers.append(name)
                last.types.append(type_name)
                last.shape = out
                if kind == "act" and last.activation is None:
                    last.activation = type_name
                stage_of[i] = len(drafts) - 1
                continue
            if kind == "dropout":
                passthrough(i)
                continue
            kind = "other"
        nested = parent >= 0 and calls[parent].depth > 0
        drafts.append(_Draft(kind, name, [name], [type_name], out, None, parent, nested))
        stage_of[i] = len(drafts) - 1

    skips: list[Skip] = []
    for fork, main, side, owner in skips_found:
        src, dst = stage_of.get(fork), stage_of.get(main)
        if src is None or dst is None or src >= dst:
            continue
        container = calls[owner].name if owner >= 0 else ""
        skips.append(Skip(src, dst, _describe_shortcut(flow, side), container))

    # blocks of touching boxes
    breaks = {s.src + 1 for s in skips} | {s.dst + 1 for s in skips}
    groups: list[int] = []
    for k, d in enumerate(drafts):
        if k == 0:
            groups.append(0)
            continue
        prev = drafts[k - 1]
        joins = False
        if k not in breaks:
            if d.kind == "pool":
                joins = prev.kind in ("conv", "other", "pool")
            elif d.kind in ("conv", "other"):
                joins = (
                    prev.kind in ("conv", "other")
                    and prev.parent == d.parent
                    # inside a block (a submodule) strides do not split it;
                    # in a flat model, a new resolution starts a new block
                    and (d.nested or prev.shape[1:] == d.shape[1:])
                )
        groups.append(groups[-1] if joins else groups[-1] + 1)

    stages = tuple(
        Stage(
            d.kind,
            d.name,
            tuple(d.layers),
            tuple(d.types),
            d.shape,
            d.activation,
            groups[k],
        )
        for k, d in enumerate(drafts)
    )
    captions: list[str] = []
    for g in range(groups[-1] + 1 if groups else 0):
        members = [d for d, gg in zip(drafts, groups, strict=True) if gg == g]
        captions.append(_caption(members, calls))
    return Network(flow.model_type, stages, tuple(skips), tuple(captions), tuple(notes))


def _caption(members: list[_Draft], calls: Sequence[Any]) -> str:
    if members[0].kind == "input":
        return "input"
    parents = {d.parent for d in members if d.kind != "pool"} or {members[0].parent}
    if len(members) > 1 and len(parents) == 1:
        parent = next(iter(parents))
        if parent >= 0 and calls[parent].depth > 0 and calls[parent].name:
            return str(calls[parent].name)
    if len(members) == 1:
        return members[0].name
    return f"{members[0].name} - {members[-1].name}"


# --------------------------------------------------------------------------- layout

H_MAX = 4.2  # cm: height/depth of the largest feature map
H_MIN = 0.3  # cm: smallest height/depth
PAGE_WIDTH = 25.0  # cm available for the row of boxes (A4 landscape, 1 cm margins, slack)
GAP = 0.75  # cm: visible gap between two blocks (the arrow)


def fmt_size(dims: Sequence[int]) -> str:
    return "\u00d7".join(str(d) for d in dims)


def project(x: float, y: float, z: float) -> tuple[float, float]:
    """Where the oblique projection draws the point (x, y, z)."""
    return x + ZX * z, y + ZY * z


@dataclass(frozen=True)
class Box:
    """A stage's box: x of its front-left edge, thickness ``w`` (along the flow),
    height ``h`` and depth ``d`` (cm); centred on y = 0, z = 0; ``band`` is the
    thickness of the activation band at its right end."""

    stage: int
    kind: str
    x: float
    w: float
    h: float
    d: float
    band: float

    @property
    def top(self) -> float:
        """Highest drawn y."""
        return self.h / 2 + ZY * self.d / 2

    @property
    def front_center(self) -> float:
        """x of the middle of the front face."""
        return self.x + self.w / 2 - ZX * self.d / 2

    @property
    def bottom(self) -> float:
        """Lowest drawn y (the front-bottom edge)."""
        return -self.h / 2 - ZY * self.d / 2

    def faces(self) -> list[tuple[str, list[tuple[float, float]]]]:
        """The three visible faces ("front", "top", "side") as projected polygons."""
        x0, x1, h, d = self.x, self.x + self.w, self.h / 2, self.d / 2
        front = [(x0, -h, -d), (x1, -h, -d), (x1, h, -d), (x0, h, -d)]
        top = [(x0, h, -d), (x1, h, -d), (x1, h, d), (x0, h, d)]
        side = [(x1, -h, -d), (x1, -h, d), (x1, h, d), (x1, h, -d)]
        return [
            (n, [project(*p) for p in f])
            for n, f in (("front", front), ("top", top), ("side", side))
        ]


@dataclass(frozen=True)
class Arc:
    """A skip connection drawn from ``start`` to ``end`` over the boxes; the
    cubic curve's control points are at height ``control``."""

    skip: int
    start: tuple[float, float]
    end: tuple[float, float]
    control: float
    apex: float
    dashed: bool
    label: str | None


@dataclass(frozen=True)
class Label:
    """A text at ``at``; ``anchor`` in TikZ terms (``"north"``, ``"north west"``);
    ``size`` ``"tiny"`` or ``"small"``."""

    text: str
    at: tuple[float, float]
    anchor: str
    size: str
    bold: bool = False


@dataclass(frozen=True)
class Layout:
    """Everything a renderer needs, in centimetres."""

    network: Network
    boxes: tuple[Box, ...]
    arrows: tuple[tuple[tuple[float, float], tuple[float, float]], ...]  # from, to
    arcs: tuple[Arc, ...]
    labels: tuple[Label, ...]
    kinds: tuple[str, ...]  # legend entries, in order
    xmin: float
    xmax: float
    ymin: float
    ymax: float
    scale: float


def _side(n: int, ref: int) -> float:
    return min(H_MAX, max(H_MIN, H_MAX * math.sqrt(max(n, 1) / max(ref, 1))))


def _thickness(channels: int) -> float:
    return min(1.2, max(0.15, 0.045 * math.sqrt(max(channels, 1))))


def _vector_height(features: int) -> float:
    return min(3.2, max(0.35, 0.11 * math.sqrt(max(features, 1))))


def _dims(stage: Stage, ref: int) -> tuple[float, float, float]:
    """(w, h, d) of a stage's box in cm, before page scaling."""
    sp = stage.spatial
    if stage.kind in ("fc", "softmax") or not sp:
        return 0.22, _vector_height(stage.channels), 0.35
    h = _side(sp[-2] if len(sp) >= 2 else sp[0], ref)
    d = _side(sp[-1], ref) if len(sp) >= 2 else H_MIN
    if stage.kind == "input":
        return 0.1, h, d
    if stage.kind == "pool":
        return 0.18, h, d
    return _thickness(stage.channels), h, d


def _text_width(text: str, size: str) -> float:
    """Rough width in cm of sans-serif text (tiny ~5 pt, small ~7 pt)."""
    return len(text) * (0.09 if size == "tiny" else 0.15)


def layout(network: Network, *, width: float = PAGE_WIDTH) -> Layout:
    """Place and size the boxes of ``network`` (see the module docstring)."""
    stages = network.stages
    ref = max((max(s.spatial[-2:]) for s in stages if s.spatial), default=1)
    dims = [_dims(s, ref) for s in stages]

    xs: list[float] = []
    x = 0.0
    for k, s in enumerate(stages):
        if k and s.group != stages[k - 1].group:
            # the visible gap between the back of one box and the front of the next
            x += GAP + ZX * (dims[k - 1][2] + dims[k][2]) / 2
        xs.append(x)
        x += dims[k][0]
    left = min((xs[k] - ZX * dims[k][2] / 2 for k in range(len(stages))), default=0.0)
    right = max((xs[k] + dims[k][0] + ZX * dims[k][2] / 2 for k in range(len(stages))), default=1.0)
    scale = min(1.0, width / max(right - left, 1e-9))

    boxes = []
    for k, s in enumerate(stages):
        w, h, d = (v * scale for v in dims[k])
        band = min(0.1 * scale, w * 0.3) if s.kind == "conv" and s.activation else 0.0
        boxes.append(Box(k, s.kind, (xs[k] - left) * scale, w, h, d, band))

    arrows = []
    for k in range(1, len(boxes)):
        if stages[k].group != stages[k - 1].group:
            a, b = boxes[k - 1], boxes[k]
            arrows.append(((a.x + a.w, 0.0), (b.x, 0.0)))

    labels: list[Label] = []
    # channels under every box, left out where they would overlap the previous one
    right = -math.inf
    for k, (s, b) in enumerate(zip(stages, boxes, strict=True)):
        if s.kind == "pool":
            continue
        text = str(s.channels)
        half = _text_width(text, "tiny") / 2
        prev = stages[k - 1] if k else None
        if b.front_center - half < right + 0.04 and prev is not None and prev.group == s.group:
            continue
        right = b.front_center + half
        labels.append(Label(text, (b.front_center, b.bottom - 0.04), "north", "tiny"))
    # one spatial size per block (its output resolution), under the block
    right = -math.inf
    for g in range(len(network.captions)):
        sized = [
            (s, b)
            for s, b in zip(stages, boxes, strict=True)
            if s.group == g and s.spatial and s.kind != "pool"
        ]
        if not sized:
            continue
        text = fmt_size(sized[-1][0].spatial)
        cx = (sized[0][1].front_center + sized[-1][1].front_center) / 2
        half = _text_width(text, "tiny") / 2
        if cx - half < right + 0.08:
            continue
        right = cx + half
        y = min(b.bottom for _s, b in sized) - 0.3
        labels.append(Label(text, (cx, y), "north", "tiny"))

    ymin = min((b.bottom for b in boxes), default=0.0) - 0.65
    # block captions on one row, a second row where neighbours would overlap
    last_right = [-math.inf, -math.inf]
    for g, caption in enumerate(network.captions):
        members = [b for b, s in zip(boxes, stages, strict=True) if s.group == g]
        if not members:
            continue
        cx = (members[0].front_center + members[-1].front_center) / 2
        half = _text_width(caption, "small") / 2
        fits = [cx - half > r + 0.1 for r in last_right]
        row = fits.index(True) if any(fits) else min((0, 1), key=lambda r: last_right[r])
        last_right[row] = cx + half
        labels.append(Label(caption, (cx, ymin - 0.42 * row), "north", "small", bold=True))
    ymin -= 0.42 * 2

    arcs = []
    for n, skip in enumerate(network.skips):
        a, b = boxes[skip.src], boxes[skip.dst]
        start = (a.x + 0.7 * a.w, a.h / 2)
        end = (b.x + 0.35 * b.w, b.h / 2)
        highest = max(bx.top for bx in boxes[skip.src : skip.dst + 1])
        apex = highest + 0.45
        control = (apex - 0.25 * (start[1] + end[1]) / 2) / 0.75
        arcs.append(Arc(n, start, end, control, apex, skip.projection is not None, skip.projection))

    kinds = []
    for kind in COLORS:
        if kind == "relu":
            used = any(s.kind == "conv" and s.activation for s in stages)
        elif kind == "skip":
            used = bool(arcs)
        else:
            used = any(s.kind == kind for s in stages)
        if used:
            kinds.append(kind)

    ymax = max([b.top for b in boxes] + [a.apex + (0.3 if a.label else 0.0) for a in arcs] + [0.0])
    xmax = max((b.x + b.w + ZX * b.d / 2 for b in boxes), default=1.0)
    xmin = 0.0
    for label in labels:
        half = _text_width(label.text, label.size) / 2
        xmin = min(xmin, label.at[0] - half)
        xmax = max(xmax, label.at[0] + half)
    return Layout(
        network,
        tuple(boxes),
        tuple(arrows),
        tuple(arcs),
        tuple(labels),
        tuple(kinds),
        xmin,
        xmax,
        ymin,
        ymax,
        scale,
    )
