"""``netsight filters``: convolution kernels drawn as image grids, with ``filters.json``
(:func:`netsight.save_filters`)."""

from __future__ import annotations

import argparse

from netsight.cli import common
from netsight.options import FilterMode

__all__ = ["COMMAND"]


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    common.add_layers_option(p, "convolution layer names or globs (default: the first convolution)")
    common.add_out_dir_option(p, "filters")
    p.add_argument(
        "--mode",
        default=FilterMode.AUTO.value,
        choices=FilterMode.values(),
        help="rgb tiles for 3-channel inputs, one tile per (filter, input channel), "
        "or the per-filter mean",
    )
    p.add_argument(
        "--max-tiles",
        type=common.parse_positive_int,
        default=256,
        metavar="N",
        help="cap on tiles per layer",
    )


def run(args: argparse.Namespace) -> int:
    from netsight.filters import MANIFEST, save_filters

    out = common.out_dir(args, "filters", [MANIFEST])
    model = common.model_from_args(args, random_note="the kernels are untrained")
    paths = save_filters(
        model,
        args.layers,
        out,
        mode=args.mode,
        max_tiles=args.max_tiles,
        **common.provenance(args),
    )
    common.report_written(paths)
    return 0


COMMAND = common.Command(
    "filters",
    "convolution kernels drawn as image grids",
    configure,
    run,
    description="Draw the kernels of each of --layers (convolutions) as an image grid: "
    "one PNG per layer and filters.json in --out.",
)
