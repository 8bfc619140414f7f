"""Time netsight.summary against torchinfo.summary and a bare forward pass.

Usage::

    python benchmarks/bench_summary.py                 # full run (~4 minutes on 2 cores)
    python benchmarks/bench_summary.py --quick         # smaller sizes, 5 repeats (~1 minute)
    python benchmarks/bench_summary.py --json out.json
    python benchmarks/bench_summary.py --only peers   # counts and time against the peers

Four parts, each printed as a table:

1. torchvision resnet50, vit_b_16, efficientnet_b0, mobilenet_v3_small (random
   weights, eval mode, batch 1, 224 x 224): netsight.summary,
   torchinfo.summary(verbose=0) and a bare forward under torch.no_grad(),
   interleaved, median of --repeats runs after one warm-up run of each. Also the
   first call of each tool in a fresh process (one-time costs included: lazy
   initialisation inside torch, and netsight's once-per-process checks of its
   flop formulas and meta-kernel shortcuts).
2. Scaling: netsight.zoo.wide_model with 1,000 to 8,000 leaf modules.
3. Nesting: netsight.zoo.NestedChain at depths 10, 20, 22 and 50; torchinfo runs
   in a subprocess per depth with a time limit and is reported as "timeout" when
   it does not finish.
4. The LLaMA-7B-shaped netsight.zoo.LlamaDecoder on the meta device, 2,048
   tokens, in a fresh subprocess: wall time and peak resident memory above the
   process after ``import torch, torchvision``.

Equal work: both tools get the same model, input and table depth (3 in parts 1-2,
1,000 in part 3, 2 in part 4) and run in the same process with the same torch
threads (``--threads``), except the first calls and part 4, one fresh process each.
netsight traces on the meta device where torchinfo runs a real forward: that is
each tool's design, and both report the same shapes and parameter counts.

Every timed call starts after ``gc.collect()`` so that no tool pays for garbage
left by another. Times are wall-clock medians; the run's conditions (CPU, threads,
load average at the start and end, versions) are printed first and last: a loaded
machine inflates torchinfo's and the bare forward's real passes far more than
netsight's meta pass, so compare figures only with their load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import torch
import torchinfo
import torchvision
from torch import nn

import _common
import netsight
from netsight.zoo import NestedChain, wide_model

NESTING_TIMEOUT_S = 20.0  # one torchinfo call at one depth
NESTING_BUDGET_S = 60.0  # all torchinfo calls at one depth
LLAMA_TIMEOUT_S = 300.0
# 32 x [2048 x (4 x 4096^2 + 3 x 4096 x 11008) + 2 x 32 x 2048^2 x 128] (projections and
# attention per layer) + 2048 x 4096 x 32000 (the head); tests/test_trace.py checks it too.
LLAMA_MULT_ADDS = 14_630_806_093_824


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(tools: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per tool; one warm-up call each, then rounds in rotating order."""
    for fn in tools.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_timed(tools[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def _bare(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}" if a / b >= 0.1 else f"{a / b:.2g}"


# --------------------------------------------------------------------------- 1. models


MODELS = ("resnet50", "vit_b_16", "efficientnet_b0", "mobilenet_v3_small")
FIRST_CALL_TIMEOUT_S = 300.0

_FIRST_CALL = textwrap.dedent(
    """
    import sys, time
    import torch, torchvision
    tool, name = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    if tool == "netsight":
        import netsight
        run = lambda: netsight.summary(model, input_size=(1, 3, 224, 224), depth=3)
    else:
        import torchinfo
        run = lambda: torchinfo.summary(model, input_size=(1, 3, 224, 224), depth=3,
                                        verbose=0)
    start = time.perf_counter()
    run()
    print(time.perf_counter() - start)
    """
)


def _first_call(tool: str, name: str) -> float | None:
    """Seconds for the first call of ``tool`` in a fresh process (after imports)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _FIRST_CALL, tool, name],
            capture_output=True,
            text=True,
            timeout=FIRST_CALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None
    lines = proc.stdout.strip().splitlines()
    return float(lines[-1]) if proc.returncode == 0 and lines else None


def bench_models(names: list[str], repeats: int) -> list[dict[str, Any]]:
    results = []
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        size = (1, 3, 224, 224)
        x = torch.randn(size)
        execution = netsight.summary(model, input_size=size).trace.execution
        medians = _interleaved(
            {
                "netsight": lambda m=model, s=size: netsight.summary(m, input_size=s, depth=3),
                "torchinfo": lambda m=model, s=size: torchinfo.summary(
                    m, input_size=s, depth=3, verbose=0
                ),
                "bare": _bare(model, x),
            },
            repeats,
        )
        first = {f"{tool}_first": _first_call(tool, name) for tool in ("netsight", "torchinfo")}
        results.append({"model": name, "netsight_execution": execution, **medians, **first})
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return results


def print_models(results: list[dict[str, Any]]) -> None:
    rows = [
        [
            r["model"],
            r["netsight_execution"],
            _common.ms(r["bare"]),
            _common.ms(r["netsight"]),
            _common.ms(r["torchinfo"]),
            _ratio(r["netsight"], r["torchinfo"]),
            _ratio(r["netsight"], r["bare"]),
            _common.ms(r.get("netsight_first")),
            _common.ms(r.get("torchinfo_first")),
            _ratio(r.get("netsight_first"), r.get("torchinfo_first")),
        ]
        for r in results
    ]
    headers = ["model", "netsight ran", "bare ms", "netsight ms", "torchinfo ms"]
    headers += ["netsight/torchinfo", "netsight/bare"]
    headers += ["netsight 1st ms", "torchinfo 1st ms", "1st: netsight/torchinfo"]
    print(_common.table(headers, rows))
    print(
        "  (1st: the first call in a fresh process, after the imports and building the model;"
        " the other columns are medians after one warm-up call)"
    )


# --------------------------------------------------------------------------- 2. scaling


def bench_scaling(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    results = []
    for leaves in sizes:
        model = wide_model(leaves).eval()
        x = torch.randn(1, 8)
        tools: dict[str, Callable[[], object]] = {
            "netsight": lambda m=model: netsight.summary(m, input_size=(1, 8), depth=3),
            "bare": _bare(model, x),
        }
        if leaves <= 8000:
            tools["torchinfo"] = lambda m=model: torchinfo.summary(
                m, input_size=(1, 8), depth=3, verbose=0
            )
        medians = _interleaved(tools, repeats)
        results.append({"leaves": leaves, "torchinfo": None, **medians})
        print(f"  wide_model({leaves}): done", file=sys.stderr, flush=True)
    return results


def print_scaling(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        modules = r["leaves"] + 1  # the leaves and their nn.Sequential
        rows.append(
            [
                f"{r['leaves']:,}",
                f"{modules:,}",
                _common.ms(r["bare"]),
                _common.ms(r["netsight"]),
                f"{r['netsight'] / modules * 1e6:.0f}",
                _common.ms(r["torchinfo"]),
                _ratio(r["netsight"], r["torchinfo"]),
            ]
        )
    headers = ["leaves", "modules", "bare ms", "netsight ms", "netsight us/module", "torchinfo ms"]
    headers += ["netsight/torchinfo"]
    print(_common.table(headers, rows))


# --------------------------------------------------------------------------- 3. nesting

_TORCHINFO_NESTED = textwrap.dedent(
    """
    import sys, time
    import torch, torchinfo
    from netsight.zoo import NestedChain
    model = NestedChain(int(sys.argv[1]))
    print("ready", flush=True)
    for _ in range(int(sys.argv[2]) + 1):  # a warm-up call, then the timed ones
        start = time.perf_counter()
        torchinfo.summary(model, input_size=(1, 8), verbose=0, depth=1000)
        print(time.perf_counter() - start, flush=True)
    """
)


def _torchinfo_nested(depth: int, repeats: int) -> tuple[float | str, int]:
    """(median seconds, calls timed), or ("timeout", 0) when the first call takes
    longer than NESTING_TIMEOUT_S. Calls are repeated while each finishes within
    the limit and the whole run within NESTING_BUDGET_S."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _TORCHINFO_NESTED, str(depth), str(repeats)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    times: list[float] = []
    try:
        proc.stdout.readline()  # "ready": imports done, the clock starts now
        budget = time.monotonic() + NESTING_BUDGET_S
        while len(times) < repeats + 1:
            limit = min(NESTING_TIMEOUT_S, budget - time.monotonic())
            ready, _, _ = select.select([proc.stdout], [], [], max(limit, 0.0))
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                break
            times.append(float(line))
    finally:
        proc.kill()
        _, err = proc.communicate()
    if not times:
        if proc.returncode not in (0, -signal.SIGKILL):
            return "error: " + (err.strip().splitlines() or ["?"])[-1], 0
        return "timeout", 0
    timed = times[1:] or times  # drop the warm-up call when there is more than one
    return statistics.median(timed), len(timed)


def bench_nesting(depths: list[int], repeats: int) -> list[dict[str, Any]]:
    results = []
    for depth in depths:
        model = NestedChain(depth)
        x = torch.randn(1, 8)
        medians = _interleaved(
            {
                "netsight": lambda m=model: netsight.summary(m, input_size=(1, 8), depth=1000),
                "bare": _bare(model, x),
            },
            repeats,
        )
        torchinfo_s, torchinfo_runs = _torchinfo_nested(depth, repeats)
        results.append(
            {"depth": depth, **medians, "torchinfo": torchinfo_s, "torchinfo_runs": torchinfo_runs}
        )
        print(f"  NestedChain({depth}): done", file=sys.stderr, flush=True)
    return results


def print_nesting(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        ti = r["torchinfo"]
        ti_text = _common.ms(ti) if isinstance(ti, float) else ti
        ratio = _ratio(r["netsight"], ti) if isinstance(ti, float) else "-"
        runs = str(r["torchinfo_runs"])
        rows.append(
            [
                str(r["depth"]),
                _common.ms(r["bare"]),
                _common.ms(r["netsight"]),
                ti_text,
                runs,
                ratio,
            ]
        )
    headers = ["depth", "bare ms", "netsight ms", "torchinfo ms", "torchinfo runs"]
    print(_common.table([*headers, "netsight/torchinfo"], rows))


# --------------------------------------------------------------------------- 4. LLaMA

_LLAMA = textwrap.dedent(
    """
    import json, resource, sys, time

    def hwm_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    import torch, torchvision
    reset_ok = reset_peak()
    base = hwm_kb()
    tool = sys.argv[1]
    from netsight.zoo import LlamaDecoder
    start = time.perf_counter()
    with torch.device("meta"):
        model = LlamaDecoder()
    built = time.perf_counter() - start
    after_build = hwm_kb()
    result = {"tool": tool, "build_s": built, "peak_reset": reset_ok}
    start = time.perf_counter()
    try:
        if tool == "netsight":
            import netsight
            s = netsight.summary(model, input_size=(1, 2048), dtypes=[torch.long], depth=2)
            result.update(total_params=s.total_params, total_mult_adds=s.total_mult_adds,
                          execution=s.trace.execution)
        else:
            import torchinfo
            s = torchinfo.summary(model, input_size=(1, 2048), dtypes=[torch.long], depth=2,
                                  device="meta", verbose=0)
            result.update(total_params=s.total_params, total_mult_adds=s.total_mult_adds)
        result["ok"] = True
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    result["summary_s"] = time.perf_counter() - start
    result["build_peak_mb"] = (after_build - base) / 1024
    result["peak_mb"] = (hwm_kb() - base) / 1024
    print(json.dumps(result))
    """
)


def bench_llama() -> list[dict[str, Any]]:
    results = []
    for tool in ("netsight", "torchinfo"):
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _LLAMA, tool],
                capture_output=True,
                text=True,
                timeout=LLAMA_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            results.append({"tool": tool, "ok": False, "error": "timeout"})
            continue
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            error = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"tool": tool, "ok": False, "error": f"crashed: {error}"})
        else:
            results.append(json.loads(lines[-1]))
        print(f"  LLaMA-7B ({tool}): done", file=sys.stderr, flush=True)
    return results


def print_llama(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        if r.get("ok"):
            outcome = f"{r['total_params']:,} params, {r['total_mult_adds']:,} mult-adds"
        else:
            outcome = r.get("error", "failed")
        rows.append(
            [
                r["tool"],
                _common.ms(r.get("summary_s")),
                f"{r['peak_mb']:.1f}" if "peak_mb" in r else "-",
                _common.ms(r.get("build_s")),
                f"{r['build_peak_mb']:.1f}" if "build_peak_mb" in r else "-",
                outcome,
            ]
        )
    headers = ["tool", "summary ms", "peak RSS +MB", "build ms", "build +MB", "result"]
    print(_common.table(headers, rows))
    counts = {r["tool"]: r.get("total_mult_adds") for r in results if r.get("ok")}
    if len(counts) == 2 and len(set(counts.values())) == 2:
        print(
            "  mult-adds differ: "
            + ", ".join(f"{tool} {value:,}" for tool, value in counts.items())
            + f" (expected {LLAMA_MULT_ADDS:,})"
        )
    print(
        "  (+MB: peak resident memory above the process after `import torch, torchvision`;"
        " build: constructing the model on the meta device; peak includes the build)"
    )


# --------------------------------------------------------------------------- 5. peers

#: The models of the peer comparison: name -> (builder, reference source).
PEER_MODELS = ("resnet50", "vit_b_16", "swin_t", "bert-base", "gpt2")
PEER_TOOLS = ("netsight", "torchinfo", "fvcore", "ptflops", "ptflops-aten", "thop", "calflops")
PEER_TOKENS = 128


def _bert_reference(c: Any, tokens: int) -> int:
    """Mult-adds of BertModel at ``tokens`` tokens, batch 1, from its config: per
    layer the Q, K, V and output projections (4 d^2) and the feed-forward (2 d f)
    for every token, plus Q K^T and A V (2 T^2 d); then the pooler on one token."""
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    per_layer = tokens * (4 * d * d + 2 * d * f) + 2 * tokens * tokens * d
    return layers * per_layer + d * d


def _gpt2_reference(c: Any, tokens: int) -> int:
    """Mult-adds of GPT2LMHeadModel: as BERT's layers (feed-forward 4 d), no pooler,
    and the tied language-model head (d x vocabulary) on every token."""
    d, layers = c.n_embd, c.n_layer
    f = c.n_inner or 4 * d
    per_layer = tokens * (4 * d * d + 2 * d * f) + 2 * tokens * tokens * d
    return layers * per_layer + tokens * d * c.vocab_size


def _peer_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], int, int, str]:
    """(model, positional inputs, reference mult-adds, reference params, source)."""
    torch.manual_seed(0)
    if name in ("bert-base", "gpt2"):
        import transformers

        if name == "bert-base":
            config = transformers.BertConfig()
            model: nn.Module = transformers.BertModel(config)
            reference = _bert_reference(config, PEER_TOKENS)
        else:
            config = transformers.GPT2Config()
            model = transformers.GPT2LMHeadModel(config)  # head tied to the embedding
            reference = _gpt2_reference(config, PEER_TOKENS)
        ids = torch.randint(0, config.vocab_size, (1, PEER_TOKENS))
        params = sum(p.numel() for p in model.parameters())  # unique: tied counted once
        return model.eval(), (ids,), reference, params, "analytic"
    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=None).eval()
    reference = round(weights.meta["_ops"] * 1e9)
    params = int(weights.meta["num_params"])
    return model, (torch.randn(1, 3, 224, 224),), reference, params, "published"


def _peer_call(tool: str, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """A function running ``tool`` once; it returns (mult-adds, params or None)."""
    if tool == "netsight":

        def run() -> tuple[int, int | None]:
            s = netsight.summary(model, input_data=inputs, depth=3)
            return s.total_mult_adds, s.total_params

    elif tool == "torchinfo":

        def run() -> tuple[int, int | None]:
            s = torchinfo.summary(model, input_data=list(inputs), depth=3, verbose=0)
            return s.total_mult_adds, s.total_params

    elif tool == "fvcore":
        from fvcore.nn import FlopCountAnalysis

        def run() -> tuple[int, int | None]:
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total()), None  # one "flop" per multiply-add

    elif tool in ("ptflops", "ptflops-aten"):
        from ptflops import get_model_complexity_info

        backend = "aten" if tool == "ptflops-aten" else "pytorch"

        def run() -> tuple[int, int | None]:
            macs, params = get_model_complexity_info(
                model,
                tuple(inputs[0].shape[1:]),
                input_constructor=lambda _shape: (
                    {"input_ids": inputs[0]} if inputs[0].dtype == torch.long else inputs[0]
                ),
                as_strings=False,
                print_per_layer_stat=False,
                verbose=False,
                backend=backend,
            )
            return int(macs), int(params)

    elif tool == "thop":
        import thop

        def run() -> tuple[int, int | None]:
            macs, params = thop.profile(model, inputs=inputs, verbose=False)
            _drop_thop_buffers(model)
            return int(macs), int(params)

    elif tool == "calflops":
        from calflops import calculate_flops

        def run() -> tuple[int, int | None]:
            _flops, macs, params = calculate_flops(
                model,
                args=list(inputs),
                output_as_string=False,
                print_results=False,
                print_detailed=False,
            )
            return int(macs), int(params)

    else:
        raise ValueError(f"unknown tool {tool!r}")
    return run


def _drop_thop_buffers(model: nn.Module) -> None:
    """thop registers ``total_ops``/``total_params`` buffers on every module and
    leaves them; drop them so the next tool sees the model as it was built."""
    for m in model.modules():
        for key in ("total_ops", "total_params"):
            m._buffers.pop(key, None)


def _quietly(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the peers' prints and warnings sent nowhere."""
    import contextlib
    import io
    import warnings

    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        return fn()


def bench_peers(names: list[str], repeats: int) -> list[dict[str, Any]]:
    """Each tool's count against the reference, and its time, interleaved."""
    results = []
    for name in names:
        model, inputs, reference, ref_params, source = _peer_model(name)
        row: dict[str, Any] = {
            "model": name,
            "reference": reference,
            "reference_params": ref_params,
            "source": source,
        }
        tools: dict[str, Callable[[], object]] = {}
        for tool in PEER_TOOLS:
            try:
                run = _peer_call(tool, model, inputs)
                macs, params = _quietly(run)
            except Exception as exc:  # a peer's crash is a result
                row[tool] = {"error": type(exc).__name__, "message": str(exc)[:200]}
                continue
            row[tool] = {"mult_adds": macs, "params": params}
            tools[tool] = lambda run=run: _quietly(run)
        tools["bare"] = _bare(model, inputs[0])
        row["times"] = _interleaved(tools, repeats)
        results.append(row)
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return results


def print_peers(results: list[dict[str, Any]]) -> None:
    def accuracy(r: dict[str, Any], tool: str) -> str:
        got = r[tool]
        if "error" in got:
            return f"crash ({got['error']})"
        return f"{got['mult_adds'] / r['reference']:.3f}"

    def params(r: dict[str, Any], tool: str) -> str:
        got = r[tool]
        if "error" in got or got["params"] is None:
            return "-"
        return f"{got['params'] / r['reference_params']:.3f}"

    headers = ["model (reference)", *PEER_TOOLS]
    tables = (
        (
            "Mult-adds, tool / reference:",
            accuracy,
            lambda r: f"{r['source']} {r['reference'] / 1e9:.3f} G",
        ),
        (
            "Parameters, tool / reference ('-': the tool does not count them):",
            params,
            lambda r: f"{r['reference_params'] / 1e6:.2f} M",
        ),
    )
    for title, cell, reference in tables:
        print(f"\n{title}\n")
        rows = [
            [f"{r['model']} ({reference(r)})"] + [cell(r, t) for t in PEER_TOOLS] for r in results
        ]
        print(_common.table(headers, rows))
    print("\nTime, median, as a ratio to netsight's (bare: the forward alone):\n")
    timed = ["bare", *PEER_TOOLS[1:]]
    rows = []
    for r in results:
        t = r["times"]
        rows.append(
            [r["model"], _common.ms(t.get("netsight"))]
            + [_ratio(t.get(tool), t.get("netsight")) for tool in timed]
        )
    print(_common.table(["model", "netsight ms", *timed], rows))


# --------------------------------------------------------------------------- 6. first call

_FIRST_SECOND = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch import nn
    kind, tool = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    if kind == "mlp":
        model, size = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), (1, 64)
    elif kind == "lstm":
        model, size = nn.LSTM(64, 128, num_layers=2, batch_first=True), (1, 20, 64)
    else:
        import torchvision
        model, size = torchvision.models.resnet18().eval(), (1, 3, 224, 224)
    if tool == "netsight":
        import netsight
        run = lambda: netsight.summary(model, input_size=size)
    else:
        import torchinfo
        run = lambda: torchinfo.summary(model, input_size=size, verbose=0)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(times[0], times[1])
    """
)
FIRST_MODELS = ("mlp", "lstm", "resnet18")


def bench_first(processes: int) -> list[dict[str, Any]]:
    """First and second call of each tool in ``processes`` fresh processes (medians)."""
    results = []
    for kind in FIRST_MODELS:
        row: dict[str, Any] = {"model": kind}
        for tool in ("netsight", "torchinfo"):
            firsts, seconds = [], []
            for _ in range(processes):
                proc = subprocess.run(
                    [sys.executable, "-c", _FIRST_SECOND, kind, tool],
                    capture_output=True,
                    text=True,
                    timeout=FIRST_CALL_TIMEOUT_S,
                    check=False,
                )
                if proc.returncode != 0:
                    continue
                first, second = (float(v) for v in proc.stdout.split()[-2:])
                firsts.append(first)
                seconds.append(second)
            row[tool] = (statistics.median(firsts), statistics.median(seconds)) if firsts else None
        results.append(row)
        print(f"  {kind}: done", file=sys.stderr, flush=True)
    return results


def print_first(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        ns, ti = r["netsight"], r["torchinfo"]
        rows.append(
            [
                r["model"],
                _common.ms(ns[0] if ns else None),
                _common.ms(ns[1] if ns else None),
                _common.ms(ns[0] - ns[1] if ns else None),
                _common.ms(ti[0] if ti else None),
                _common.ms(ti[1] if ti else None),
            ]
        )
    headers = ["model", "netsight 1st ms", "netsight 2nd ms", "1st - 2nd ms"]
    headers += ["torchinfo 1st ms", "torchinfo 2nd ms"]
    print(_common.table(headers, rows))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per tool (median)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 5 repeats")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads, here and in the subprocesses (default: torch's own); "
        "on a shared machine, 1 keeps other jobs from starving torchinfo's and the bare "
        "forward's threads",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also compare counts and time with torchinfo, fvcore, ptflops, thop and calflops "
        "(pip install -e '.[bench]'); alone: --only peers",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        metavar="NAME",
        help="torchvision models for part 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        choices=["models", "scaling", "nesting", "llama", "peers", "first"],
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)
    repeats = 5 if args.quick and args.repeats == 7 else args.repeats
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the subprocesses
    parts = set(args.only or ["models", "scaling", "nesting", "llama"])
    if args.peers:
        parts.add("peers")
    scaling_sizes = [1000, 2000] if args.quick else [1000, 2000, 4000, 8000]
    nesting_depths = [10, 20] if args.quick else [10, 20, 22, 50]

    peers = ["torchinfo"]
    if "peers" in parts:
        peers += ["fvcore", "ptflops", "thop", "calflops", "transformers"]
    run = _common.conditions(peers)
    print(f"medians of {repeats} runs")
    report: dict[str, Any] = {"repeats": repeats}
    if "models" in parts:
        print("\nModels (batch 1, 224 x 224, eval, random weights)", file=sys.stderr)
        report["models"] = bench_models(args.models, repeats)
        print("\n## torchvision models (batch 1, 3 x 224 x 224, eval)\n")
        print_models(report["models"])
    if "scaling" in parts:
        print("\nScaling", file=sys.stderr)
        report["scaling"] = bench_scaling(scaling_sizes, repeats)
        print("\n## Scaling: wide_model(n), input (1, 8)\n")
        print_scaling(report["scaling"])
    if "nesting" in parts:
        print("\nNesting", file=sys.stderr)
        report["nesting"] = bench_nesting(nesting_depths, repeats)
        print(
            f"\n## Nesting: NestedChain(depth); torchinfo: {NESTING_TIMEOUT_S:.0f} s a call, "
            f"{NESTING_BUDGET_S:.0f} s a depth\n"
        )
        print_nesting(report["nesting"])
    if "llama" in parts:
        print("\nLLaMA", file=sys.stderr)
        report["llama"] = bench_llama()
        print("\n## LLaMA-7B shape on the meta device, 2,048 tokens, fresh process\n")
        print_llama(report["llama"])
    if "first" in parts:
        print("\nFirst call", file=sys.stderr)
        report["first"] = bench_first(repeats)
        print(
            "\n## First and second call in a fresh process (after imports and building the "
            f"model; medians of {repeats} processes)\n"
        )
        print_first(report["first"])
    if "peers" in parts:
        print("\nPeers", file=sys.stderr)
        report["peers"] = bench_peers(list(PEER_MODELS), repeats)
        print(
            f"\n## Peers: resnet50, vit_b_16, swin_t (224 x 224), BERT-base and GPT-2 "
            f"({PEER_TOKENS} tokens), batch 1, random weights\n"
        )
        print_peers(report["peers"])
    run.finish()
    report["conditions"] = run.as_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
