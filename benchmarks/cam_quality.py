"""How well every CAM method localises and explains, on a benchmark built from scratch.

Usage::

    python benchmarks/cam_quality.py                 # full run (300 images)
    python benchmarks/cam_quality.py --quick         # 100 images, shorter training
    python benchmarks/cam_quality.py --seed 1 --images 500 --json out.json

No download. The images are made here from scikit-learn's bundled 8 x 8 digits
(``load_digits``): each digit is upscaled to a random size (20-28 px) and pasted at a
random place on a 64 x 64 canvas of noise (mean 0.1), next to 2-4 distractor strokes
(random lines and arcs, as bright as the digits, outside the digit's square). The
ground-truth box is the tight box around the digit's ink. Training canvases use 80 %
of the digits, evaluation canvases the other 20 % (a seeded split within each class),
so the evaluated digits were never seen.

A small CNN (four 3 x 3 convolutions with batch norm and ReLU, two 2 x 2 average
pools, global average pooling and one linear layer, so the original CAM applies) is
trained on it for a few epochs on the CPU. Its last convolutional map is 16 x 16 (a
stride of 4 px), fine enough for a map to land on a 20 px digit; its receptive field
(26 px) covers one.

Then ``netsight.cam.evaluate`` scores every method in ``netsight.cam.METHODS`` on the
evaluation canvases, for their true labels: pointing game (the map's maximum inside
the digit's box, no tolerance), deletion and insertion AUC (RISE) with deletion to
zero and insertion from zero (black: the canvas's ink-free value; ``--insertion blur``
starts from a blurred canvas instead), average drop and increase in confidence, next
to the random and centre baselines, and ROAD (remove and debias, Rong et al. 2022:
the most / least salient 10, 20, ..., 90 % of the pixels replaced by a noisy linear
imputation rather than black; ``--no-road`` skips it). The goal from issue 4: the best
gradient methods point correctly on at least 90 % of the images.

The methods are then ranked by each faithfulness measure, and the rankings compared
(Spearman's rho over the methods and baselines): ROAD most-relevant-first against
deletion (both: the probability once the salient pixels are gone), ROAD
least-relevant-first against insertion (the probability with the salient pixels
there) and ROAD's combined ``(LeRF - MoRF) / 2`` against ``insertion - deletion``.

Torch runs on one thread by default (``--threads``): the work is many small
forwards, and a second thread mostly waits, much longer when another process keeps
a core busy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import _common
import netsight
import netsight.cam as nscam
from netsight.datasets import CANVAS_SIZE as CANVAS
from netsight.datasets import digit_canvases
from netsight.zoo import CanvasNet

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
GOAL = 0.90


# --------------------------------------------------------------------------- data
# The canvases are netsight.datasets.digit_canvases and the model is
# netsight.zoo.CanvasNet (the demo uses both too).


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> list[float]:
    """Adam with a one-cycle schedule; returns the training loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 64
    steps = epochs * math.ceil(len(x) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=6e-3, total_steps=steps)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


# --------------------------------------------------------------------------- rankings
def _ranks(values: list[float]) -> list[float]:
    """Average ranks (1 = smallest), ties sharing the mean of their places."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def rank_agreement(result: nscam.CAMEvaluation) -> dict[str, Any]:
    """Spearman's rho between the methods' ROAD scores and deletion / insertion, and
    each ranking (best first)."""
    methods = result.methods
    names = list(methods)

    def column(key: str) -> list[float]:
        values = {
            "deletion": [m.deletion for m in methods.values()],
            "insertion": [m.insertion for m in methods.values()],
            "road_morf": [m.road_morf or 0.0 for m in methods.values()],
            "road_lerf": [m.road_lerf or 0.0 for m in methods.values()],
        }
        if key == "insertion - deletion":
            return [i - d for i, d in zip(values["insertion"], values["deletion"], strict=True)]
        if key == "road":
            return [(m.road if m.road is not None else 0.0) for m in methods.values()]
        return values[key]

    # (ROAD measure, RISE measure, lower is better)
    pairs = (
        ("road_morf", "deletion", True),
        ("road_lerf", "insertion", False),
        ("road", "insertion - deletion", False),
    )
    rho, lines = {}, ["", "rankings, best first (Spearman's rho between the two of each pair):"]
    for road_key, rise_key, lower in pairs:
        road_values, rise_values = column(road_key), column(rise_key)
        rho[f"{road_key} vs {rise_key}"] = spearman(road_values, rise_values)
        for key, values in ((road_key, road_values), (rise_key, rise_values)):
            best = sorted(names, key=lambda n: values[names.index(n)], reverse=not lower)
            lines.append(f"  {key:>22}: {', '.join(best)}")
        lines.append(f"  {'rho':>22}: {rho[f'{road_key} vs {rise_key}']:+.2f}")
    return {"rho": rho, "lines": lines}


def _listed(curve: torch.Tensor | None) -> list[float] | None:
    return None if curve is None else curve.tolist()


# --------------------------------------------------------------------------- main
def _cams(model: nn.Module) -> dict[str, nscam.BaseCAM]:
    return {name: cls(model) for name, cls in nscam.METHODS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=None, help="evaluation canvases")
    parser.add_argument("--quick", action="store_true", help="100 images, 4 epochs")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--insertion",
        choices=("zero", "blur"),
        default="zero",
        help="what insertion starts from (zero: black, the canvas's ink-free value)",
    )
    parser.add_argument(
        "--no-road", dest="road", action="store_false", help="skip ROAD (the slowest measure)"
    )
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    images = args.images or (100 if args.quick else 300)
    epochs = 4 if args.quick else 6
    train_count = 2000 if args.quick else 3000
    threads = args.threads or 1
    command = "python benchmarks/cam_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    timings: dict[str, float] = {}
    torch.set_num_threads(threads)
    conditions = _common.conditions()

    began = time.perf_counter()
    # Drawing is thousands of tiny ops: one thread is faster, and much faster when
    # another process keeps a core busy (torch's threads then wait for each other).
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x_train, y_train, _ = digit_canvases(
        "train", train_count, seed=args.seed, split_seed=args.seed
    ).tensors
    x_eval, y_eval, boxes = digit_canvases(
        "test", images, seed=args.seed + 1, split_seed=args.seed
    ).tensors
    timings["data"] = time.perf_counter() - began
    torch.set_num_threads(threads)

    began = time.perf_counter()
    model = CanvasNet()
    losses = train(model, x_train, y_train, epochs, args.seed)
    timings["training"] = time.perf_counter() - began
    train_acc, eval_acc = accuracy(model, x_train, y_train), accuracy(model, x_eval, y_eval)

    began = time.perf_counter()
    result = nscam.evaluate(
        _cams(model),
        TensorDataset(x_eval, y_eval, boxes),
        steps=args.steps,
        deletion_baseline="zero",
        insertion_baseline=args.insertion,
        seed=args.seed,
        batch_size=50,
        progress=sys.stderr.isatty(),
        road=args.road,
    )
    timings["evaluation"] = time.perf_counter() - began

    gradient = {name: result.methods[name].pointing or 0.0 for name in GRADIENT_METHODS}
    best = max(gradient, key=lambda name: gradient[name])
    met = gradient[best] >= GOAL
    print(f"command: {command}")
    print(
        f"deletion to zero, insertion from {args.insertion}, {args.steps} steps; "
        f"seed {args.seed}; {train_count} training canvases ({epochs} epochs, final loss "
        f"{losses[-1]:.3f}), {images} evaluation canvases of {CANVAS} x {CANVAS} px"
    )
    print(f"accuracy: train {100 * train_acc:.1f}%, evaluation {100 * eval_acc:.1f}%")
    print("time: " + ", ".join(f"{key} {value:.1f} s" for key, value in timings.items()))
    print()
    print(result.table("markdown"))
    print(
        f"best gradient method: {best}, pointing {100 * gradient[best]:.1f}% "
        f"(goal >= {100 * GOAL:.0f}%: {'met' if met else 'NOT met'})"
    )
    agreement = rank_agreement(result) if args.road else {}
    for line in agreement.get("lines", []):
        print(line)
    conditions.finish()
    if args.json:
        payload: dict[str, Any] = {
            "conditions": conditions.as_dict(),
            "command": command,
            "seed": args.seed,
            "images": images,
            "epochs": epochs,
            "train_canvases": train_count,
            "accuracy": {"train": train_acc, "evaluation": eval_acc},
            "timings": timings,
            "netsight": netsight.__version__,
            "torch": torch.__version__,
            "methods": {
                name: {
                    "pointing": scores.pointing,
                    "deletion": scores.deletion,
                    "insertion": scores.insertion,
                    "average_drop": scores.average_drop,
                    "increase": scores.increase,
                    "road_morf": scores.road_morf,
                    "road_lerf": scores.road_lerf,
                    "road_morf_curve": _listed(scores.road_morf_curve),
                    "road_lerf_curve": _listed(scores.road_lerf_curve),
                    "seconds": scores.seconds,
                }
                for name, scores in result.methods.items()
            },
            "rank_agreement": agreement.get("rho"),
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
