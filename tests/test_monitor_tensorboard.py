"""The training monitor against the real TensorBoard: its server's HTTP API and its
event-file reader; crash safety (a run killed with SIGKILL) and write failures
(a logdir that cannot be written, a disk that fills up), all without mocks."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torch import nn

from netsight.monitor import MonitorWriteError, TrainingMonitor, read_scalars
from netsight.monitor.sinks import AppendLog
from tb_server import LineReader, TensorBoardServer, stop

SCRIPT = Path(__file__).with_name("monitor_crash_script.py")
#: Seconds a training subprocess may take (imports alone take 5-15 s under load).
SUBPROCESS_TIMEOUT = 180.0

Series = dict[str, list[tuple[int, float]]]


def _tiny() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, torch.randn(24, 6), torch.randint(0, 3, (24,))


def _train(mon: TrainingMonitor, model: nn.Module, opt: Any, x: Any, y: Any, steps: int) -> None:
    for _ in range(steps):
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        mon.step(loss=loss, outputs=out, targets=y)
        opt.step()
        opt.zero_grad()


def _csv_series(path: Path) -> Series:
    series: Series = defaultdict(list)
    for row in read_scalars(path):
        series[row["tag"]].append((row["step"], row["value"]))
    return dict(series)


def _f32(value: float) -> float:
    """What an event file keeps of a number (TensorBoard scalars are float32)."""
    return float(np.float32(value))


def _events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return accumulator


def _assert_whole_csv(path: Path) -> list[dict[str, Any]]:
    """Only whole lines, each with five fields that parse; returns the rows."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path} ends in a torn line: {raw[-80:]!r}"
    lines = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    assert lines[0] == ["step", "epoch", "tag", "value", "wall_time"]
    assert all(len(line) == 5 for line in lines), "a line with a wrong field count"
    rows = read_scalars(path)
    assert len(rows) == len(lines) - 1, "read_scalars skipped a line of a whole file"
    return rows


def _contiguous(steps: list[int]) -> None:
    assert steps, "no steps"
    assert steps == list(range(len(steps))), f"steps not contiguous from 0: {steps[:20]}..."


# --------------------------------------------------------------------------- the server


@pytest.mark.xdist_group("tensorboard")
def test_tensorboard_server_serves_what_the_monitor_logged(tmp_path: Path) -> None:
    model, opt, x, y = _tiny()
    mon = TrainingMonitor(
        model,
        tmp_path,
        "tiny",
        probe=(x, y),
        optimizer=opt,
        log_every=2,
        flush_secs=1.0,
        plots=False,
        warn=False,
    )
    run_dir = mon.run_dir
    try:
        _train(mon, model, opt, x, y, 6)
        mon.epoch_end(val_loss=0.9, val_acc=0.4)  # flushes every sink
        with TensorBoardServer(tmp_path, tmp_path / "tensorboard.log") as server:
            server.poll("the run", lambda: "tiny" in server.get("/data/runs"))
            server.poll("epoch 1", lambda: len(server.scalars("tiny", "train/loss")) == 6)

            # live: a second epoch written while the server runs shows up
            _train(mon, model, opt, x, y, 6)
            mon.epoch_end(val_loss=0.8, val_acc=0.5)
            server.poll("epoch 2", lambda: len(server.scalars("tiny", "train/loss")) == 12)
            mon.close()

            expected = _csv_series(run_dir / "scalars.csv")
            tags = server.get("/data/plugin/scalars/tags")
            assert set(tags) == {"tiny"}
            assert set(tags["tiny"]) == set(expected)
            # TensorBoard groups cards by the prefix before the first "/" in name order:
            # the per-layer dead fractions sit after the loss and accuracy groups
            groups = sorted({t.split("/")[0] for t in tags["tiny"]})
            assert any(t.startswith("units/dead_fraction/") for t in tags["tiny"])
            assert groups.index("units") > max(groups.index("epoch"), groups.index("train"))
            for tag in ("train/loss", "train/accuracy", "epoch/val_loss", "grad_norm/total"):
                assert len(expected[tag]) >= 2, tag
            server.poll(
                "every point",
                lambda: all(len(server.scalars("tiny", t)) == len(v) for t, v in expected.items()),
            )
            csv_wall = {
                (r["tag"], r["step"]): r["wall_time"] for r in read_scalars(run_dir / "scalars.csv")
            }
            for tag, points in expected.items():
                served = server.scalars("tiny", tag)
                assert [int(step) for _, step, _ in served] == [s for s, _ in points], tag
                assert [value for _, _, value in served] == [_f32(v) for _, v in points], tag
                for wall, step, _ in served:
                    assert abs(wall - csv_wall[(tag, int(step))]) < 1.0, (tag, step)
    finally:
        mon.close()
    assert server.process is not None and server.process.returncode is not None


def test_event_files_hold_exactly_the_csv_scalars(tmp_path: Path) -> None:
    model, opt, x, y = _tiny()
    with TrainingMonitor(
        model,
        tmp_path,
        "exact",
        probe=(x, y),
        optimizer=opt,
        log_every=3,
        plots=False,
        warn=False,
    ) as mon:
        for _ in range(2):
            _train(mon, model, opt, x, y, 7)
            mon.epoch_end(val_loss=1.0 / 3.0, val_acc=0.25)
    expected = _csv_series(mon.run_dir / "scalars.csv")
    events = _events(mon.run_dir)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(s, _f32(v)) for s, v in points], tag
    _contiguous([s for s, _ in expected["train/loss"]])
    assert len(expected["train/loss"]) == 14
    assert [v for _, v in expected["epoch/val_loss"]] == [1.0 / 3.0] * 2  # the CSV: float64


# --------------------------------------------------------------------------- crash safety


def _script(logdir: Path, name: str, *options: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(logdir), name, *options]


def test_sigkill_mid_run_leaves_consistent_logs(tmp_path: Path) -> None:
    command = _script(tmp_path, "crash", "--flush-secs", "0.5", "--sleep", "0.02")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        lines = LineReader(process.stdout)
        lines.wait_for(lambda line: line == "step 45", timeout=SUBPROCESS_TIMEOUT)
        # the epochs that ended at steps 19 and 39 flushed every sink
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL
    printed = [int(line.split()[1]) for line in lines.rest(timeout=30) if line.startswith("step ")]

    run_dir = tmp_path / "crash"
    rows = _assert_whole_csv(run_dir / "scalars.csv")
    csv_loss = {r["step"]: r["value"] for r in rows if r["tag"] == "train/loss"}
    _contiguous(sorted(csv_loss))
    # a step is printed after mon.step() returns: the one after may be on disk too
    assert 39 <= max(csv_loss) <= max(printed) + 1
    assert len([r for r in rows if r["tag"] == "epoch/train_loss"]) >= 2

    events = _events(run_dir)
    event_loss = {e.step: e.value for e in events.Scalars("train/loss")}
    _contiguous(sorted(event_loss))
    common = sorted(csv_loss.keys() & event_loss.keys())
    assert len(common) >= 40
    assert [event_loss[s] for s in common] == [_f32(csv_loss[s]) for s in common]


# --------------------------------------------------------------------------- write failures


@pytest.mark.parametrize("tensorboard", [True, False])
@pytest.mark.parametrize("where", ["under_a_file", "is_a_file"])
def test_unwritable_logdir_fails_at_construction(
    tmp_path: Path, where: str, tensorboard: bool
) -> None:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a regular file, not a directory\n")
    logdir = blocker / "runs" if where == "under_a_file" else blocker
    model, _, x, y = _tiny()
    with pytest.raises(MonitorWriteError, match="logdir: cannot write the run directory") as info:
        TrainingMonitor(model, logdir, "r", probe=(x, y), tensorboard=tensorboard, warn=False)
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(blocker) in str(info.value)
    assert blocker.read_text() == "a regular file, not a directory\n"


def _run_until_full(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        _script(tmp_path, "full", "--steps", "2000", *options),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 3, (result.returncode, result.stdout[-500:], result.stderr)
    record = json.loads(result.stdout.splitlines()[-1])
    return record, result.stderr


def test_disk_full_on_scalars_csv(tmp_path: Path) -> None:
    limit = 12_000
    record, stderr = _run_until_full(tmp_path, "--fsize", str(limit), "--no-tensorboard")
    assert record["error"] == "MonitorWriteError"
    assert record["errno"] == errno.EFBIG
    message = record["message"]
    assert "cannot write" in message and "scalars.csv" in message
    assert "File too large" in message and "written before are intact" in message
    assert "Traceback" not in stderr  # closing after the error raised nothing more

    path = tmp_path / "full" / "scalars.csv"
    assert path.stat().st_size <= limit
    rows = _assert_whole_csv(path)
    _contiguous(sorted(r["step"] for r in rows if r["tag"] == "train/loss"))
    # the steps in the failed flush and after it are missing, not half-written
    assert max(r["step"] for r in rows) <= record["step"]


def test_disk_full_on_the_event_file(tmp_path: Path) -> None:
    limit = 40_000
    # histograms make the event file the first to reach the limit
    record, _ = _run_until_full(tmp_path, "--fsize", str(limit), "--histogram-every", "5")
    assert record["error"] == "MonitorWriteError"
    assert record["errno"] == errno.EFBIG
    assert "TensorBoard event file" in record["message"]
    assert "File too large" in record["message"]

    run_dir = tmp_path / "full"
    (event_file,) = run_dir.glob("events.out.tfevents.*")
    assert event_file.stat().st_size == limit  # filled up to the limit
    rows = _assert_whole_csv(run_dir / "scalars.csv")
    csv_loss = {r["step"]: r["value"] for r in rows if r["tag"] == "train/loss"}
    _contiguous(sorted(csv_loss))
    # the event file may end in a torn record: the reader keeps what is whole
    event_loss = {e.step: e.value for e in _events(run_dir).Scalars("train/loss")}
    _contiguous(sorted(event_loss))
    common = sorted(csv_loss.keys() & event_loss.keys())
    assert common
    assert [event_loss[s] for s in common] == [_f32(csv_loss[s]) for s in common]


def test_disk_full_on_a_plot(tmp_path: Path) -> None:
    limit = 15_000  # the PNG plots of the first epoch are larger; scalars.csv is not yet
    record, stderr = _run_until_full(tmp_path, "--fsize", str(limit), "--no-tensorboard", "--plots")
    assert record["error"] == "MonitorWriteError"
    assert record["errno"] == errno.EFBIG
    assert f"cannot write the plots and images in {tmp_path / 'full'}" in record["message"]
    assert record["step"] == 19  # the first epoch_end
    assert "Traceback" not in stderr

    run_dir = tmp_path / "full"
    rows = _assert_whole_csv(run_dir / "scalars.csv")
    _contiguous(sorted(r["step"] for r in rows if r["tag"] == "train/loss"))
    # plots are written whole or not at all: no partial or temporary file is left
    leftovers = [p.name for p in run_dir.iterdir() if "tmp" in p.name]
    assert leftovers == []
    for png in run_dir.glob("*.png"):
        assert png.stat().st_size <= limit
        with Image.open(png) as image:
            image.verify()


def test_append_log_on_a_full_device() -> None:
    """``/dev/full`` fails every write with ENOSPC, as a full disk does."""
    log = AppendLog(Path("/dev/full"), header="a,b")
    log.append("1,2")
    with pytest.raises(MonitorWriteError, match="No space left on device") as info:
        log.flush()
    assert info.value.errno == errno.ENOSPC
    assert "the 0 line(s) written before are intact" in str(info.value)
    log.append("3,4")  # later lines are refused too: no gap in what a reader sees
    with pytest.raises(MonitorWriteError, match="No space left on device"):
        log.flush()
    log.close()  # the failure was reported: closing does not raise it again
    log.close()


def test_monitor_reports_a_full_disk_mid_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    (run_dir / "diagnostics.jsonl").symlink_to("/dev/full")
    model, opt, x, y = _tiny()
    mon = TrainingMonitor(
        model,
        tmp_path,
        "full",
        resume=True,
        log_every=1,
        flush_secs=3600,
        plots=False,
        summary=False,
        warn=False,
    )  # flushes only when told
    _train(mon, model, opt, x, y, 2)
    mon.step(loss=torch.tensor(float("nan")))  # a diagnostic to write
    with pytest.raises(MonitorWriteError, match=r"diagnostics\.jsonl: No space left") as info:
        mon.flush()
    assert info.value.errno == errno.ENOSPC
    mon.close()  # closes every file without raising the reported failure again
    rows = _assert_whole_csv(run_dir / "scalars.csv")
    assert sorted(r["step"] for r in rows if r["tag"] == "train/loss") == [0, 1, 2]
    # the event file was still flushed and closed after the other file failed
    assert [e.step for e in _events(run_dir).Scalars("train/loss")] == [0, 1, 2]
