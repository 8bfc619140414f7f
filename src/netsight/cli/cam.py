"""``netsight cam``: every method's map of every image (:func:`netsight.cam.compare`),
written as overlays, a comparison grid and ``cam.json`` (:meth:`CAMComparison.save`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from netsight.cli import common

__all__ = ["COMMAND"]


#: Exit code when some explicitly requested methods could not run but others did.
EXIT_PARTIAL = 1


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can read")
    common.add_methods_option(p, ("gradcam",))
    common.add_target_option(p)
    common.add_layer_option(
        p,
        "target layer name or glob (default: the last layer with a spatial map); "
        "see `netsight layers MODEL`; saliency ignores it",
    )
    common.add_class_names_option(p)
    common.add_out_dir_option(p, "cam")
    common.add_image_options(p, "each image's own")
    p.add_argument(
        "--alpha",
        type=_unit_float,
        default=0.5,
        metavar="A",
        help="heat-map weight in the overlays, 0 to 1",
    )
    common.add_colormap_option(p, "jet")
    p.add_argument(
        "--batch-size",
        type=common.parse_positive_int,
        metavar="N",
        help="inputs per forward in the perturbation methods (scorecam, ablationcam) "
        "(default: the method's own)",
    )
    p.add_argument(
        "--approx",
        type=common.parse_positive_int,
        metavar="K",
        help="scorecam and ablationcam: the documented approximation with at most K "
        "extra forwards per image (see the README) (default: exact)",
    )
    common.add_faithfulness_option(p)
    p.add_argument(
        "--road",
        action="store_true",
        help="with --faithfulness-steps: also measure ROAD (remove and debias, most and "
        "least relevant first at 10, 20, ..., 90 %% of the pixels: 18 imputations and "
        "forwards per image and method more)",
    )
    p.add_argument(
        "--evaluate",
        dest="faithfulness_steps",
        type=common.parse_positive_int,
        nargs="?",
        const=20,
        help=argparse.SUPPRESS,  # the old spelling of --faithfulness-steps
    )
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="also write each map as IMAGE__METHOD.npy: float32 (H, W) in [0, 1], "
        "at the input resolution",
    )


def _print_cam_table(found: Any, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"netsight cam: wrote to {out}", title_justify="left")
    for column in ("image", "target", "score", "method", "layer", "overlay"):
        table.add_column(column, overflow="fold")
    for index, source in enumerate(found.sources):
        for method in found.methods:
            table.add_row(
                Path(source).name,
                found.target_label(index),
                f"{found.scores[index]:.3g}",
                method,
                ", ".join(found.layers[method][index]),
                f"{found.file_stem(index, method)}.png",
            )
    console = Console(file=sys.stdout)
    console.print(table)
    print(f"grid: {out / 'grid.png'} ({len(found.names)} x {1 + len(found.methods)})")
    print(f"manifest: {out / 'cam.json'}")
    if found.skipped:
        print(f"skipped: {', '.join(found.skipped)} (reasons on stderr and in cam.json)")


def run(args: argparse.Namespace) -> int:
    from netsight.cam import compare
    from netsight.cam.compare import MANIFEST
    from netsight.images import check_colormap, load_image

    check_colormap(args.colormap, "--colormap")  # before any work
    if args.road and not args.faithfulness_steps:
        raise common.UsageError("--road: needs --faithfulness-steps N (ROAD is measured with it)")
    out = common.out_dir(args, "cam", [MANIFEST, "grid.png"])
    model = common.model_from_args(args, random_note="predictions are meaningless")
    names = common.class_names_from_args(args, model)
    size = common.image_size(args)
    batches = [
        load_image(p, size=size, model=model, mean=args.mean, std=args.std) for p in args.images
    ]
    found = compare(
        model,
        batches,
        args.methods,
        args.target,
        layer=args.layer,
        names=args.images,
        mean=args.mean,
        std=args.std,
        batch_size=args.batch_size,
        approx=args.approx,
        class_names=names,
        faithfulness_steps=args.faithfulness_steps,
        road=args.road,
        strict=args.traceback,
        progress=True,  # a bar on a terminal, plain lines on stderr otherwise
    )
    for method in found.methods:
        for source, notes in zip(found.sources, found.notes[method], strict=True):
            for note in notes:
                print(f"netsight: warning: {Path(source).name}: {note}", file=sys.stderr)
    for method, reason in found.skipped.items():
        print(f"netsight: skipped {method}: {reason}", file=sys.stderr)
    if not found.methods:
        raise common.UsageError(
            f"none of the methods could run on {args.model} ({', '.join(found.skipped)}); "
            f"the reasons are above"
        )
    if found.evaluation_error is not None:
        raise common.UsageError(found.evaluation_error)
    found.save(
        out,
        alpha=args.alpha,
        colormap=args.colormap,
        maps=args.save_maps,
        **common.provenance(args),
    )
    _print_cam_table(found, out)
    if found.evaluation is not None:
        print()
        print(found.evaluation.table(), end="")
    if found.skipped and found.requested != "all":
        return EXIT_PARTIAL
    return 0


COMMAND = common.Command(
    "cam",
    "class activation maps: overlays and a methods-by-images grid",
    configure,
    run,
    description="Explain the class the model picks (or --target: a class, a segmentation "
    "class, a detected box, a concept) for each IMAGE with "
    "each of --methods: one overlay PNG per (image, method), grid.png (rows: images, "
    "columns: the image then each method) and cam.json in --out, classes named from "
    "--classes or, for torchvision classifiers, ImageNet's names. A method that cannot "
    "run on the model is skipped with its reason; the exit code is 1 when an explicitly "
    "requested method was skipped, 2 when none ran.",
)
