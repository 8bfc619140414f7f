"""What the commands share: the :class:`Command` record, the user-error family, the
help formatter that states every default, argument types, the options most commands
take (the model spec with ``--weights``, ``--trust-weights`` and ``--seed``,
``--input``/``--dtype``, ``--size``/``--mean``/``--std``, ``--out`` with
``--overwrite``, ``--layer``/``--layers``, ``--methods``, ``--colormap``) and the
helpers that turn them into a model, sizes and an output place.

One spelling per meaning, on every command: plural when the option takes several
(``--layers``, ``--methods``), ``--layer`` where a command takes exactly one layer.
Old spellings (``--method``, ``filters --layer``, ``--cmap``, ``cam --evaluate``) are
accepted as aliases but not shown. Every command that writes puts its output under
``out/<command>/`` by default and refuses to replace earlier output without
``--overwrite``."""

from __future__ import annotations

import argparse
import copy
import enum
import os
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
    "OUT",
    "USER_ERRORS",
    "Command",
    "HelpFormatter",
    "Parser",
    "UsageError",
    "add_class_names_option",
    "add_colormap_option",
    "add_faithfulness_option",
    "add_image_options",
    "add_input_options",
    "add_layer_option",
    "add_layers_option",
    "add_methods_option",
    "add_model_options",
    "add_normalisation_options",
    "add_out_dir_option",
    "add_out_file_option",
    "check_out",
    "class_names_from_args",
    "default_out_file",
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
    "random_weights_note",
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


#: Where every command that writes files puts them by default: ``out/<command>/``.
OUT = "out"


def format_default(value: object) -> str:
    """A default as the user would type it: ``gradcam,layercam``, ``0.5``, ``out/cam``."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    """States every option's default: ``(default: X)`` is appended to the help of an
    option whose default is a value (not ``None``, ``False`` or suppressed) unless the
    text already says ``(default``. Options whose default is ``None`` say in their own
    words what happens without them (``(default: the model's usual size)``). Only an
    option's first spelling is shown: the others are old names, still accepted."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        plain = not isinstance(
            action,
            (argparse._HelpAction, argparse._VersionAction, argparse.BooleanOptionalAction),
        )
        if plain and len(action.option_strings) > 1:
            action = copy.copy(action)
            action.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "(default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or text is argparse.SUPPRESS
        ):
            return text
        shown = format_default(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors read ``netsight: error: ...`` like all others,
    and whose help states every default (:class:`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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
    """``MODEL``, ``--weights``, ``--trust-weights`` and ``--seed``."""
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, zoo:NAME, path/to/file.py:NAME or "
        "package.module:NAME (torchvision, timm and zoo models have random weights "
        "unless --weights)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="load this checkpoint into the model first (default: none, the model's "
        "own initialisation)",
    )
    p.add_argument(
        "--trust-weights",
        action="store_true",
        help="allow --weights to unpickle arbitrary Python objects (can run code: only for "
        "files you trust)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the model's random initialisation and of anything else random, so "
        "a run repeats",
    )


#: Model sources whose weights are random unless ``--weights`` loads some.
_RANDOM_SOURCES = ("torchvision", "timm", "zoo")


def random_weights_note(args: argparse.Namespace, consequence: str) -> str | None:
    """The one-line note for a model with random weights (a ``torchvision:``,
    ``timm:`` or ``zoo:`` spec without ``--weights``), or ``None``."""
    if args.weights or args.model.partition(":")[0] not in _RANDOM_SOURCES:
        return None
    return f"random weights (seed {args.seed}): {consequence}; pass --weights FILE.pth"


def model_from_args(
    args: argparse.Namespace, device: str | None = None, *, random_note: str | None = None
) -> torch.nn.Module:
    """The model ``MODEL`` names, built under ``torch.manual_seed(--seed)``, with
    ``--weights`` loaded (``device="meta"``: no values).

    Args:
        args: the parsed arguments.
        device: build the model there.
        random_note: what random weights mean for this command's output
            ("predictions are meaningless"); printed as a note on stderr when the
            weights are random. ``None``: the command does not depend on the weights.
    """
    if args.trust_weights and not args.weights:
        raise UsageError("--trust-weights only applies together with --weights FILE")
    # main() forks the global RNG around the command: seeding here is the command's own
    torch.manual_seed(args.seed)
    model = load_model(args.model, device=device)
    if args.weights:
        load_weights(model, args.weights, trust=args.trust_weights)
    note = random_weights_note(args, random_note) if random_note is not None else None
    if note is not None:
        print(f"netsight: note: {note}", file=sys.stderr)
    return model


def add_class_names_option(p: argparse.ArgumentParser) -> None:
    """``--classes FILE``: class names, one per line."""
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="a text file with one class name per line (default: ImageNet's names for "
        "torchvision classifiers, else class indices only)",
    )


def class_names_from_args(args: argparse.Namespace, model: torch.nn.Module) -> list[str] | None:
    """``--classes FILE`` read, or the names netsight knows for the model
    (:func:`netsight.models.class_names`)."""
    from netsight.models import class_names

    if args.classes:
        try:
            lines = Path(args.classes).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--classes {args.classes}: {exc.strerror or exc}") from None
        return [line.strip() for line in lines if line.strip()]
    return class_names(args.model) or class_names(model)


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
        "--mean",
        type=parse_floats,
        metavar="M[,M,M]",
        help="normalisation mean (default: 0.5 per channel)",
    )
    p.add_argument(
        "--std",
        type=parse_floats,
        metavar="S[,S,S]",
        help="normalisation std (default: 0.5 per channel)",
    )


def add_image_options(p: argparse.ArgumentParser, own: str) -> None:
    """``--size``, ``--mean`` and ``--std`` for commands that load images."""
    p.add_argument(
        "--size",
        type=parse_shape,
        metavar="H,W",
        help=f"resize to H,W (a single N means N,N) (default: the model's usual input size "
        f"when netsight knows it, else {own})",
    )
    add_normalisation_options(p)


def image_size(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--size`` as (H, W) (one N means N,N), or the model's usual size."""
    size: tuple[int, ...] | None = args.size
    if size is None:
        default = default_input_size(args.model)
        size = default[-2:] if default is not None else None
    elif len(size) == 1:
        size = (size[0], size[0])
    if size is None:
        return None
    if len(size) != 2:
        raise UsageError(f"--size: expected H,W or N, got {','.join(map(str, size))}")
    return size[0], size[1]


# --------------------------------------------------------------------------- output


def emit(text: str, out: str | None) -> None:
    """Print ``text`` to stdout, or write it to ``out`` whole or not at all (checked
    with :func:`check_out` first)."""
    if not text.endswith("\n"):
        text += "\n"
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = atomic_write_text(out, text)
    print(f"netsight: wrote {path}", file=sys.stderr)


def check_out(out: str | os.PathLike[str] | None, overwrite: bool, *, make: bool = False) -> None:
    """Fail before the work, not after it, when the output file cannot or may not be
    written: a directory, a missing parent (unless ``make``: the caller creates it when
    it writes), or an existing file without ``--overwrite``."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a directory; expected a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass --overwrite to replace it, or --out another file"
        )
    if not make and not path.parent.is_dir():
        raise UsageError(f"--out {out}: directory {path.parent} does not exist")


def _overwrite_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} (default: refuse, naming the files that exist)",
    )


def add_out_dir_option(p: argparse.ArgumentParser, command: str) -> None:
    """``--out DIR`` (default ``out/COMMAND``) and ``--overwrite``, for commands that
    write a directory."""
    p.add_argument("--out", default=f"{OUT}/{command}", metavar="DIR", help="output directory")
    _overwrite_option(p, f"netsight {command} output already in --out")


def add_out_file_option(p: argparse.ArgumentParser, default: str) -> None:
    """``--out FILE`` (``default`` says where it goes without it) and ``--overwrite``,
    for commands that write one file."""
    p.add_argument("--out", metavar="FILE", help=f"output file (default: {default})")
    _overwrite_option(p, "--out when it exists")


def default_out_file(args: argparse.Namespace, command: str, suffix: str) -> str:
    """``out/COMMAND/NAME.SUFFIX``, NAME from the model spec (``resnet18``)."""
    from netsight._io import safe_filename

    name = safe_filename(args.model.rsplit(":", 1)[-1]) or "model"
    return f"{OUT}/{command}/{name}.{suffix}"


# ------------------------------------------------------------------ options named alike


def add_layers_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--layers NAME [NAME ...]`` (also spelt ``--layer``), for commands that take several."""
    p.add_argument("--layers", "--layer", dest="layers", nargs="+", metavar="LAYER", help=help)


class _OneLayer(argparse.Action):
    """``--layer``: exactly one name; several are refused saying so."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        names = [values] if isinstance(values, str) else list(values or [])
        names = [n for v in names for n in str(v).split(",") if n.strip()]
        if len(names) != 1 or option_string == "--layers":
            command = parser.prog.split()[-1]
            raise argparse.ArgumentError(
                self,
                f"netsight {command} takes exactly one layer (a glob may match several "
                f"modules), got {len(names)}: {', '.join(names) or 'none'}; pass --layer NAME",
            )
        setattr(namespace, self.dest, names[0].strip())


def _target(text: str) -> Any:
    from netsight.cam.targets import parse_target

    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_target_option(p: argparse.ArgumentParser) -> None:
    """``--target TARGET``: what a CAM explains, in the spellings of
    :func:`netsight.cam.targets.parse_target`."""
    p.add_argument(
        "--target",
        type=_target,
        metavar="TARGET",
        help="what the CAMs explain in every image: a class (N or class:N, its logit), "
        "prob:N (its softmax probability), rest:N (against the rest), binary:1|0 (a "
        "sigmoid head), seg:N (a segmentation model's pixels of class N), box:N (a "
        "detector's N-th most confident detection), concept:FILE.npy (cosine similarity "
        "of an embedding to a saved vector), output:I[,J] (one output element) "
        "(default: each image's top-1 class; a detector's box:0)",
    )


def add_layer_option(
    p: argparse.ArgumentParser, help: str, *, required: bool = False, greedy: bool = False
) -> None:
    """``--layer NAME`` for commands that take exactly one layer. ``--layers`` and a
    comma-separated list are refused with a clear error; ``greedy`` (commands with no
    positional argument after the model) also refuses ``--layer A B``."""
    p.add_argument(
        "--layer",
        "--layers",
        dest="layer",
        action=_OneLayer,
        nargs="+" if greedy else None,
        required=required,
        metavar="NAME",
        help=help,
    )


def add_methods_option(p: argparse.ArgumentParser, default: Sequence[str]) -> None:
    """``--methods NAME[,NAME...]|all`` (also spelt ``--method``): CAM methods."""
    from netsight.cam import METHODS

    p.add_argument(
        "--methods",
        "--method",
        dest="methods",
        type=parse_cam_methods,
        default=tuple(default),
        metavar="NAME[,NAME...]",
        help=f"CAM methods, comma-separated, from: {', '.join(METHODS)}; or all (every "
        f"method this model supports)",
    )


def add_faithfulness_option(p: argparse.ArgumentParser) -> None:
    """``--faithfulness-steps N``: the CAM faithfulness table, off by default."""
    p.add_argument(
        "--faithfulness-steps",
        type=parse_depth,
        default=0,
        metavar="N",
        help="also measure the CAMs' faithfulness (netsight.cam.evaluate: deletion and "
        "insertion AUC, average drop and increase, next to a random and a centred map) "
        "with N deletion/insertion steps, 20 is usual; it costs about (methods + 2) x "
        "images x 2 x (N + 1) forwards, often more than everything else; 0 is off",
    )


def add_colormap_option(p: argparse.ArgumentParser, default: str) -> None:
    """``--colormap NAME`` (also spelt ``--cmap``)."""
    p.add_argument(
        "--colormap",
        "--cmap",
        dest="colormap",
        default=default,
        metavar="NAME",
        help="matplotlib colormap",
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
