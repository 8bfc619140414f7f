"""``netsight patterns``: filter patterns by activation maximisation
(:func:`netsight.maximize`, written by :meth:`Patterns.save`)."""

from __future__ import annotations

import argparse

from netsight.cli import common

__all__ = ["COMMAND"]


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    common.add_layer_option(
        p, "the layer whose channels to maximise (required)", required=True, greedy=True
    )
    p.add_argument(
        "--channels",
        type=common.parse_ints,
        metavar="K[,K...]",
        help="channel indices (default: the first --max-channels)",
    )
    p.add_argument(
        "--max-channels",
        type=common.parse_positive_int,
        default=16,
        metavar="N",
        help="channels without --channels",
    )
    p.add_argument(
        "--size", type=common.parse_positive_int, default=64, metavar="N", help="picture side"
    )
    p.add_argument(
        "--steps", type=common.parse_positive_int, default=128, metavar="N", help="Adam steps"
    )
    p.add_argument("--lr", type=float, default=0.05, metavar="LR", help="learning rate")
    p.add_argument("--pixel", action="store_true", help="optimise pixels, not a 1/f spectrum")
    common.add_normalisation_options(p)
    common.add_out_dir_option(p, "patterns")


def run(args: argparse.Namespace) -> int:
    from netsight._io import safe_filename
    from netsight.patterns import maximize

    stem = f"patterns_{safe_filename(args.layer)}"
    out = common.out_dir(args, "patterns", [f"{stem}.json", f"{stem}.png"])
    model = common.model_from_args(args, random_note="the pictures show an untrained model")
    found = maximize(
        model,
        args.layer,
        args.channels,
        size=args.size,
        steps=args.steps,
        lr=args.lr,
        parameterization="pixel" if args.pixel else "fourier",
        mean=args.mean,
        std=args.std,
        max_channels=args.max_channels,
        seed=args.seed,
        progress=True,  # a bar on a terminal, plain lines on stderr otherwise
    )
    paths = found.save(out, **common.provenance(args))
    for channel, before, after in zip(found.channels, found.start, found.activation, strict=True):
        print(f"{found.layer} channel {channel}: mean activation {before:.3g} -> {after:.3g}")
    common.report_written(paths)
    return 0


COMMAND = common.Command(
    "patterns",
    "filter patterns: the input each channel of a layer likes best",
    configure,
    run,
    description="Activation maximisation: for each chosen channel of --layer, optimise "
    "an input (a 1/f spectrum through a sigmoid, jittered at every step) to raise the "
    "channel's mean activation; write the pictures as one figure and a JSON record.",
)
