"""The public API is what __init__ re-exports, sorted and pinned."""

from __future__ import annotations

import netsight

EXPECTED = [
    "AblationCAM",
    "CAM",
    "CAMComparison",
    "CAMResult",
    "Capture",
    "CaptureBudgetError",
    "Column",
    "Diagnostic",
    "Diagram",
    "EigenCAM",
    "Explorer",
    "FEM",
    "FilterGrid",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ISCAM",
    "KPCACAM",
    "LayerCAM",
    "LayerRecord",
    "LayerStats",
    "ModelSpecError",
    "Patterns",
    "Report",
    "SESS",
    "SSCAM",
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


def test_all_is_pinned_and_sorted() -> None:
    # the order inside __all__ is ruff's (RUF022); the set is pinned here
    assert sorted(netsight.__all__) == EXPECTED
    assert len(set(netsight.__all__)) == len(netsight.__all__)


def test_every_export_exists() -> None:
    for name in netsight.__all__:
        assert hasattr(netsight, name), name


def test_version() -> None:
    from importlib.metadata import version

    assert netsight.__version__ == version("netsight")
