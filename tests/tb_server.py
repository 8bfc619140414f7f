"""Test helpers for real TensorBoard servers and other child processes: start one
on a free port, talk to its HTTP API, and stop exactly the process started."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pytest

#: The ``tensorboard`` script next to the test interpreter (the project's venv).
TENSORBOARD = Path(sys.executable).with_name("tensorboard")
#: Seconds a server may take to answer (a loaded 2-core machine needs 5-20 s).
START_TIMEOUT = 120.0

# Local servers only: never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 10.0) -> Any:
    with _OPENER.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            response.read()
    except OSError:
        return False
    return True


def stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Terminate the process we started, wait, and kill it if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class TensorBoardServer:
    """``tensorboard --logdir DIR --host 127.0.0.1 --port P --reload_interval 1``.

    Its output goes to ``log``; use as a context manager (stops in ``__exit__``).
    """

    def __init__(self, logdir: Path, log: Path) -> None:
        if not TENSORBOARD.is_file():
            pytest.fail(f"{TENSORBOARD} is missing: pip install tensorboard into the test venv")
        self.logdir = logdir
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> TensorBoardServer:
        # A free port can be taken between the check and the bind: try a few.
        for _attempt in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            command = [str(TENSORBOARD), "--logdir", str(self.logdir), "--host", "127.0.0.1"]
            command += ["--port", str(port), "--reload_interval", "1"]
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_until_answering():
                return self
        pytest.fail(f"TensorBoard did not start 3 times; its output:\n{self.output()}")

    def _wait_until_answering(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            if answers(self.url + "/data/runs"):
                return True
            time.sleep(0.25)
        self.__exit__()
        pytest.fail(
            f"TensorBoard did not answer on {self.url} within {START_TIMEOUT:.0f} s; "
            f"its output:\n{self.output()}"
        )

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop(self.process)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return get_json(f"{self.url}{path}{query}")

    def scalars(self, run: str, tag: str) -> list[list[float]]:
        """``[[wall_time, step, value], ...]`` of one series."""
        data: list[list[float]] = self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
        return data

    def poll(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait until ``check()`` holds (the server reloads every second)."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"TensorBoard never showed {what}; its output:\n{self.output()}")
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"TensorBoard exited while waiting for {what}:\n{self.output()}")
            time.sleep(0.25)


class LineReader:
    """Read a child's stdout lines on a thread, so waiting for one can time out."""

    def __init__(self, stream: TextIO) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: TextIO) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def rest(self, timeout: float) -> list[str]:
        """Every line seen, after reading to the end of the stream (the process ended)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"the stream did not end within {timeout:.0f} s")
            if line is None:
                self.lines.put(None)  # later calls see the end too
                return list(self.seen)
            self.seen.append(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first line (from now on) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no expected line within {timeout:.0f} s; last: {self.seen[-5:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the process ended before the expected line; last: {self.seen[-5:]}")
            self.seen.append(line)
            if predicate(line):
                return line
