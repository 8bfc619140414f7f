"""Plain-file sinks of a run: append-only logs that a crash or a full disk cannot
corrupt, and the run's ``index.html``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from netsight.errors import MonitorWriteError

__all__ = [
    "AppendLog",
    "EventWriter",
    "MonitorWriteError",
    "file_errors",
    "read_scalars",
    "render_index",
    "trim_torn_line",
]


class AppendLog:
    """An append-only text file written in whole lines.

    Lines are buffered in memory and written by :meth:`flush` with one ``os.write``
    loop on a raw descriptor, then ``fsync``-free (the kernel keeps them if the
    process is killed). If a write fails part-way (disk full), the file is truncated
    back to where the flush began, so a reader never sees half a line, and
    :class:`MonitorWriteError` says what happened. After that the log takes no more
    lines: every later :meth:`flush` raises the same error, so the file stays a
    prefix of the run with no gap in it.
    """

    def __init__(self, path: Path, header: str | None = None) -> None:
        self.path = path
        self._pending: list[str] = []
        self._failed: MonitorWriteError | None = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as error:
            raise MonitorWriteError(
                error.errno, f"cannot write {path}: {error.strerror}"
            ) from error
        self.lines = 0
        if header is not None and os.fstat(self._fd).st_size == 0:
            self._pending.append(header)

    def append(self, line: str) -> None:
        self._pending.append(line)

    def flush(self) -> None:
        if self._failed is not None:
            # Writing again after a failed flush would leave a gap in the file (a
            # later, smaller flush may fit): the file stays a whole prefix of the run.
            self._pending.clear()
            raise MonitorWriteError(self._failed.errno, self._failed.strerror)
        if not self._pending or self._fd < 0:
            return
        data = "".join(line if line.endswith("\n") else line + "\n" for line in self._pending)
        raw = data.encode("utf-8")
        start = os.fstat(self._fd).st_size
        view = memoryview(raw)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            self._pending.clear()
            self._failed = MonitorWriteError(
                error.errno,
                f"cannot write {self.path}: {error.strerror}; the {self.lines} line(s) written "
                f"before are intact, the last {len(raw)} bytes were not written",
            )
            raise self._failed from error
        self.lines += len(self._pending)
        self._pending.clear()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if self._failed is None:  # a failure was raised once already
                    self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1


class EventWriter:
    """A ``SummaryWriter`` whose write errors are :class:`MonitorWriteError`.

    ``SummaryWriter`` writes from a background thread; when a write fails there (a
    full disk), the thread dies and the *next* call in the training loop raises the
    bare ``OSError``, and ``close()`` raises it again. This wrapper turns those into
    :class:`MonitorWriteError` naming the run's event files. After a failure every
    ``add_*`` and ``flush`` call raises it again (the event file may end in a torn
    record, which TensorBoard's readers skip), and ``close`` only releases the file.
    """

    def __init__(self, writer: Any, run_dir: Path) -> None:
        self._writer = writer
        self._run_dir = run_dir
        self._failed: MonitorWriteError | None = None

    def _error(self, error: OSError) -> MonitorWriteError:
        if self._failed is None:
            self._failed = MonitorWriteError(
                error.errno,
                f"cannot write the TensorBoard event file in {self._run_dir}: "
                f"{error.strerror or error}; the events written before are readable, "
                f"later ones are not written",
            )
        return self._failed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # also keeps copy/pickle from recursing before __init__
            raise AttributeError(name)
        method = getattr(self._writer, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._failed is not None:
                raise MonitorWriteError(self._failed.errno, self._failed.strerror)
            try:
                return method(*args, **kwargs)
            except OSError as error:
                raise self._error(error) from error

        return call

    def close(self) -> None:
        if self._failed is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            return
        try:
            self._writer.close()
        except OSError as error:
            raise self._error(error) from error


@contextlib.contextmanager
def file_errors(what: str) -> Iterator[None]:
    """Report an ``OSError`` from writing ``what`` (plots, images, the summary, written
    whole or not at all) as :class:`MonitorWriteError` naming it."""
    try:
        yield
    except MonitorWriteError:
        raise
    except OSError as error:
        raise MonitorWriteError(
            error.errno,
            f"cannot write {what}: {error.strerror or error}; earlier files are intact",
        ) from error


def csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, allow_nan=True, sort_keys=False) + "\n"


def read_scalars(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a run's ``scalars.csv`` (``step``, ``epoch``, ``tag``, ``value``,
    ``wall_time``), numbers parsed; a torn last line (a killed writer) is skipped."""
    rows: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                rows.append(
                    {
                        "step": int(row["step"]),
                        "epoch": int(row["epoch"]),
                        "tag": row["tag"],
                        "value": float(row["value"]),
                        "wall_time": float(row["wall_time"]),
                    }
                )
            except (TypeError, ValueError, KeyError):
                continue
    return rows


def trim_torn_line(path: Path) -> int:
    """Cut a torn last line (a writer killed mid-write) off the append-only log at
    ``path``, so the next line appended starts on a line of its own.

    Returns:
        How many bytes were cut (0 when the file ends in a newline, is empty, is
        missing or is not a regular file).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0
        size = info.st_size
        end = size
        chunk = 4096
        while end > 0:  # scan back for the last newline
            start = max(0, end - chunk)
            data = os.pread(fd, end - start, start)
            cut = data.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end < size:
            os.ftruncate(fd, end)
        return size - end
    finally:
        os.close(fd)


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ name }} - netsight run</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{color:#a40}.ok{color:#060}img{max-width:100%;border:1px solid #ddd;margin:.3rem 0}
</style></head><body>
<h1>{{ name }}</h1>
<p>{{ epochs }} epoch(s), {{ steps }} step(s); {{ status }}.
TensorBoard: <code>netsight tensorboard {{ logdir }}</code></p>
<h2>Diagnostics</h2>
{% if diagnostics %}<ul>{% for d in diagnostics %}
<li class="warn" data-kind="{{ d.kind }}">
step {{ d.step }}, epoch {{ d.epoch }}: {{ d.message }}</li>
{% endfor %}</ul>{% else %}<p class="ok">No problems found.</p>{% endif %}
<h2>Metrics by epoch</h2>
{% if history %}<table><tr><th>epoch</th>{% for k in columns %}<th>{{ k }}</th>{% endfor %}</tr>
{% for row in history %}<tr><td>{{ loop.index }}</td>{% for k in columns %}
<td>{{ "%.4g"|format(row[k]) if k in row else "" }}</td>{% endfor %}</tr>{% endfor %}
</table>{% else %}<p>No epoch finished yet.</p>{% endif %}
{% for title, file in images %}<h2>{{ title }}</h2><img src="{{ file }}" alt="{{ title }}">
{% endfor %}
<p>Every scalar: <a href="scalars.csv">scalars.csv</a>; diagnostics:
<a href="diagnostics.jsonl">diagnostics.jsonl</a>.</p>
</body></html>
"""


def render_index(
    *,
    name: str,
    logdir: str,
    epochs: int,
    steps: int,
    status: str,
    history: Sequence[Mapping[str, float]],
    diagnostics: Iterable[Any],
    images: Sequence[tuple[str, str]],
) -> str:
    """The run's ``index.html`` (names from the model are escaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    columns = sorted({k for row in history for k in row})
    return env.from_string(_INDEX).render(
        name=name,
        logdir=logdir,
        epochs=epochs,
        steps=steps,
        status=status,
        history=history,
        columns=columns,
        diagnostics=list(diagnostics),
        images=images,
    )
