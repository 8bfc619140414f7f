"""Property-based tests (hypothesis) of everything a user types that netsight parses.

Every generated input gives a result or one of the documented errors with a message
(``argparse``'s ``netsight: error: ...`` and exit code 2 for the command line;
``ModelSpecError``, ``FileNotFoundError``, ``KeyError``, ... for the library), never
another exception type. Where cheap, positive properties too: a formatted shape
parses back to itself, safe file names are safe, distinct layers get distinct files.
"""

from __future__ import annotations

import contextlib
import io
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import netsight
from netsight import cli
from netsight._io import safe_filename
from netsight.capture import resolve_layers
from netsight.models import ModelSpecError, default_input_size

T = TypeVar("T")

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: Text a user might type into a numeric option: digits (ASCII and not), signs,
#: separators, brackets, exponents, words.
NUMERIC_ALPHABET = "0123456789,xX× .-+e()[]_naif²١\t"
numeric_text = st.text(alphabet=NUMERIC_ALPHABET, max_size=16)
any_text = st.text(max_size=24)
typed_text = st.one_of(numeric_text, any_text)


def _attempt(call: Callable[[], T], errors: Any) -> tuple[Any, BaseException | None]:
    """``(call(), None)``, or ``(None, error)`` for one of the ``errors`` expected
    (any other exception fails the test)."""
    try:
        return call(), None
    except errors as exc:
        return None, exc


# --------------------------------------------------------------------------- command line

#: Arguments that make each command's parser accept its required ones (the model
#: spec and files are never opened: only the parser runs).
BASE_ARGV: dict[str, list[str]] = {
    "summary": ["m.py:Net"],
    "diagram": ["m.py:Net"],
    "features": ["m.py:Net", "x.png"],
    "cam": ["m.py:Net", "x.png"],
    "filters": ["m.py:Net"],
    "patterns": ["m.py:Net", "--layer", "conv"],
    "layers": ["m.py:Net"],
    "report": ["m.py:Net", "x.png"],
    "runs": ["runs"],
    "tensorboard": ["runs"],
    "demo": [],
    "explore": ["m.py:Net", "x.png"],
}


def _subparsers() -> dict[str, Any]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return dict(sub.choices)


def _typed_options() -> list[tuple[str, str]]:
    """(command, option) for every option that converts or restricts its value."""
    found = []
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.option_strings and (action.type is not None or action.choices):
                found.append((name, action.option_strings[-1]))
    return found


TYPED_OPTIONS = _typed_options()


def _parse(argv: list[str]) -> tuple[Any, int | None, str]:
    """``build_parser().parse_args(argv)``: (namespace or None, exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.build_parser().parse_args(argv), None, err.getvalue()
        except SystemExit as exc:
            return None, exc.code if isinstance(exc.code, int) else 1, err.getvalue()


def test_every_command_has_base_arguments_that_parse() -> None:
    assert sorted(BASE_ARGV) == sorted(c.name for c in cli.COMMANDS)
    for name, argv in BASE_ARGV.items():
        args, code, err = _parse([name, *argv])
        assert args is not None, f"{name} {argv}: exit {code}: {err}"
    assert len(TYPED_OPTIONS) > 20  # --input, --size, --mean, --labels, --port, ...


def _check_option(command: str, option: str, text: str) -> Any:
    args, code, err = _parse([command, *BASE_ARGV[command], f"{option}={text}"])
    if args is None:
        assert code == cli.EXIT_USAGE, f"{command} {option}={text!r}: exit {code}"
        message = err.strip().splitlines()[-1]
        assert message.startswith("netsight: error: argument "), message
        # the message says what was expected (argparse's own for int, float and
        # choices), not the name of a private function ("invalid _depth value")
        assert re.search(r"expected|invalid (int|float) value|invalid choice", message), message
        assert "invalid _" not in message, message
    return args


@SETTINGS
@given(st.sampled_from(TYPED_OPTIONS), typed_text)
# str.isdigit() is True for these, int() refuses them: "invalid _depth value"
@example(("summary", "--depth"), "²")
@example(("features", "--size"), "1,²")
@example(("cam", "--target"), "³")
@example(("cam", "--batch-size"), "²")
@example(("tensorboard", "--port"), "²")
def test_every_typed_option_parses_or_says_what_it_expected(
    option: tuple[str, str], text: str
) -> None:
    _check_option(*option, text)


shapes = st.lists(st.integers(1, 10**6), min_size=1, max_size=5)


@SETTINGS
@given(
    shapes,
    st.sampled_from([",", "x", "X", "×", ", ", " x "]),
    st.sampled_from([("", ""), ("(", ")"), ("[", "]"), (" ", " ")]),
)
def test_a_formatted_shape_parses_back(
    shape: list[int], separator: str, brackets: tuple[str, str]
) -> None:
    text = brackets[0] + separator.join(map(str, shape)) + brackets[1]
    for command, option in [("summary", "--input"), ("features", "--size")]:
        args = _check_option(command, option, text)
        assert args is not None, text
        value = args.input[0] if option == "--input" else args.size
        assert value == tuple(shape)


@SETTINGS
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1))
def test_formatted_mean_and_std_parse_back(values: list[float]) -> None:
    text = ",".join(map(repr, values))
    for option in ("--mean", "--std"):
        args = _check_option("features", option, text)
        assert args is not None
        assert getattr(args, option[2:]) == values


@SETTINGS
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_formatted_labels_parse_back(labels: list[int]) -> None:
    args = _check_option("report", "--labels", ",".join(map(str, labels)))
    assert args is not None and args.labels == labels


# --------------------------------------------------------------------------- layer names


class _Named(nn.Module):
    """A model with the tricky names a model can have: nested, numbered, repeated."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.block = nn.ModuleDict({"conv": nn.Conv2d(4, 4, 1), "act": nn.ReLU()})
        self.head = nn.Linear(4, 2)
        self.alias = self.head  # the same module under two names


layer_text = st.one_of(
    any_text,
    st.text(alphabet="features.block0123*?[]!-^\\head", max_size=16),
)


@SETTINGS
@given(layer_text)
@example("[")
@example("[!]")
@example("features.[9-0]")
def test_a_layer_name_or_glob_selects_layers_or_says_which_are_there(text: str) -> None:
    model = _Named()
    chosen, error = _attempt(lambda: resolve_layers(model, text), KeyError)
    if error is not None:
        message = str(error.args[0])
        assert "layers: no " in message and "list_layers" in message, message
        return
    names = dict(model.named_modules())
    names[type(model).__name__] = names.pop("")  # "" names the model itself
    assert chosen, text
    assert all(names.get(name) is module for name, module in chosen.items())


@SETTINGS
@given(st.lists(layer_text, max_size=3))
def test_list_layers_and_capture_take_any_names(texts: list[str]) -> None:
    model = _Named()

    def run() -> netsight.Capture:
        with netsight.capture(model, texts) as cap:
            model.features(torch.zeros(1, 3, 8, 8))
        return cap

    cap, error = _attempt(run, (KeyError, ValueError))
    if error is not None:
        assert str(error), texts
        return
    assert set(cap.activations) <= set(netsight.list_layers(model))
    assert netsight.count_hooks(model) == 0


# --------------------------------------------------------------------------- model specs

_SPEC_ERRORS = (ModelSpecError, FileNotFoundError, ImportError, TypeError)


@SETTINGS
@given(st.one_of(any_text, st.from_regex(r"[a-z_.:/]{0,12}:[A-Za-z_.:/ ]{0,12}", fullmatch=True)))
@example(":")
@example("torchvision:")
@example("a.py:")
@example("\x00:Net")
def test_default_input_size_of_any_spec(spec: str) -> None:
    # default_input_size only splits the spec (nothing is imported)
    size, error = _attempt(lambda: default_input_size(spec), ModelSpecError)
    if error is not None:
        assert str(error).startswith("model spec"), error
        return
    assert size is None or all(isinstance(d, int) and d > 0 for d in size)


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    if not path.exists():
        path.write_text(
            "from torch import nn\n\n\nclass Net(nn.Module):\n"
            "    def __init__(self):\n        super().__init__()\n"
            "        self.fc = nn.Linear(2, 2)\n\n\nnot_a_model = 3\n"
        )
    return path


@SETTINGS
@given(
    st.sampled_from(["torchvision:", "zoo:", "timm:", "FILE:", "FILE", "MISSING:"]),
    st.one_of(
        any_text,
        st.sampled_from(["Net", "not_a_model", "nn", "nn.Linear", "Net.fc", "Vgg16Net"]),
    ),
)
@example("FILE:", "Net.__init__")
@example("MISSING:", "Net")
@example("MISSING:", "\x00")
@example("MISSING:", "a" * 300)
@example("FILE:", "\x00")
@example("FILE:", "nn.Module")
def test_load_model_of_any_spec_builds_a_model_or_says_why(
    tmp_path_factory: pytest.TempPathFactory, kind: str, name: str
) -> None:
    # Only specs that cannot import arbitrary modules: a known source, the test's
    # own file, or a missing file (``package.module:NAME`` would import anything).
    root = tmp_path_factory.getbasetemp()
    file = _model_file(root)
    spec = {
        "FILE:": f"{file}:{name}",
        "FILE": f"{file}{name}",
        "MISSING:": f"{root / 'missing'}{name.replace(':', '')}.py:Net",
    }.get(kind, kind + name)
    model, error = _attempt(lambda: netsight.load_model(spec), _SPEC_ERRORS)
    if error is not None:
        assert str(error).strip(), spec
        return
    assert isinstance(model, nn.Module)


# --------------------------------------------------------------------------- file names

_SAFE = set(string.ascii_letters + string.digits + "._-")


@SETTINGS
@given(any_text, st.sampled_from(["model", "image", "run"]))
@example("..", "model")
@example("/", "model")
@example("." * 200, "model")
@example("a" * 119 + "._b", "model")
def test_safe_filename_is_safe(name: str, default: str) -> None:
    safe = safe_filename(name, default=default)
    assert safe and len(safe) <= 120
    assert set(safe) <= _SAFE  # no separator, NUL or control character
    assert safe not in (".", "..") and not safe.startswith(".")
    assert Path(safe).name == safe


@settings(max_examples=6, deadline=None)  # a figure per layer: the slow one
@given(
    st.lists(
        st.text(alphabet="ab/ _.-é", min_size=1, max_size=6).filter(lambda s: "." not in s),
        min_size=2,
        max_size=3,
        unique=True,
    )
)
@example(["a/b", "a_b"])  # both sanitise to a_b
def test_distinct_layers_get_distinct_feature_files(
    tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    from netsight.features import export_features

    model = nn.Sequential()
    for name in names:
        model.add_module(name, nn.Conv2d(1, 1, 1))
    out = tmp_path_factory.mktemp("features")
    written = export_features(model, torch.rand(1, 1, 4, 4), out, layers=names, max_channels=1)
    grids = [p for p in written if p.name.startswith("features_")]
    assert len(grids) == len(names) == len({p.name for p in grids})
