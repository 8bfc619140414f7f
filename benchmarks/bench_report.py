"""The one-page report at its defaults: how long each section takes, against the bare passes.

No library makes this page, so the comparison is with the bare work underneath it:
one forward of the batch (what the summary, the statistics and the feature maps
need) and one forward and backward (what each gradient CAM method needs). The goal
from issue 14: ``netsight.report`` on a ResNet-50 with 4 images at 224 px is ready in
under 30 s at its defaults on this 2-core CPU, the expensive parts (faithfulness
curves, filter patterns of a large model) only when asked for.

    .venv/bin/python benchmarks/bench_report.py [--model resnet50] [--images 4] [--repeats 2]

Torch runs with its default threads (2 here), as a user's ``netsight report`` would.
Medians over ``--repeats`` runs; the machine is shared, so the ratios to the bare
passes are the figures to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import torchvision

import _common
from netsight.report import report


def _bare(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Seconds of one forward under no_grad, and of one forward + backward."""
    with torch.no_grad():
        started = time.perf_counter()
        model(x)
        forward = time.perf_counter() - started
    started = time.perf_counter()
    model(x.requires_grad_(True)).max(1).values.sum().backward()
    both = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return forward, both


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision classifier")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    conditions = _common.conditions(peers=("dot",))
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model).eval()
    x = torch.randn(args.images, 3, args.size, args.size)

    sections: dict[str, list[float]] = {}
    totals, forwards, backwards = [], [], []
    for _ in range(args.repeats):
        forward, both = _bare(model, x.clone())
        forwards.append(forward)
        backwards.append(both)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            page = report(model, x)
        totals.append(time.perf_counter() - started)
        for part in page.sections:
            sections.setdefault(part.title, []).append(part.seconds)
    forward, both = statistics.median(forwards), statistics.median(backwards)
    total = statistics.median(totals)
    print(
        f"netsight.report({args.model}, {args.images} x 3 x {args.size} x {args.size}) "
        f"at its defaults, median of {args.repeats}\n"
    )
    rows = [
        [name, f"{statistics.median(times):.1f}", f"{statistics.median(times) / forward:.1f}"]
        for name, times in sections.items()
    ]
    rows.append(["whole page", f"{total:.1f}", f"{total / forward:.1f}"])
    rows.append(["bare forward (no_grad)", f"{forward:.2f}", "1.0"])
    rows.append(["bare forward + backward", f"{both:.2f}", f"{both / forward:.1f}"])
    print(_common.table(["part", "seconds", "x bare forward"], rows))
    goal = "met" if total < 30 else "NOT met"
    print(f"\ngoal: the page in under 30 s: {total:.1f} s ({goal})")
    conditions.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
