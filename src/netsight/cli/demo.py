"""``netsight demo``: the tutorials' VGG-16 trained on the digits, shown inside out
(:func:`netsight.demo.run_demo`)."""

from __future__ import annotations

import argparse

from netsight.cli import common

__all__ = ["COMMAND"]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="out",
        metavar="DIR",
        help="where the files go; the demo's own files from an earlier run there are "
        "replaced, its trained weights reused",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="train one epoch on 64 digits (seconds, a smoke test) instead of the full run",
    )
    p.add_argument(
        "--epochs",
        type=common.parse_positive_int,
        metavar="N",
        help="training epochs (default: 4, 1 with --quick)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the initialisation, the data split and the shuffling",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train even if weights from an earlier run with the same settings are in --out",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from netsight.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs)
    config = dataclasses.replace(config, seed=args.seed)
    run_demo(args.out, config=config, retrain=args.retrain)
    return 0


COMMAND = common.Command(
    "demo",
    "train the tutorials' VGG-16 on the bundled digits and show everything (out/report.html)",
    configure,
    run,
)
