"""The public API is what __init__ re-exports, sorted and pinned."""

from __future__ import annotations

import netsight

EXPECTED = [
    "Capture",
    "CaptureBudgetError",
    "Column",
    "FilterGrid",
    "LayerRecord",
    "LayerStats",
    "ModelSpecError",
    "Summary",
    "TensorMeta",
    "Trace",
    "TraceError",
    "UntrustedCheckpointError",
    "__version__",
    "capture",
    "count_hooks",
    "denormalize",
    "feature_grid",
    "filter_grid",
    "layer_stats",
    "list_layers",
    "load_image",
    "load_model",
    "load_weights",
    "mean_maps",
    "plot_feature_maps",
    "plot_filters",
    "plot_mean_maps",
    "summary",
    "to_pil",
    "top_channels",
    "trace",
]


def test_all_is_pinned_and_sorted() -> None:
    assert netsight.__all__ == EXPECTED
    assert sorted(netsight.__all__) == netsight.__all__


def test_every_export_exists() -> None:
    for name in netsight.__all__:
        assert hasattr(netsight, name), name


def test_version() -> None:
    from importlib.metadata import version

    assert netsight.__version__ == version("netsight")
