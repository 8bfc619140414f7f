"""``netsight tensorboard``: TensorBoard on a log directory, listening on 127.0.0.1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from netsight.cli import common

__all__ = ["COMMAND"]


#: Seconds ``netsight tensorboard`` waits for the server to answer.
_TENSORBOARD_START_TIMEOUT = 120.0


def _port(text: str) -> int:
    if not text.isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("logdir", metavar="DIR", help="the log directory (TensorBoard's --logdir)")
    p.add_argument(
        "--port", type=_port, metavar="P", help="port on 127.0.0.1 (default: a free one)"
    )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(process: Any, url: str, port_given: bool) -> None:
    """Return once ``url`` answers; raise if the server exits or never answers."""
    import time
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxy
    deadline = time.monotonic() + _TENSORBOARD_START_TIMEOUT
    while True:
        code = process.poll()
        if code is not None:
            hint = " (is the port in use? choose another --port, or leave it out)"
            raise common.UsageError(
                f"TensorBoard exited with code {code} before it answered on {url}; its "
                f"messages are above{hint if port_given else ''}"
            )
        try:
            with opener.open(url + "data/runs", timeout=5) as response:
                response.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                seconds = _TENSORBOARD_START_TIMEOUT
                raise TimeoutError(
                    f"TensorBoard did not answer on {url} within {seconds:.0f} s"
                ) from None
            time.sleep(0.25)


def _stop_process(process: Any) -> None:
    """Stop the server this command started: terminate, then kill if it lingers."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import threading

    logdir = Path(args.logdir)
    if not logdir.is_dir():
        what = "does not exist" if not logdir.exists() else "is not a directory"
        raise common.UsageError(f"{args.logdir} {what}; expected the log directory of your runs")
    if next(logdir.rglob("events.out.tfevents.*"), None) is None:
        print(
            f"netsight: note: no TensorBoard event files under {logdir} yet; "
            f"runs appear as they are written",
            file=sys.stderr,
        )
    port = args.port if args.port is not None else _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    print(f"netsight: starting TensorBoard for {logdir} ...", file=sys.stderr)
    # SIGTERM stops the server too, as Ctrl-C does (not only this process).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        _wait_for_server(process, url, port_given=args.port is not None)
        print(f"TensorBoard: {url} (Ctrl-C to stop)", flush=True)
        code = process.wait()
        if code != 0:
            raise common.UsageError(f"TensorBoard exited with code {code}; its messages are above")
        return 0
    except KeyboardInterrupt:
        print("netsight: TensorBoard stopped", file=sys.stderr)
        return 0
    finally:
        if process is not None:
            _stop_process(process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


COMMAND = common.Command(
    "tensorboard",
    "start TensorBoard on a log directory, on 127.0.0.1",
    configure,
    run,
    description="Start TensorBoard on DIR, listening on 127.0.0.1 only (a free port "
    "unless --port is given), print its URL once it answers, and keep it running "
    "until Ctrl-C.",
)
