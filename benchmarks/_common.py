"""Helpers the benchmark scripts share: the conditions of a run (machine, load,
versions), process memory probes (Linux /proc) and plain-text tables. Imported as
``_common`` (the scripts run from this directory)."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import importlib.metadata
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Conditions", "conditions", "ms", "peak", "reset_peak", "rss", "table", "trim"]

_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL("libc.so.6")


def trim() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc malloc_trim)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss() -> int:
    """The process's resident set, in bytes."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False if the
    kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak() -> int:
    """The process's resident high-water mark (VmHWM), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds with a thousands separator ("-" for None)."""
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# --------------------------------------------------------------------------- run conditions

LOAD_SAMPLE_S = 5.0  # how often the load average is sampled during a run


def _cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (the platform's name elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    """An installed distribution's version, "not installed" when it is missing."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    """The benchmarked checkout's commit (``+dirty`` with uncommitted changes), if any."""
    root = Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _dot_version() -> str:
    """Graphviz ``dot -V`` ("not found" without Graphviz)."""
    dot = shutil.which("dot")
    if dot is None:
        return "not found"
    try:
        out = subprocess.run([dot, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        return "?"
    words = out.split()
    return words[words.index("version") + 1] if "version" in words else out.strip()


class Conditions:
    """What a benchmark ran on and under: machine, load and versions.

    Made by :func:`conditions` at the start of a run, which also starts sampling
    the 1-minute load average every ``LOAD_SAMPLE_S`` seconds in a daemon thread;
    :meth:`finish` stops the sampler and records the load at the end. ``line()``
    is the one-paragraph description BENCHMARKS.md keeps next to each table.
    """

    def __init__(self, peers: Sequence[str], extra: dict[str, str] | None = None) -> None:
        import torch

        import netsight

        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.cpu = _cpu_model()
        self.cpus = os.cpu_count() or 0
        try:
            self.cpus_usable = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            self.cpus_usable = self.cpus
        self.capability = str(torch.backends.cpu.get_cpu_capability())
        self.threads = torch.get_num_threads()
        self.load_start = os.getloadavg()
        self.load_end: tuple[float, float, float] | None = None
        self.load_samples = [self.load_start[0]]
        commit = _git_commit()
        self.versions = {
            "python": platform.python_version(),
            "netsight": netsight.__version__ + (f" ({commit})" if commit else ""),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
        }
        for name in peers:
            if name == "dot":
                self.versions["Graphviz dot"] = _dot_version()
            else:
                self.versions[name] = _version(name)
        self.versions.update(extra or {})
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_S):
            self.load_samples.append(os.getloadavg()[0])

    def finish(self) -> None:
        """Record the load at the end, stop the sampler and print :meth:`line`
        (idempotent)."""
        if self.load_end is None:
            self._stop.set()
            self._sampler.join()
            self.load_end = os.getloadavg()
            self.load_samples.append(self.load_end[0])
            print(f"\nRun conditions: {self.line()}", flush=True)

    def line(self) -> str:
        """Machine, threads, load and versions in one paragraph (markdown-ready)."""
        cpus = f"{self.cpus} logical CPUs"
        if self.cpus_usable != self.cpus:
            cpus += f" ({self.cpus_usable} usable)"
        load = f"load average (1 min) {self.load_start[0]:.2f} at the start"
        if self.load_end is not None:
            load += (
                f", {self.load_end[0]:.2f} at the end, {min(self.load_samples):.2f}-"
                f"{max(self.load_samples):.2f} sampled every {LOAD_SAMPLE_S:.0f} s"
            )
        versions = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        return (
            f"{self.started:%Y-%m-%d %H:%M} UTC; CPU {self.cpu}, {cpus}, torch CPU capability "
            f"{self.capability}, {self.threads} torch thread{'s' if self.threads != 1 else ''}; "
            f"{load}; {versions}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The same, for ``--json`` output."""
        return {
            "started_utc": self.started.isoformat(timespec="seconds"),
            "cpu": self.cpu,
            "cpus": self.cpus,
            "cpus_usable": self.cpus_usable,
            "cpu_capability": self.capability,
            "torch_threads": self.threads,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "load_min": min(self.load_samples),
            "load_max": max(self.load_samples),
            "versions": self.versions,
        }


def conditions(peers: Sequence[str] = (), extra: dict[str, str] | None = None) -> Conditions:
    """Record and print the conditions of a benchmark run; call ``finish()`` at its end.

    Every benchmark script calls this once, after setting torch's thread count, and
    prints ``finish()``'s :meth:`Conditions.line` next to its tables.

    Args:
        peers: distribution names of the compared libraries whose versions to record
            (``"dot"`` for the Graphviz binary).
        extra: other facts to print with the versions (name -> value).

    Returns:
        The started :class:`Conditions`.
    """
    found = Conditions(peers, extra)
    print(f"Run conditions (start): {found.line()}", flush=True)
    return found
