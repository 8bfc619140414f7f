"""netsight: see inside a PyTorch network.

The public API is re-exported here; everything else is an implementation detail.
"""

from __future__ import annotations

from netsight import cam, monitor
from netsight._version import __version__
from netsight.cam import (
    CAM,
    FEM,
    ISCAM,
    KPCACAM,
    SESS,
    SSCAM,
    AblationCAM,
    CAMComparison,
    CAMResult,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    Saliency,
    ScoreCAM,
    SegEigenCAM,
    SmoothGradCAMpp,
    XGradCAM,
    compare,
    overlay,
)
from netsight.capture import Capture, CaptureBudgetError, capture, list_layers
from netsight.diagram import Diagram, diagram
from netsight.explore import Explorer, explore
from netsight.features import (
    LayerStats,
    feature_grid,
    layer_stats,
    mean_maps,
    plot_feature_maps,
    plot_mean_maps,
    top_channels,
)
from netsight.filters import (
    FilterGrid,
    filter_grid,
    plot_filters,
    plot_kernel_and_map,
    save_filters,
)
from netsight.hooks import count_hooks
from netsight.images import denormalize, load_image, to_pil
from netsight.models import ModelSpecError, UntrustedCheckpointError, load_model, load_weights
from netsight.monitor import Diagnostic, TrainingMonitor, TrainingWarning
from netsight.patterns import Patterns, maximize
from netsight.report import Report, report
from netsight.summary import Column, Summary, summary
from netsight.trace import LayerRecord, TensorMeta, Trace, TraceError, trace

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "CAMComparison",
    "CAMResult",
    "Capture",
    "CaptureBudgetError",
    "Column",
    "Diagnostic",
    "Diagram",
    "EigenCAM",
    "Explorer",
    "FilterGrid",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerRecord",
    "LayerStats",
    "ModelSpecError",
    "Patterns",
    "Report",
    "Saliency",
    "ScoreCAM",
    "SegEigenCAM",
    "SmoothGradCAMpp",
    "Summary",
    "TensorMeta",
    "Trace",
    "TraceError",
    "TrainingMonitor",
    "TrainingWarning",
    "UntrustedCheckpointError",
    "XGradCAM",
    "__version__",
    "cam",
    "capture",
    "compare",
    "count_hooks",
    "denormalize",
    "diagram",
    "explore",
    "feature_grid",
    "filter_grid",
    "layer_stats",
    "list_layers",
    "load_image",
    "load_model",
    "load_weights",
    "maximize",
    "mean_maps",
    "monitor",
    "overlay",
    "plot_feature_maps",
    "plot_filters",
    "plot_kernel_and_map",
    "plot_mean_maps",
    "report",
    "save_filters",
    "summary",
    "to_pil",
    "top_channels",
    "trace",
]
