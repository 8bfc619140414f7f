"""Time the demo's training step with and without a TrainingMonitor at default settings.

Usage::

    python benchmarks/bench_monitor.py                  # 6 rounds of 2 x 10 steps (~10 min)
    python benchmarks/bench_monitor.py --quick          # 3 rounds of 2 x 10 steps (~5 min)
    python benchmarks/bench_monitor.py --threads 1      # torch single-threaded
    python benchmarks/bench_monitor.py --json out.json  # also write the numbers

The step is the demo's (``netsight.demo.train_digits``): the tutorials' VGG-16
(``netsight.zoo.Vgg16Net``, 15.1 M parameters) on batches of 32 digits (1 x 32 x 32),
cross-entropy, SGD with Nesterov momentum and weight decay, a one-cycle learning rate:
forward, ``loss.item()``, ``zero_grad``, backward, [``monitor.step(loss=, outputs=,
targets=)``], ``optimizer.step()``, ``scheduler.step()``. The monitor has the default
settings (``log_every=10``, ``histogram_every=200``, TensorBoard and plots on) and the
demo's probe (16 test digits).

One model and one optimizer train throughout; after two warm-up steps of each arm, the
run alternates blocks of ``--block`` steps without and with ``monitor.step`` (the order
swaps every round), so both arms see the same load drift. Every step is timed alone, and
inside the monitored steps so is ``monitor.step`` itself. Reported:

* per arm: the median step time, and the median over blocks of the mean step time (a
  block of 10 monitored steps holds one logging step and the step after it, which
  computes the update ratios);
* ``paired``: the median over rounds of (monitored block mean / bare block mean);
* ``direct``: the time spent inside ``monitor.step`` over the bare step time, which does
  not drown in the load noise of multi-second steps (but misses any cost the monitor's
  background TensorBoard thread puts on the other steps: ``paired`` sees that);
* apart, with the same model: a logging step (``log_every=1``, so every call also takes
  the previous step's update ratios and a weight snapshot), a logging step with
  histograms (``histogram_every=1``), ``epoch_end`` (probe forward, images, feature maps,
  plots, ``index.html``), and building the monitor (summary and graph).

Times are wall-clock; the run's conditions (CPU, threads, load average at the start
and end, versions) are printed first and last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import _common
from netsight.datasets import digits
from netsight.monitor import TrainingMonitor
from netsight.zoo import Vgg16Net

GOAL = 0.03  # the monitor's share of the step time at default settings
BATCH = 32
PROBE = 16


class Trainer:
    """The demo's training step on an endless stream of shuffled digit batches."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = Vgg16Net().train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=0.05, total_steps=100_000, pct_start=0.25
        )
        self.batches = self._batches(seed)

    @staticmethod
    def _batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = digits("train")
        loader = torch.utils.data.DataLoader(
            data, batch_size=BATCH, shuffle=True, drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        while True:
            yield from loader

    def step(self, monitor: TrainingMonitor | None) -> tuple[float, float, float]:
        """One training step: (its wall seconds, the seconds inside monitor.step, the
        process's CPU seconds, all threads, TensorBoard's writer thread included)."""
        x, y = next(self.batches)
        start, cpu = time.perf_counter(), time.process_time()
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        inside = 0.0
        if monitor is not None:
            begin = time.perf_counter()
            monitor.step(loss=loss, outputs=logits, targets=y)
            inside = time.perf_counter() - begin
        self.optimizer.step()
        self.schedule.step()
        return time.perf_counter() - start, inside, time.process_time() - cpu


def _monitor(trainer: Trainer, logdir: Path, name: str, **kwargs: Any) -> TrainingMonitor:
    x, y = digits("test").tensors
    return TrainingMonitor(
        trainer.model,
        logdir,
        name,
        probe=(x[:PROBE], y[:PROBE]),
        mean=(0.5,),
        std=(0.5,),
        optimizer=trainer.optimizer,
        **kwargs,
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    trainer: Trainer, monitor: TrainingMonitor, rounds: int, block: int
) -> dict[str, Any]:
    for _ in range(2):  # warm-up; the monitor's step 0 logs and writes histograms
        trainer.step(None)
        trainer.step(monitor)
    blocks: dict[str, list[list[float]]] = {"bare": [], "monitored": []}
    cpu: dict[str, list[list[float]]] = {"bare": [], "monitored": []}
    inside: list[tuple[int, float]] = []  # (monitor step, seconds in monitor.step)
    for r in range(rounds):
        for arm in ("bare", "monitored") if r % 2 == 0 else ("monitored", "bare"):
            times, cpus = [], []
            for _ in range(block):
                if arm == "monitored":
                    index = monitor.global_step
                    wall, spent, used = trainer.step(monitor)
                    inside.append((index, spent))
                else:
                    wall, _, used = trainer.step(None)
                times.append(wall)
                cpus.append(used)
            blocks[arm].append(times)
            cpu[arm].append(cpus)
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return {"blocks": blocks, "cpu": cpu, "inside": inside}


def components(trainer: Trainer, logdir: Path, repeats: int) -> dict[str, Any]:
    """Seconds of single monitor calls, each the median of ``repeats`` (after one more
    untimed call), with the same model and real gradients."""
    result: dict[str, Any] = {}
    start = time.perf_counter()
    build = _monitor(trainer, logdir, "build")
    result["build"] = time.perf_counter() - start
    build.close()
    for label, kwargs in (
        ("logging step", {"log_every": 1, "histogram_every": 0}),
        ("logging step + histograms", {"log_every": 1, "histogram_every": 1}),
    ):
        mon = _monitor(trainer, logdir, label.replace(" ", "-"), summary=False, **kwargs)
        spent = [trainer.step(mon)[1] for _ in range(repeats + 1)]
        result[label] = statistics.median(spent[1:])
        mon.close()
    mon = _monitor(trainer, logdir, "epochs", summary=False)
    for _ in range(3):
        trainer.step(mon)
    firsts = _timed(lambda: mon.epoch_end(val_loss=0.5, val_acc=0.9))
    later = []
    for _ in range(repeats):
        trainer.step(mon)
        later.append(_timed(lambda: mon.epoch_end(val_loss=0.5, val_acc=0.9)))
    mon.close()
    result["epoch_end (first)"] = firsts
    result["epoch_end"] = statistics.median(later)
    return result


def summarize(run: dict[str, Any], log_every: int) -> dict[str, Any]:
    blocks = run["blocks"]
    steps = {arm: [t for b in blocks[arm] for t in b] for arm in blocks}
    means = {arm: [statistics.fmean(b) for b in blocks[arm]] for arm in blocks}
    paired = [m / b for m, b in zip(means["monitored"], means["bare"], strict=True)]
    cpu = {arm: [statistics.fmean(b) for b in run["cpu"][arm]] for arm in blocks}
    paired_cpu = [m / b for m, b in zip(cpu["monitored"], cpu["bare"], strict=True)]
    inside = run["inside"]
    bare_median = statistics.median(steps["bare"])
    by_kind: dict[str, list[float]] = {"plain": [], "logging": [], "after logging": []}
    for index, spent in inside:
        if index % log_every == 0:
            by_kind["logging"].append(spent)
        elif index % log_every == 1:
            by_kind["after logging"].append(spent)
        else:
            by_kind["plain"].append(spent)
    direct = statistics.fmean(s for _, s in inside) / statistics.fmean(steps["bare"])
    return {
        "median_step": {arm: statistics.median(v) for arm, v in steps.items()},
        "median_block_mean": {arm: statistics.median(v) for arm, v in means.items()},
        "paired": statistics.median(paired),
        "paired_rounds": paired,
        "median_block_cpu": {arm: statistics.median(v) for arm, v in cpu.items()},
        "paired_cpu": statistics.median(paired_cpu),
        "paired_cpu_rounds": paired_cpu,
        "direct": direct,
        "inside_median": {k: statistics.median(v) if v else None for k, v in by_kind.items()},
        "inside_count": {k: len(v) for k, v in by_kind.items()},
        "bare_median": bare_median,
    }


def report(s: dict[str, Any], parts: dict[str, Any], rounds: int, block: int) -> None:
    bare, mon = s["median_step"]["bare"], s["median_step"]["monitored"]
    bb, mb = s["median_block_mean"]["bare"], s["median_block_mean"]["monitored"]
    print(f"\n## Training step, {rounds} rounds x {block} steps per arm, interleaved\n")
    bc, mc = s["median_block_cpu"]["bare"], s["median_block_cpu"]["monitored"]
    print("| arm | median step ms | median block-mean ms | median block-mean CPU ms |")
    print("|---|---:|---:|---:|")
    print(f"| without monitor | {_common.ms(bare)} | {_common.ms(bb)} | {_common.ms(bc)} |")
    print(f"| with monitor (defaults) | {_common.ms(mon)} | {_common.ms(mb)} | {_common.ms(mc)} |")
    print(
        f"\npaired (median over rounds of monitored / bare block mean): {s['paired']:.3f} "
        f"(rounds: {', '.join(f'{p:.3f}' for p in s['paired_rounds'])})"
    )
    print(
        f"paired CPU time (the same with process CPU seconds): {s['paired_cpu']:.3f} "
        f"(rounds: {', '.join(f'{p:.3f}' for p in s['paired_cpu_rounds'])})"
    )
    print(
        f"direct (time inside monitor.step / bare step time): {s['direct']:.2%} (goal < {GOAL:.0%})"
    )
    print("\ninside monitor.step, median ms by kind of step (count):")
    for kind, value in s["inside_median"].items():
        print(f"  {kind:14s} {_common.ms(value):>9s}  ({s['inside_count'][kind]})")
    print("\n## Single calls (median ms)\n")
    for label, value in parts.items():
        print(f"  {label:28s} {_common.ms(value):>9s}")
    epoch_steps = len(digits("train")) // BATCH
    hist_extra = parts["logging step + histograms"] - parts["logging step"]
    per_epoch = (
        s["direct"] * bare * epoch_steps + hist_extra * epoch_steps / 200 + parts["epoch_end"]
    )
    print(
        f"\nper demo epoch ({epoch_steps} steps, defaults): monitor.step + histograms every "
        f"200 steps + one epoch_end = {_common.ms(per_epoch)} ms = "
        f"{per_epoch / (bare * epoch_steps):.2%} of the epoch's bare step time"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=10, help="steps per arm per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed single calls (median)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick and args.rounds == 6 else args.rounds
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    conditions = _common.conditions()
    print(f"Vgg16Net, batch {BATCH} x 1 x 32 x 32, CPU")
    trainer = Trainer()
    with tempfile.TemporaryDirectory() as tmp:
        monitor = _monitor(trainer, Path(tmp), "default")
        run = interleaved(trainer, monitor, rounds, args.block)
        monitor.close()
        parts = components(trainer, Path(tmp), args.repeats)
    s = summarize(run, monitor.log_every)
    report(s, parts, rounds, args.block)
    conditions.finish()
    if args.json:
        payload = {"summary": s, "single_calls": parts, "run": run}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"conditions": conditions.as_dict(), **payload}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
