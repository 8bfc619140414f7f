"""Activation maximisation: netsight.maximize against lucent and the bare passes.

Same model (torchvision resnet18, random weights, seeded, eval), same layer, same
channels, same picture size and number of steps, one batch of one picture per
channel in every tool; times are medians of interleaved repeats. Also reports the
mean activation each tool's final pictures reach (measured the same way for both:
the channel's mean over the layer's output), so speed is not bought with worse
pictures.

Equal work: the same model, layer, channels (one picture each, one batch),
picture size, step count, optimiser (Adam, lr 0.05), ImageNet normalisation and
torch threads (one process) in every tool. Each tool's picture parameterisation is
its default (both a 1/f-scaled Fourier spectrum). Transforms differ by default
(lucent: pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4; netsight:
jitter 4, scale 0.95-1.05), so lucent also runs with netsight's transforms
("lucent, netsight's transforms"), which isolates the rest. What stays different
is each tool's design: netsight's forward stops at the target layer, lucent runs
the whole network every step (the "bare" row is that whole-network cost).

lucent (PyPI ``torch-lucent``) is not a netsight dependency. Version 0.1.8 needs
``kornia<=0.4.1`` (it calls ``kornia.get_rotation_matrix2d``, gone from later
kornia); install the pinned pair with ``pip install -e '.[bench]'`` or
``.venv/bin/pip install torch-lucent==0.1.8 kornia==0.4.1``.

    .venv/bin/python benchmarks/bench_patterns.py [--steps 64] [--size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

import _common
import netsight

LAYER = "layer3.1.conv2"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def _layer_means(model: nn.Module, images: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """Each picture's own channel's mean activation at LAYER (ImageNet normalisation)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with netsight.capture(model, [LAYER]) as cap, torch.no_grad():
        model((images - mean) / std)
    out = cap[LAYER]
    return out[torch.arange(len(channels)), torch.tensor(channels)].flatten(1).mean(1)


def run_netsight(model: nn.Module, channels: list[int], size: int, steps: int) -> torch.Tensor:
    found = netsight.maximize(
        model,
        LAYER,
        channels,
        size=size,
        steps=steps,
        lr=0.05,
        jitter=JITTER,
        scales=SCALES,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    return found.images


SCALES = (1.0, 0.975, 1.025, 0.95, 1.05)  # netsight.maximize's default
JITTER = 4  # netsight.maximize's default


def run_lucent(
    model: nn.Module, channels: list[int], size: int, steps: int, *, netsight_transforms: bool
) -> torch.Tensor:
    from lucent.optvis import objectives, param, render, transform

    name = LAYER.replace(".", "_")
    objective: Any = objectives.channel(name, channels[0], batch=0)
    for i, c in enumerate(channels[1:], start=1):
        objective = objective + objectives.channel(name, c, batch=i)

    def param_f() -> Any:
        return param.image(size, batch=len(channels))

    images = render.render_vis(
        model,
        objective,
        param_f,
        transforms=(
            [transform.jitter(JITTER), transform.random_scale(SCALES)]
            if netsight_transforms
            else None  # lucent's standard transforms
        ),
        thresholds=(steps,),
        show_image=False,
        progress=False,
        fixed_image_size=size,
    )
    return torch.from_numpy(images[-1]).permute(0, 3, 1, 2).float()


def run_bare(model: nn.Module, channels: list[int], size: int, steps: int) -> None:
    """The floor: ``steps`` forward+backward passes of the batch, gradient w.r.t. the input."""
    x = torch.rand(len(channels), 3, size, size, requires_grad=True)
    for _ in range(steps):
        torch.autograd.grad(model(x).sum(), [x])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model()
    channels = list(range(args.channels))
    tools: dict[str, Callable[[], Any]] = {
        "netsight": lambda: run_netsight(model, channels, args.size, args.steps),
        "bare fwd+bwd (whole net)": lambda: run_bare(model, channels, args.size, args.steps),
    }
    peers = ["torch-lucent", "kornia"]
    try:
        import lucent  # noqa: F401
    except ImportError:
        hint = "lucent not installed: `.venv/bin/pip install torch-lucent==0.1.8 kornia==0.4.1`"
        print(hint, file=sys.stderr)
        peers = []
    else:
        tools["lucent"] = lambda: run_lucent(
            model, channels, args.size, args.steps, netsight_transforms=False
        )
        tools["lucent, netsight's transforms"] = lambda: run_lucent(
            model, channels, args.size, args.steps, netsight_transforms=True
        )
    run = _common.conditions(peers)
    pictures: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in tools}
    for r in range(args.repeats):
        order = list(tools)[r % len(tools) :] + list(tools)[: r % len(tools)]
        for name in order:
            start = time.perf_counter()
            result = tools[name]()
            times[name].append(time.perf_counter() - start)
            if isinstance(result, torch.Tensor):
                pictures[name] = result
    print(
        f"resnet18 (random weights), {LAYER}, {args.channels} channels, {args.size} px, "
        f"{args.steps} steps, torch threads {torch.get_num_threads()}; medians of {args.repeats}"
    )
    base = statistics.median(times["netsight"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        reached = (
            f"{float(_layer_means(model, pictures[name], channels).mean()):.3f}"
            if name in pictures
            else "-"
        )
        paired = statistics.median(t / b for t, b in zip(values, times["netsight"], strict=True))
        rows.append([name, _common.ms(median), f"{median / base:.2f}", f"{paired:.2f}", reached])
    headers = ["tool", "ms", "x netsight", "paired", "mean activation reached"]
    print(_common.table(headers, rows))
    print("  (paired: median over rounds of the time over netsight's in the same round)")
    run.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
