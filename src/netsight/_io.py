"""Writing output files whole or not at all."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "safe_filename", "save_figure"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, which is flushed to
    disk and then renamed over ``path`` with :func:`os.replace`: a reader sees the
    old file or the new one, never half of it, and a failure leaves no partial
    file behind. The new file gets the usual permissions (``0o666`` minus the umask).

    Args:
        path: the destination; its directory must exist.
        data: the content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: the destination's directory does not exist.
        OSError: the file cannot be written (permissions, disk full, ...).
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {target}: directory {directory} does not exist; create it first"
        )
    temp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: the destination; its directory must exist.
        text: the content, written with ``\\n`` line endings.
        encoding: the text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, text.encode(encoding))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, default: str = "model") -> str:
    """A file-name-safe version of a layer or model name (``layer1.0`` stays,
    ``<script>/x`` becomes ``_script_x``); never empty, never hidden, at most 120 chars."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or default
    return cleaned[:120]


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG (or the suffix's format) and write it atomically."""
    target = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=target.suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write_bytes(target, buffer.getvalue())
