"""Ready-made CAM targets: which scalar of one image's output a map explains.

A target is a plain callable on one image's output (what ``targets=`` has always
taken), so these mix with the user's own functions. Each takes the output of one
image: a ``(classes,)`` logits vector for a classifier, ``{"out": (classes, H, W)}``
or a ``(classes, H, W)`` tensor for a segmentation model, an embedding vector, one
detector's dict.

Example:
    >>> from netsight.cam import GradCAM, targets
    >>> GradCAM(model, "layer4")(x, targets.ClassProbability(281))
    >>> GradCAM(seg_model, "backbone.layer4")(x, targets.Segmentation(15))   # person pixels

Each one names the pytorch-grad-cam target it agrees with (``tests/test_cam_targets.py``
compares the maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Binary",
    "Box",
    "ClassAgainstRest",
    "ClassProbability",
    "ClassScore",
    "Contrast",
    "Detection",
    "OutputElement",
    "Segmentation",
    "Similarity",
    "describe",
    "parse_target",
]


def _vector(output: Any, what: str) -> torch.Tensor:
    """One image's output as a 1-D vector of class scores."""
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if key in output and isinstance(output[key], torch.Tensor):
                output = output[key]
                break
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{what}: expected one image's output as a tensor, got {type(output).__name__}"
        )
    return output.reshape(-1) if output.dim() != 1 else output


def _named(category: int, names: Sequence[str] | None) -> str:
    """``281 tabby`` with names, else ``281``."""
    if names is not None and 0 <= category < len(names):
        return f"{category} {names[category]}"
    return str(category)


def describe(target: Any, names: Sequence[str] | None = None) -> str:
    """A short description of a target for captions and manifests: ``class 281
    tabby``, ``p(class 3)``, ``pixels of class 15 person``, ``box of class 2 at
    [10, 4, 80, 60]``; a function's name otherwise.

    Args:
        target: an int class, one of this module's targets, or any callable.
        names: the name of each class index, if known.
    """
    if isinstance(target, int) and not isinstance(target, bool):
        return f"class {_named(target, names)}"
    text = getattr(target, "describe", None)
    if callable(text):
        return str(text(names))
    return str(getattr(target, "__name__", type(target).__name__))


def _class(category: int, size: int, what: str) -> int:
    if not 0 <= category < size:
        raise ValueError(f"{what}: class {category} is out of range; the output has {size}")
    return category


@dataclass(frozen=True)
class ClassScore:
    """The class's logit (the same as ``targets=category``); pytorch-grad-cam's
    ``ClassifierOutputTarget``."""

    category: int

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"class {_named(self.category, names)}"

    def __call__(self, output: Any) -> torch.Tensor:
        scores = _vector(output, "ClassScore")
        return scores[_class(self.category, scores.numel(), "ClassScore")]


@dataclass(frozen=True)
class ClassProbability:
    """The class's softmax probability; pytorch-grad-cam's
    ``ClassifierOutputSoftmaxTarget``. Its gradient also lowers the other classes,
    so maps show what makes this class win rather than what raises its logit."""

    category: int

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"p(class {_named(self.category, names)})"

    def __call__(self, output: Any) -> torch.Tensor:
        scores = _vector(output, "ClassProbability")
        index = _class(self.category, scores.numel(), "ClassProbability")
        return torch.softmax(scores, dim=0)[index]


@dataclass(frozen=True)
class ClassAgainstRest:
    """The class against the rest: its logit plus its log-probability,
    ``z_c - CE(z, c) = 2 z_c - logsumexp(z)`` (ReST, arXiv 2501.06261);
    pytorch-grad-cam's ``ClassifierOutputReST``."""

    category: int

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"class {_named(self.category, names)} against the rest"

    def __call__(self, output: Any) -> torch.Tensor:
        scores = _vector(output, "ClassAgainstRest")
        index = _class(self.category, scores.numel(), "ClassAgainstRest")
        return scores[index] + torch.log_softmax(scores, dim=0)[index]


@dataclass(frozen=True)
class Contrast:
    """The class against chosen other classes: ``sum_k p_k (z_c - alpha z_k) /
    (sum_k p_k + 1e-9)`` over the ``others`` ``k``, with ``p = softmax(z)`` (the
    weights are part of the score, so its gradient flows through them too).
    Finer-CAM's score (:class:`~netsight.cam.gradient.FinerCAM` picks the others);
    pytorch-grad-cam's ``FinerWeightedTarget``.

    Example:
        >>> GradCAM(model, "layer4")(x, targets.Contrast(281, (282, 285)))

    Args:
        category: the class explained.
        others: the classes it is compared with.
        alpha: how strongly their logits are subtracted (0: the class's logit alone).
    """

    category: int
    others: tuple[int, ...]
    alpha: float = 1.0

    def __call__(self, output: Any) -> torch.Tensor:
        scores = _vector(output, "Contrast")
        index = _class(self.category, scores.numel(), "Contrast")
        if not self.others:
            raise ValueError("Contrast: expected at least one class in others, got none")
        others = [_class(k, scores.numel(), "Contrast") for k in self.others]
        weights = torch.softmax(scores, dim=0)[others]
        differences = scores[index] - self.alpha * scores[others]
        return (weights * differences).sum() / (weights.sum() + 1e-9)


@dataclass(frozen=True)
class Binary:
    """A binary classifier's single output (a sigmoid head's logit): the logit for
    the positive class, minus it for the negative; pytorch-grad-cam's
    ``BinaryClassifierOutputTarget``."""

    positive: bool = True

    def describe(self, names: Sequence[str] | None = None) -> str:
        return "the positive output" if self.positive else "the negative output"

    def __call__(self, output: Any) -> torch.Tensor:
        scores = _vector(output, "Binary")
        if scores.numel() != 1:
            raise ValueError(
                f"Binary: expected one output per image (a sigmoid head), got {scores.numel()}; "
                f"for several classes use ClassScore or ClassProbability"
            )
        return scores[0] if self.positive else -scores[0]


@dataclass(frozen=True)
class Segmentation:
    """The sum of a class's logits over a mask of pixels: for a semantic
    segmentation model (torchvision's ``deeplabv3_*``, ``fcn_*`` and ``lraspp_*``
    return a dict: its ``key`` is read); pytorch-grad-cam's
    ``SemanticSegmentationTarget``.

    Args:
        category: the class.
        mask: ``(H, W)`` of 0/1 (bool, numpy or tensor) at the output's size;
            default: the pixels the model assigns to ``category`` (its arg max), as
            pytorch-grad-cam's segmentation tutorial does.
        key: the entry of a dict output holding the ``(classes, H, W)`` logits.
    """

    category: int
    mask: Any = None
    key: str = "out"

    def describe(self, names: Sequence[str] | None = None) -> str:
        where = "a mask" if self.mask is not None else "the pixels predicted as it"
        return f"class {_named(self.category, names)} over {where}"

    def __call__(self, output: Any) -> torch.Tensor:
        if isinstance(output, Mapping):
            if self.key not in output:
                raise KeyError(
                    f"Segmentation: the output has no {self.key!r} (keys {list(output)})"
                )
            output = output[self.key]
        if not isinstance(output, torch.Tensor) or output.dim() != 3:
            raise TypeError(
                "Segmentation: expected one image's (classes, H, W) logits, got "
                + (
                    f"shape {list(output.shape)}"
                    if isinstance(output, torch.Tensor)
                    else type(output).__name__
                )
            )
        index = _class(self.category, output.shape[0], "Segmentation")
        if self.mask is None:
            mask = (output.detach().argmax(0) == index).to(output.dtype)
        else:
            mask = torch.as_tensor(self.mask, device=output.device).to(output.dtype)
            if tuple(mask.shape) != tuple(output.shape[1:]):
                raise ValueError(
                    f"Segmentation: the mask is {list(mask.shape)}, the output "
                    f"{list(output.shape[1:])}"
                )
        return (output[index] * mask).sum()


@dataclass(frozen=True)
class Similarity:
    """Cosine similarity of the image's embedding to a concept embedding (for any
    model that returns a vector: CLIP-style concepts, re-identification);
    pytorch-grad-cam's ``SimilarityToConceptTarget``."""

    concept: torch.Tensor = field(repr=False)

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"similarity to a {torch.as_tensor(self.concept).numel()}-value concept"

    def __call__(self, output: Any) -> torch.Tensor:
        embedding = _vector(output, "Similarity")
        concept = torch.as_tensor(self.concept).reshape(-1).to(embedding.device, embedding.dtype)
        if concept.numel() != embedding.numel():
            raise ValueError(
                f"Similarity: the concept has {concept.numel()} values, the embedding "
                f"{embedding.numel()}"
            )
        return torch.nn.functional.cosine_similarity(embedding, concept, dim=0)


@dataclass(frozen=True)
class OutputElement:
    """One element of the output (a regression output, a raw score): ``index`` into
    one image's output tensor; pytorch-grad-cam's ``RawScoresOutputTarget`` of a
    single value."""

    index: int | tuple[int, ...]

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"output[{self.index}]"

    def __call__(self, output: Any) -> torch.Tensor:
        tensor = _vector(output, "OutputElement") if isinstance(output, Mapping) else output
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"OutputElement: expected a tensor output, got {type(tensor).__name__}")
        try:
            value = tensor[self.index]
        except IndexError as exc:
            raise ValueError(
                f"OutputElement: index {self.index} is outside an output of shape "
                f"{list(tensor.shape)}"
            ) from exc
        if value.numel() != 1:
            raise ValueError(
                f"OutputElement: index {self.index} selects {value.numel()} values of an output "
                f"of shape {list(tensor.shape)}; give one index per dimension"
            )
        return value.reshape(())


def parse_target(text: str) -> Any:
    """A target from its command-line spelling.

    ``3`` or ``class:3`` (the logit), ``prob:3``, ``rest:3``, ``binary:1`` /
    ``binary:0``, ``seg:15`` (the pixels predicted as 15), ``concept:FILE.npy`` (an
    embedding saved with numpy), ``output:0,2`` (one element).

    Returns:
        An int for a plain class, else one of this module's targets.

    Raises:
        ValueError: a spelling it does not know; the message lists them.
    """
    kind, sep, value = text.partition(":")
    if not sep:
        kind, value = "class", text
    kind = kind.strip().lower()
    known = "class:N, prob:N, rest:N, binary:1|0, seg:N, box:N, concept:FILE.npy, output:I[,J...]"

    def integer(item: str) -> int:
        if not item.strip().isdecimal():
            if not sep:
                raise ValueError(
                    f"target {text!r}: expected a class index (an integer >= 0) or one of {known}"
                )
            raise ValueError(f"target {text!r}: expected an integer >= 0 after '{kind}:'")
        return int(item)

    if kind == "class":
        return integer(value)
    if kind == "prob":
        return ClassProbability(integer(value))
    if kind == "rest":
        return ClassAgainstRest(integer(value))
    if kind == "binary":
        if value.strip() not in ("0", "1"):
            raise ValueError(f"target {text!r}: binary takes 1 (positive) or 0 (negative)")
        return Binary(positive=value.strip() == "1")
    if kind == "seg":
        return Segmentation(integer(value))
    if kind == "box":
        return Detection(integer(value))
    if kind == "concept":
        import numpy as np

        try:
            array = np.load(value, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"target {text!r}: cannot read a numpy array from {value!r} ({exc})"
            ) from None
        return Similarity(torch.from_numpy(np.asarray(array, dtype=np.float32)))
    if kind == "output":
        parts: Sequence[int] = [integer(p) for p in value.split(",")]
        return OutputElement(parts[0] if len(parts) == 1 else tuple(parts))
    raise ValueError(f"target {text!r}: unknown kind {kind!r}; expected one of {known}")


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one ``(4,)`` xyxy box with each of ``(N, 4)`` boxes."""
    from torchvision.ops import box_iou

    overlaps: torch.Tensor = box_iou(box[None], boxes)[0]
    return overlaps


@dataclass(frozen=True)
class Box:
    """The evidence for detected boxes: for each given ``(box, label)``, the
    detection that overlaps it most, if that overlap exceeds ``iou`` and its label
    is ``label``, scores its IoU plus its confidence; the target is their sum (0
    when none match). pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``. For a
    torchvision detector (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``),
    whose output per image is ``{"boxes", "labels", "scores"}`` in input pixels.

    Args:
        boxes: ``(N, 4)`` boxes, ``x1, y1, x2, y2`` in the input's pixels (or one
            ``(4,)`` box).
        labels: their ``N`` class labels (or one).
        iou: the overlap a detection needs to count.
    """

    boxes: Any
    labels: Any
    iou: float = 0.5

    def describe(self, names: Sequence[str] | None = None) -> str:
        boxes = torch.as_tensor(self.boxes).reshape(-1, 4)
        labels = torch.as_tensor(self.labels).reshape(-1).tolist()
        parts = [
            f"class {_named(int(label), names)} at [{', '.join(f'{v:.0f}' for v in box)}]"
            for box, label in zip(boxes.tolist(), labels, strict=False)
        ]
        return "box of " + "; ".join(parts)

    def __call__(self, output: Any) -> torch.Tensor:
        boxes, labels, scores = _detections(output, "Box")
        wanted = torch.as_tensor(self.boxes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4)
        classes = torch.as_tensor(self.labels, device=labels.device).reshape(-1)
        if classes.numel() != wanted.shape[0]:
            raise ValueError(f"Box: {wanted.shape[0]} boxes but {classes.numel()} labels")
        total = scores.sum() * 0  # 0, on the graph when the scores are
        if boxes.shape[0] == 0:
            return total
        for box, label in zip(wanted, classes.tolist(), strict=True):
            overlaps = _iou(box, boxes)
            index = int(overlaps.detach().argmax())
            if float(overlaps[index].detach()) > self.iou and int(labels[index]) == label:
                total = total + overlaps[index] + scores[index]
        return total


@dataclass(frozen=True)
class Detection:
    """The ``rank``-th detection of each image on the unchanged input (0: the most
    confident), explained as a :class:`Box` (its box and label, IoU 0.5): so a
    perturbed input is scored on the same object. Bound per image when the
    explanation starts (``bind``)."""

    rank: int = 0
    iou: float = 0.5

    def bind(self, output: Any) -> Box:
        """The :class:`Box` target of this detection in one image's output."""
        boxes, labels, scores = _detections(output, "Detection")
        if self.rank >= boxes.shape[0]:
            raise ValueError(
                f"Detection: rank {self.rank} asked, but the model detected "
                f"{boxes.shape[0]} object(s) in this image (lower the detector's "
                f"score threshold, or choose a lower rank)"
            )
        order = scores.detach().argsort(descending=True, stable=True)
        index = int(order[self.rank])
        return Box(boxes[index].detach(), int(labels[index]), iou=self.iou)

    def describe(self, names: Sequence[str] | None = None) -> str:
        return f"detection {self.rank} (by confidence)"

    def __call__(self, output: Any) -> torch.Tensor:
        return self.bind(output)(output)


def _detections(output: Any, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(output, Mapping) or not all(k in output for k in ("boxes", "labels")):
        raise TypeError(
            f"{what}: expected one image's detections, a dict with 'boxes', 'labels' and "
            f"'scores' (a torchvision detector's output), got "
            + (f"keys {list(output)}" if isinstance(output, Mapping) else type(output).__name__)
        )
    boxes = output["boxes"]
    scores = output.get("scores")
    if scores is None:
        scores = torch.ones(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    return boxes, output["labels"], scores
