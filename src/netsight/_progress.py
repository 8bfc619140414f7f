"""One progress bar for long work: a transient rich bar, or nothing when disabled."""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A rich progress bar that disappears when closed; does nothing when ``enabled`` is
    false (library calls stay quiet by default, the CLI turns bars on)."""

    def __init__(self, enabled: bool, total: int | None, description: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.progress import Progress

            self._progress = Progress(transient=True)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def advance(self, description: str | None = None) -> None:
        """One step done; ``description`` replaces the bar's label when given."""
        if self._progress is not None:
            if description is None:
                self._progress.advance(self._task)
            else:
                self._progress.update(self._task, advance=1, description=description)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
