"""One progress display for long work: a rich bar on a terminal, plain lines elsewhere.

Library calls stay quiet by default (``enabled=False``); the CLI, the demo and the
report turn progress on. When standard error is a terminal, a transient rich bar is
drawn. When it is not (a log file, a pipe, CI), the bar would print nothing until the
end, so plain lines are written instead, flushed at once: one when the work starts,
then at most one every :data:`PLAIN_EVERY_S` seconds with the count, the elapsed time,
the rate and an estimate of the time left, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["PLAIN_EVERY_S", "ProgressBar"]

#: Seconds between two plain progress lines (when standard error is not a terminal).
PLAIN_EVERY_S = 10.0

# rich allows one live display at a time: a bar opened while another is shown (the
# report's sections, and the CAM methods inside one) becomes a second task of it.
_live: Any = None
_users = 0


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressBar:
    """Progress over ``total`` steps (``None``: unknown) labelled ``description``.

    Does nothing when ``enabled`` is false. ``stream`` (default: standard error) and
    ``every`` (default :data:`PLAIN_EVERY_S`) shape the plain lines; ``plain`` forces
    them (``True``) or the rich bar (``False``) instead of asking ``stream.isatty()``.
    """

    def __init__(
        self,
        enabled: bool,
        total: int | None,
        description: str,
        *,
        stream: TextIO | None = None,
        every: float = PLAIN_EVERY_S,
        plain: bool | None = None,
    ) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._stream: TextIO | None = None
        self._total = total
        self._label = description
        self._done = 0
        self._every = every
        self._started = time.monotonic()
        self._last = self._started
        if not enabled:
            return
        stream = stream if stream is not None else sys.stderr
        if plain is None:
            plain = not _is_terminal(stream)
        if plain:
            self._stream = stream
            self._line(f"{description}: started" + (f", {total} steps" if total else ""))
            return
        global _live, _users
        if _live is None:
            from rich.progress import Progress

            _live = Progress(transient=True)
            _live.start()
        _users += 1
        self._progress = _live
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, text: str) -> None:
        assert self._stream is not None
        self._stream.write(text + "\n")
        self._stream.flush()

    def _status(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self._started
        count = f"{self._done}/{self._total}" if self._total else f"{self._done}"
        parts = [f"{self._label}: {'done, ' if done else ''}{count}", _duration(elapsed)]
        if self._done and elapsed > 0:
            rate = self._done / elapsed
            parts.append(f"{rate:,.1f}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            if self._total and self._done < self._total and not done:
                parts.append(f"about {_duration((self._total - self._done) / rate)} left")
        return ", ".join(parts)

    def advance(self, description: str | None = None) -> None:
        """One step done; ``description`` replaces the label when given."""
        self._done += 1
        if description is not None:
            self._label = description
        if self._progress is not None:
            if description is None:
                self._progress.advance(self._task)
            else:
                self._progress.update(self._task, advance=1, description=description)
        elif self._stream is not None:
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                self._line(self._status())

    def note(self, text: str) -> None:
        """A line that stays visible (an epoch's result, say), above the bar."""
        if self._progress is not None:
            self._progress.console.print(text)
        elif self._stream is not None:
            self._line(text)

    def close(self) -> None:
        """Stop: the rich bar disappears; in plain mode a last line says what was done."""
        global _live, _users
        if self._progress is not None:
            self._progress.remove_task(self._task)
            self._progress = None
            _users -= 1
            if _users == 0 and _live is not None:
                _live.stop()
                _live = None
        elif self._stream is not None:
            self._line(self._status(done=True))
            self._stream = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False
