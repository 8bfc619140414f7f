"""``netsight runs`` and ``netsight tensorboard``, and the library's
:func:`netsight.monitor.runs.list_runs` behind the first, on runs written by a real
:class:`TrainingMonitor`; the tensorboard subcommand runs as a real subprocess."""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsight.cli import main
from netsight.monitor import TrainingMonitor, read_scalars
from netsight.monitor.runs import RunInfo, list_runs, read_run
from tb_server import START_TIMEOUT, LineReader, answers, get_json, stop


def _train_run(
    logdir: Path, name: str, epochs: int, steps: int, nan_at: int | None = None
) -> TrainingMonitor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with TrainingMonitor(
        model, logdir, name, optimizer=opt, log_every=2, plots=False, summary=False, warn=False
    ) as mon:
        for epoch in range(epochs):
            for i in range(steps):
                out = model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                logged = torch.tensor(math.nan) if epoch * steps + i == nan_at else loss
                mon.step(loss=logged, outputs=out, targets=y)
                opt.step()
                opt.zero_grad()
            mon.epoch_end(val_loss=1.0 - 0.1 * epoch, val_acc=0.5 + 0.1 * epoch)
    return mon


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _train_run(root, "alpha", epochs=2, steps=4)
    _train_run(root, "beta", epochs=1, steps=3, nan_at=1)
    (root / "notes").mkdir()  # not a run: no scalars.csv
    (root / "notes" / "readme.txt").write_text("hello\n")
    return root


# --------------------------------------------------------------------------- list_runs


def test_list_runs_reads_what_the_monitor_wrote(tmp_path: Path) -> None:
    alpha = _train_run(tmp_path, "alpha", epochs=2, steps=4)
    beta = _train_run(tmp_path, "beta", epochs=1, steps=3, nan_at=1)
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["alpha", "beta"]
    for run, mon in zip(runs, (alpha, beta), strict=True):
        assert run.path == mon.run_dir
        assert run.steps == mon.global_step
        assert run.epochs == mon.epoch == len(mon.history)
        assert run.metrics == pytest.approx(mon.history[-1], nan_ok=True)
        assert run.diagnostics == dict(Counter(d.kind for d in mon.diagnostics))
        rows = read_scalars(mon.run_dir / "scalars.csv")
        losses = [r for r in rows if r["tag"] == "train/loss"]
        assert run.last_loss == losses[-1]["value"]
        assert run.updated == max(r["wall_time"] for r in rows)
    assert runs[0].metrics["val_loss"] == pytest.approx(0.9)
    assert runs[0].diagnostics == {}
    assert runs[1].diagnostics == {"nonfinite_loss": 1}
    assert math.isnan(runs[1].metrics["train_loss"])  # a NaN step makes the epoch mean NaN


def test_list_runs_nested_and_a_run_directory_itself(logdir: Path, tmp_path: Path) -> None:
    shutil.copytree(logdir / "alpha", tmp_path / "group" / "a1")
    shutil.copytree(logdir / "beta", tmp_path / "b0")
    assert [r.name for r in list_runs(tmp_path)] == ["b0", "group/a1"]
    (itself,) = list_runs(tmp_path / "group" / "a1")
    assert itself.name == "."
    assert itself.steps == 8


def test_list_runs_skips_torn_last_lines(logdir: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    shutil.copytree(logdir / "beta", run)
    before = read_run(run)
    with open(run / "scalars.csv", "a", encoding="utf-8") as f:
        f.write("99,9,epoch/val_loss,0.12")  # a writer killed mid-line
    with open(run / "diagnostics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "overfit')
    after = read_run(run)
    assert after.diagnostics == before.diagnostics == {"nonfinite_loss": 1}
    assert after.steps == before.steps


def test_list_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="does not exist"):
        list_runs(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        list_runs(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match=r"expected a scalars\.csv"):
        read_run(tmp_path)
    assert list_runs(tmp_path) == []


def test_run_info_to_dict_is_strict_json() -> None:
    info = RunInfo("r", Path("r"), 3, 1, {"train_loss": math.nan, "val_acc": 0.5}, math.inf)
    record = json.loads(json.dumps(info.to_dict(), allow_nan=False))
    assert record["metrics"] == {"train_loss": None, "val_acc": 0.5}
    assert record["last_loss"] is None


# --------------------------------------------------------------------------- netsight runs


def test_runs_table(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(logdir)]) == 0
    out = capsys.readouterr().out
    for text in ("alpha", "beta", "steps", "epochs", "last loss", "val_loss", "val_acc"):
        assert text in out, text
    assert "notes" not in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    alpha = [cell.strip() for cell in lines["alpha"].split("│")[1:-1]]
    beta = [cell.strip() for cell in lines["beta"].split("│")[1:-1]]
    header = [
        "run", "steps", "epochs", "last loss", "train_loss", "train_accuracy", "val_loss",
        "val_acc", "diagnostics", "updated",
    ]  # fmt: skip
    assert len(alpha) == len(header)
    row = dict(zip(header, alpha, strict=True))
    run = read_run(logdir / "alpha")
    assert row["steps"] == "8" and row["epochs"] == "2"
    assert row["val_loss"] == "0.9" and row["val_acc"] == "0.6"
    assert row["train_loss"] == f"{run.metrics['train_loss']:.4g}"
    assert row["diagnostics"] == "none"
    assert dict(zip(header, beta, strict=True))["diagnostics"] == "nonfinite_loss 1"


def test_runs_json(logdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(logdir), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records == [run.to_dict() for run in list_runs(logdir)]
    assert [r["name"] for r in records] == ["alpha", "beta"]
    assert records[1]["diagnostics"] == {"nonfinite_loss": 1}
    assert records[1]["metrics"]["train_loss"] is None  # NaN: JSON has no NaN


def test_runs_empty_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no runs in" in captured.err
    assert main(["runs", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "netsight: error: logdir" in capsys.readouterr().err


# --------------------------------------------------------------------------- netsight tensorboard


def test_tensorboard_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tensorboard", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for port in ("0", "70000", "http"):
        assert main(["tensorboard", str(tmp_path), "--port", port]) == 2
        assert "expected a port number" in capsys.readouterr().err


#: ``netsight`` as ``python -m netsight`` runs it, but with Ctrl-C's handler installed:
#: a shell's background job (CI runners, this tool's own runner) inherits SIGINT
#: ignored, and Python then leaves it ignored.
_NETSIGHT_WITH_CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from netsight.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _netsight_tensorboard(logdir: Path, log: Path, *options: str) -> subprocess.Popen[str]:
    with open(log, "w", encoding="utf-8") as err:
        return subprocess.Popen(
            [sys.executable, "-c", _NETSIGHT_WITH_CTRL_C, "tensorboard", str(logdir), *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            bufsize=1,
        )


@pytest.mark.xdist_group("tensorboard")
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_tensorboard_command_serves_and_stops(
    logdir: Path, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    log = tmp_path / "stderr.txt"
    process = _netsight_tensorboard(logdir, log)
    try:
        assert process.stdout is not None
        line = LineReader(process.stdout).wait_for(
            lambda text: text.startswith("TensorBoard: "), timeout=START_TIMEOUT
        )
        url = line.split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert line.endswith("(Ctrl-C to stop)")
        assert sorted(get_json(url + "data/runs")) == ["alpha", "beta"]
        tags: dict[str, Any] = get_json(url + "data/plugin/scalars/tags")
        assert "epoch/val_loss" in tags["alpha"]
        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
    finally:
        stop(process)
    err = log.read_text(encoding="utf-8")
    assert "netsight: starting TensorBoard" in err
    assert "netsight: TensorBoard stopped" in err
    # the server went with it: netsight stopped the process it started
    deadline = time.monotonic() + 10
    while answers(url + "data/runs") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers(url + "data/runs")


@pytest.mark.xdist_group("tensorboard")
def test_tensorboard_command_port_in_use(logdir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["tensorboard", str(logdir), "--port", str(port)]) == 2
    err = capfd.readouterr().err  # ours and the server's own messages
    assert "TensorBoard exited with code" in err
    assert f"before it answered on http://127.0.0.1:{port}/" in err
    assert "is the port in use?" in err
    assert "could not bind to port" in err
