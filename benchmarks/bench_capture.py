"""Time netsight.capture on every Conv2d output against a bare forward, hand-written hooks
and torchvision's create_feature_extractor.

Usage::

    python benchmarks/bench_capture.py                  # vgg16, resnet50, batch 8 (~8 minutes)
    python benchmarks/bench_capture.py --quick          # batch 2, 5 repeats (~2 minutes)
    python benchmarks/bench_capture.py --json out.json  # also write the numbers

For each torchvision model (random weights, seeded, eval mode, a batch of 3 x 224 x 224
under torch.no_grad(), on the CPU) it times, interleaved in rotating order after one
warm-up call each, the median of --repeats runs of:

* ``bare``: the forward alone;
* ``netsight``: ``netsight.capture(model, layers=nn.Conv2d)`` around the forward, tensors
  left on their device;
* ``netsight (clone)``: the same with netsight's copy-on-write turned off, every output
  ``clone()``d in the hook (what netsight did before);
* ``hooks``: the tutorials' idiom, a forward hook per conv storing ``output`` in a dict
  (registered before and removed after the forward, like netsight's);
* ``hooks + clone``: the same storing ``output.detach().clone()``;
* ``feature_extractor``: the module from ``create_feature_extractor(model, return_nodes=
  [every conv])``, built once beforehand (its build time is reported apart);
* ``clone only``: ``clone()`` of the conv outputs of one forward, without the forward:
  the cost of the copies themselves, the floor of every hook that clones.

Every timed call starts after ``gc.collect()``; what a call returns (the captured tensors)
is freed after its clock stops. Then, untimed, each tool runs once more to check what it
captured against the true conv outputs (from a copy of the model without in-place ops)
and to measure memory: the resident memory the result holds once the forward is over
(after ``malloc_trim``), the peak during the call (VmHWM, reset through
``/proc/self/clear_refs``), both above the process before the call, next to the bytes of
the captured tensors (numel x element_size). Every tool gets the same model, batch,
layers and torch threads (one process). Times are wall-clock medians; the run's
conditions (CPU, threads, load average at the start and end, versions) are printed
first and last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import _common
import netsight

# The module (the package's `netsight.capture` attribute is the function).
capture_module = importlib.import_module("netsight.capture")

MODELS = ("vgg16", "resnet50")
TOOLS = (
    "bare",
    "netsight",
    "netsight (clone)",
    "hooks",
    "hooks + clone",
    "feature_extractor",
    "clone only",
)
GOAL = 1.15  # netsight at most this times the bare forward


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one call."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    del result  # freeing the captured tensors is not part of capturing them
    return elapsed, cpu


def _interleaved(
    tools: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of every timed call per tool, in rounds: one warm-up call
    each, then ``repeats`` rounds, each calling every tool once in rotating order."""
    for fn in tools.values():
        fn()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    names = list(tools)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_timed(tools[name]))
    return samples


def _summary(samples: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per tool: median wall and CPU seconds, and the median over rounds of the tool's
    wall time over the bare forward's in the same round (less sensitive to load that
    changes between rounds than the ratio of the medians)."""
    bare = samples["bare"]
    return {
        name: {
            "wall": statistics.median(w for w, _ in values),
            "cpu": statistics.median(c for _, c in values),
            "paired": statistics.median(w / b for (w, _), (b, _) in zip(values, bare, strict=True)),
        }
        for name, values in samples.items()
    }


# --------------------------------------------------------------------------- the tools


def _conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@contextlib.contextmanager
def _netsight_clone() -> Iterator[None]:
    """netsight with copy-on-write off: every captured output is clone()d."""
    saved = capture_module._LAZY_CLONE
    capture_module._LAZY_CLONE = None
    try:
        yield
    finally:
        capture_module._LAZY_CLONE = saved


def _tools(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, Callable[[], Any]], float]:
    """The timed callables, each returning what it captured ({conv name: tensor}, a
    Capture, a list of clones; the logits for bare), and the seconds
    create_feature_extractor took to build its module."""
    names = _conv_names(model)
    modules = dict(model.named_modules())

    def bare() -> Any:
        with torch.no_grad():
            return model(x)

    def with_netsight() -> Any:
        with torch.no_grad(), netsight.capture(model, layers=nn.Conv2d) as cap:
            model(x)
        return cap

    def with_netsight_clone() -> Any:
        with _netsight_clone():
            return with_netsight()

    def hooks(clone: bool) -> Callable[[], Any]:
        def run() -> Any:
            features: dict[str, torch.Tensor] = {}

            def save(name: str) -> Callable[..., None]:
                def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                    features[name] = output.detach().clone() if clone else output

                return hook

            handles = [modules[n].register_forward_hook(save(n)) for n in names]
            try:
                with torch.no_grad():
                    model(x)
            finally:
                for handle in handles:
                    handle.remove()
            return features

        return run

    start = time.perf_counter()
    extractor = create_feature_extractor(model, return_nodes=names)
    build_s = time.perf_counter() - start

    def feature_extractor() -> Any:
        with torch.no_grad():
            return extractor(x)

    held = list(hooks(clone=True)().values())

    def clone_only() -> Any:
        return [t.clone() for t in held]

    tools = {
        "bare": bare,
        "netsight": with_netsight,
        "netsight (clone)": with_netsight_clone,
        "hooks": hooks(clone=False),
        "hooks + clone": hooks(clone=True),
        "feature_extractor": feature_extractor,
        "clone only": clone_only,
    }
    return tools, build_s


def _reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The true conv outputs: a copy of the model whose ReLUs are not in place."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    modules = dict(twin.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(
            lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().clone())
        )
        for n in _conv_names(twin)
    ]
    with torch.no_grad():
        twin(x)
    for handle in handles:
        handle.remove()
    return outputs


# --------------------------------------------------------------------------- memory


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct buffers behind the tensors (what keeping them keeps)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def _check(fn: Callable[[], Any], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One untimed run: memory held and peak, and whether the conv outputs are intact."""
    _common.trim()
    before = _common.rss()
    peak_ok = _common.reset_peak()
    result = fn()
    peak = _common.peak() - before
    _common.trim()
    held = _common.rss() - before
    row: dict[str, Any] = {"held_bytes": held, "peak_bytes": peak if peak_ok else None}
    if isinstance(result, netsight.Capture):
        row["stored_bytes"] = result.stored_bytes  # netsight's own count
        result = result.activations
    if isinstance(result, dict):  # not bare (logits) or clone only (a list)
        tensors = list(result.values())
        row["captured_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
        row["storage_bytes"] = _storage_bytes(tensors)
        row["layers"] = len(reference)
        row["intact"] = sum(
            1 for n, ref in reference.items() if n in result and torch.equal(result[n], ref)
        )
        row["negatives"] = sum(1 for t in tensors if bool((t < 0).any()))
    del result
    _common.trim()
    return row


# --------------------------------------------------------------------------- running


def bench_model(name: str, batch: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    tools, build_s = _tools(model, x)
    samples = _interleaved(tools, repeats)
    print(f"  {name}: timed", file=sys.stderr, flush=True)
    reference = _reference(model, x)
    checks = {tool: _check(fn, reference) for tool, fn in tools.items()}
    print(f"  {name}: checked", file=sys.stderr, flush=True)
    return {
        "model": name,
        "batch": batch,
        "convs": len(reference),
        "captured_bytes": sum(t.numel() * t.element_size() for t in reference.values()),
        "extractor_build_s": build_s,
        "seconds": _summary(samples),
        "samples": samples,
        "checks": checks,
    }


def _mb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e6:,.1f}"


def print_model(r: dict[str, Any]) -> None:
    seconds = r["seconds"]
    bare = seconds["bare"]["wall"]
    rows = []
    for tool in TOOLS:
        check = r["checks"][tool]
        intact = "-"
        if "intact" in check:
            intact = f"{check['intact']}/{check['layers']}"
            intact += f" ({check['negatives']} with < 0)"
        rows.append(
            [
                tool,
                _common.ms(seconds[tool]["wall"]),
                f"{seconds[tool]['wall'] / bare:.2f}",
                f"{seconds[tool]['paired']:.2f}",
                _common.ms(seconds[tool]["cpu"]),
                intact,
                _mb(check.get("captured_bytes")),
                _mb(check.get("storage_bytes")),
                _mb(check["held_bytes"]),
                _mb(check["peak_bytes"]),
            ]
        )
    headers = ["tool", "median ms", "/ bare", "paired", "CPU ms", "convs intact"]
    headers += ["captured MB", "buffers MB", "RSS held MB", "peak +MB"]
    print(
        f"\n## {r['model']}: {r['convs']} Conv2d outputs, batch {r['batch']} x 3 x 224 x 224, "
        f"{r['captured_bytes'] / 1e6:,.1f} MB\n"
    )
    print(_common.table(headers, rows))
    ratio = seconds["netsight"]["wall"] / bare
    floor = seconds["clone only"]["wall"] / bare
    print(
        f"  netsight / bare = {ratio:.2f} (paired {seconds['netsight']['paired']:.2f}; goal <= "
        f"{GOAL}); clones alone = {floor:.2f} of the bare forward; create_feature_extractor "
        f"built in {_common.ms(r['extractor_build_s'])} ms (not timed above)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per tool (median)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 5 repeats")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own, one per core)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        metavar="NAME",
        help="torchvision models (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    repeats = 5 if args.quick and args.repeats == 7 else args.repeats
    batch = args.batch if args.batch is not None else (2 if args.quick else 8)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    run = _common.conditions()
    print(f"CPU, eval, torch.no_grad(); medians of {repeats} runs")
    report: dict[str, Any] = {"repeats": repeats, "models": []}
    for name in args.models:
        print(f"\n{name}, batch {batch}", file=sys.stderr)
        result = bench_model(name, batch, repeats)
        report["models"].append(result)
        print_model(result)
    print(
        "\n  / bare: median over the bare forward's median; paired: median over the rounds of "
        "the\n  call's time over the bare forward's in the same round; CPU: process CPU time "
        "(both threads);\n  convs intact: captured conv outputs equal to the true ones (a "
        "copy of the model without\n  in-place ReLU), and how many of them have negative "
        "values; buffers: bytes of the distinct\n  storages behind the captured tensors; RSS "
        "held: resident memory the result keeps after\n  the forward; peak: during the call; "
        "both above the process before the call"
    )
    run.finish()
    report["conditions"] = run.as_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
