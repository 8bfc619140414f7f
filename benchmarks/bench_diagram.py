"""Time netsight.diagram against torchview.draw_graph at equal node counts: trace plus SVG.

Usage::

    python benchmarks/bench_diagram.py                  # 7 rounds (~2 minutes on 2 cores)
    python benchmarks/bench_diagram.py --repeats 3      # quicker
    python benchmarks/bench_diagram.py --threads 1      # one torch thread (shared machines)
    python benchmarks/bench_diagram.py --json out.json

torchvision resnet50 and vit_b_16 (random weights, eval mode, batch 1, 224 x 224).

Equal work by default: netsight draws every block (``roll=False``) at depth 3, and
torchview its defaults, which draw every block at depth 3 too (``depth=3,
roll=False, expand_nested=False, hide_inner_tensors=True``): the same module boxes
on both sides (counted and compared), plus the input and output and the functional
ops each tool draws (netsight the ones that join branches, the residual additions;
torchview every tensor function: also ``flatten``, ``reshape``, ``permute``...).
A comparison whose module boxes differ by more than MODULES_TOLERANCE, or whose
total node counts differ by more than NODES_TOLERANCE, is flagged in the table and
the verdict (the script exits 1 when module boxes differ). ``--rolled`` adds
netsight at its own defaults (identical consecutive blocks drawn once, "x N"),
which is less drawing work and so is not part of the equal-work ratio.

Both render SVG with the same Graphviz ``dot``. netsight traces on the meta device,
torchview runs the model on real CPU tensors: that difference is each tool's
design, and it is why torchview suffers more on a loaded machine (its real forward
needs the CPU; pass ``--threads 1`` when other jobs share it). Calls are interleaved
in rotating order after one warm-up of each, every call after ``gc.collect()``;
the table shows medians of wall-clock time and "paired", the median over rounds of
netsight's time over torchview's in the same round.
A last line gives the size of ResNet-152's drawing at netsight's default settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchview import draw_graph

import _common
import netsight

SIZE = (1, 3, 224, 224)
DEPTH = 3
MODULES_TOLERANCE = 0.03  # module boxes may differ by this fraction at most
NODES_TOLERANCE = 0.05  # total nodes: beyond this the row is flagged
TORCHVIEW_KINDS = {"lightyellow": "tensor", "darkseagreen1": "module", "aliceblue": "function"}

Counts = dict[str, int]


def run_netsight(model: nn.Module, *, roll: bool) -> Counts:
    d = netsight.diagram(model, input_size=SIZE, depth=DEPTH, roll=roll)
    svg = d.render("svg")
    assert svg.startswith(b"<?xml")
    kinds = Counter(n.kind for n in d.nodes)
    return {
        "nodes": len(d.nodes),
        "modules": kinds["module"],
        "ops": kinds["op"],
        "tensors": kinds["input"] + kinds["output"],
    }


def run_torchview(model: nn.Module) -> Counts:
    g = draw_graph(model, input_size=SIZE, device="cpu", depth=DEPTH)
    svg = g.visual_graph.pipe(format="svg")
    assert svg.startswith(b"<?xml")
    # torchview colours its nodes by kind: tensors, modules, functions
    colours = Counter(re.findall(r"fillcolor=(\w+)", g.visual_graph.source))
    kinds = {kind: colours[colour] for colour, kind in TORCHVIEW_KINDS.items()}
    return {
        "nodes": sum(kinds.values()),
        "modules": kinds["module"],
        "ops": kinds["function"],
        "tensors": kinds["tensor"],
    }


def timed(fn: Callable[[], Counts]) -> tuple[float, Counts]:
    gc.collect()
    start = time.perf_counter()
    counts = fn()
    return time.perf_counter() - start, counts


def differs(a: int, b: int, tolerance: float) -> bool:
    return abs(a - b) > tolerance * max(a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--rolled",
        action="store_true",
        help="also time netsight at its defaults (roll=True: less work, not in the ratio)",
    )
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"], metavar="NAME")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    run = _common.conditions(["torchview", "graphviz", "dot"])
    results: dict[str, Any] = {"repeats": args.repeats, "models": {}}
    rows: list[list[str]] = []
    verdicts: list[str] = []
    unequal_modules = False
    for name in args.models:
        model = getattr(torchvision.models, name)().eval()
        tools: dict[str, Callable[[], Counts]] = {
            "netsight roll=False": lambda m=model: run_netsight(m, roll=False),
            "torchview": lambda m=model: run_torchview(m),
        }
        if args.rolled:
            tools["netsight defaults (rolled)"] = lambda m=model: run_netsight(m, roll=True)
        for fn in tools.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        counts: dict[str, Counts] = {}
        names = list(tools)
        for r in range(args.repeats):
            shift = r % len(names)
            for tool in names[shift:] + names[:shift]:
                seconds, counts[tool] = timed(tools[tool])
                times[tool].append(seconds)
        print(f"  {name}: done", file=sys.stderr, flush=True)
        ours, theirs = counts["netsight roll=False"], counts["torchview"]
        modules_differ = differs(ours["modules"], theirs["modules"], MODULES_TOLERANCE)
        nodes_differ = differs(ours["nodes"], theirs["nodes"], NODES_TOLERANCE)
        unequal_modules |= modules_differ
        base = times["torchview"]
        results["models"][name] = {}
        for tool in tools:
            median = statistics.median(times[tool])
            paired = statistics.median(t / b for t, b in zip(times[tool], base, strict=True))
            c = counts[tool]
            results["models"][name][tool] = {
                "median_s": median,
                "times_s": times[tool],
                "paired_vs_torchview": paired,
                **c,
            }
            equal = "-" if tool == "torchview" else "no (rolled)"
            if tool == "netsight roll=False":
                equal = (
                    "NO: modules" if modules_differ else "nodes differ" if nodes_differ else "yes"
                )
            rows.append(
                [
                    name,
                    tool,
                    f"{median:.3f}",
                    f"{min(times[tool]):.3f}",
                    f"{paired:.2f}",
                    str(c["nodes"]),
                    str(c["modules"]),
                    str(c["ops"]),
                    equal,
                ]
            )
        ratio = 1 / results["models"][name]["netsight roll=False"]["paired_vs_torchview"]
        verdict = (
            f"{name}: netsight roll=False is {ratio:.1f}x faster than torchview (paired), "
            f"nodes {ours['nodes']} vs {theirs['nodes']}, module boxes {ours['modules']} vs "
            f"{theirs['modules']}"
        )
        if modules_differ:
            verdict += ": NOT comparable (module boxes differ)"
        elif nodes_differ:
            verdict += (
                f": node counts differ by more than {NODES_TOLERANCE:.0%} (functional ops: "
                f"{ours['ops']} vs {theirs['ops']})"
            )
        verdicts.append(verdict)
    print(
        f"\nDepth {DEPTH}, batch 1, 224 x 224, eval; medians of {args.repeats} interleaved rounds; "
        "paired: median over rounds of the time over torchview's in the same round\n"
    )
    headers = ["model", "tool", "median s", "min s", "paired / torchview", "nodes"]
    headers += ["module boxes", "functional ops", "equal work"]
    print(_common.table(headers, rows))
    print()
    for verdict in verdicts:
        print(verdict)
    resnet152 = torchvision.models.resnet152()
    d = netsight.diagram(resnet152, input_size=SIZE)
    ops = sum(n.kind == "op" for n in d.nodes)
    print(
        f"\nresnet152 at netsight's defaults (depth 3, rolled): {len(d.nodes)} nodes, "
        f"{len(d.edges)} edges, {ops} residual additions drawn, "
        f"{len(d.graph.clusters)} rolled block groups"
    )
    results["resnet152"] = {"nodes": len(d.nodes), "edges": len(d.edges), "ops": ops}
    run.finish()
    results["conditions"] = run.as_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 1 if unequal_modules else 0


if __name__ == "__main__":
    raise SystemExit(main())
