"""netsight: see inside a PyTorch network.

The public API is re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from netsight._version import __version__
from netsight.capture import Capture, CaptureBudgetError, capture, list_layers
from netsight.hooks import count_hooks
from netsight.models import ModelSpecError, UntrustedCheckpointError, load_model, load_weights
from netsight.summary import Column, Summary, summary
from netsight.trace import LayerRecord, TensorMeta, Trace, TraceError, trace

__all__ = [
    "Capture",
    "CaptureBudgetError",
    "Column",
    "LayerRecord",
    "ModelSpecError",
    "Summary",
    "TensorMeta",
    "Trace",
    "TraceError",
    "UntrustedCheckpointError",
    "__version__",
    "capture",
    "count_hooks",
    "list_layers",
    "load_model",
    "load_weights",
    "summary",
    "trace",
]
