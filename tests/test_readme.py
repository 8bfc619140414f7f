"""README.md's code blocks, run: what the README shows works as shown.

How the runner reads README.md:

* **Sections.** The file is cut at its level-1 and level-2 headings (``#``, ``##``;
  ``###`` stays in its section). Each section is one test, run in its own temporary
  working directory, so sections can run in parallel and a failure names its section.
* **Python blocks** (```` ```python ````) run in order, in one namespace per section, with
  the section's directory as the working directory. A python block whose first line is
  ``# NAME.py`` is a file the text shows: it is written to the working directory as
  NAME.py, not run.
* **Shell blocks** (```` ```bash ````, ``sh``, ``shell``): each line (``\\`` continues it,
  ``#`` starts a comment) must be ``netsight ARGS`` with optional ``NAME=VALUE``
  environment assignments before it; it runs as ``python -m netsight ARGS`` in the
  section's directory (globs such as ``*.jpg`` expanded there) and must exit with 0.
* **Skips.** A block that cannot run in a test (``make demo``, ``pip install``, a server
  that runs until Ctrl-C, something that takes minutes) has
  ``<!-- readme-test: skip (why) -->`` on the line before its opening fence; a skip
  without a reason, or any other ``readme-test`` comment, fails.
* **The user's files.** The README's commands name files a reader has (``cat.jpg``,
  ``digit.png``, a checkpoint, a model file) or that ``make demo`` wrote
  (``out/vgg16_digits.pth``, ``out/runs/vgg16-digits``). When a section's blocks name
  one of :data:`FIXTURES`, the runner makes a small stand-in first: seeded noise
  pictures of 64 x 64 px, digits from the bundled dataset, seeded random weights of the
  right model, a few steps of a real ``TrainingMonitor`` run.

Every failure message starts with ``README.md line N``: the line of the command, or of
the Python statement that raised. Graphviz, LaTeX and Chromium are needed where the
README uses them; in CI a skip is a failure (tests/conftest.py), so nothing here skips.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SHELLS = ("bash", "sh", "shell")
_FENCE = re.compile(r"^(```+)\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<why>[^)]*\S[^)]*)\)\s*$")
_FILE_BLOCK = re.compile(r"^#\s*(?P<name>[\w./-]+\.py)\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: Seconds one README command may take.
TIMEOUT = 300

pytestmark = pytest.mark.slow


@dataclass
class Block:
    """One fenced code block: its language, first code line (1-based) and text."""

    language: str
    line: int
    text: str
    skip: str | None = None


@dataclass
class Section:
    title: str
    line: int
    blocks: list[Block] = field(default_factory=list)


class ReadmeError(Exception):
    """A README problem, already worded with its line."""


def parse(text: str) -> list[Section]:
    """README.md cut into sections of code blocks (see the module docstring)."""
    sections = [Section("(top)", 1)]
    lines = text.splitlines()
    fence: str | None = None
    block: Block | None = None
    pending: tuple[int, str] | None = None  # a readme-test directive and its line
    for number, line in enumerate(lines, start=1):
        if fence is not None:
            if line.strip() == fence:
                fence = None
                if block is not None:
                    sections[-1].blocks.append(block)
                block = None
            elif block is not None:
                block.text += line + "\n"
            continue
        opening = _FENCE.match(line)
        if opening:
            fence = opening.group(1)
            block = Block(opening.group(2).lower(), number + 1, "")
            if pending is not None:
                where, directive = pending
                if where != number - 1:
                    raise ReadmeError(
                        f"README.md line {where}: a readme-test comment must be on the line "
                        f"right before a code block's opening fence"
                    )
                skip = _SKIP.match(directive)
                if skip is None:
                    raise ReadmeError(
                        f"README.md line {where}: expected <!-- readme-test: skip (reason) "
                        f"-->, got {directive.strip()!r}: a skip needs its reason"
                    )
                block.skip = skip.group("why").strip()
                pending = None
            continue
        if pending is not None and line.strip():
            where, _ = pending
            raise ReadmeError(
                f"README.md line {where}: a readme-test comment must be on the line right "
                f"before a code block's opening fence"
            )
        directive = _DIRECTIVE.match(line)
        if directive:
            pending = (number, directive.group(1))
        elif re.match(r"^#{1,2} ", line):
            sections.append(Section(line.lstrip("#").strip(), number))
    if fence is not None:
        raise ReadmeError("README.md: a code block is not closed")
    if pending is not None:
        raise ReadmeError(f"README.md line {pending[0]}: a readme-test comment with no block")
    return [s for s in sections if s.blocks]


def _runnable(block: Block) -> bool:
    return block.skip is None and block.language in ("python", *SHELLS)


ALL_SECTIONS = parse(README.read_text(encoding="utf-8"))
#: The sections with something to run (one whose every block is skipped is no test:
#: in CI a skipped test fails the run).
SECTIONS = [s for s in ALL_SECTIONS if any(_runnable(b) for b in s.blocks)]


# --------------------------------------------------------------------------- stand-ins


def _pictures(directory: Path, *names: str) -> None:
    import numpy as np
    from PIL import Image

    for index, name in enumerate(names):
        rng = np.random.default_rng(index)
        pixels = (rng.random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(directory / name)


def _digits(directory: Path, *names: str) -> None:
    from PIL import Image

    from netsight.datasets import digits

    data = digits("test")
    for name in names:
        wanted = int(re.sub(r"\D", "", name) or 0)
        index = next(i for i in range(len(data)) if int(data[i][1]) == wanted)
        pixels = ((data[index][0][0] * 0.5 + 0.5) * 255).clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(directory / name)


def _weights(spec: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import torch

        from netsight.models import load_model

        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(load_model(spec).state_dict(), path)

    return make


def _monitor_run(path: Path) -> None:
    """A real TrainingMonitor run of two steps and one epoch (``make demo``'s is longer)."""
    import torch
    from torch import nn

    from netsight import TrainingMonitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with TrainingMonitor(model, logdir=path.parent, name=path.name, optimizer=opt) as mon:
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss=loss, outputs=model(x), targets=y)
            opt.step()
            opt.zero_grad()
        mon.epoch_end(val_loss=loss.item(), val_acc=0.1)


_MODEL_FILE = """
from torch import nn


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.conv(x).relu())
"""


def _model_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_MODEL_FILE, encoding="utf-8")


#: The files the README's commands take from the reader or from ``make demo``, and how
#: the runner makes a stand-in for each.
FIXTURES: dict[str, Callable[[Path], None]] = {
    **{
        name: (lambda path, name=name: _pictures(path.parent, name))
        for name in ("cat.jpg", "dog.jpg", "cat.png", "dog.png")
    },
    **{
        name: (lambda path, name=name: _digits(path.parent, name))
        for name in ("digit.png", "digit1.png", "digit2.png")
    },
    "path/to/model.py": lambda path: _model_file(path),
    "ckpt.pth": _weights("torchvision:resnet18"),
    "out/vgg16_digits.pth": _weights("zoo:Vgg16Net"),
    "out/runs/vgg16-digits": _monitor_run,
}


def _prepare(section: Section, directory: Path) -> None:
    code = "".join(b.text for b in section.blocks if b.skip is None)
    for name, make in FIXTURES.items():
        if re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", code):
            target = directory / name
            if not target.exists():
                make(target)


# --------------------------------------------------------------------------- running


def _python_block(block: Block, namespace: dict[str, object]) -> None:
    named = _FILE_BLOCK.match(block.text.splitlines()[0]) if block.text.strip() else None
    if named is not None:
        path = Path(named.group("name"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text, encoding="utf-8")
        return
    # padded so that line numbers in the code object are README.md's
    source = "\n" * (block.line - 1) + block.text
    try:
        code = compile(source, str(README), "exec")
        exec(code, namespace)
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(README)]
        line = frames[-1].lineno if frames else getattr(exc, "lineno", None) or block.line
        where = f"README.md line {line}"
        shown = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise AssertionError(
            f"{where} (python block from line {block.line}): {shown}\n"
            f"{''.join(traceback.format_exception(exc))}"
        ) from None


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    pending, start = "", block.line
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    if pending:
        found.append((start, pending))
    return found


#: Runs ``python -m netsight ARGS`` for each command of a block in one interpreter (torch
#: is imported once per block, not once per line: 3-5 s each on a busy 2-core machine):
#: each command is ``runpy.run_module("netsight")`` with its own ``sys.argv``, environment,
#: ``PYTHONPATH`` entries on ``sys.path``, and captured stdout and stderr.
_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
commands, report = json.loads(sys.argv[1]), sys.argv[2]
results = []
for command in commands:
    saved_env, saved_path = dict(os.environ), list(sys.path)
    os.environ.update(command["env"])
    extra = command["env"].get("PYTHONPATH")
    if extra:
        sys.path[:0] = [os.path.abspath(p) for p in extra.split(os.pathsep) if p]
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["netsight", *command["argv"]]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("netsight", run_name="__main__", alter_sys=False)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # a crash is a failure of this line, not of the others
            import traceback
            traceback.print_exc(file=err)
            code = 1
    os.environ.clear()
    os.environ.update(saved_env)
    sys.path[:] = saved_path
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    if code != 0:
        break
with open(report, "w", encoding="utf-8") as f:
    json.dump(results, f)
"""


def _commands(block: Block) -> list[tuple[int, str, list[str], dict[str, str]]]:
    """``(README line, the line, netsight's arguments, environment)`` per command."""
    found = []
    for line_number, line in _logical_lines(block):
        where = f"README.md line {line_number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise AssertionError(f"{where}: cannot read {line.strip()!r}: {exc}") from None
        if not words:
            continue
        env: dict[str, str] = {}
        while words and _ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if not words or words[0] != "netsight":
            raise AssertionError(
                f"{where}: {line.strip()!r} is not a netsight command, so the README test "
                f"cannot run it; mark its block with <!-- readme-test: skip (why) --> on the "
                f"line before the fence (and keep the netsight commands in a block of their own)"
            )
        arguments: list[str] = []
        for word in words[1:]:
            matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
            arguments += matches or [word]
        found.append((line_number, " ".join(line.split()), arguments, env))
    return found


def _shell_block(block: Block) -> None:
    import json
    import tempfile

    commands = _commands(block)
    if not commands:
        return
    env = dict(os.environ)
    # the checkout under test first, as an editable install would have it
    source = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    payload = json.dumps([{"argv": argv, "env": extra} for _, _, argv, extra in commands])
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "results.json"
        result = subprocess.run(
            [sys.executable, "-c", _DRIVER, payload, str(report)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * len(commands),
            env=env,
            check=False,
        )
        if not report.exists():
            raise AssertionError(
                f"README.md line {commands[0][0]}: the block's commands did not run "
                f"(exit {result.returncode})\n{result.stderr[-3000:]}"
            )
        results = json.loads(report.read_text(encoding="utf-8"))
    for (line_number, line, _, _), found in zip(commands, results, strict=False):
        if found["code"] != 0:
            raise AssertionError(
                f"README.md line {line_number}: `{line}` exited with {found['code']}\n"
                f"stdout:\n{found['stdout'][-3000:]}\nstderr:\n{found['stderr'][-3000:]}"
            )


@pytest.mark.parametrize("section", SECTIONS, ids=[s.title for s in SECTIONS])
def test_readme_section(section: Section, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.syspath_prepend(str(tmp_path))  # a module the section writes imports
    _prepare(section, tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in filter(_runnable, section.blocks):
        if block.language == "python":
            _python_block(block, namespace)
        else:
            _shell_block(block)


# --------------------------------------------------------------------------- the runner


def test_every_block_runs_or_says_why_not() -> None:
    assert SECTIONS, "README.md has no runnable code block"
    for section in ALL_SECTIONS:
        for block in section.blocks:
            if block.language not in ("python", *SHELLS):
                continue
            if block.skip is not None:
                assert block.skip, f"README.md line {block.line - 1}: skip without a reason"


def test_the_runner_refuses_a_skip_without_reason() -> None:
    with pytest.raises(ReadmeError, match=r"line 3: .*a skip needs its reason"):
        parse("# t\n\n<!-- readme-test: skip -->\n```bash\nmake demo\n```\n")
    with pytest.raises(ReadmeError, match=r"line 3: .*a skip needs its reason"):
        parse("# t\n\n<!-- readme-test: skip () -->\n```bash\nmake demo\n```\n")
    with pytest.raises(ReadmeError, match=r"line 3: a readme-test comment must be on the line"):
        parse("# t\n\n<!-- readme-test: skip (slow) -->\ntext\n```bash\nmake demo\n```\n")
    (section,) = parse("# t\n\n<!-- readme-test: skip (sets up .venv) -->\n```bash\nx\n```\n")
    assert section.blocks[0].skip == "sets up .venv" and section.blocks[0].line == 5


def test_a_failing_block_names_its_readme_line(tmp_path: Path) -> None:
    text = (
        "# t\n\n```python\nx = 1\ny = x / 0\n```\n\n"
        "```bash\nnetsight --version\n\nnetsight bogus   # a comment\n```\n"
    )
    (section,) = parse(text)
    with pytest.raises(AssertionError, match=r"^README.md line 5 \(python block from line 4\)"):
        _python_block(section.blocks[0], {})
    with pytest.raises(
        AssertionError, match=r"^README.md line 11: `netsight bogus # a comment` exited with 2"
    ):
        _shell_block(section.blocks[1])
    section.blocks[1].text = "netsight --version\nls -l\n"
    with pytest.raises(AssertionError, match=r"^README.md line 10: 'ls -l' is not a netsight"):
        _shell_block(section.blocks[1])
