"""One writer per run directory, and resuming a run that was killed.

* A second :class:`TrainingMonitor` on a run directory that another process is
  writing to (``resume=True`` from two processes at once) is refused with an error
  naming the directory and the holder (PID, host); a holder killed with SIGKILL
  blocks nobody; the lock goes on ``close()`` and when the ``with`` block raises.
* Runs of one name started at the same moment by several processes each get their
  own directory.
* A run killed with SIGKILL and resumed records every step once in every sink:
  ``scalars.csv``, ``diagnostics.jsonl``, and TensorBoard, read by its event-file
  reader and by its server (the earlier event file is purged from the resume point).

Everything runs in real processes against real files; nothing is mocked.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    IMAGES,
    SCALARS,
    EventAccumulator,
)
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn

from netsight.monitor import RunInUseError, TrainingMonitor, list_runs, read_scalars
from netsight.monitor.runs import read_diagnostics
from tb_server import LineReader, TensorBoardServer, stop

SCRIPT = Path(__file__).with_name("monitor_crash_script.py")
#: Seconds a training subprocess may take (imports alone take 5-15 s under load).
SUBPROCESS_TIMEOUT = 180.0
LOCK = ".netsight.lock"


def _script(logdir: Path, name: str, *options: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(logdir), name, *options]


def _start(command: list[str]) -> tuple[subprocess.Popen[str], LineReader]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
    )
    assert process.stdout is not None
    return process, LineReader(process.stdout)


def _sigkill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _train(mon: TrainingMonitor, model: nn.Module, steps: int) -> None:
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(steps):
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        mon.step(loss=loss, outputs=out, targets=y)
        model.zero_grad()


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _quiet(**kwargs: Any) -> dict[str, Any]:
    return {"tensorboard": False, "plots": False, "summary": False, "warn": False, **kwargs}


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_and_a_killed_holder_blocks_nobody(tmp_path: Path) -> None:
    run_dir = tmp_path / "same"
    command = _script(tmp_path, "same", "--resume", "--sleep", "0.05", "--no-tensorboard")
    process, lines = _start([*command, "--max-seconds", "120"])
    try:
        # past step 20: an epoch has ended and flushed scalars.csv
        lines.wait_for(lambda line: line == "step 25", timeout=SUBPROCESS_TIMEOUT)
        # the second writer: this process, resuming the same run while the other writes
        with pytest.raises(RunInUseError) as info:
            TrainingMonitor(_model(), tmp_path, "same", resume=True, **_quiet())
        message = str(info.value)
        assert str(run_dir) in message
        assert f"PID {process.pid} on host {socket.gethostname()}" in message
        assert info.value.run_dir == run_dir and info.value.holder["pid"] == process.pid
        assert process.poll() is None  # the holder goes on undisturbed
        holder = json.loads((run_dir / LOCK).read_text(encoding="utf-8"))
        assert holder["pid"] == process.pid and holder["host"] == socket.gethostname()

        _sigkill(process)
    finally:
        stop(process)
    # the killed holder's lock file is still there, but the kernel dropped its lock
    assert json.loads((run_dir / LOCK).read_text(encoding="utf-8"))["pid"] == process.pid
    written = read_scalars(run_dir / "scalars.csv")
    last = max(r["step"] for r in written)
    model = _model()
    with TrainingMonitor(model, tmp_path, "same", resume=True, log_every=1, **_quiet()) as mon:
        assert json.loads((run_dir / LOCK).read_text(encoding="utf-8"))["pid"] == os.getpid()
        _train(mon, model, 3)
    assert not (run_dir / LOCK).exists()  # removed on close
    losses = [r["step"] for r in read_scalars(run_dir / "scalars.csv") if r["tag"] == "train/loss"]
    assert losses == sorted(losses), "interleaved writers"
    assert losses[-3:] == [last + 1, last + 2, last + 3]


def test_the_lock_is_released_on_close_and_on_an_exception(tmp_path: Path) -> None:
    first = TrainingMonitor(_model(), tmp_path, "run", **_quiet())
    # a second monitor in the same process is refused too
    with pytest.raises(RunInUseError, match=f"PID {os.getpid()}"):
        TrainingMonitor(_model(), tmp_path, "run", resume=True, **_quiet())
    first.close()
    assert not (first.run_dir / LOCK).exists()

    def fails_mid_run() -> None:
        model = _model()
        with TrainingMonitor(model, tmp_path, "run", resume=True, **_quiet()) as mon:
            _train(mon, model, 2)
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        fails_mid_run()
    assert not (first.run_dir / LOCK).exists()
    with TrainingMonitor(_model(), tmp_path, "run", resume=True, **_quiet()) as again:
        assert again.run_dir == first.run_dir
    # the run listing does not count the lock file or trip on it
    (first.run_dir / LOCK).write_text("{}")
    assert [r.name for r in list_runs(tmp_path)] == ["run"]


def test_a_holder_gone_but_its_forked_child_alive_is_named(tmp_path: Path) -> None:
    """``flock`` belongs to the open file, which ``fork`` shares: the error says so."""
    code = (
        "import os, sys, time\n"
        "from torch import nn\n"
        "from netsight.monitor import TrainingMonitor\n"
        "mon = TrainingMonitor(nn.Linear(2, 2), sys.argv[1], 'run',\n"
        "                      tensorboard=False, summary=False)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    quiet = os.open(os.devnull, os.O_RDWR)\n"
        "    os.dup2(quiet, 1)\n"
        "    os.dup2(quiet, 2)\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "os._exit(0)\n"  # gone without closing, as if killed; the child keeps the file
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    child = int(done.stdout.split()[-1])
    try:
        with pytest.raises(RunInUseError, match="no longer running") as info:
            TrainingMonitor(_model(), tmp_path, "run", resume=True, **_quiet())
        assert "forked" in str(info.value)
    finally:
        os.kill(child, signal.SIGKILL)
    # the child reaped by init: wait until its lock is gone, then the run resumes
    for _ in range(200):
        try:
            TrainingMonitor(_model(), tmp_path, "run", resume=True, **_quiet()).close()
            break
        except RunInUseError:
            time.sleep(0.05)
    else:
        pytest.fail("the lock stayed held after the forked child was killed")


def _new_run_of_one_name(logdir: Path, rounds: int, barrier: Any, out: Any) -> None:
    torch.set_num_threads(1)
    try:
        for r in range(rounds):
            barrier.wait(timeout=60)
            mon = TrainingMonitor(nn.Linear(2, 2), logdir / f"round{r}", "same", **_quiet())
            out.put((r, mon.run_dir.name))
            barrier.wait(timeout=60)  # every process holds its directory before any closes
            mon.close()
    except BaseException as error:
        barrier.abort()  # the others stop waiting
        out.put((-1, f"{type(error).__name__}: {error}"))


def test_runs_of_one_name_started_at_once_get_their_own_directories(tmp_path: Path) -> None:
    """Before the run directory was made with an exclusive ``mkdir`` two processes
    could both find ``same`` free and share it: two of three runs of this test failed
    on that code (two processes in ``same``, or one failing on the other's files), so a
    pass there is luck, a failure here is the race."""
    workers, rounds = 4, 30
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers)
    out = context.Queue()
    processes = [
        context.Process(target=_new_run_of_one_name, args=(tmp_path, rounds, barrier, out))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        names: list[tuple[int, str]] = []
        while len(names) < workers * rounds:
            r, name = out.get(timeout=SUBPROCESS_TIMEOUT)
            if r == -1:
                pytest.fail(f"a process failed in its round: {name}")
            names.append((r, name))
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.exitcode is None:
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * workers
    for r in range(rounds):
        got = sorted(name for i, name in names if i == r)
        assert got == ["same", "same-2", "same-3", "same-4"], f"round {r}: {got}"


# --------------------------------------------------------------------------- resume after kill -9


def test_resume_cuts_a_torn_last_line(tmp_path: Path) -> None:
    """A writer killed mid-line leaves a torn last line; the resumed writer's first
    line must not be glued onto it."""
    model = _model()
    with TrainingMonitor(model, tmp_path, "run", log_every=1, **_quiet()) as mon:
        _train(mon, model, 3)
        mon.step(loss=torch.tensor(float("nan")))  # a diagnostic (step 3)
    run_dir = mon.run_dir
    with open(run_dir / "scalars.csv", "a", encoding="utf-8") as f:
        f.write("4,1,train/lo")
    with open(run_dir / "diagnostics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "nonfinite_lo')
    with TrainingMonitor(model, tmp_path, "run", resume=True, log_every=1, **_quiet()) as mon:
        _train(mon, model, 2)
        mon.step(loss=torch.tensor(float("nan")))  # another one (step 6)
    text = (run_dir / "scalars.csv").read_text(encoding="utf-8")
    assert "train/lo4" not in text and "train/lo5" not in text
    rows = read_scalars(run_dir / "scalars.csv")
    assert len(rows) == text.count("\n") - 1  # every line but the header parses
    assert [r["step"] for r in rows if r["tag"] == "train/loss"] == [0, 1, 2, 3, 4, 5, 6]
    records = read_diagnostics(run_dir / "diagnostics.jsonl")
    lines = (run_dir / "diagnostics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == len(lines)
    assert [(d["kind"], d["step"]) for d in records if d["kind"] == "nonfinite_loss"] == [
        ("nonfinite_loss", 3),
        ("nonfinite_loss", 6),
    ]


def test_the_resumed_event_file_is_read_after_the_earlier_ones(tmp_path: Path) -> None:
    """TensorBoard reads a run's event files in name order
    (``events.out.tfevents.<second>.<host>.<pid>.<n>``) and a purge drops only what it
    read before: an earlier file from the same second with a larger PID must not sort
    after the resumed run's file."""
    model = _model()
    options = _quiet(tensorboard=True, log_every=1)
    with TrainingMonitor(model, tmp_path, "run", **options) as mon:
        _train(mon, model, 10)
    run_dir = mon.run_dir
    # as if killed when the event file had step 9 but scalars.csv only step 4
    lines = (run_dir / "scalars.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines[1:] if int(line.split(",", 1)[0]) < 5]
    (run_dir / "scalars.csv").write_text(lines[0] + "".join(kept), encoding="utf-8")
    # ... by another process whose PID sorts after ours, in this very second
    time.sleep(1.0 - time.time() % 1.0)
    (old,) = run_dir.glob("events.out.tfevents.*")
    parts = old.name.split(".")
    parts[3], parts[-2] = f"{int(time.time()):010d}", "9" * 12
    old.rename(run_dir / ".".join(parts))
    with TrainingMonitor(model, tmp_path, "run", resume=True, **options) as mon:
        _train(mon, model, 3)
    names = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
    assert names[0] == ".".join(parts)
    accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(8))


def _event_steps(path: Path) -> list[int]:
    """Steps of every summary in one event file, raw (no purge applied)."""
    return [e.step for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]


def _csv_last(run_dir: Path) -> int:
    path = run_dir / "scalars.csv"
    return max((r["step"] for r in read_scalars(path)), default=-1) if path.exists() else -1


def _kill_with_tensorboard_ahead(logdir: Path) -> tuple[int, int]:
    """Train in a subprocess and SIGKILL it at a moment when its event file holds steps
    that ``scalars.csv`` does not (TensorBoard's writer thread flushes on its own
    clock, the monitor on its own): the state that made a resume log steps twice.

    Returns:
        The last step in ``scalars.csv`` and the last one in the event file.
    """
    run_dir = logdir / "run"
    # log_every 1: every step writes every scalar, so scalars.csv has no gaps
    options = ["--log-every", "1", "--histogram-every", "5", "--vanishing-ratio", "2"]
    options += ["--flush-secs", "3", "--sleep", "0.03", "--max-seconds", "150"]
    process, lines = _start(_script(logdir, "run", *options))
    try:
        lines.wait_for(lambda line: line == "step 25", timeout=SUBPROCESS_TIMEOUT)
        while process.poll() is None:
            events = sorted(run_dir.glob("events.out.tfevents.*"))
            if events and max(_event_steps(events[0]), default=-1) > _csv_last(run_dir) + 1:
                _sigkill(process)
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the training process ended before it was killed: {lines.seen[-5:]}")
    finally:
        stop(process)
    (events,) = run_dir.glob("events.out.tfevents.*")
    return _csv_last(run_dir), max(_event_steps(events))


@pytest.mark.xdist_group("tensorboard")
@pytest.mark.slow  # three training processes and a TensorBoard server: about 40-90 s
def test_resume_after_sigkill_records_every_step_once(tmp_path: Path) -> None:
    for attempt in range(3):
        logdir = tmp_path / f"attempt{attempt}"
        csv_last, event_last = _kill_with_tensorboard_ahead(logdir)
        if event_last > csv_last:
            break  # the CSV did not catch up between the look and the kill
    else:
        pytest.fail("could not kill the run while its event file was ahead of scalars.csv")
    run_dir = logdir / "run"
    (old_events,) = run_dir.glob("events.out.tfevents.*")

    resumed_steps = 30
    options = ["--resume", "--steps", str(resumed_steps), "--log-every", "1"]
    options += ["--histogram-every", "5", "--vanishing-ratio", "2", "--flush-secs", "3"]
    done = subprocess.run(
        _script(logdir, "run", *options), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "done"
    expected = list(range(csv_last + 1 + resumed_steps))  # resumed right after the CSV's last

    # scalars.csv: whole lines, each (step, tag) once, the loss at every step
    rows = read_scalars(run_dir / "scalars.csv")
    assert (run_dir / "scalars.csv").read_bytes().endswith(b"\n")
    keys = Counter((r["step"], r["tag"]) for r in rows)
    assert [k for k, n in keys.items() if n > 1] == []
    csv_loss = {r["step"]: r["value"] for r in rows if r["tag"] == "train/loss"}
    assert sorted(csv_loss) == expected

    # diagnostics.jsonl: one vanishing-gradient record per logging step, none twice
    diagnostics = Counter(
        (d["kind"], d["step"]) for d in read_diagnostics(run_dir / "diagnostics.jsonl")
    )
    assert [k for k, n in diagnostics.items() if n > 1] == []
    assert sorted(step for kind, step in diagnostics if kind == "vanishing_gradients") == expected

    # TensorBoard's reader: the old file still holds the steps after the resume point,
    # the purge hides them: every tag has each step once
    assert max(_event_steps(old_events)) == event_last > csv_last
    accumulator = EventAccumulator(
        str(run_dir), size_guidance={SCALARS: 0, HISTOGRAMS: 0, IMAGES: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "train/loss" in tags[SCALARS] and tags[HISTOGRAMS]
    for kind, read in ((SCALARS, accumulator.Scalars), (HISTOGRAMS, accumulator.Histograms)):
        for tag in tags[kind]:
            steps = Counter(e.step for e in read(tag))
            assert [s for s, n in steps.items() if n > 1] == [], (kind, tag)
    event_loss = {e.step: e.value for e in accumulator.Scalars("train/loss")}
    assert sorted(event_loss) == expected
    assert [event_loss[s] for s in expected] == [float(np.float32(csv_loss[s])) for s in expected]

    # TensorBoard's server shows the same: each step once
    with TensorBoardServer(logdir, tmp_path / "tensorboard.log") as server:

        def loss_steps() -> list[int]:
            return [int(point[1]) for point in server.scalars("run", "train/loss")]

        server.poll("the resumed run", lambda: "run" in server.get("/data/runs"))
        server.poll("the last step", lambda: expected[-1] in loss_steps())
        assert loss_steps() == expected
        for tag in ("grad_norm/total", "update_ratio/0"):
            steps = [int(point[1]) for point in server.scalars("run", tag)]
            assert len(steps) == len(set(steps)), tag
