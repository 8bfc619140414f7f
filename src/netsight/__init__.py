"""netsight: see inside a PyTorch network.

The public API is re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from netsight._version import __version__
from netsight.hooks import count_hooks
from netsight.models import load_model, load_weights
from netsight.summary import Column, Summary, summary
from netsight.trace import LayerRecord, TensorMeta, Trace, TraceError, trace

__all__ = [
    "Column",
    "LayerRecord",
    "Summary",
    "TensorMeta",
    "Trace",
    "TraceError",
    "__version__",
    "count_hooks",
    "load_model",
    "load_weights",
    "summary",
    "trace",
]
