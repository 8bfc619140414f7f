"""Detection CAM on Faster R-CNN: netsight against pytorch-grad-cam's detection path.

Usage::

    python benchmarks/bench_cam_detection.py                 # 512 x 512, 1 image
    python benchmarks/bench_cam_detection.py --size 320 --ratio 0.25

The model: torchvision's ``fasterrcnn_resnet50_fpn`` with random seeded weights,
3 classes and a score threshold of 0 (so that random weights detect), eval mode,
default transform (the 512 x 512 image is resized to 800 x 800). The target: the
image's most confident detection, as pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
(IoU plus confidence; netsight's ``targets.Box``, the same score).

Variants, each on the same image, model and target:

* ``bare``: the detector's forward under ``torch.no_grad()``;
* **netsight gradcam**: the automatic layer, ``backbone`` (every pyramid level the
  box reads, fused), one forward with a graph after the backbone and one backward;
* **netsight eigencam**: the same layer, no gradient;
* **pgc eigencam**: pytorch-grad-cam's tutorial path, ``target_layers=[model.backbone]``
  with ``fasterrcnn_reshape_transform`` (levels' absolute values resized to the
  coarsest and concatenated);
* **pgc ablationcam**: the tutorial's ``AblationCAM`` with ``AblationLayerFasterRCNN``
  and the box target, ``ratio_channels_to_ablate=--ratio`` of the 1,280 concatenated
  channels (1.0 in the tutorial), ``batch_size=--pgc-batch``.

pytorch-grad-cam's gradient methods cannot take the backbone (a dict of levels has no
gradient hook there), so there is no pgc Grad-CAM row. Memory is each call's peak
resident set above what the process held before it (``_common.reset_peak``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common


def _model() -> torch.nn.Module:
    from torchvision.models import detection

    torch.manual_seed(0)
    model = detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0
    )
    with torch.no_grad():  # an unsaturated softmax, as a trained detector's
        model.roi_heads.box_predictor.cls_score.weight.mul_(1e-2)
        model.roi_heads.box_predictor.cls_score.bias.zero_()
    return model.eval()


def _measure(fn: Any, repeats: int) -> tuple[float, float | None, Any]:
    times, peaks, result = [], [], None
    for _ in range(repeats):
        gc.collect()
        _common.trim()
        before = _common.rss()
        ok = _common.reset_peak()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        if ok:
            peaks.append((_common.peak() - before) / 1e6)
    return statistics.median(times), statistics.median(peaks) if peaks else None, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side (default: 512)")
    parser.add_argument("--repeats", type=int, default=1, help="calls per variant (default: 1)")
    parser.add_argument(
        "--ratio", type=float, default=1.0, help="pgc ablation: share of channels (default: 1.0)"
    )
    parser.add_argument(
        "--pgc-batch", type=int, default=32, help="pgc ablation batch (default: 32)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import numpy as np
    from pytorch_grad_cam import AblationCAM, EigenCAM
    from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

    import netsight
    from netsight.cam import targets

    conditions = _common.conditions(["grad-cam"])
    model = _model()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (out,) = model(x)
    box = targets.Detection(0).bind(out)
    reference = [FasterRCNNBoxScoreTarget([box.labels], box.boxes[None].numpy())]
    rows: list[tuple[str, float, float | None, Any]] = []

    def bare() -> Any:
        with torch.no_grad():
            return model(x)

    def ours(method: type) -> Any:
        return method(model).explain(x, [box]).maps[0]

    def pgc_eigen() -> Any:
        with EigenCAM(model, [model.backbone], reshape_transform=fasterrcnn_reshape_transform) as c:
            return torch.from_numpy(c(x, reference)[0])

    def pgc_ablation() -> Any:
        with AblationCAM(
            model,
            [model.backbone],
            reshape_transform=fasterrcnn_reshape_transform,
            ablation_layer=AblationLayerFasterRCNN(),
            ratio_channels_to_ablate=args.ratio,
            batch_size=args.pgc_batch,
        ) as c:
            found = torch.from_numpy(c(x, reference)[0])
        for param in model.parameters():
            param.grad = None
        return found

    bare()  # warm-up: lazy initialisation is nobody's cost
    for name, fn in (
        ("bare forward", bare),
        ("netsight gradcam", lambda: ours(netsight.GradCAM)),
        ("netsight eigencam", lambda: ours(netsight.EigenCAM)),
        ("pgc eigencam", pgc_eigen),
        ("pgc ablationcam", pgc_ablation),
    ):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        seconds, peak, result = _measure(fn, args.repeats)
        rows.append((name, seconds, peak, result))
    conditions.finish()
    base = rows[0][1]

    def r(a: Any, b: Any) -> str:
        a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        return f"{np.corrcoef(a, b)[0, 1]:.3f}"

    maps = {name: result for name, _, _, result in rows[1:]}
    table = []
    for name, seconds, peak, _ in rows:
        agree = ""
        if name == "netsight eigencam":
            agree = f"r vs pgc eigencam {r(maps[name], maps['pgc eigencam'])}"
        if name == "netsight gradcam":
            agree = f"r vs pgc ablationcam {r(maps[name], maps['pgc ablationcam'])}"
        table.append(
            [name, f"{seconds:.2f}", f"{seconds / base:.1f}", _common.ms(None) if peak is None
             else f"{peak:,.0f}", agree]
        )  # fmt: skip
    print(
        f"fasterrcnn_resnet50_fpn, 1 image {args.size} x {args.size} (resized to 800), "
        f"target: the top box ({box.describe()}); pgc ablation ratio {args.ratio}, "
        f"batch {args.pgc_batch}; median of {args.repeats}"
    )
    print(_common.table(["variant", "s", "/ bare", "peak +MB", "agreement"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
