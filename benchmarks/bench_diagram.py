"""Time netsight.diagram against torchview.draw_graph: trace plus SVG render.

Usage::

    python benchmarks/bench_diagram.py              # 7 repeats (~2 minutes on 2 cores)
    python benchmarks/bench_diagram.py --repeats 3  # quicker
    python benchmarks/bench_diagram.py --json out.json

torchvision resnet50 and vit_b_16 (random weights, eval mode, batch 1, 224 x 224).
Each tool runs at its default settings (netsight: depth 3, repeated blocks rolled,
meta-device trace; torchview: depth 3, real tensors on the CPU) and renders SVG
with the same Graphviz ``dot``. Calls are interleaved (netsight, torchview,
netsight, ...) after one warm-up of each, every call after ``gc.collect()``;
the table shows medians of wall-clock time and the node counts of each drawing.
A last line gives the size of ResNet-152's drawing at netsight's default settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchview import draw_graph

import netsight

SIZE = (1, 3, 224, 224)


def run_netsight(model: nn.Module) -> int:
    d = netsight.diagram(model, input_size=SIZE)
    svg = d.render("svg")
    assert svg.startswith(b"<?xml")
    return len(d.nodes)


def run_torchview(model: nn.Module) -> int:
    g = draw_graph(model, input_size=SIZE, device="cpu")
    svg = g.visual_graph.pipe(format="svg")
    assert svg.startswith(b"<?xml")
    return sum(1 for line in g.visual_graph.body if "label=" in line and "->" not in line)


def timed(fn: Callable[[nn.Module], int], model: nn.Module) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    nodes = fn(model)
    return time.perf_counter() - start, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    tools: dict[str, Callable[[nn.Module], int]] = {
        "netsight": run_netsight,
        "torchview": run_torchview,
    }
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    print("| model | tool | median s (trace + SVG) | min s | nodes |")
    print("|---|---|---|---|---|")
    for name in ("resnet50", "vit_b_16"):
        model = getattr(torchvision.models, name)().eval()
        for fn in tools.values():
            fn(model)  # warm-up
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        nodes: dict[str, int] = {}
        for _ in range(args.repeats):
            for tool, fn in tools.items():
                seconds, count = timed(fn, model)
                times[tool].append(seconds)
                nodes[tool] = count
        results["models"][name] = {}
        for tool in tools:
            median = statistics.median(times[tool])
            results["models"][name][tool] = {
                "median_s": median,
                "times_s": times[tool],
                "nodes": nodes[tool],
            }
            print(f"| {name} | {tool} | {median:.3f} | {min(times[tool]):.3f} | {nodes[tool]} |")
    resnet152 = torchvision.models.resnet152()
    d = netsight.diagram(resnet152, input_size=SIZE)
    ops = sum(n.kind == "op" for n in d.nodes)
    print(
        f"\nresnet152 at netsight's defaults (depth 3, rolled): {len(d.nodes)} nodes, "
        f"{len(d.edges)} edges, {ops} residual additions drawn, "
        f"{len(d.graph.clusters)} rolled block groups"
    )
    results["resnet152"] = {"nodes": len(d.nodes), "edges": len(d.edges), "ops": ops}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
