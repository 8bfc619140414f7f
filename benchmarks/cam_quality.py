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
to the random and centre baselines. The goal from issue 4: the best gradient methods
point correctly on at least 90 % of the images.

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

CANVAS = 64
DIGIT_SIZES = (20, 28)
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
GOAL = 0.90


# --------------------------------------------------------------------------- data
def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): 8 x 8 in [0, 1], a
    seeded 80/20 split within each class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for cls in range(10):
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test[idx[: round(0.2 * len(idx))]] = True
    return images[~test], labels[~test], images[test], labels[test]


def _draw(canvas: torch.Tensor, segments: torch.Tensor, width: float, value: float) -> None:
    """Draw a stroke, anti-aliased, into ``canvas`` (max-composited): ``segments``
    (S, 4) as (x0, y0, x1, y1), ``width`` in px; only its bounding box is computed."""
    size = canvas.shape[-1]
    points = segments.view(-1, 2)
    lo = (points.amin(0) - width).floor().clamp(0, size).long().tolist()
    hi = (points.amax(0) + width + 1).ceil().clamp(0, size).long().tolist()
    if lo[0] >= hi[0] or lo[1] >= hi[1]:
        return
    ys = torch.arange(lo[1], hi[1], dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(lo[0], hi[0], dtype=torch.float32)[None, None, :] + 0.5
    ax, ay = segments[:, 0, None, None], segments[:, 1, None, None]
    dx, dy = segments[:, 2, None, None] - ax, segments[:, 3, None, None] - ay
    t = ((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp(min=1e-6)
    t = t.clamp(0, 1)
    distance = ((xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2).sqrt().amin(0)
    coverage = (width / 2 + 0.5 - distance).clamp(0, 1) * value
    window = canvas[lo[1] : hi[1], lo[0] : hi[0]]
    torch.maximum(window, coverage, out=window)


def _distractor(generator: torch.Generator, size: int) -> torch.Tensor:
    """Segments (S, 4) of one random line or arc, somewhere on the canvas."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    cx, cy = uniform(4, size - 4), uniform(4, size - 4)
    if float(torch.rand((), generator=generator)) < 0.5:
        length, angle = uniform(8, 22), uniform(0, math.pi)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        return torch.tensor([[cx - dx, cy - dy, cx + dx, cy + dy]])
    radius, start = uniform(4, 9), uniform(0, 2 * math.pi)
    span = uniform(math.pi / 2, 1.4 * math.pi)
    angles = torch.linspace(start, start + span, 13)
    points = torch.stack([cx + radius * angles.cos(), cy + radius * angles.sin()], 1)
    return torch.cat([points[:-1], points[1:]], 1)


def make_canvases(
    digits: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` canvases (count, 1, 64, 64) in [0, 1], their labels and digit boxes
    (x0, y0, x1, y1), half-open pixel coordinates of the digit's ink."""
    images = torch.empty(count, 1, CANVAS, CANVAS)
    boxes = torch.empty(count, 4, dtype=torch.long)
    picks = torch.randint(len(digits), (count,), generator=generator)
    for i, pick in enumerate(picks.tolist()):
        side = int(torch.randint(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1, (), generator=generator))
        digit = F.interpolate(
            digits[pick][None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0].clamp(0, 1)
        x0 = int(torch.randint(0, CANVAS - side + 1, (), generator=generator))
        y0 = int(torch.randint(0, CANVAS - side + 1, (), generator=generator))
        strokes: list[torch.Tensor] = []
        wanted = int(torch.randint(2, 5, (), generator=generator))
        for _ in range(40):  # rejection sampling: strokes stay off the digit's square
            if len(strokes) == wanted:
                break
            segments = _distractor(generator, CANVAS)
            lo, hi = segments.view(-1, 2).amin(0) - 2, segments.view(-1, 2).amax(0) + 2
            overlaps = lo[0] < x0 + side and hi[0] > x0 and lo[1] < y0 + side and hi[1] > y0
            if not overlaps:
                strokes.append(segments)
        canvas = 0.1 + 0.05 * torch.randn(CANVAS, CANVAS, generator=generator)
        for segments in strokes:
            width, value = torch.rand(2, generator=generator).tolist()
            _draw(canvas, segments, 1.5 + width, 0.6 + 0.4 * value)
        window = canvas[y0 : y0 + side, x0 : x0 + side]
        canvas[y0 : y0 + side, x0 : x0 + side] = torch.maximum(window, digit)
        canvas += 0.05 * torch.randn(CANVAS, CANVAS, generator=generator)
        images[i, 0] = canvas.clamp(0, 1)
        ink = (digit > 0.2).nonzero()
        boxes[i] = torch.tensor(
            [
                x0 + int(ink[:, 1].min()),
                y0 + int(ink[:, 0].min()),
                x0 + int(ink[:, 1].max()) + 1,
                y0 + int(ink[:, 0].max()) + 1,
            ]
        )
    return images, labels[picks], boxes


# --------------------------------------------------------------------------- model
class DigitNet(nn.Module):
    """Four 3 x 3 convolutions with BN and ReLU, two 2 x 2 average pools, global average
    pooling and a linear head; the last map is 16 x 16 on a 64 x 64 canvas."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width // 4),
            nn.AvgPool2d(2),
            *block(width // 4, width // 2),
            nn.AvgPool2d(2),
            *block(width // 2, width),
            *block(width, width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


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
    generator = torch.Generator().manual_seed(args.seed)
    train_digits, train_labels, test_digits, test_labels = load_digits_split(args.seed)
    x_train, y_train, _ = make_canvases(train_digits, train_labels, train_count, generator)
    x_eval, y_eval, boxes = make_canvases(test_digits, test_labels, images, generator)
    timings["data"] = time.perf_counter() - began
    torch.set_num_threads(threads)

    began = time.perf_counter()
    model = DigitNet()
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
                    "seconds": scores.seconds,
                }
                for name, scores in result.methods.items()
            },
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
