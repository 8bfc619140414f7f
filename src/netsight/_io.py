"""Writing output files whole or not at all, and directories of them with a manifest.

One rule for every directory netsight writes (:func:`write_directory`): the files
are rendered first, checked against what is already there (existing netsight output
is never silently replaced: ``overwrite=True`` says it may be), written to a staging
directory, and only then moved into place, the manifest last.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "check_overwrite",
    "figure_bytes",
    "safe_filename",
    "save_figure",
    "unique_names",
    "versions",
    "write_directory",
]


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
    try:
        _write_synced(temp, data)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return target


def _write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) with ``data``, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


def unique_names(names: Iterable[str], default: str = "model") -> list[str]:
    """:func:`safe_filename` of each name, made unique in order (``cat``, ``cat_2``)."""
    found: list[str] = []
    for name in names:
        base = safe_filename(name, default=default)
        stem, n = base, 1
        while stem in found:
            n += 1
            stem = f"{base}_{n}"
        found.append(stem)
    return found


def figure_bytes(fig: Any, format: str = "png", *, dpi: int = 100) -> bytes:
    """A matplotlib figure rendered to bytes (PNG by default)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG (or the suffix's format) and write it atomically."""
    target = Path(path)
    return atomic_write_bytes(
        target, figure_bytes(fig, target.suffix.lstrip(".") or "png", dpi=dpi)
    )


def versions() -> dict[str, str]:
    """The library versions a manifest records: netsight, torch and torchvision."""
    import torch
    import torchvision

    from netsight._version import __version__

    return {
        "netsight_version": __version__,
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
    }


def _listed(names: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_overwrite(
    directory: str | os.PathLike[str], names: Iterable[str], *, what: str, overwrite: bool
) -> None:
    """Refuse to replace netsight output: raise unless none of ``names`` is in ``directory``.

    Args:
        directory: where the files would go.
        names: the file names about to be written (the manifest among them).
        what: the kind of output, for the message (``"cam"``, ``"filters"``, ...).
        overwrite: replacing is allowed; nothing is checked.

    Raises:
        NotADirectoryError: ``directory`` exists and is not a directory.
        FileExistsError: one of ``names`` already exists there; the message names them.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory")
    if overwrite or not target.is_dir():
        return
    existing = [name for name in names if (target / name).exists()]
    if existing:
        raise FileExistsError(
            f"{target} already holds netsight {what} output ({_listed(existing)}); pass "
            f"overwrite=True (on the command line: --overwrite) to replace it, or write to "
            f"another directory"
        )


def write_directory(
    directory: str | os.PathLike[str],
    files: Mapping[str, bytes],
    *,
    what: str,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``files`` (name -> bytes; the manifest last) into ``directory``, whole or not at all.

    Existing output is checked first (:func:`check_overwrite`); every file then goes
    to a staging directory inside ``directory`` and is flushed to disk, and only when
    all are there are they renamed into place, in order, so the manifest arrives
    last. A failure before the renames leaves ``directory`` as it was (a directory
    this call created is removed again).

    Returns:
        The paths written, in the order of ``files``.

    Raises:
        NotADirectoryError: ``directory`` exists and is not a directory.
        FileExistsError: a file of this output is already there and ``overwrite`` is false.
        ValueError: a name that is not a plain file name.
        OSError: the files cannot be written.
    """
    target = Path(directory)
    bad = [name for name in files if not name or Path(name).name != name or name in (".", "..")]
    if bad:
        raise ValueError(f"files: expected plain file names, got {bad}")
    check_overwrite(target, files, what=what, overwrite=overwrite)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".netsight-", suffix=".tmp", dir=target))
    written: list[Path] = []
    try:
        for name, data in files.items():
            _write_synced(staging / name, data)
        for name in files:
            os.replace(staging / name, target / name)
            written.append(target / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not written:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    staging.rmdir()
    return written
