"""``netsight report``: one HTML page with everything netsight shows (:func:`netsight.report`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from netsight.cli import common

__all__ = ["COMMAND"]


_REPORT_METHODS = ("gradcam", "gradcam++", "layercam")


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can read")
    p.add_argument("--out", default="out/report.html", metavar="FILE", help="the page to write")
    common.add_image_options(p, "the first image's own")
    p.add_argument(
        "--methods",
        type=common.parse_cam_methods,
        metavar="M[,M...]|all",
        help=f"CAM methods (default: {','.join(_REPORT_METHODS)})",
    )
    p.add_argument("--layer", metavar="NAME", help="CAM target layer (default: chosen per model)")
    p.add_argument(
        "--labels", type=common.parse_ints, metavar="K[,K...]", help="the true class of each image"
    )
    p.add_argument("--classes", metavar="FILE", help="a text file with one class name per line")
    p.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a TrainingMonitor run directory to include"
    )
    p.add_argument(
        "--faithfulness-steps",
        type=int,
        default=10,
        metavar="N",
        help="deletion/insertion steps of the CAM faithfulness table; 0 leaves it out (default 10)",
    )
    p.add_argument(
        "--pattern-steps",
        type=int,
        default=64,
        metavar="N",
        help="activation-maximisation steps for the last convolution's filter patterns; "
        "0 leaves them out (default 64)",
    )
    p.add_argument("--no-diagram", action="store_true", help="leave the dataflow graph out")
    p.add_argument("--depth", type=common.parse_depth, default=3, help="summary depth (default 3)")
    p.add_argument("--title", help="page title (default: the model's class name)")


def run(args: argparse.Namespace) -> int:
    from netsight.images import load_image
    from netsight.report import report

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise common.UsageError(
            f"--out {args.out}: is a directory; give a file name such as report.html"
        )
    if args.labels is not None and len(args.labels) != len(args.images):
        raise common.UsageError(
            f"--labels: {len(args.labels)} labels for {len(args.images)} images"
        )
    class_names = None
    if args.classes:
        try:
            lines = Path(args.classes).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise common.UsageError(f"--classes {args.classes}: {exc.strerror or exc}") from None
        class_names = [line.strip() for line in lines if line.strip()]
    model = common.model_from_args(args)
    size = common.image_size(args)
    batch = []
    for path in args.images:
        x = load_image(path, size=size, model=model, mean=args.mean, std=args.std)
        if size is None:  # the first image fixes the size of the others
            size = (x.shape[-2], x.shape[-1])
        batch.append(x)
    methods: str | tuple[str, ...] | None = args.methods
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
        cam_methods=methods if methods is not None else _REPORT_METHODS,
        cam_layer=args.layer,
        faithfulness_steps=args.faithfulness_steps,
        pattern_steps=args.pattern_steps,
        run=args.run_dir,
        diagram=not args.no_diagram,
        depth=args.depth,
        progress=sys.stderr.isatty(),
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
    "--run, a TrainingMonitor run's curves, gradient flow and diagnostics.",
)
