"""``netsight report``: one HTML page with everything netsight shows (:func:`netsight.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from netsight.cli import common

__all__ = ["COMMAND"]


_REPORT_METHODS = ("gradcam", "gradcam++", "layercam")


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can read")
    common.add_out_file_option(p, "out/report/NAME.html, NAME from MODEL")
    common.add_image_options(p, "the first image's own")
    common.add_methods_option(p, _REPORT_METHODS)
    common.add_layer_option(p, "CAM target layer (default: chosen per model)")
    common.add_target_option(p)
    p.add_argument(
        "--labels",
        type=common.parse_ints,
        metavar="K[,K...]",
        help="the true class of each image (default: none, predictions are not marked)",
    )
    common.add_class_names_option(p)
    p.add_argument(
        "--run",
        dest="run_dir",
        metavar="DIR",
        help="a TrainingMonitor run directory to include (default: none)",
    )
    common.add_faithfulness_option(p)
    p.add_argument(
        "--pattern-steps",
        type=common.parse_depth,
        default=64,
        metavar="N",
        help="activation-maximisation steps for the last convolution's filter patterns; "
        "0 leaves them out",
    )
    p.add_argument("--no-diagram", action="store_true", help="leave the dataflow graph out")
    p.add_argument(
        "--depth", type=common.parse_depth, default=3, metavar="N", help="summary table depth"
    )
    p.add_argument("--title", help="page title (default: the model's class name)")


def run(args: argparse.Namespace) -> int:
    from netsight.images import load_image
    from netsight.report import report

    if args.labels is not None and len(args.labels) != len(args.images):
        raise common.UsageError(
            f"--labels: {len(args.labels)} labels for {len(args.images)} images"
        )
    out = Path(args.out or common.default_out_file(args, "report", "html"))
    common.check_out(out, args.overwrite, make=True)
    model = common.model_from_args(args, random_note="predictions are meaningless")
    class_names = common.class_names_from_args(args, model)
    size = common.image_size(args)
    batch = []
    for path in args.images:
        x = load_image(path, size=size, model=model, mean=args.mean, std=args.std)
        if size is None:  # the first image fixes the size of the others
            size = (x.shape[-2], x.shape[-1])
        batch.append(x)
    methods: str | tuple[str, ...] = args.methods
    if methods == "all":
        from netsight.cam import METHODS

        methods = tuple(METHODS)
    result = report(
        model,
        torch.cat(batch),
        labels=args.labels,
        class_names=class_names,
        # what load_image normalised with (its default 0.5 too), to show them as they were
        mean=args.mean if args.mean is not None else [0.5],
        std=args.std if args.std is not None else [0.5],
        title=args.title,
        cam_methods=methods,
        cam_layer=args.layer,
        cam_target=args.target,
        faithfulness_steps=args.faithfulness_steps,
        pattern_steps=args.pattern_steps,
        run=args.run_dir,
        diagram=not args.no_diagram,
        depth=args.depth,
        progress=True,  # a bar on a terminal, plain lines on stderr otherwise
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    path = result.save(out)
    for section in result.sections:
        state = f"skipped: {section.skipped}" if section.skipped else f"{section.seconds:.1f} s"
        print(f"  {section.title}: {state}")
    print(f"wrote {path}")
    return 0


COMMAND = common.Command(
    "report",
    "one HTML page: summary, diagram, filters, features, statistics, CAMs, training",
    configure,
    run,
    description="Run everything netsight shows on MODEL and IMAGE(s) and write one "
    "self-contained HTML page (pictures embedded): the layer summary, the dataflow "
    "graph, filters, feature maps, layer statistics, class activation maps and, with "
    "--run, a TrainingMonitor run's curves, gradient flow and diagnostics. The CAM "
    "faithfulness table is off unless --faithfulness-steps (it can take minutes).",
)
