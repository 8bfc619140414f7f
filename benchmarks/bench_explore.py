"""The explorer's speed on a ResNet-50 at 224 px, over real HTTP, against the bare passes.

No other tool runs a model behind an interactive page (Netron draws graphs without
running them), so the comparison is with the work underneath each click, measured
in the same run: a no-grad forward of one image, and for a CAM what a user would
run instead, pytorch-grad-cam's ``GradCAM`` for one class. The goals (issue 15):

- after an image's first forward, a click on any layer shows its channel grid in at
  most 300 ms (every module of the model is clicked; median and worst);
- a layer no longer kept costs one forward stopped at that layer (budget 0);
- a CAM for a new class or layer costs at most 1.2x a no-grad forward plus the picture;
- page to first graph: at most ``netsight diagram``'s SVG plus one forward;
- memory stays flat over 500 clicks.

    .venv/bin/python benchmarks/bench_explore.py [--model resnet50] [--size 224] [--clicks 500]

Torch runs with its default threads (2 here), as the server would. Medians; the
machine is shared, so the ratios are the figures to compare.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import time
import warnings
from typing import Any

import torch
import torchvision

import _common
from netsight.diagram import diagram
from netsight.explore import explore


def _get(port: int, token: str, path: str) -> tuple[float, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request("GET", path, headers={"X-Netsight-Token": token})
    response = conn.getresponse()
    body = response.read()
    seconds = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return seconds, json.loads(body)


def _bare_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clicks", type=int, default=500)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    conditions = _common.conditions(peers=("grad-cam",))

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    images = [
        torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(s))
        for s in range(2)
    ]
    forward = _bare_forward(model, images[0])

    # page to first graph: from explore() to the graph over HTTP (the images' forwards
    # run after the graph), against diagram's SVG + one forward; alternating, medians
    firsts, diagrams = [], []
    for repeat in range(3):
        started = time.perf_counter()
        diagram(model, input_size=(1, 3, args.size, args.size)).render("svg")
        diagrams.append(time.perf_counter() - started)
        started = time.perf_counter()
        handle = explore(model, images[:1], open_browser=False, wait=False)
        _, graph = _get(handle.port, handle.token, "/api/graph")
        firsts.append(time.perf_counter() - started)
        handle.wait_loaded()
        if repeat < 2:
            handle.stop()
    first_graph, diagram_s = statistics.median(firsts), statistics.median(diagrams)

    port, token = handle.port, handle.token
    _get(port, token, "/api/images")
    layers = [row for row in _get(port, token, "/api/model")[1]["layers"]]
    # every module call, clicked once after the first forward
    clicks = []
    for row in layers:
        seconds, answer = _get(
            port, token, f"/api/layer?image=i1&layer={row['name']}&call={row['call']}"
        )
        clicks.append((seconds, row["name"] or "(model)", answer["grid"] is not None))
    grid_clicks = [c for c in clicks if c[2]]
    worst = max(grid_clicks)

    # CAMs over HTTP, each paired with a bare no-grad forward just before it: a new
    # class at a layer costs one backward from the score to the layer; the same class
    # at a later layer costs none (its gradient came with the first)
    fresh = iter(range(10, 1000))
    cam_rows = []

    def cam(layer: str, target: int) -> tuple[float, float, dict[str, Any]]:
        bare = _bare_forward(model, images[0], repeats=1)
        seconds, answer = _get(
            port, token, f"/api/cam?image=i1&layer={layer}&class={target}&method=gradcam"
        )
        return bare, seconds, answer

    bare, seconds, answer = cam("", next(fresh))
    cam_rows.append(
        (f"auto ({answer['layer']}), new class", [answer["map_ms"] / 1000 / bare], seconds, answer)
    )
    for layer in ("layer4", "layer3", "layer2", "layer1"):
        ratios, times = [], []
        for _ in range(3):
            bare, seconds, answer = cam(layer, next(fresh))
            ratios.append(answer["map_ms"] / 1000 / bare)
            times.append(seconds)
        cam_rows.append((f"{layer}, new class", ratios, statistics.median(times), answer))
    target = next(fresh)
    cam("layer1", target)
    for layer in ("layer3", "layer4"):
        bare, seconds, answer = cam(layer, target)
        cam_rows.append(
            (f"{layer}, same class after layer1", [answer["map_ms"] / 1000 / bare], seconds, answer)
        )
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer_times = []
    for target in (1, 2, 3):
        with PeerGradCAM(model=model, target_layers=[model.layer4]) as peer:
            started = time.perf_counter()
            peer(input_tensor=images[0], targets=[ClassifierOutputTarget(target)])
            peer_times.append(time.perf_counter() - started)
    peer_cam = statistics.median(peer_times)

    # memory over many clicks: layers, images, pages and CAMs at random
    handle.session.add_image(images[1], name="second")
    rng = random.Random(0)
    _common.trim()
    warm = [rng.choice(layers) for _ in range(50)]
    for row in warm:
        _get(
            port,
            token,
            f"/api/layer?image=i{rng.choice([1, 2])}&layer={row['name']}&call={row['call']}",
        )
    _common.trim()
    before = _common.rss()
    memory_series: list[int] = []
    cache_series: list[int] = []
    cache_before = handle.session.cache.bytes
    for k in range(args.clicks):
        row = rng.choice(layers)
        if k % 10 == 9:
            _get(port, token, f"/api/cam?image=i{rng.choice([1, 2])}&class={rng.randrange(1000)}")
        else:
            scaling = rng.choice(["each", "shared"])
            image = rng.choice([1, 2])
            path = f"/api/layer?image=i{image}&layer={row['name']}&call={row['call']}"
            _get(port, token, f"{path}&normalize={scaling}")
        if k % 100 == 99:
            _common.trim()
            memory_series.append(_common.rss())
            cache_series.append(handle.session.cache.bytes)
    after = memory_series[-1]
    handle.stop()

    # a layer not kept: budget 0, each click one forward stopped at the layer
    stopped = explore(model, images[:1], open_browser=False, budget=0)
    stopped_rows = []
    for name in ("layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.2.conv3"):
        bare = _bare_forward(model, images[0], repeats=3)
        seconds, answer = _get(stopped.port, stopped.token, f"/api/layer?image=i1&layer={name}")
        stopped_rows.append((name, seconds, answer["forward_ms"] / 1000, bare))
    stopped.stop()

    ms = _common.ms
    print(f"\n{args.model} at {args.size} px; bare no-grad forward of one image: {ms(forward)}\n")
    print(
        _common.table(
            ["what", "time", "goal", "ratio"],
            [
                [
                    "page to first graph (explore() to the graph over HTTP)",
                    ms(first_graph),
                    f"<= diagram {ms(diagram_s)} + forward {ms(forward)}",
                    f"{first_graph / (diagram_s + forward):.2f}x",
                ],
                [
                    f"click a layer: median of {len(grid_clicks)} with a grid",
                    ms(statistics.median(c[0] for c in grid_clicks)),
                    "<= 300 ms",
                    f"{statistics.median(c[0] for c in grid_clicks) / forward:.2f}x forward",
                ],
                [
                    f"click a layer: worst ({worst[1]})",
                    ms(worst[0]),
                    "<= 300 ms",
                    f"{worst[0] / forward:.2f}x forward",
                ],
            ],
        )
    )
    print()
    print(
        _common.table(
            [
                "CAM (gradcam)",
                "over HTTP",
                "gradient + map",
                "ratio to a paired forward (median)",
                "graph reused",
            ],
            [
                [
                    what,
                    ms(seconds),
                    ms(answer["map_ms"] / 1000),
                    f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
                    str(answer["reused_graph"]),
                ]
                for what, ratios, seconds, answer in cam_rows
            ]
            + [
                [
                    "pytorch-grad-cam GradCAM, layer4, per class",
                    ms(peer_cam),
                    ms(peer_cam),
                    f"{peer_cam / forward:.2f}x",
                    "-",
                ]
            ],
        )
    )
    print()
    print(
        _common.table(
            [
                "layer not kept (budget 0)",
                "click",
                "its stopped forward",
                "ratio to a paired forward",
            ],
            [
                [name, ms(s), ms(stop), f"{stop / bare:.2f}x"]
                for name, s, stop, bare in stopped_rows
            ],
        )
    )
    mb = 2**20
    print(
        f"\nmemory over {args.clicks} clicks (after 50 warm-up clicks): RSS {before / mb:.0f} MB "
        f"before, {after / mb:.0f} MB after ({(after - before) / mb:+.0f} MB); "
        "every 100 clicks: " + ", ".join(f"{m / mb:.0f}" for m in memory_series) + " MB"
    )
    print(
        f"of which kept layer outputs (the LRU cache, budget {handle.session.budget / mb:.0f} MB): "
        f"{cache_before / mb:.0f} MB before, then "
        + ", ".join(f"{c / mb:.0f}" for c in cache_series)
        + " MB; RSS minus the cache: "
        + ", ".join(f"{(m - c) / mb:.0f}" for m, c in zip(memory_series, cache_series, strict=True))
        + " MB"
    )
    print(f"graph: {len(graph['nodes'])} nodes; layers clicked: {len(clicks)}")
    conditions.finish()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
