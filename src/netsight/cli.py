"""The ``netsight`` command line.

Every subcommand is a :class:`Command`: a function that adds its arguments to an
``argparse`` parser and a function that runs it. They are registered in one place,
:data:`COMMANDS`; adding a subcommand means writing those two functions and adding
one line there.

Errors the user can fix (a bad model spec, a checkpoint that does not fit, a
forward pass that fails, a bad column name, ...) are printed as
``netsight: error: <message>`` on stderr with exit code 2 and no traceback
(``netsight --traceback ...`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from netsight._io import atomic_write_text
from netsight._version import __version__
from netsight.models import default_input_size, load_model, load_weights
from netsight.options import DiagramFormat, Direction, FilterMode, SummaryFormat
from netsight.summary import Column, Summary, summary
from netsight.trace import TraceError

__all__ = ["COMMANDS", "Command", "UsageError", "main"]

#: Exit code for errors the user can fix (argparse uses the same for bad arguments).
EXIT_USAGE = 2

#: Exceptions reported as ``netsight: error: ...`` instead of a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
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


class UsageError(ValueError):
    """The command line asks for something that cannot be done as given."""


class _Parser(argparse.ArgumentParser):
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


def _shape(text: str) -> tuple[int, ...]:
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


def _dtypes(text: str) -> list[torch.dtype]:
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


def _columns(text: str) -> list[Column]:
    """``output_size,num_params`` -> columns."""
    result = []
    for name in (p.strip() for p in text.split(",")):
        try:
            result.append(Column(name))
        except ValueError:
            choices = ", ".join(c.value for c in Column)
            raise argparse.ArgumentTypeError(
                f"unknown column {name!r}; expected names from: {choices}"
            ) from None
    return result


def _depth(text: str) -> int:
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


# --------------------------------------------------------------------------- output


def _emit(text: str, out: str | None) -> None:
    """Print ``text`` to stdout, or write it to ``out`` whole or not at all."""
    if not text.endswith("\n"):
        text += "\n"
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = atomic_write_text(out, text)
    print(f"netsight: wrote {path}", file=sys.stderr)


def _check_out(out: str | None) -> None:
    """Fail before the work, not after it, when ``--out`` cannot be written."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a directory; expected a file path")
    if not path.parent.is_dir():
        raise UsageError(f"--out {out}: directory {path.parent} does not exist")


# --------------------------------------------------------------------------- summary

_RENDERERS: dict[str, Callable[[Summary], str]] = {
    SummaryFormat.TEXT: Summary.to_text,
    SummaryFormat.MARKDOWN: Summary.to_markdown,
    SummaryFormat.JSON: Summary.to_json,
    SummaryFormat.HTML: lambda s: s.to_html(full_page=True),
}


def _configure_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, zoo:NAME, path/to/file.py:NAME or package.module:NAME",
    )
    p.add_argument(
        "--input",
        action="append",
        type=_shape,
        metavar="SHAPE",
        help="input shape with the batch dimension, e.g. 1,3,224,224 or 1x3x224x224; repeat "
        "for several inputs (default: the model's usual size, when netsight knows it)",
    )
    p.add_argument(
        "--dtype",
        type=_dtypes,
        metavar="DTYPE[,DTYPE...]",
        help="dtype of the inputs, one for all or one per --input, e.g. long (default: float32)",
    )
    p.add_argument("--depth", type=_depth, default=3, metavar="N", help="table depth (default: 3)")
    p.add_argument(
        "--columns",
        type=_columns,
        metavar="COL[,COL...]",
        help="columns to show, from: " + ", ".join(c.value for c in Column),
    )
    p.add_argument(
        "--format",
        choices=SummaryFormat.values(),
        default=SummaryFormat.TEXT.value,
        help="output format (default: text)",
    )
    p.add_argument("--weights", metavar="FILE", help="load this checkpoint into the model first")
    p.add_argument(
        "--trust-weights",
        action="store_true",
        help="allow --weights to unpickle arbitrary Python objects (can run code: only for "
        "files you trust)",
    )
    p.add_argument(
        "--meta",
        action="store_true",
        help="build the model on the meta device: any size, no memory for weights "
        "(e.g. zoo:LlamaDecoder, a 7B-parameter shape)",
    )
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")


def _run_summary(args: argparse.Namespace) -> int:
    if args.trust_weights and not args.weights:
        raise UsageError("--trust-weights only applies together with --weights FILE")
    _check_out(args.out)
    model = load_model(args.model, device="meta" if args.meta else None)
    sizes = _input_sizes(args)
    dtypes: list[torch.dtype] | None = args.dtype
    if dtypes is not None and len(dtypes) not in (1, len(sizes)):
        raise UsageError(
            f"--dtype: expected one dtype for all inputs or one per --input ({len(sizes)}), "
            f"got {len(dtypes)}"
        )
    if args.weights:
        load_weights(model, args.weights, trust=args.trust_weights)
    s = summary(model, input_size=sizes, depth=args.depth, columns=args.columns, dtypes=dtypes)
    _emit(_RENDERERS[args.format](s), args.out)
    return 0


# --------------------------------------------------------------------------- diagram

#: The formats ``netsight diagram`` writes: all but ``tikz`` (spelt ``tex`` here) and
#: ``pdf-3d`` (LaTeX-compiled; from Python only).
_DIAGRAM_FORMATS = tuple(
    f for f in DiagramFormat.values() if f not in (DiagramFormat.TIKZ, DiagramFormat.PDF_3D)
)


def _configure_diagram(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument(
        "--input",
        action="append",
        type=_shape,
        metavar="SHAPE",
        help="input shape with the batch dimension, e.g. 1,3,224,224; repeat for several "
        "inputs (default: the model's usual size, when netsight knows it)",
    )
    p.add_argument(
        "--dtype",
        type=_dtypes,
        metavar="DTYPE[,DTYPE...]",
        help="dtype of the inputs, one for all or one per --input (default: float32)",
    )
    p.add_argument(
        "--format",
        choices=_DIAGRAM_FORMATS,
        help="output format (default: from the --out suffix, else svg); dot and tex need "
        "no binary; svg, png and pdf run Graphviz's dot",
    )
    p.add_argument(
        "--depth", type=_depth, default=3, metavar="N", help="nesting depth drawn (default: 3)"
    )
    p.add_argument(
        "--roll",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw repeated identical blocks once, marked 'x N' (default: on)",
    )
    p.add_argument(
        "--direction",
        choices=Direction.values(),
        default=Direction.TB.value,
        help="layout direction: top to bottom, left to right, bottom to top, right to left "
        "(default: TB)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="output file (default: stdout for dot and tex, MODEL.FORMAT otherwise)",
    )


def _run_diagram(args: argparse.Namespace) -> int:
    from netsight._io import atomic_write_bytes, safe_filename
    from netsight.diagram import diagram

    _check_out(args.out)
    fmt: str | None = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
        fmt = {"gv": "dot", "tikz": "tex"}.get(suffix, suffix) or "svg"
        if fmt not in _DIAGRAM_FORMATS:
            raise UsageError(
                f"--out {args.out}: cannot tell the format from {suffix!r}; pass --format "
                f"({', '.join(_DIAGRAM_FORMATS)})"
            )
    sizes = _input_sizes(args)
    model = _model_from_args(args)
    if fmt == "tex":
        _emit(diagram(model, input_size=sizes, format="tex"), args.out)
        return 0
    out = (
        args.out
        or f"{safe_filename(args.model.split(':')[-1])}.{'png' if fmt == 'blocks' else fmt}"
    )
    if fmt == "blocks":
        path = atomic_write_bytes(out, diagram(model, input_size=sizes, format="blocks"))
        print(f"netsight: wrote {path}", file=sys.stderr)
        return 0
    d = diagram(
        model,
        input_size=sizes,
        dtypes=args.dtype,
        depth=args.depth,
        roll=args.roll,
        direction=args.direction,
    )
    for note in d.notes:
        print(f"netsight: note: {note}", file=sys.stderr)
    if fmt == "dot":
        _emit(d.dot, args.out)
        return 0
    path = d.save(Path(out).with_suffix("." + fmt) if not args.out else out)
    print(f"netsight: wrote {path} ({len(d.nodes)} nodes)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- shared model options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, zoo:NAME, path/to/file.py:NAME or package.module:NAME",
    )
    p.add_argument("--weights", metavar="FILE", help="load this checkpoint into the model first")
    p.add_argument(
        "--trust-weights",
        action="store_true",
        help="allow --weights to unpickle arbitrary Python objects (only for files you trust)",
    )


def _model_from_args(args: argparse.Namespace) -> torch.nn.Module:
    if args.trust_weights and not args.weights:
        raise UsageError("--trust-weights only applies together with --weights FILE")
    model = load_model(args.model)
    if args.weights:
        load_weights(model, args.weights, trust=args.trust_weights)
    return model


def _input_sizes(args: argparse.Namespace) -> list[tuple[int, ...]]:
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


def _add_image_options(p: argparse.ArgumentParser, own: str) -> None:
    """``--size``, ``--mean`` and ``--std`` for commands that load images."""
    p.add_argument(
        "--size",
        type=_shape,
        metavar="H,W",
        help=f"resize (default: the model's usual input size when netsight knows it, else {own})",
    )
    p.add_argument(
        "--mean", type=_floats, metavar="M[,M,M]", help="normalisation mean (default 0.5)"
    )
    p.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalisation std (default 0.5)")


def _image_size(args: argparse.Namespace, *, square: bool = False) -> tuple[int, int] | None:
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


_floats = _comma_separated(float, "numbers such as 0.485,0.456,0.406")
_ints = _comma_separated(int, "class indices such as 3,1,7")


def _add_overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace netsight output of this kind already in --out (default: refuse, "
        "naming the files)",
    )


def _out_dir(args: argparse.Namespace, what: str, names: Sequence[str]) -> Path:
    """``--out`` as a directory, checked before the work: not a file, and none of
    ``names`` (files this command writes) there unless ``--overwrite``. The library's
    writer checks again, with every name, when it writes."""
    from netsight._io import check_overwrite

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    check_overwrite(out, names, what=what, overwrite=args.overwrite)
    return out


def _provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What a library writer records about the model (its spec and weights), and
    whether it may replace earlier output."""
    return {"spec": args.model, "weights": args.weights, "overwrite": args.overwrite}


def _report_written(paths: Sequence[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


# --------------------------------------------------------------------------- features

#: The files ``export_features`` writes in every run (besides one grid per layer).
_FEATURES_FILES = (
    "manifest.json",
    "mean_maps.png",
    "layer_stats.txt",
    "layer_stats.json",
    "layer_stats.html",
    "layer_stats.png",
)


def _configure_features(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument("image", metavar="IMAGE", help="an image file Pillow can read")
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="layer names or globs (default: every convolution); see `netsight layers MODEL`",
    )
    p.add_argument("--out", default="out/features", metavar="DIR", help="output directory")
    _add_overwrite_option(p)
    _add_image_options(p, "the image's own")
    p.add_argument("--max-channels", type=int, default=64, metavar="N", help="tiles per layer grid")
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap (default: viridis)")


def _run_features(args: argparse.Namespace) -> int:
    from netsight.features import export_features
    from netsight.images import load_image

    out = Path(args.out)
    # what export_features always writes, and the grids of an earlier run
    names = [*_FEATURES_FILES, *(p.name for p in sorted(out.glob("features_*.png")))]
    out = _out_dir(args, "features", names)
    model = _model_from_args(args)
    x = load_image(
        args.image,
        size=_image_size(args),
        model=model,
        mean=args.mean,
        std=args.std,
    )
    paths = export_features(
        model, x, out, layers=args.layers, max_channels=args.max_channels, cmap=args.cmap
    )
    _report_written(paths)
    stats_text = (out / "layer_stats.txt").read_text(encoding="utf-8").splitlines()
    print(stats_text[-1])
    return 0


# --------------------------------------------------------------------------- filters


def _configure_filters(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument(
        "--layer",
        nargs="+",
        metavar="LAYER",
        help="convolution layer name(s) (default: the first convolution)",
    )
    p.add_argument("--out", default="out/filters", metavar="DIR", help="output directory")
    _add_overwrite_option(p)
    p.add_argument(
        "--mode",
        default=FilterMode.AUTO.value,
        choices=FilterMode.values(),
        help="rgb tiles for 3-channel inputs, one tile per (filter, input channel), "
        "or the per-filter mean (default: auto)",
    )
    p.add_argument("--max-tiles", type=int, default=256, metavar="N", help="cap on tiles")


def _run_filters(args: argparse.Namespace) -> int:
    from netsight.filters import MANIFEST, save_filters

    out = _out_dir(args, "filters", [MANIFEST])
    model = _model_from_args(args)
    paths = save_filters(
        model,
        args.layer,
        out,
        mode=args.mode,
        max_tiles=args.max_tiles,
        **_provenance(args),
    )
    _report_written(paths)
    return 0


# --------------------------------------------------------------------------- layers


def _configure_layers(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)


def _run_layers(args: argparse.Namespace) -> int:
    from netsight.capture import list_layers

    model = _model_from_args(args)
    modules = dict(model.named_modules())
    for name in list_layers(model):
        print(f"{name}\t{type(modules[name]).__name__}")
    return 0


# --------------------------------------------------------------------------- cam

#: Exit code when some explicitly requested methods could not run but others did.
EXIT_PARTIAL = 1


def _cam_methods(text: str) -> str | tuple[str, ...]:
    """``gradcam,scorecam`` or ``all`` (:func:`netsight.cam.compare.parse_methods`)."""
    from netsight.cam.compare import parse_methods

    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _class_index(text: str) -> int:
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"expected a class index (an integer >= 0), got {text!r}")
    return int(text)


def _configure_cam(p: argparse.ArgumentParser) -> None:
    from netsight.cam import METHODS

    _add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can read")
    p.add_argument(
        "--method",
        type=_cam_methods,
        default=("gradcam",),
        metavar="NAME[,NAME...]",
        help=f"methods to run, comma-separated, from: {', '.join(METHODS)}; or all "
        f"(every method this model supports) (default: gradcam)",
    )
    p.add_argument(
        "--target",
        type=_class_index,
        metavar="CLASS",
        help="class index to explain in every image (default: each image's top-1 class)",
    )
    p.add_argument(
        "--layer",
        metavar="NAME",
        help="target layer name or glob (default: the last layer with a spatial map); "
        "see `netsight layers MODEL`; saliency ignores it",
    )
    p.add_argument(
        "--out", default="out/cam", metavar="DIR", help="output directory (default: out/cam)"
    )
    _add_overwrite_option(p)
    _add_image_options(p, "each image's own (a single N means N,N)")
    p.add_argument(
        "--alpha",
        type=_unit_float,
        default=0.5,
        metavar="A",
        help="heat-map weight in the overlays, 0 to 1 (default: 0.5)",
    )
    p.add_argument(
        "--colormap",
        "--cmap",
        dest="colormap",
        default="jet",
        metavar="NAME",
        help="matplotlib colormap of the heat maps (default: jet)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="inputs per forward in the perturbation methods (scorecam, ablationcam; "
        "default: the method's own)",
    )
    p.add_argument(
        "--approx",
        type=_positive_int,
        metavar="K",
        help="scorecam and ablationcam: the documented approximation with at most K "
        "extra forwards per image (see the README; default: exact)",
    )
    p.add_argument(
        "--evaluate",
        type=_positive_int,
        nargs="?",
        const=20,
        metavar="STEPS",
        help="also measure faithfulness: deletion and insertion AUC, average drop and "
        "increase of each method's maps, next to a random and a centred map "
        "(netsight.cam.evaluate; STEPS deletion/insertion steps, default 20); printed "
        "and written to cam.json",
    )
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="also write each map as IMAGE__METHOD.npy: float32 (H, W) in [0, 1], "
        "at the input resolution",
    )


def _print_cam_table(found: Any, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"netsight cam: wrote to {out}", title_justify="left")
    for column in ("image", "target", "logit", "method", "layer", "overlay"):
        table.add_column(column, overflow="fold")
    for index, source in enumerate(found.sources):
        for method in found.methods:
            table.add_row(
                Path(source).name,
                str(found.targets[index]),
                f"{found.scores[index]:.3g}",
                method,
                ", ".join(found.layers[method][index]),
                f"{found.file_stem(index, method)}.png",
            )
    console = Console(file=sys.stdout)
    console.print(table)
    print(f"grid: {out / 'grid.png'} ({len(found.names)} x {1 + len(found.methods)})")
    print(f"manifest: {out / 'cam.json'}")
    if found.skipped:
        print(f"skipped: {', '.join(found.skipped)} (reasons on stderr and in cam.json)")


def _run_cam(args: argparse.Namespace) -> int:
    from netsight.cam import compare
    from netsight.cam.compare import MANIFEST
    from netsight.images import check_colormap, load_image

    check_colormap(args.colormap, "--colormap")  # before any work
    out = _out_dir(args, "cam", [MANIFEST, "grid.png"])
    model = _model_from_args(args)
    size = _image_size(args, square=True)
    batches = [
        load_image(p, size=size, model=model, mean=args.mean, std=args.std) for p in args.images
    ]
    found = compare(
        model,
        batches,
        args.method,
        args.target,
        layer=args.layer,
        names=args.images,
        mean=args.mean,
        std=args.std,
        batch_size=args.batch_size,
        approx=args.approx,
        faithfulness_steps=args.evaluate or 0,
        strict=args.traceback,
        progress=sys.stdout.isatty(),
    )
    for method in found.methods:
        for source, notes in zip(found.sources, found.notes[method], strict=True):
            for note in notes:
                print(f"netsight: warning: {Path(source).name}: {note}", file=sys.stderr)
    for method, reason in found.skipped.items():
        print(f"netsight: skipped {method}: {reason}", file=sys.stderr)
    if not found.methods:
        raise UsageError(
            f"none of the methods could run on {args.model} ({', '.join(found.skipped)}); "
            f"the reasons are above"
        )
    if found.evaluation_error is not None:
        raise UsageError(found.evaluation_error)
    found.save(
        out,
        alpha=args.alpha,
        colormap=args.colormap,
        maps=args.save_maps,
        **_provenance(args),
    )
    _print_cam_table(found, out)
    if found.evaluation is not None:
        print()
        print(found.evaluation.table(), end="")
    if found.skipped and found.requested != "all":
        return EXIT_PARTIAL
    return 0


# --------------------------------------------------------------------------- demo


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="out",
        metavar="DIR",
        help="where the files go (default: out); the demo's own files from an earlier run "
        "there are replaced, its trained weights reused",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="train one epoch on 64 digits (seconds, a smoke test) instead of the full run",
    )
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: 4)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train even if weights from an earlier run with the same settings are in --out",
    )


def _run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from netsight.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs: expected at least 1, got {args.epochs}")
        config = dataclasses.replace(config, epochs=args.epochs)
    run_demo(args.out, config=config, retrain=args.retrain)
    return 0


# --------------------------------------------------------------------------- runs


def _configure_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "logdir",
        metavar="DIR",
        help="the log directory given to TrainingMonitor(logdir=...), or one run's directory",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a table, or JSON with every field (default: table)",
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _run_runs(args: argparse.Namespace) -> int:
    import json
    import time

    from rich.console import Console
    from rich.table import Table

    from netsight.monitor.runs import list_runs, metric_columns

    runs = list_runs(args.logdir)
    if args.format == "json":
        _emit(json.dumps([run.to_dict() for run in runs], indent=2, allow_nan=False), None)
        return 0
    if not runs:
        print(
            f"netsight: no runs in {args.logdir} (a run is a directory with the scalars.csv "
            f"that TrainingMonitor writes)",
            file=sys.stderr,
        )
        return 0
    metrics = metric_columns(runs)
    table = Table(title=f"runs in {args.logdir}", title_justify="left")
    table.add_column("run", overflow="fold")
    for column in ("steps", "epochs", "last loss", *metrics):
        table.add_column(column, justify="right")
    table.add_column("diagnostics", overflow="fold")
    table.add_column("updated")
    for run in runs:
        diagnostics = ", ".join(f"{kind} {n}" for kind, n in run.diagnostics.items())
        updated = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated))
            if run.updated is not None
            else ""
        )
        table.add_row(
            run.name,
            str(run.steps),
            str(run.epochs),
            _number(run.last_loss),
            *(_number(run.metrics.get(m)) for m in metrics),
            diagnostics or "none",
            updated,
        )
    # a pipe or file gets the whole table; a terminal gets rich's fit to its width
    width = None if sys.stdout.isatty() else 200
    Console(file=sys.stdout, width=width).print(table)
    return 0


# --------------------------------------------------------------------------- tensorboard

#: Seconds ``netsight tensorboard`` waits for the server to answer.
_TENSORBOARD_START_TIMEOUT = 120.0


def _port(text: str) -> int:
    if not text.isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def _configure_tensorboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("logdir", metavar="DIR", help="the log directory (TensorBoard's --logdir)")
    p.add_argument(
        "--port", type=_port, metavar="P", help="port on 127.0.0.1 (default: a free one)"
    )


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(process: Any, url: str, port_given: bool) -> None:
    """Return once ``url`` answers; raise if the server exits or never answers."""
    import time
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxy
    deadline = time.monotonic() + _TENSORBOARD_START_TIMEOUT
    while True:
        code = process.poll()
        if code is not None:
            hint = " (is the port in use? choose another --port, or leave it out)"
            raise UsageError(
                f"TensorBoard exited with code {code} before it answered on {url}; its "
                f"messages are above{hint if port_given else ''}"
            )
        try:
            with opener.open(url + "data/runs", timeout=5) as response:
                response.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                seconds = _TENSORBOARD_START_TIMEOUT
                raise TimeoutError(
                    f"TensorBoard did not answer on {url} within {seconds:.0f} s"
                ) from None
            time.sleep(0.25)


def _stop_process(process: Any) -> None:
    """Stop the server this command started: terminate, then kill if it lingers."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_tensorboard(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import threading

    logdir = Path(args.logdir)
    if not logdir.is_dir():
        what = "does not exist" if not logdir.exists() else "is not a directory"
        raise UsageError(f"{args.logdir} {what}; expected the log directory of your runs")
    if next(logdir.rglob("events.out.tfevents.*"), None) is None:
        print(
            f"netsight: note: no TensorBoard event files under {logdir} yet; "
            f"runs appear as they are written",
            file=sys.stderr,
        )
    port = args.port if args.port is not None else _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    print(f"netsight: starting TensorBoard for {logdir} ...", file=sys.stderr)
    # SIGTERM stops the server too, as Ctrl-C does (not only this process).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        _wait_for_server(process, url, port_given=args.port is not None)
        print(f"TensorBoard: {url} (Ctrl-C to stop)", flush=True)
        code = process.wait()
        if code != 0:
            raise UsageError(f"TensorBoard exited with code {code}; its messages are above")
        return 0
    except KeyboardInterrupt:
        print("netsight: TensorBoard stopped", file=sys.stderr)
        return 0
    finally:
        if process is not None:
            _stop_process(process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- patterns


def _configure_patterns(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument(
        "--layer", required=True, metavar="NAME", help="the layer whose channels to maximise"
    )
    p.add_argument(
        "--channels",
        type=_ints,
        metavar="K[,K...]",
        help="channel indices (default: the first --max-channels)",
    )
    p.add_argument("--max-channels", type=_positive_int, default=16, metavar="N")
    p.add_argument("--size", type=_positive_int, default=64, metavar="N", help="picture side")
    p.add_argument("--steps", type=_positive_int, default=128, metavar="N", help="Adam steps")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--pixel", action="store_true", help="optimise pixels, not a 1/f spectrum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mean", type=_floats, metavar="M[,M,M]", help="normalisation mean (default 0.5)"
    )
    p.add_argument("--std", type=_floats, metavar="S[,S,S]", help="normalisation std (default 0.5)")
    p.add_argument("--out", default="out/patterns", metavar="DIR", help="output directory")
    _add_overwrite_option(p)


def _run_patterns(args: argparse.Namespace) -> int:
    from netsight._io import safe_filename
    from netsight.patterns import maximize

    stem = f"patterns_{safe_filename(args.layer)}"
    out = _out_dir(args, "patterns", [f"{stem}.json", f"{stem}.png"])
    model = _model_from_args(args)
    found = maximize(
        model,
        args.layer,
        args.channels,
        size=args.size,
        steps=args.steps,
        lr=args.lr,
        parameterization="pixel" if args.pixel else "fourier",
        mean=args.mean,
        std=args.std,
        max_channels=args.max_channels,
        seed=args.seed,
        progress=sys.stdout.isatty(),
    )
    paths = found.save(out, **_provenance(args))
    for channel, before, after in zip(found.channels, found.start, found.activation, strict=True):
        print(f"{found.layer} channel {channel}: mean activation {before:.3g} -> {after:.3g}")
    _report_written(paths)
    return 0


# --------------------------------------------------------------------------- report


def _configure_report(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files Pillow can read")
    p.add_argument("--out", default="out/report.html", metavar="FILE", help="the page to write")
    _add_image_options(p, "the first image's own")
    p.add_argument(
        "--methods",
        type=_cam_methods,
        metavar="M[,M...]|all",
        help=f"CAM methods (default: {','.join(_REPORT_METHODS)})",
    )
    p.add_argument("--layer", metavar="NAME", help="CAM target layer (default: chosen per model)")
    p.add_argument("--labels", type=_ints, metavar="K[,K...]", help="the true class of each image")
    p.add_argument("--classes", metavar="FILE", help="a text file with one class name per line")
    p.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a TrainingMonitor run directory to include"
    )
    p.add_argument(
        "--faithfulness-steps",
        type=int,
        default=10,
        metavar="N",
        help="deletion/insertion steps of the CAM faithfulness table; 0 leaves it out (default 10)",
    )
    p.add_argument(
        "--pattern-steps",
        type=int,
        default=64,
        metavar="N",
        help="activation-maximisation steps for the last convolution's filter patterns; "
        "0 leaves them out (default 64)",
    )
    p.add_argument("--no-diagram", action="store_true", help="leave the dataflow graph out")
    p.add_argument("--depth", type=_depth, default=3, help="summary depth (default 3)")
    p.add_argument("--title", help="page title (default: the model's class name)")


_REPORT_METHODS = ("gradcam", "gradcam++", "layercam")


def _run_report(args: argparse.Namespace) -> int:
    from netsight.images import load_image
    from netsight.report import report

    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {args.out}: is a directory; give a file name such as report.html")
    if args.labels is not None and len(args.labels) != len(args.images):
        raise UsageError(f"--labels: {len(args.labels)} labels for {len(args.images)} images")
    class_names = None
    if args.classes:
        try:
            lines = Path(args.classes).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--classes {args.classes}: {exc.strerror or exc}") from None
        class_names = [line.strip() for line in lines if line.strip()]
    model = _model_from_args(args)
    size = _image_size(args)
    batch = []
    for path in args.images:
        x = load_image(path, size=size, model=model, mean=args.mean, std=args.std)
        if size is None:  # the first image fixes the size of the others
            size = (x.shape[-2], x.shape[-1])
        batch.append(x)
    methods: str | tuple[str, ...] | None = args.methods
    if methods == "all":
        from netsight.cam import METHODS

        methods = tuple(METHODS)
    result = report(
        model,
        torch.cat(batch),
        labels=args.labels,
        class_names=class_names,
        # what load_image normalised with (its default 0.5 too), to show them as they were
        mean=args.mean if args.mean is not None else [0.5],
        std=args.std if args.std is not None else [0.5],
        title=args.title,
        cam_methods=methods if methods is not None else _REPORT_METHODS,
        cam_layer=args.layer,
        faithfulness_steps=args.faithfulness_steps,
        pattern_steps=args.pattern_steps,
        run=args.run_dir,
        diagram=not args.no_diagram,
        depth=args.depth,
        progress=sys.stderr.isatty(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    path = result.save(out)
    for section in result.sections:
        state = f"skipped: {section.skipped}" if section.skipped else f"{section.seconds:.1f} s"
        print(f"  {section.title}: {state}")
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- registry

#: Every subcommand, in the order ``netsight --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command(
        "summary",
        "layer-by-layer summary of a model",
        _configure_summary,
        _run_summary,
        description="Print a layer-by-layer summary: shapes, parameters, mult-adds, memory.",
    ),
    Command(
        "diagram",
        "draw the architecture as a dataflow graph (Graphviz), TikZ or blocks",
        _configure_diagram,
        _run_diagram,
        description="Draw MODEL as a dataflow graph: module calls collapsed to --depth, the "
        "additions and concatenations that join branches, repeated blocks rolled into 'x N'. "
        "svg, png and pdf need Graphviz's dot (Debian package graphviz); when it is missing "
        "the DOT text is written next to --out.",
    ),
    Command(
        "features",
        "feature-map grids, mean maps and layer statistics for one image",
        _configure_features,
        _run_features,
        description="Capture every chosen layer's output for IMAGE with forward hooks and "
        "write per-layer grids, the mean-map figure and the layer statistics "
        "(sparsity, dead channels) to --out.",
    ),
    Command(
        "cam",
        "class activation maps: overlays and a methods-by-images grid",
        _configure_cam,
        _run_cam,
        description="Explain the class the model picks (or --target) for each IMAGE with "
        "each --method: one overlay PNG per (image, method), grid.png (rows: images, "
        "columns: the image then each method) and cam.json in --out. A method that cannot "
        "run on the model is skipped with its reason; the exit code is 1 when an explicitly "
        "requested method was skipped, 2 when none ran.",
    ),
    Command(
        "filters",
        "convolution kernels drawn as image grids",
        _configure_filters,
        _run_filters,
    ),
    Command(
        "patterns",
        "filter patterns: the input each channel of a layer likes best",
        _configure_patterns,
        _run_patterns,
        description="Activation maximisation: for each chosen channel of --layer, optimise "
        "an input (a 1/f spectrum through a sigmoid, jittered at every step) to raise the "
        "channel's mean activation; write the pictures as one figure and a JSON record.",
    ),
    Command(
        "layers",
        "list the model's layer names (for --layers)",
        _configure_layers,
        _run_layers,
    ),
    Command(
        "report",
        "one HTML page: summary, diagram, filters, features, statistics, CAMs, training",
        _configure_report,
        _run_report,
        description="Run everything netsight shows on MODEL and IMAGE(s) and write one "
        "self-contained HTML page (pictures embedded): the layer summary, the dataflow "
        "graph, filters, feature maps, layer statistics, class activation maps and, with "
        "--run, a TrainingMonitor run's curves, gradient flow and diagnostics.",
    ),
    Command(
        "runs",
        "list the training runs a TrainingMonitor wrote under a directory",
        _configure_runs,
        _run_runs,
        description="List the runs under DIR (directories with a scalars.csv written by "
        "TrainingMonitor): steps, epochs, the last loss, the last epoch's metrics and the "
        "diagnostics by kind.",
    ),
    Command(
        "tensorboard",
        "start TensorBoard on a log directory, on 127.0.0.1",
        _configure_tensorboard,
        _run_tensorboard,
        description="Start TensorBoard on DIR, listening on 127.0.0.1 only (a free port "
        "unless --port is given), print its URL once it answers, and keep it running "
        "until Ctrl-C.",
    ),
    Command(
        "demo",
        "train the tutorials' VGG-16 on the bundled digits and show everything (out/report.html)",
        _configure_demo,
        _run_demo,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command.

    Args:
        commands: the subcommands to register.

    Returns:
        The parser; ``parse_args`` sets ``command`` and ``run`` on the namespace.
    """
    parser = _Parser(
        prog="netsight",
        description="See inside a PyTorch network.",
    )
    parser.add_argument("--version", action="version", version=f"netsight {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback on errors (for bug reports)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in commands:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
        )
        command.configure(p)
        p.set_defaults(run=command.run)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``netsight`` command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 for a usage or user error (printed as
        ``netsight: error: ...`` on stderr), 1 when ``cam`` skipped a method the
        user named (the others were written), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, bad arguments
        return _exit_code(exc.code)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        # building a model draws from the global RNG: an in-process caller keeps its own
        with torch.random.fork_rng(devices=[]):
            code: int = args.run(args)
    except KeyboardInterrupt:
        print("netsight: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`netsight summary ... | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except _USER_ERRORS as exc:
        if args.traceback:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netsight: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
