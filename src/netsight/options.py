"""Option sets: every closed set of string choices in netsight's API, as ``StrEnum``.

One place owns each set. The library validates a value once, with
:meth:`Option.parse` (which names the option, what it got and what it accepts),
and the CLI builds its ``choices=`` from :meth:`Option.values`, so the two can
never disagree. Members are ``str``: ``Mode.EVAL == "eval"``, and a plain string
is accepted wherever a member is.

Example:
    >>> from netsight.options import Mode
    >>> Mode.parse("train", "mode")
    <Mode.TRAIN: 'train'>
    >>> Mode.parse("test", "mode")
    Traceback (most recent call last):
    ...
    ValueError: mode: expected one of 'eval', 'train', 'same', got 'test'
"""

from __future__ import annotations

import enum
from typing import Any, Self

__all__ = [
    "Baseline",
    "DiagramFormat",
    "Direction",
    "Execution",
    "FilterMode",
    "Kernel",
    "Mode",
    "Normalization",
    "Option",
    "PatchFusion",
    "RemovalBaseline",
    "SummaryFormat",
    "TableStyle",
    "TargetMode",
]


class Option(enum.StrEnum):
    """Base of netsight's option sets."""

    @classmethod
    def parse(cls, value: Any, what: str) -> Self:
        """``value`` as a member; a ``ValueError`` naming ``what`` and the choices otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        expected = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{what}: expected one of {expected}, got {value!r}")

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted strings, in definition order (for ``argparse`` choices)."""
        return tuple(m.value for m in cls)


class Mode(Option):
    """The training mode a pass runs in; every module's own flag is restored afterwards."""

    EVAL = "eval"
    TRAIN = "train"
    SAME = "same"  #: as the modules are


class Execution(Option):
    """How a structural pass runs the model."""

    AUTO = "auto"  #: on the meta device first, for real if the model needs values
    META = "meta"
    REAL = "real"


class DiagramFormat(Option):
    """What :func:`netsight.diagram` produces."""

    SVG = "svg"
    PNG = "png"
    PDF = "pdf"
    DOT = "dot"  #: the Graphviz source text
    TEX = "tex"  #: PlotNeuralNet-style TikZ/LaTeX source
    TIKZ = "tikz"  #: the same as ``tex``
    PDF_3D = "pdf-3d"  #: the TikZ drawing compiled by ``pdflatex``
    BLOCKS = "blocks"  #: the 3-D block picture as PNG, without LaTeX


class SummaryFormat(Option):
    """Renderings of a :class:`~netsight.Summary`."""

    TEXT = "text"
    MARKDOWN = "markdown"
    JSON = "json"
    HTML = "html"


class TableStyle(Option):
    """Plain-text table styles."""

    TEXT = "text"
    MARKDOWN = "markdown"


class Direction(Option):
    """Graphviz ``rankdir`` of a dataflow drawing."""

    TB = "TB"
    LR = "LR"
    BT = "BT"
    RL = "RL"


class Normalization(Option):
    """How a stack of maps is scaled to ``[0, 1]`` for display."""

    EACH = "each"  #: every map its own min/max
    SHARED = "shared"  #: one range for all
    NONE = "none"  #: clamp to a fixed range


class FilterMode(Option):
    """How a convolution's kernels are drawn (:mod:`netsight.filters`)."""

    AUTO = "auto"
    RGB = "rgb"
    CHANNELS = "channels"
    MEAN = "mean"


class Baseline(Option):
    """Reference maps a CAM's faithfulness is compared with."""

    RANDOM = "random"
    CENTER = "center"


class RemovalBaseline(Option):
    """What removed pixels become in the deletion / insertion scores."""

    ZERO = "zero"
    BLUR = "blur"


class TargetMode(Option):
    """Which class a CAM evaluation explains per image."""

    LABELS = "labels"  #: the given label
    PREDICTED = "predicted"  #: the model's top class


class Kernel(Option):
    """The kernel of KPCA-CAM's kernel PCA (scikit-learn's ``KernelPCA`` names)."""

    SIGMOID = "sigmoid"  #: ``tanh(gamma <x, y> + coef0)``
    RBF = "rbf"  #: ``exp(-gamma |x - y|^2)``
    POLY = "poly"  #: ``(gamma <x, y> + coef0) ^ degree``
    LINEAR = "linear"  #: ``<x, y>``: plain PCA, i.e. Eigen-CAM
    COSINE = "cosine"  #: ``<x, y> / (|x| |y|)``


class PatchFusion(Option):
    """How SESS fuses the maps of its patches."""

    MEAN = "mean"  #: per pixel, the mean over the patches whose map is above ``theta`` there
    MAX = "max"  #: per pixel, the largest patch map
