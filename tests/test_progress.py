"""Progress: plain, flushed lines when standard error is not a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

from netsight._progress import ProgressBar


def test_plain_lines_say_count_time_rate_and_what_is_left() -> None:
    out = io.StringIO()
    bar = ProgressBar(True, 4, "work", stream=out, every=0.0)
    for i in range(4):
        bar.advance(f"step {i}")
    bar.note("a result that stays")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "work: started, 4 steps"
    assert lines[1].startswith("step 0: 1/4, ") and "left" in lines[1]
    assert "a result that stays" in lines
    assert lines[-1].startswith("step 3: done, 4/4, ")


def test_plain_lines_are_spaced_in_time() -> None:
    out = io.StringIO()
    bar = ProgressBar(True, 1000, "many", stream=out, every=3600.0)
    for _ in range(1000):
        bar.advance()
    bar.close()
    assert len(out.getvalue().splitlines()) == 2  # the start and the end, nothing between


def test_disabled_is_silent() -> None:
    out = io.StringIO()
    bar = ProgressBar(False, 3, "quiet", stream=out, every=0.0)
    bar.advance()
    bar.note("not shown")
    bar.close()
    assert out.getvalue() == ""


def test_a_log_file_gets_the_lines_while_the_work_runs(tmp_path: Path) -> None:
    """stderr redirected to a file (not a terminal): the lines are there before the
    process ends, as a user tailing a log would see them."""
    log = tmp_path / "log.txt"
    script = textwrap.dedent(
        """
        import sys, time
        from netsight._progress import ProgressBar
        bar = ProgressBar(True, 3, "slow work", every=0.0)
        bar.advance()
        print("CHECKPOINT", flush=True)
        time.sleep(0.5)
        bar.advance(); bar.advance(); bar.close()
        """
    )
    src = Path(__file__).resolve().parent.parent / "src"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "CHECKPOINT"
        seen = log.read_text()  # written and flushed before the process goes on
        proc.wait(timeout=60)
    assert "slow work: started, 3 steps" in seen and "1/3" in seen
    assert "slow work: done, 3/3" in log.read_text()


def test_bars_inside_bars_share_one_rich_display() -> None:
    """rich allows one live display: a bar opened inside another (a CAM method inside
    the report's sections) is a second task of it, not an error."""
    outer = ProgressBar(True, 2, "outer", plain=False)
    inner = ProgressBar(True, 3, "inner", plain=False)
    for _ in range(3):
        inner.advance()
    inner.close()
    outer.advance()
    again = ProgressBar(True, 1, "again", plain=False)
    again.close()
    outer.close()
    fresh = ProgressBar(True, 1, "fresh", plain=False)  # a new display after the last closed
    fresh.close()
