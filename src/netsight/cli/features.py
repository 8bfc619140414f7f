"""``netsight features``: feature-map grids, mean maps and layer statistics for one image
(:func:`netsight.features.export_features`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from netsight.cli import common

__all__ = ["COMMAND"]


#: The files ``export_features`` writes in every run (besides one grid per layer).
_FEATURES_FILES = (
    "manifest.json",
    "mean_maps.png",
    "layer_stats.txt",
    "layer_stats.json",
    "layer_stats.html",
    "layer_stats.png",
)


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    p.add_argument("image", metavar="IMAGE", help="an image file Pillow can read")
    common.add_layers_option(
        p, "layer names or globs (default: every convolution); see `netsight layers MODEL`"
    )
    common.add_out_dir_option(p, "features")
    common.add_image_options(p, "the image's own")
    p.add_argument(
        "--max-channels",
        type=common.parse_positive_int,
        default=64,
        metavar="N",
        help="tiles per layer grid",
    )
    common.add_colormap_option(p, "viridis")


def run(args: argparse.Namespace) -> int:
    from netsight.features import export_features
    from netsight.images import load_image

    out = Path(args.out)
    # what export_features always writes, and the grids of an earlier run
    names = [*_FEATURES_FILES, *(p.name for p in sorted(out.glob("features_*.png")))]
    out = common.out_dir(args, "features", names)
    model = common.model_from_args(args, random_note="the maps show an untrained model")
    x = load_image(
        args.image,
        size=common.image_size(args),
        model=model,
        mean=args.mean,
        std=args.std,
    )
    paths = export_features(
        model, x, out, layers=args.layers, max_channels=args.max_channels, cmap=args.colormap
    )
    common.report_written(paths)
    stats_text = (out / "layer_stats.txt").read_text(encoding="utf-8").splitlines()
    print(stats_text[-1])
    return 0


COMMAND = common.Command(
    "features",
    "feature-map grids, mean maps and layer statistics for one image",
    configure,
    run,
    description="Capture every chosen layer's output for IMAGE with forward hooks and "
    "write per-layer grids, the mean-map figure and the layer statistics "
    "(sparsity, dead channels) to --out.",
)
