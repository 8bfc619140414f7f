"""Helpers the benchmark scripts share: process memory probes (Linux /proc) and
plain-text tables. Imported as ``_common`` (the scripts run from this directory)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from typing import Any

__all__ = ["ms", "peak", "reset_peak", "rss", "table", "trim"]

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
