"""Every exception and warning netsight raises on purpose, in one place.

Each error also derives from the built-in its callers would catch (``ValueError``,
``RuntimeError``, ``FileNotFoundError`` ...), and all of them from
:class:`NetsightError`, so ``except netsight.errors.NetsightError`` catches what
netsight raised and nothing the model raised by itself. The modules that raise them
re-export them (``netsight.trace.TraceError`` is this ``TraceError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CAMWarning",
    "CaptureBudgetError",
    "GraphvizNotFoundError",
    "LatexError",
    "LatexNotFoundError",
    "LayoutError",
    "LazyModuleError",
    "ModelSpecError",
    "MonitorWriteError",
    "NetsightError",
    "NetsightWarning",
    "RunInUseError",
    "TraceError",
    "TrainingWarning",
    "UntrustedCheckpointError",
    "UsageError",
]


class NetsightError(Exception):
    """Base of every error netsight raises on purpose."""


class NetsightWarning(UserWarning):
    """Base of every warning netsight issues."""


class CAMWarning(NetsightWarning):
    """Something about a map the caller should know (constant map, NaN values)."""


class CaptureBudgetError(NetsightError, MemoryError):
    """Storing a layer's tensor would exceed the capture's byte budget."""


class GraphvizNotFoundError(NetsightError, FileNotFoundError):
    """Graphviz's ``dot`` program is not installed (Debian package ``graphviz``)."""


class LatexError(NetsightError, RuntimeError):
    """``pdflatex`` failed; the message holds the relevant lines of its log."""


class LatexNotFoundError(NetsightError, FileNotFoundError):
    """``pdflatex`` is not installed (Debian package ``texlive-latex-base``)."""


class LayoutError(NetsightError, ValueError):
    """The layout of a layer's output cannot be told from the model."""


class LazyModuleError(NetsightError, ValueError):
    """The model still has lazy modules (``nn.LazyLinear`` ...) that no forward has
    initialised: running it would change it for good."""


class ModelSpecError(NetsightError, ValueError):
    """A model spec is malformed or names something that is not a usable model."""


class MonitorWriteError(NetsightError, OSError):
    """A run's files could not be written (disk full, permissions); what was written
    before is intact."""


class RunInUseError(NetsightError, RuntimeError):
    """Another :class:`~netsight.monitor.TrainingMonitor` is writing to the run
    directory (one run directory takes one writer).

    Attributes:
        run_dir: the run directory.
        holder: what the holder wrote in the lock file (``pid``, ``host``,
            ``started``), or ``{}`` when it has not written it yet.
    """

    def __init__(self, message: str, run_dir: Path, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.holder = holder


class TraceError(NetsightError, RuntimeError):
    """The model's forward failed during a trace.

    Attributes:
        module_name: qualified name of the innermost module that was running
            (the class name for the model itself).
        module_type: its class name.
        input_shapes: the shapes it received, formatted.
        ran_before: labels of the leaf modules that completed before the failure.
        reason: the model's own error in one line, ``"ExcType: message"`` (its
            first line); the exception itself is the ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        module_name: str,
        module_type: str,
        input_shapes: str,
        ran_before: tuple[str, ...],
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.module_name = module_name
        self.module_type = module_type
        self.input_shapes = input_shapes
        self.ran_before = ran_before
        self.reason = reason


class TrainingWarning(NetsightWarning):
    """A training run shows a known failure pattern (see :class:`Diagnostic`)."""


class UntrustedCheckpointError(NetsightError, ValueError):
    """A checkpoint holds pickled Python objects that ``weights_only`` loading refuses."""


class UsageError(NetsightError, ValueError):
    """The command line asks for something that cannot be done as given."""
