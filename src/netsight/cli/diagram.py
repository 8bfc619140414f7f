"""``netsight diagram``: the architecture as a dataflow graph, TikZ or blocks
(:func:`netsight.diagram`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netsight.cli import common
from netsight.options import DiagramFormat, Direction

__all__ = ["COMMAND"]


#: The formats ``netsight diagram`` writes: all but ``tikz`` (spelt ``tex`` here) and
#: ``pdf-3d`` (LaTeX-compiled; from Python only).
_DIAGRAM_FORMATS = tuple(
    f for f in DiagramFormat.values() if f not in (DiagramFormat.TIKZ, DiagramFormat.PDF_3D)
)


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    common.add_input_options(p)
    p.add_argument(
        "--format",
        choices=_DIAGRAM_FORMATS,
        help="output format; dot and tex need no binary; svg, png and pdf run Graphviz's "
        "dot (default: from the --out suffix, else svg)",
    )
    p.add_argument(
        "--depth",
        type=common.parse_depth,
        default=3,
        metavar="N",
        help="nesting depth drawn",
    )
    p.add_argument(
        "--roll",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw repeated identical blocks once, marked 'x N'",
    )
    p.add_argument(
        "--direction",
        choices=Direction.values(),
        default=Direction.TB.value,
        help="layout direction: top to bottom, left to right, bottom to top, right to left",
    )
    common.add_out_file_option(
        p, "stdout for dot and tex, else out/diagram/NAME.FORMAT, NAME from MODEL"
    )


def run(args: argparse.Namespace) -> int:
    from netsight._io import atomic_write_bytes
    from netsight.diagram import diagram

    common.check_out(args.out, args.overwrite)
    fmt: str | None = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower().lstrip(".") if args.out else ""
        fmt = {"gv": "dot", "tikz": "tex"}.get(suffix, suffix) or "svg"
        if fmt not in _DIAGRAM_FORMATS:
            raise common.UsageError(
                f"--out {args.out}: cannot tell the format from {suffix!r}; pass --format "
                f"({', '.join(_DIAGRAM_FORMATS)})"
            )
    out = args.out
    if out is None and fmt not in ("dot", "tex"):  # dot and tex go to stdout unless --out
        out = common.default_out_file(args, "diagram", "png" if fmt == "blocks" else fmt)
        common.check_out(out, args.overwrite, make=True)
    sizes = common.input_sizes(args)
    model = common.model_from_args(args)
    if fmt == "tex":
        common.emit(diagram(model, input_size=sizes, format="tex"), args.out)
        return 0
    if fmt == "blocks":
        data = diagram(model, input_size=sizes, format="blocks")
        Path(out).parent.mkdir(parents=True, exist_ok=True)  # out/diagram/, once it is drawn
        path = atomic_write_bytes(out, data)
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
        common.emit(d.dot, out)
        return 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    path = d.save(out)
    print(f"netsight: wrote {path} ({len(d.nodes)} nodes)", file=sys.stderr)
    return 0


COMMAND = common.Command(
    "diagram",
    "draw the architecture as a dataflow graph (Graphviz), TikZ or blocks",
    configure,
    run,
    description="Draw MODEL as a dataflow graph: module calls collapsed to --depth, the "
    "additions and concatenations that join branches, repeated blocks rolled into 'x N'. "
    "svg, png and pdf need Graphviz's dot (Debian package graphviz); when it is missing "
    "the DOT text is written next to --out.",
)
