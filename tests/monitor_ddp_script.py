"""A short DistributedDataParallel run with a TrainingMonitor on every rank.

Launched by ``tests/test_monitor_distributed.py`` as::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/monitor_ddp_script.py OUT

Each rank trains the same small CNN (it has BatchNorm, so DDP broadcasts buffers in
every forward) on its own random data, on the CPU with the gloo backend. Next to the
DDP model each rank keeps a plain copy, loaded with the same weights before every
step, runs it on the same local batch and all-reduces its gradients by hand: that
gives, independently of DDP and of the monitor, the averaged gradients the monitor
should see. Each rank writes ``OUT/rank{R}.json`` with, per step, the per-layer L2
norms of the local and of the averaged gradients and the local loss, with its pid,
what it saw of the log directory, and the threads still running once the process
group is destroyed (none: see ``dist_setup``). The monitor writes under ``OUT/logs``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_setup import init, teardown
from netsight.monitor import TrainingMonitor

STEPS = 6
EPOCHS = 2
BATCH = 8


def make_model() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3),
            bn=nn.BatchNorm2d(4),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(4 * 6 * 6, 3),
        )
    )


def layer_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each layer's gradient (all of its parameters together)."""
    squares: dict[str, float] = {}
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        layer = name.rpartition(".")[0]
        squares[layer] = squares.get(layer, 0.0) + float(param.grad.double().square().sum())
    return {layer: value**0.5 for layer, value in squares.items()}


def train(out: Path) -> dict[str, object]:
    """The run; the DDP wrapper (which holds the process group) dies on return."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts them)
    model = make_model()
    reference = copy.deepcopy(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    probe = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    data = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    monitor = TrainingMonitor(
        ddp,
        out / "logs",
        "ddp",
        probe=probe,
        optimizer=optimizer,
        log_every=1,
        histogram_every=3,
        plots=False,
    )
    record: dict[str, object] = {
        "rank": rank,
        "world": world,
        "pid": os.getpid(),
        "run_dir": str(monitor.run_dir),
        "layers": list(monitor._groups.names),
        "steps": [],
    }
    steps: list[dict[str, object]] = []
    for _epoch in range(EPOCHS):
        for _ in range(STEPS):
            x = torch.randn(BATCH, 1, 8, 8, generator=data)
            y = torch.randint(0, 3, (BATCH,), generator=data)
            # the plain copy: same weights, same local batch, gradients averaged by hand
            reference.load_state_dict(ddp.module.state_dict())
            reference.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            local = layer_norms(reference)
            for param in reference.parameters():
                assert param.grad is not None
                dist.all_reduce(param.grad)
                param.grad /= world
            averaged = layer_norms(reference)

            optimizer.zero_grad()
            outputs = ddp(x)
            loss = nn.functional.cross_entropy(outputs, y)
            loss.backward()
            for (name, mine), theirs in zip(
                ddp.module.named_parameters(), reference.parameters(), strict=True
            ):
                assert mine.grad is not None and theirs.grad is not None
                torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
            monitor.step(loss=loss, outputs=outputs, targets=y)
            optimizer.step()
            steps.append({"loss": loss.item(), "local": local, "averaged": averaged})
        monitor.epoch_end(val_loss=1.0)
    monitor.close()
    record["steps"] = steps
    return record


def main(out: Path) -> None:
    init()
    record = train(out)
    dist.barrier()  # every rank has closed its monitor before anyone looks at the files
    logs = out / "logs"
    record["seen"] = sorted(p.name for p in logs.iterdir()) if logs.exists() else []
    record["threads_left"] = teardown()
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
