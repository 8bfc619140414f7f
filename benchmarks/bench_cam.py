"""Time netsight's class activation maps against pytorch-grad-cam, torchcam and a bare
no-grad forward, with peak memory and map agreement.

Usage::

    python benchmarks/bench_cam.py                       # everything (~15 minutes, idle CPU)
    python benchmarks/bench_cam.py --quick               # resnet18 only, fewer runs (~4 min)
    python benchmarks/bench_cam.py --methods gradcam layercam --models resnet18
    python benchmarks/bench_cam.py --methods scorecam --perturbation-repeats 5
    python benchmarks/bench_cam.py --json out.json       # also write the numbers

Three parts, all on the CPU with torchvision models (random weights, seeded, eval):

* **Gradient family** (``gradcam``, ``gradcam++``, ``xgradcam``, ``hirescam``,
  ``layercam``, ``eigengradcam``, ``gradcamelementwise``, ``finercam``, and the ones
  that cost more than a backward through the head: ``shapleycam`` (a second,
  Hessian-vector backward), ``fullgrad``, ``guidedbackprop`` and ``guidedgradcam``
  (a backward to the input)) on each of ``--models`` at batch ``--batch`` x 3 x 224 x
  224, target layer ``layer4`` (FullGrad and guided backpropagation take none), the
  top-1 class of each image. Finer-CAM compares it with its 3 nearest classes
  (pytorch-grad-cam's default); Shapley-CAM explains its ReST score
  (``ClassAgainstRest`` / ``ClassifierOutputReST``), as the paper pairs them: on a
  logit, ``layer4``'s head is linear, the gradient does not depend on the
  activations, and netsight skips the Hessian-vector backward. Variants: ``bare``
  (the model under ``torch.no_grad()``), netsight, pytorch-grad-cam and torchcam
  (where it has the method), each call building the explainer and explaining the
  batch (the anchors register their hooks in their constructors, so they are built
  inside the call and released after it). pytorch-grad-cam's guided backpropagation
  explains one image per call and replaces the model's ReLU modules, so it runs once
  per image on a copy of the model; its Guided Grad-CAM is its GradCAM call times
  that. One warm-up call each, then ``--repeats`` rounds, every variant once per
  round in rotating order.
* **Perturbation methods, exact** (``scorecam``, ``ablationcam``) on resnet18 at batch
  ``--perturbation-batch`` (``layer4``: 512 channels, one extra forward per image and
  channel in the anchors), chunks of 32 inputs in every library (pytorch-grad-cam's
  ``batch_size`` set to 32, torchcam's ``batch_size=32``); torchcam has no
  Ablation-CAM. ``--perturbation-repeats`` rounds in rotating order, no warm-up call
  (one call is hundreds of forwards).
* **SESS** (``sess``, with Grad-CAM on every patch) on resnet18 at batch
  ``--sess-batch`` x 3 x 224 x 224, ``layer4``, ``--sess-scales`` scales (224, 288,
  352, ...: 1 + 4 + 4 + ... windows of 224 px per image), batches of 32 patches,
  against pytorch-grad-cam's ``SESS`` at the same settings; ``--sess-repeats``
  rounds in rotating order after a warm-up call each.
* **netsight's approximation** (``approx=K``: ``--approx-scorecam``,
  ``--approx-ablationcam``) against netsight exact, on resnet18 as above and on the
  demo model: the tutorials' VGG-16 (``Vgg16Net``) with the trained weights of
  ``netsight demo`` (``out/vgg16_digits.pth``; a seeded random model, said so in the
  output, when the file is missing) on ``--demo-images`` test digits, target layer
  ``layer5.8`` (512 channels at 2 x 2).

Equal work: every library gets the same model, input batch, target layer, target
classes and torch threads (one process), and the perturbation methods the same
chunk of 32 masked inputs per forward (netsight's ``batch_size`` passed explicitly).
What differs is each library's own algorithm: netsight stops the gradient family's
graph at the target layer and runs one masked forward per distinct channel map
(identical maps share one; the "images (calls)" column shows the counts).

Every timed call starts after ``gc.collect()`` and ``malloc_trim``; its clock covers
the call only. Memory is measured on every timed call, in-process: the resident set
is trimmed, the kernel's high-water mark (VmHWM) reset through
``/proc/self/clear_refs``, and "peak +MB" is VmHWM after the call minus the resident
set before it (the median over calls), so it counts every page the call touched,
from any allocator, and nothing the process held before. Times are wall-clock
medians; "/ bare" and "/ exact" are ratios of medians, "paired" the median over
rounds of the ratio within a round (steadier when the load changes between rounds).
Map agreement is Pearson r per image of the normalised input-resolution maps (the
worst image), taken from the last timed call. "forwards" counts the images that
went through the model's top-level ``forward`` in one call (a forward pre-hook,
present in every call of the perturbation part).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import _common
import netsight.cam as nscam

GRADIENT = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigengradcam",
    "gradcamelementwise",
    "finercam",
    "shapleycam",
    "fullgrad",
    "guidedbackprop",
    "guidedgradcam",
)
#: Gradient methods that need more than one backward through the head: no 1.1x goal;
#: they are held to pytorch-grad-cam's time instead.
COSTLIER = ("shapleycam", "fullgrad", "guidedbackprop", "guidedgradcam")
#: Their maps' sign is a principal direction's: pytorch-grad-cam's may be the other.
SIGNLESS = ("eigengradcam",)
PERTURBATION = ("scorecam", "ablationcam")
META = ("sess",)
METHODS = GRADIENT + PERTURBATION + META
MODELS = ("resnet18", "resnet50")
PGC = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "finercam": "FinerCAM",
    "shapleycam": "ShapleyCAM",
    "fullgrad": "FullGrad",
    "guidedbackprop": "GuidedBackpropReLUModel",
    "guidedgradcam": "GradCAM",  # times GuidedBackpropReLUModel
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
TORCHCAM = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
}
CHUNK = 32
GOAL_TIME = 1.1  # gradient family: at most this times the bare forward
GOAL_MEMORY = 1.5  # ... and peak memory within this times the bare forward's
GOAL_EXACT = 1.3  # perturbation, exact: at least this much faster than the faster anchor
GOAL_SESS = 1.3  # SESS: at least this much faster than pytorch-grad-cam's, peak memory at most its
GOAL_APPROX = 5.0  # approximation: at least this much faster than exact
GOAL_R_APPROX = 0.98
GOAL_R_EXACT = 0.999
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "out" / "vgg16_digits.pth"


# --------------------------------------------------------------------------- memory and time


class Variant:
    """A timed callable returning ``(B, H, W)`` maps (or logits for ``bare``), with
    an untimed ``cleanup`` after each call."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], torch.Tensor],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.cleanup = cleanup
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.peak: list[int] = []
        self.result: torch.Tensor | None = None

    def call(self, *, record: bool) -> None:
        _common.trim()
        before = _common.rss()
        peak_ok = _common.reset_peak()
        start, cpu = time.perf_counter(), time.process_time()
        result = self.fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = _common.peak() - before
        if self.cleanup is not None:
            self.cleanup()
        if record:
            self.wall.append(wall)
            self.cpu.append(cpu)
            if peak_ok:
                self.peak.append(peak)
            self.result = result.detach()
        del result

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def peak_mb(self) -> float | None:
        return statistics.median(self.peak) / 1e6 if self.peak else None


def _interleaved(variants: list[Variant], repeats: int, *, warmup: bool) -> None:
    if warmup:
        for variant in variants:
            variant.call(record=False)
    for r in range(repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.call(record=True)
            print(f"    round {r + 1}: {variant.name} {variant.wall[-1]:.2f} s", file=sys.stderr)


def _paired(variant: Variant, base: Variant) -> float:
    return statistics.median(v / b for v, b in zip(variant.wall, base.wall, strict=True))


# --------------------------------------------------------------------------- maps
def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    if denominator == 0:
        return 1.0 if float(a.abs().sum() + b.abs().sum()) == 0 else 0.0
    return float((a @ b) / denominator)


def _worst_r(ours: torch.Tensor | None, theirs: torch.Tensor | None) -> float | None:
    if ours is None or theirs is None:
        return None
    if theirs.shape[-2:] != ours.shape[-2:]:
        theirs = F.interpolate(theirs[:, None].float(), size=ours.shape[-2:], mode="bilinear")[:, 0]
    return min(_pearson(ours[i], theirs[i]) for i in range(ours.shape[0]))


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))


# --------------------------------------------------------------------------- the anchors
@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """pytorch-grad-cam calls model.eval() and fills every parameter's .grad."""
    flags = [m.training for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in zip(model.modules(), flags, strict=True):
            module.training = flag


def _clear_grads(model: nn.Module) -> Callable[[], None]:
    def clear() -> None:
        for param in model.parameters():
            param.grad = None

    return clear


def _pgc(
    method: str, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]
) -> Callable[[], torch.Tensor]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    cls = getattr(pgc, PGC[method])
    target = ClassifierOutputReST if method == "shapleycam" else ClassifierOutputTarget
    targets = [target(c) for c in classes]
    if method in ("guidedbackprop", "guidedgradcam"):
        guided = _pgc_guided(model, x, classes)
        if method == "guidedbackprop":
            return lambda: guided().abs().amax(1)

        def guided_gradcam() -> torch.Tensor:
            with _restored(model), cls(model, [module]) as cam:
                mask = torch.from_numpy(cam(x, targets))
            return (mask[:, None] * guided()).abs().amax(1)

        return guided_gradcam

    def run() -> torch.Tensor:
        layers = [] if method == "fullgrad" else [module]
        with _restored(model), cls(model, layers) as cam:
            if method in PERTURBATION:
                cam.batch_size = CHUNK
            # Finer-CAM reads each image's top class and its similar classes itself
            return torch.from_numpy(cam(x, None if method == "finercam" else targets))

    return run


def _pgc_guided(
    model: nn.Module, x: torch.Tensor, classes: list[int]
) -> Callable[[], torch.Tensor]:
    """pytorch-grad-cam's guided backpropagation of the batch, ``(B, C, H, W)``: one
    call per image (it reads the first), on a copy of the model (it swaps the ReLU
    modules for guided ones and puts plain, not in-place, ReLUs back)."""
    import copy

    from pytorch_grad_cam import GuidedBackpropReLUModel

    twin = copy.deepcopy(model)

    def run() -> torch.Tensor:
        found = []
        for i, category in enumerate(classes):
            gb = GuidedBackpropReLUModel(twin, device="cpu")(x[i : i + 1], category)
            found.append(torch.from_numpy(gb.copy()).permute(2, 0, 1))
        for param in twin.parameters():
            param.grad = None
        return torch.stack(found)

    return run


def _torchcam(
    method: str, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]
) -> Callable[[], torch.Tensor]:
    import torchcam.methods as tc

    cls = getattr(tc, TORCHCAM[method])
    extra = {"batch_size": CHUNK} if method in PERTURBATION else {}
    shape = tuple(x.shape[1:])

    def run() -> torch.Tensor:
        with cls(model, layer, input_shape=shape, **extra) as extractor:
            if method in PERTURBATION:
                with torch.no_grad():
                    out = model(x)
            else:
                out = model(x)
            (maps,) = extractor(class_idx=classes, scores=out)
        return maps.detach()

    return run


def _netsight(
    method: str, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int], **options: Any
) -> Callable[[], torch.Tensor]:
    cls = nscam.METHODS[method]
    if method in PERTURBATION:
        options = {"batch_size": CHUNK, **options}  # the anchors' chunk, not a default

    target_layer = layer if cls.uses_layers else None
    targets: Any = classes
    if method == "shapleycam":
        targets = [nscam.targets.ClassAgainstRest(c) for c in classes]

    def run() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nscam.CAMWarning)
            return cls(model, target_layer, **options)(x, targets)

    return run


@contextlib.contextmanager
def _counting(model: nn.Module) -> Iterator[list[int]]:
    """Images through the model's top-level forward (one entry per call)."""
    seen: list[int] = []

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.append(int(args[0].shape[0]))

    handle = model.register_forward_pre_hook(pre)
    try:
        yield seen
    finally:
        handle.remove()


def _counted(
    fn: Callable[[], torch.Tensor], model: nn.Module, store: list[int]
) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with _counting(model) as seen:
            result = fn()
        store[:] = [sum(seen), len(seen), max(seen, default=0)]
        return result

    return run


# --------------------------------------------------------------------------- models
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def _input(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _demo(images: int) -> tuple[nn.Module, torch.Tensor, str]:
    """The demo's VGG-16 with its trained weights when ``netsight demo`` left them."""
    from netsight.zoo import Vgg16Net

    torch.manual_seed(0)
    model = Vgg16Net()
    what = "seeded random weights (out/vgg16_digits.pth not found)"
    if DEMO_WEIGHTS.is_file():
        from netsight.models import load_weights

        load_weights(model, DEMO_WEIGHTS)
        what = f"trained weights ({DEMO_WEIGHTS.relative_to(DEMO_WEIGHTS.parents[1])})"
    try:
        from netsight.datasets import digits

        x = digits("test").tensors[0][:images]
        what += f", {images} test digits"
    except ImportError:
        x = torch.randn(images, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        what += f", {images} random 1 x 32 x 32 inputs (scikit-learn missing)"
    return model.eval(), x, what


def _classes(model: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return [int(c) for c in model(x).argmax(1)]


# --------------------------------------------------------------------------- parts
def bench_gradient(name: str, methods: list[str], batch: int, repeats: int) -> dict[str, Any]:
    model = _model(name)
    x = _input(batch)
    classes = _classes(model, x)
    layer = "layer4"

    def bare() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    variants = [Variant("bare", bare)]
    for method in methods:
        variants.append(Variant(f"netsight {method}", _netsight(method, model, layer, x, classes)))
        variants.append(
            Variant(f"pgc {method}", _pgc(method, model, layer, x, classes), _clear_grads(model))
        )
        if method in TORCHCAM:
            variants.append(
                Variant(f"torchcam {method}", _torchcam(method, model, layer, x, classes))
            )
    _interleaved(variants, repeats, warmup=True)
    by_name = {v.name: v for v in variants}
    base = by_name["bare"]
    rows = []
    for v in variants:
        method = v.name.split(" ", 1)[1] if " " in v.name else None
        reference = by_name.get(f"pgc {method}")
        r = None
        if method is not None and reference is not None and v is not reference:
            r = _worst_r(v.result, reference.result)
        row = _row(v, base, r)
        if reference is not None and v.name.startswith("netsight"):
            row["vs_pgc"] = v.median / reference.median
            row["paired_vs_pgc"] = _paired(v, reference)
        rows.append(row)
    return {"model": name, "batch": batch, "repeats": repeats, "rows": rows}


def bench_sess(batch: int, repeats: int, scales: int) -> dict[str, Any]:
    from pytorch_grad_cam.sess import SESS as ReferenceSESS
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model("resnet18")
    x = _input(batch)
    classes = _classes(model, x)
    targets = [ClassifierOutputTarget(c) for c in classes]

    def reference() -> torch.Tensor:
        with _restored(model):
            sess = ReferenceSESS(model, [model.layer4], num_scales=scales, batch_size=CHUNK)
            try:
                return torch.from_numpy(sess(x, targets))
            finally:
                sess.base_cam.activations_and_grads.release()

    ours = _netsight("sess", model, "layer4", x, classes, num_scales=scales, batch_size=CHUNK)
    variants = [
        Variant("netsight sess", ours),
        Variant("pgc sess", reference, _clear_grads(model)),
    ]
    _interleaved(variants, repeats, warmup=True)
    netsight, pgc = variants
    rows = [
        _row(netsight, pgc, _worst_r(netsight.result, pgc.result)),
        _row(pgc, pgc, None),
    ]
    return {"batch": batch, "repeats": repeats, "scales": scales, "rows": rows}


def print_sess(result: dict[str, Any]) -> None:
    print(
        f"\n## SESS (Grad-CAM per patch): resnet18, batch {result['batch']} x 3 x 224 x 224, "
        f"layer4, {result['scales']} scales (median of {result['repeats']})\n"
    )
    rows = [
        [
            r["variant"],
            _f(r["median_s"], ",.2f"),
            _f(r["ratio"], ".3f"),
            _f(r["paired"], ".3f"),
            _f(r["cpu_s"], ",.2f"),
            _f(r["peak_mb"], ",.0f"),
            _f(r["peak_ratio"], ".2f"),
            _f(r["r"], ".4f"),
        ]
        for r in result["rows"]
    ]
    headers = ["variant", "s", "/ pgc", "paired", "CPU s", "peak +MB", "/ pgc", "r vs pgc"]
    print(_common.table(headers, rows))


def _row(v: Variant, base: Variant, r: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "variant": v.name,
        "median_s": v.median,
        "ratio": v.median / base.median,
        "paired": _paired(v, base),
        "cpu_s": statistics.median(v.cpu),
        "peak_mb": v.peak_mb,
        "peak_ratio": (
            v.peak_mb / base.peak_mb if v.peak_mb is not None and base.peak_mb else None
        ),
        "r": r,
        "wall": v.wall,
        **extra,
    }


def bench_perturbation(
    methods: list[str], batch: int, repeats: int, approx: dict[str, int]
) -> dict[str, Any]:
    model = _model("resnet18")
    x = _input(batch)
    classes = _classes(model, x)
    layer = "layer4"
    variants: list[Variant] = []
    counts: dict[str, list[int]] = {}

    def add(
        name: str, fn: Callable[[], torch.Tensor], cleanup: Callable[[], None] | None = None
    ) -> None:
        counts[name] = []
        variants.append(Variant(name, _counted(fn, model, counts[name]), cleanup))

    for method in methods:
        add(f"netsight {method}", _netsight(method, model, layer, x, classes))
        add(
            f"netsight {method} approx={approx[method]}",
            _netsight(method, model, layer, x, classes, approx=approx[method]),
        )
        add(f"pgc {method}", _pgc(method, model, layer, x, classes), _clear_grads(model))
        if method in TORCHCAM:
            add(f"torchcam {method}", _torchcam(method, model, layer, x, classes))
    _common.trim()
    _interleaved(variants, repeats, warmup=False)
    by_name = {v.name: v for v in variants}
    rows = []
    for method in methods:
        ours = by_name[f"netsight {method}"]
        anchors = [by_name[n] for n in (f"pgc {method}", f"torchcam {method}") if n in by_name]
        fastest = min(anchors, key=lambda v: v.median)
        for v in [ours, by_name[f"netsight {method} approx={approx[method]}"], *anchors]:
            row = _row(v, fastest, _worst_r(ours.result, v.result) if v is not ours else None)
            row["method"] = method
            row["speedup_vs_netsight_exact"] = v.median / ours.median
            row["faster_anchor"] = fastest.name
            row["r_vs_pgc"] = _worst_r(v.result, by_name[f"pgc {method}"].result)
            row["forwards"] = counts[v.name]
            rows.append(row)
    return {"model": "resnet18", "batch": batch, "repeats": repeats, "rows": rows}


#: torchcam's smoothing/integration methods: registry name -> (torchcam class, whether
#: it is a score method taking batch_size, options given to both libraries).
SMOOTHING = {
    "sscam": ("SSCAM", True),
    "iscam": ("ISCAM", True),
    "smoothgradcam++": ("SmoothGradCAMpp", False),
}


def bench_smoothing(
    methods: list[str], batch: int, repeats: int, samples: int, std: float | None, layer: str
) -> dict[str, Any]:
    """netsight against torchcam at equal settings: the same resnet18, input, layer,
    classes, ``num_samples``, ``std`` and chunk of 32 masked inputs (score methods).
    Both draw their noise from the global RNG (seeded alike before each call)."""
    import torchcam.methods as tc

    model = _model("resnet18")
    x = _input(batch)
    classes = _classes(model, x)
    shape = tuple(x.shape[1:])
    variants: list[Variant] = []
    for method in methods:
        cls_name, scored = SMOOTHING[method]
        options: dict[str, Any] = {"num_samples": samples}
        if std is not None and method != "iscam":
            options["std"] = std
        if scored:
            options["batch_size"] = CHUNK

        def ours(method: str = method, options: dict[str, Any] = options) -> torch.Tensor:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", nscam.CAMWarning)
                return nscam.METHODS[method](model, layer, upsample=False, **options)(x, classes)

        def theirs(
            cls_name: str = cls_name, scored: bool = scored, options: dict[str, Any] = options
        ) -> torch.Tensor:
            torch.manual_seed(0)
            cls = getattr(tc, cls_name)
            with cls(model, layer, input_shape=shape, **options) as extractor:
                if scored:
                    with torch.no_grad():
                        out = model(x)
                else:
                    out = model(x)
                (maps,) = extractor(class_idx=classes, scores=out)
            return maps.detach()

        variants.append(Variant(f"netsight {method}", ours))
        variants.append(Variant(f"torchcam {method}", theirs, _clear_grads(model)))
    _interleaved(variants, repeats, warmup=False)
    by_name = {v.name: v for v in variants}
    rows = []
    for method in methods:
        ours_v, theirs_v = by_name[f"netsight {method}"], by_name[f"torchcam {method}"]
        for v in (ours_v, theirs_v):
            row = _row(v, theirs_v, _worst_r(ours_v.result, v.result) if v is not ours_v else None)
            row["method"] = method
            row["faster_anchor"] = theirs_v.name
            rows.append(row)
    return {"model": "resnet18", "batch": batch, "repeats": repeats, "rows": rows}


def bench_demo(
    methods: list[str], images: int, repeats: int, approx: dict[str, int]
) -> dict[str, Any]:
    model, x, what = _demo(images)
    classes = _classes(model, x)
    layer = "layer5.8"
    variants: list[Variant] = []
    counts: dict[str, list[int]] = {}
    for method in methods:
        for options in ({}, {"approx": approx[method]}):
            name = f"netsight {method}" + (f" approx={approx[method]}" if options else "")
            counts[name] = []
            fn = _netsight(method, model, layer, x, classes, **options)
            variants.append(Variant(name, _counted(fn, model, counts[name])))
    _interleaved(variants, repeats, warmup=False)
    by_name = {v.name: v for v in variants}
    rows = []
    for method in methods:
        exact = by_name[f"netsight {method}"]
        for v in (exact, by_name[f"netsight {method} approx={approx[method]}"]):
            row = _row(v, exact, _worst_r(exact.result, v.result) if v is not exact else None)
            row["method"] = method
            row["forwards"] = counts[v.name]
            rows.append(row)
    return {"model": "Vgg16Net (demo)", "weights": what, "repeats": repeats, "rows": rows}


# --------------------------------------------------------------------------- printing
def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_gradient(result: dict[str, Any]) -> None:
    print(
        f"\n## Gradient family: {result['model']}, batch {result['batch']} x 3 x 224 x 224, "
        f"layer4 (median of {result['repeats']})\n"
    )
    rows = [
        [
            r["variant"],
            _f(r["median_s"] * 1000, ",.0f"),
            _f(r["ratio"], ".2f"),
            _f(r["paired"], ".2f"),
            _f(r["cpu_s"] * 1000, ",.0f"),
            _f(r["peak_mb"], ",.0f"),
            _f(r["peak_ratio"], ".2f"),
            _f(r["r"], ".4f"),
        ]
        for r in result["rows"]
    ]
    headers = ["variant", "ms", "/ bare", "paired", "CPU ms", "peak +MB", "/ bare", "r vs pgc"]
    print(_common.table(headers, rows))
    if any(r["variant"].endswith(SIGNLESS) for r in result["rows"]):
        print(f"\n  {', '.join(SIGNLESS)}: the maps agree up to the sign of a principal direction")


def print_perturbation(result: dict[str, Any], title: str, *, against: str) -> None:
    print(f"\n## {title} (median of {result['repeats']})\n")
    rows = []
    for r in result["rows"]:
        forwards = r.get("forwards")
        rows.append(
            [
                r["variant"],
                _f(r["median_s"], ",.2f"),
                _f(r["ratio"], ".3f"),
                _f(r["paired"], ".3f"),
                f"{forwards[0]:,} in {forwards[1]:,}" if forwards else "-",
                _f(r["peak_mb"], ",.0f"),
                _f(r["r"], ".4f"),
                _f(r.get("r_vs_pgc"), ".4f") if "r_vs_pgc" in r else "-",
            ]
        )
    headers = ["variant", "s", f"/ {against}", "paired", "images (calls)", "peak +MB"]
    headers += ["r vs exact", "r vs pgc"]
    print(_common.table(headers, rows))


def print_verdicts(parts: dict[str, Any], approx: dict[str, int]) -> None:
    print("\n## Goals\n")
    for result in parts.get("gradient", []):
        for r in result["rows"]:
            if not r["variant"].startswith("netsight"):
                continue
            method = r["variant"].split(" ", 1)[1]
            measured = (
                f"  {result['model']} {r['variant']}: {r['ratio']:.2f}x bare (paired "
                f"{r['paired']:.2f}), peak {_f(r['peak_ratio'], '.2f')}x bare"
            )
            if method in COSTLIER:
                ok = r["vs_pgc"] <= 1.0
                print(
                    f"{measured}, {r['vs_pgc']:.2f}x pgc (paired {r['paired_vs_pgc']:.2f}); "
                    f"goal: no slower than pgc: {'met' if ok else 'NOT met'}"
                )
            else:
                ok = r["ratio"] <= GOAL_TIME and (r["peak_ratio"] or 0) <= GOAL_MEMORY
                print(f"{measured}: {'met' if ok else 'NOT met'}")
    pert = parts.get("perturbation")
    if pert:
        by = {r["variant"]: r for r in pert["rows"]}
        for method in PERTURBATION:
            ours = by.get(f"netsight {method}")
            if ours is None:
                continue
            speedup = 1 / ours["ratio"]
            paired = 1 / ours["paired"]
            r = ours["r_vs_pgc"]
            ok = speedup >= GOAL_EXACT and r is not None and r >= GOAL_R_EXACT
            print(
                f"  resnet18 {method} exact: {speedup:.2f}x faster than {ours['faster_anchor']} "
                f"(paired {paired:.2f}x), r vs pgc {_f(r, '.4f')}: {'met' if ok else 'NOT met'}"
            )
            fast = by[f"netsight {method} approx={approx[method]}"]
            gain = 1 / fast["speedup_vs_netsight_exact"]
            ok = gain >= GOAL_APPROX and fast["r"] >= GOAL_R_APPROX
            print(
                f"  resnet18 {method} approx={approx[method]}: {gain:.1f}x faster than exact, r "
                f"{fast['r']:.4f}: {'met' if ok else 'NOT met'}"
            )
    sess = parts.get("sess")
    if sess:
        ours = sess["rows"][0]
        speedup = 1 / ours["ratio"]
        ok = speedup >= GOAL_SESS and (ours["peak_ratio"] or 0) <= 1.0
        print(
            f"  resnet18 sess: {speedup:.2f}x faster than pytorch-grad-cam (paired "
            f"{1 / ours['paired']:.2f}x), peak {_f(ours['peak_ratio'], '.2f')}x its, r vs pgc "
            f"{_f(ours['r'], '.4f')}: {'met' if ok else 'NOT met'}"
        )
    demo = parts.get("demo")
    if demo:
        by = {r["variant"]: r for r in demo["rows"]}
        for method in PERTURBATION:
            fast = by.get(f"netsight {method} approx={approx[method]}")
            if fast is None:
                continue
            gain = 1 / fast["ratio"]
            ok = gain >= GOAL_APPROX and fast["r"] >= GOAL_R_APPROX
            print(
                f"  demo {method} approx={approx[method]}: {gain:.1f}x faster than exact (paired "
                f"{1 / fast['paired']:.1f}x), r {fast['r']:.4f}: {'met' if ok else 'NOT met'}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        metavar="NAME",
        help="torchvision models for the gradient family (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        metavar="METHOD",
        help=f"methods (default: all of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds for the gradient family (default 5; --quick 3)",
    )
    parser.add_argument(
        "--perturbation-repeats",
        type=int,
        default=None,
        help="rounds for Score-CAM / Ablation-CAM (default 3; --quick 1)",
    )
    parser.add_argument("--batch", type=int, default=8, help="gradient family batch (default 8)")
    parser.add_argument(
        "--perturbation-batch",
        type=int,
        default=None,
        help="resnet18 batch for Score-CAM / Ablation-CAM (default 2; --quick 1)",
    )
    parser.add_argument(
        "--demo-images",
        type=int,
        default=None,
        help="test digits for the demo model (default 8; --quick 4)",
    )
    parser.add_argument(
        "--approx-scorecam", type=int, default=40, help="ScoreCAM(approx=K) (default 40)"
    )
    parser.add_argument(
        "--approx-ablationcam", type=int, default=16, help="AblationCAM(approx=K) (default 16)"
    )
    parser.add_argument("--sess-batch", type=int, default=2, help="SESS batch (default 2)")
    parser.add_argument(
        "--sess-scales", type=int, default=None, help="SESS scales (default 3; --quick 2)"
    )
    parser.add_argument(
        "--sess-repeats", type=int, default=None, help="SESS rounds (default 3; --quick 1)"
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model")
    parser.add_argument(
        "--smoothing",
        nargs="+",
        default=[],
        choices=list(SMOOTHING),
        metavar="METHOD",
        help="also time SS-CAM / IS-CAM / Smooth Grad-CAM++ against torchcam's",
    )
    parser.add_argument(
        "--smoothing-samples", type=int, default=2, help="num_samples for --smoothing (default 2)"
    )
    parser.add_argument("--smoothing-std", type=float, default=None, help="std for --smoothing")
    parser.add_argument(
        "--smoothing-layer", default="layer4", help="target layer for --smoothing (default layer4)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="resnet18 only, 3 rounds, perturbation at batch 1 in one round",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.quick and args.models == list(MODELS):
        args.models = ["resnet18"]
    repeats = args.repeats or (3 if args.quick else 5)
    p_repeats = args.perturbation_repeats or (1 if args.quick else 3)
    p_batch = args.perturbation_batch or (1 if args.quick else 2)
    demo_images = args.demo_images or (4 if args.quick else 8)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    approx = {"scorecam": args.approx_scorecam, "ablationcam": args.approx_ablationcam}
    gradient = [m for m in args.methods if m in GRADIENT]
    perturbation = [m for m in args.methods if m in PERTURBATION]

    run = _common.conditions(["grad-cam", "torchcam"])
    print("CPU, eval, random seeded weights")
    report: dict[str, Any] = {"args": vars(args)}
    if gradient:
        report["gradient"] = []
        for name in args.models:
            print(f"\n{name}: gradient family", file=sys.stderr)
            result = bench_gradient(name, gradient, args.batch, repeats)
            report["gradient"].append(result)
            print_gradient(result)
    if perturbation:
        print("\nresnet18: perturbation methods", file=sys.stderr)
        result = bench_perturbation(perturbation, p_batch, p_repeats, approx)
        report["perturbation"] = result
        print_perturbation(
            result,
            f"Perturbation methods: resnet18, batch {p_batch} x 3 x 224 x 224, layer4 "
            f"(512 channels), chunks of {CHUNK}",
            against="faster anchor",
        )
        if not args.no_demo:
            print("\ndemo model: perturbation methods", file=sys.stderr)
            demo = bench_demo(perturbation, demo_images, p_repeats, approx)
            report["demo"] = demo
            print_perturbation(
                demo,
                f"Approximation on the demo model: Vgg16Net, {demo['weights']}, layer5.8 "
                f"(512 channels at 2 x 2)",
                against="exact",
            )
    if args.smoothing:
        print("\nresnet18: smoothing methods", file=sys.stderr)
        result = bench_smoothing(
            args.smoothing,
            p_batch,
            p_repeats,
            args.smoothing_samples,
            args.smoothing_std,
            args.smoothing_layer,
        )
        report["smoothing"] = result
        print_perturbation(
            result,
            f"SS-CAM / IS-CAM / Smooth Grad-CAM++: resnet18, batch {p_batch} x 3 x 224 x 224, "
            f"{args.smoothing_layer}, num_samples {args.smoothing_samples}, chunks of {CHUNK}",
            against="torchcam",
        )
    if "sess" in args.methods:
        print("\nresnet18: SESS", file=sys.stderr)
        sess_scales = args.sess_scales or (2 if args.quick else 3)
        sess_repeats = args.sess_repeats or (1 if args.quick else 3)
        report["sess"] = bench_sess(args.sess_batch, sess_repeats, sess_scales)
        print_sess(report["sess"])
    print_verdicts(report, approx)
    print(
        "\n  ms / s: median wall time of one call; / bare, / faster anchor, / exact: ratio of "
        "medians;\n  paired: median over rounds of the same ratio within a round; peak +MB: "
        "VmHWM during the call\n  above the resident set before it (median); r: Pearson r of "
        "the maps, worst image;\n  images (calls): images through the model's forward in one "
        "call, and how many forward calls"
    )
    run.finish()
    report["conditions"] = run.as_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
