"""One writer per run directory: an exclusive ``flock`` on a lock file in it.

The lock is ``fcntl.flock`` on ``RUN_DIR/.netsight.lock``, which also holds the
holder's PID, host name and start time (JSON) for the error a second writer gets.
The kernel drops a ``flock`` when its holder dies, so a run killed with ``kill -9``
blocks nobody: the next writer takes the lock and rewrites the file. ``flock``
belongs to the open file, which ``fork`` shares: a forked child (a ``DataLoader``
worker under the ``fork`` start method) keeps the lock held until it exits.

Example:
    >>> lock = RunLock.acquire(Path("runs/exp1"))   # RunInUseError if taken
    >>> lock.release()                             # also removes the file
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from netsight.errors import RunInUseError

__all__ = ["LOCK_NAME", "RunInUseError", "RunLock", "read_holder"]

#: The lock file's name inside a run directory (hidden: run listings skip it).
LOCK_NAME = ".netsight.lock"

#: ``flock`` errors that mean "this file system cannot lock", not "already locked".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def read_holder(path: Path) -> dict[str, Any]:
    """The holder record of a lock file (``{}`` when missing, empty or torn)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _in_use(run_dir: Path, path: Path) -> RunInUseError:
    holder: dict[str, Any] = {}
    for _ in range(20):  # the holder writes its record just after taking the lock
        holder = read_holder(path)
        if holder:
            break
        time.sleep(0.05)
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and isinstance(host, str):
        who = f"PID {pid} on host {host}, since {holder.get('started', '?')}"
        if host == socket.gethostname() and not _pid_alive(pid):
            who += (
                f"; PID {pid} is no longer running, so a process it forked (a DataLoader "
                f"worker?) still has the lock file open: stop that process"
            )
    else:
        who = "another process (it has not written its PID yet)"
    return RunInUseError(
        f"run directory {run_dir} is in use by another TrainingMonitor: {who} "
        f"(lock file {path}). A run directory takes one writer at a time: wait for "
        f"that one to finish or stop it, or log to another run name",
        run_dir,
        holder,
    )


class RunLock:
    """An exclusive lock on one run directory, held until :meth:`release` (or until
    the process ends, however it ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._identity = _identity(os.fstat(fd))
        # a monitor dropped without close() still lets go when it is collected
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock | None:
        """Take the lock of ``run_dir`` (an existing directory) and write the holder's
        PID, host and start time into it.

        Returns:
            The lock, or ``None`` (with a warning) where the platform or the file
            system has no ``flock``: the run is then written unlocked.

        Raises:
            RunInUseError: another process (or another monitor in this one) holds it.
            OSError: the lock file cannot be created.
        """
        if sys.platform == "win32":  # pragma: no cover - no fcntl there
            warnings.warn(
                f"run directory {run_dir} is not locked (no fcntl.flock on Windows): "
                f"make sure one process at a time writes to it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        import fcntl

        path = run_dir / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _in_use(run_dir, path) from None
            except OSError as error:
                os.close(fd)
                if error.errno not in _NO_LOCKING:
                    raise
                warnings.warn(
                    f"run directory {run_dir} is not locked: its file system cannot "
                    f"flock ({error.strerror}); make sure one process at a time writes to it",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return None
            # The holder before us may have removed the file between our open and our
            # flock: then we locked a file nobody else will ever see. Start again.
            try:
                current = _identity(os.stat(path))
            except FileNotFoundError:
                current = None
            if current == _identity(os.fstat(fd)):
                break
            os.close(fd)
        lock = cls(path, fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_unix": round(time.time(), 3),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        except OSError:
            lock.release()
            raise
        return lock

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Remove the lock file and let go of the lock (idempotent)."""
        if not self._finalizer.alive:
            return
        import fcntl

        try:
            # remove the file while still holding it, so no one locks a removed file
            with contextlib.suppress(OSError):
                if _identity(os.stat(self.path)) == self._identity:
                    self.path.unlink()
            # LOCK_UN also releases it for forked children sharing the open file
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._finalizer()


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)
