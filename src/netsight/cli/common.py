"""What the commands share: the :class:`Command` record, the user-error family,
argument types, the options most commands take (the model spec with ``--weights`` and
``--trust-weights``, ``--input``/``--dtype``, ``--size``/``--mean``/``--std``,
``--out DIR`` with ``--overwrite``) and the helpers that turn them into a model,
sizes and an output place."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from netsight._io import atomic_write_text
from netsight.errors import UsageError
from netsight.models import default_input_size, load_model, load_weights
from netsight.trace import TraceError

__all__ = [
    "EXIT_USAGE",
    "USER_ERRORS",
    "Command",
    "Parser",
    "UsageError",
    "add_image_options",
    "add_input_options",
    "add_model_options",
    "add_normalisation_options",
    "add_out_dir_option",
    "check_out",
    "emit",
    "image_size",
    "input_sizes",
    "model_from_args",
    "out_dir",
    "parse_cam_methods",
    "parse_depth",
    "parse_dtypes",
    "parse_floats",
    "parse_ints",
    "parse_positive_int",
    "parse_shape",
    "provenance",
    "report_written",
]

#: Exit code for errors the user can fix (argparse uses the same for bad arguments).
EXIT_USAGE = 2

#: Exceptions reported as ``netsight: error: ...`` instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    ImportError,
    TraceError,
    KeyError,
    # the model's own forward failing (torch's shape and dtype errors; a user's
    # hook), also where the traced re-run that names the layer succeeds
    RuntimeError,
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors read ``netsight: error: ...`` like all others."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"netsight: error: {message}\n")


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: what the user types (``netsight NAME ...``).
        help: one line for ``netsight --help``.
        configure: adds the subcommand's arguments to its parser.
        run: does the work; returns the exit code. Raise an exception from
            the user-error family (``ValueError``, ``OSError``, ``TraceError``, ...)
            to report a problem.
        description: longer text for ``netsight NAME --help`` (default: ``help``).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


# --------------------------------------------------------------------------- argument types


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224``, ``1x3x224x224`` (brackets and spaces allowed) -> a shape."""
    cleaned = text.strip().strip("()[]").strip()
    parts = [p.strip() for p in re.split(r"[,xX×]", cleaned)] if cleaned else []
    if not parts or not all(p.isdecimal() for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected a shape such as 1,3,224,224 or 1x3x224x224, got {text!r}"
        )
    shape = tuple(int(p) for p in parts)
    if any(d == 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected dimensions >= 1, got {text!r}")
    return shape


def parse_dtypes(text: str) -> list[torch.dtype]:
    """``float32`` or ``long,float32`` -> dtypes."""
    result = []
    for name in (p.strip() for p in text.split(",")):
        value = getattr(torch, name.removeprefix("torch."), None) if name.isidentifier() else None
        if not isinstance(value, torch.dtype):
            common = "float32, float16, bfloat16, float64, long (int64), int32, bool"
            raise argparse.ArgumentTypeError(
                f"unknown dtype {name!r}; expected a torch dtype name such as {common}"
            )
        result.append(value)
    return result


def parse_depth(text: str) -> int:
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def parse_positive_int(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


_T = TypeVar("_T")


def _comma_separated(convert: Callable[[str], _T], example: str) -> Callable[[str], list[_T]]:
    """An argparse type: ``a,b,c`` -> ``[convert(a), ...]``, with ``example`` in the error."""

    def parse(text: str) -> list[_T]:
        try:
            return [convert(p) for p in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {example}, got {text!r}"
            ) from None

    return parse


parse_floats = _comma_separated(float, "numbers such as 0.485,0.456,0.406")
parse_ints = _comma_separated(int, "class indices such as 3,1,7")


def parse_cam_methods(text: str) -> str | tuple[str, ...]:
    """``gradcam,scorecam`` or ``all`` (:func:`netsight.cam.compare.parse_methods`)."""
    from netsight.cam.compare import parse_methods

    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------- the model and its input


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``MODEL``, ``--weights`` and ``--trust-weights``."""
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, zoo:NAME, path/to/file.py:NAME or package.module:NAME",
    )
    p.add_argument("--weights", metavar="FILE", help="load this checkpoint into the model first")
    p.add_argument(
        "--trust-weights",
        action="store_true",
        help="allow --weights to unpickle arbitrary Python objects (can run code: only for "
        "files you trust)",
    )


def model_from_args(args: argparse.Namespace, device: str | None = None) -> torch.nn.Module:
    """The model ``MODEL`` names, with ``--weights`` loaded (``device="meta"``: no values)."""
    if args.trust_weights and not args.weights:
        raise UsageError("--trust-weights only applies together with --weights FILE")
    model = load_model(args.model, device=device)
    if args.weights:
        load_weights(model, args.weights, trust=args.trust_weights)
    return model


def add_input_options(p: argparse.ArgumentParser) -> None:
    """``--input`` (repeatable) and ``--dtype``, for commands that make their own input."""
    p.add_argument(
        "--input",
        action="append",
        type=parse_shape,
        metavar="SHAPE",
        help="input shape with the batch dimension, e.g. 1,3,224,224 or 1x3x224x224; repeat "
        "for several inputs (default: the model's usual size, when netsight knows it)",
    )
    p.add_argument(
        "--dtype",
        type=parse_dtypes,
        metavar="DTYPE[,DTYPE...]",
        help="dtype of the inputs, one for all or one per --input, e.g. long (default: float32)",
    )


def input_sizes(args: argparse.Namespace) -> list[tuple[int, ...]]:
    """``--input`` shapes, or the model's usual input size when netsight knows it."""
    sizes: list[tuple[int, ...]] | None = args.input
    if sizes:
        return sizes
    default = default_input_size(args.model)
    if default is None:
        raise UsageError(
            f"netsight does not know the input size of {args.model!r}; pass --input, "
            f"e.g. --input 1,3,224,224 (repeat --input for a model with several inputs)"
        )
    return [default]


def add_normalisation_options(p: argparse.ArgumentParser) -> None:
    """``--mean`` and ``--std``."""
    p.add_argument(
        "--mean", type=parse_floats, metavar="M[,M,M]", help="normalisation mean (default 0.5)"
    )
    p.add_argument(
        "--std", type=parse_floats, metavar="S[,S,S]", help="normalisation std (default 0.5)"
    )


def add_image_options(p: argparse.ArgumentParser, own: str) -> None:
    """``--size``, ``--mean`` and ``--std`` for commands that load images."""
    p.add_argument(
        "--size",
        type=parse_shape,
        metavar="H,W",
        help=f"resize (default: the model's usual input size when netsight knows it, else {own})",
    )
    add_normalisation_options(p)


def image_size(args: argparse.Namespace, *, square: bool = False) -> tuple[int, int] | None:
    """``--size`` as (H, W), or the model's usual size; ``square``: one N means N,N."""
    size: tuple[int, ...] | None = args.size
    if size is None:
        default = default_input_size(args.model)
        size = default[-2:] if default is not None else None
    elif square and len(size) == 1:
        size = (size[0], size[0])
    if size is None:
        return None
    if len(size) != 2:
        raise UsageError(f"--size: expected H,W, got {','.join(map(str, size))}")
    return size[0], size[1]


# --------------------------------------------------------------------------- output


def emit(text: str, out: str | None) -> None:
    """Print ``text`` to stdout, or write it to ``out`` whole or not at all."""
    if not text.endswith("\n"):
        text += "\n"
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = atomic_write_text(out, text)
    print(f"netsight: wrote {path}", file=sys.stderr)


def check_out(out: str | None) -> None:
    """Fail before the work, not after it, when ``--out FILE`` cannot be written."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a directory; expected a file path")
    if not path.parent.is_dir():
        raise UsageError(f"--out {out}: directory {path.parent} does not exist")


def add_out_dir_option(p: argparse.ArgumentParser, default: str) -> None:
    """``--out DIR`` and ``--overwrite``, for commands that write a directory."""
    p.add_argument(
        "--out", default=default, metavar="DIR", help=f"output directory (default: {default})"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace netsight output of this kind already in --out (default: refuse, "
        "naming the files)",
    )


def out_dir(args: argparse.Namespace, what: str, names: Sequence[str]) -> Path:
    """``--out`` as a directory, checked before the work: not a file, and none of
    ``names`` (files this command writes) there unless ``--overwrite``. The library's
    writer checks again, with every name, when it writes."""
    from netsight._io import check_overwrite

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    check_overwrite(out, names, what=what, overwrite=args.overwrite)
    return out


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What a library writer records about the model (its spec and weights), and
    whether it may replace earlier output."""
    return {"spec": args.model, "weights": args.weights, "overwrite": args.overwrite}


def report_written(paths: Sequence[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")
