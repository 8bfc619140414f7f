"""A small training run with a :class:`netsight.TrainingMonitor`, for tests that
need a separate process: killed mid-run (crash safety) or given a file-size limit
(a disk that fills up).

Usage::

    python monitor_crash_script.py LOGDIR NAME [--steps N] [--flush-secs F]
        [--sleep S] [--log-every K] [--histogram-every K] [--fsize BYTES]
        [--no-tensorboard] [--plots] [--resume] [--vanishing-ratio R]
        [--max-seconds T]

It prints ``ready`` once the monitor is built, then ``step N`` after each
``mon.step`` (flushed at once, so a parent can kill it after a known step), and
``done`` at the end. A :class:`MonitorWriteError` is printed as one JSON line
``{"error": ..., "errno": ..., "message": ..., "step": ...}`` and exits with 3.

``--fsize`` sets ``RLIMIT_FSIZE`` after the imports and ignores ``SIGXFSZ``, so
every write past that many bytes in one file fails with ``EFBIG``, as on a full
disk. ``--max-seconds`` ends the run on its own if no parent stops it. ``--resume``
passes ``resume=True``; a ``--vanishing-ratio`` above 1 makes a diagnostic at every
logging step. The monitor's ``RunInUseError`` is printed as one JSON line too and
exits with 4.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from netsight.monitor import MonitorWriteError, RunInUseError, Thresholds, TrainingMonitor

EXIT_WRITE_ERROR = 3
EXIT_IN_USE = 4


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("logdir")
    parser.add_argument("name")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--flush-secs", type=float, default=0.5)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--histogram-every", type=int, default=0)
    parser.add_argument("--fsize", type=int, default=0)
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--plots", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--vanishing-ratio", type=float, default=Thresholds.vanishing_ratio)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 8)
    y = torch.randint(0, 3, (32,))
    if args.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))

    step = -1
    deadline = time.monotonic() + args.max_seconds
    try:
        with TrainingMonitor(
            model,
            args.logdir,
            args.name,
            probe=(x[:8], y[:8]),
            optimizer=opt,
            log_every=args.log_every,
            histogram_every=args.histogram_every,
            flush_secs=args.flush_secs,
            tensorboard=not args.no_tensorboard,
            plots=args.plots,
            summary=False,
            warn=False,
            resume=args.resume,
            thresholds=Thresholds(vanishing_ratio=args.vanishing_ratio),
        ) as mon:
            print("ready", flush=True)
            for step in range(args.steps):
                if time.monotonic() > deadline:
                    break
                out = model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                mon.step(loss=loss, outputs=out, targets=y)
                opt.step()
                opt.zero_grad()
                print(f"step {step}", flush=True)
                if (step + 1) % args.steps_per_epoch == 0:
                    mon.epoch_end(val_loss=float(loss.detach()) * 1.1, val_acc=0.5)
                if args.sleep:
                    time.sleep(args.sleep)
    except MonitorWriteError as error:
        record = {"error": type(error).__name__, "errno": error.errno, "message": str(error)}
        print(json.dumps({**record, "step": step}), flush=True)
        return EXIT_WRITE_ERROR
    except RunInUseError as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}), flush=True)
        return EXIT_IN_USE
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
