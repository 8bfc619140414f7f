"""``netsight summary``: a layer-by-layer summary of a model (:func:`netsight.summary`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from netsight.cli import common
from netsight.options import SummaryFormat
from netsight.summary import DEFAULT_COLUMNS, Column, Summary, summary

__all__ = ["COMMAND"]


_RENDERERS: dict[str, Callable[[Summary], str]] = {
    SummaryFormat.TEXT: Summary.to_text,
    SummaryFormat.MARKDOWN: Summary.to_markdown,
    SummaryFormat.JSON: Summary.to_json,
    SummaryFormat.HTML: lambda s: s.to_html(full_page=True),
}


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


def configure(p: argparse.ArgumentParser) -> None:
    common.add_model_options(p)
    common.add_input_options(p)
    p.add_argument("--depth", type=common.parse_depth, default=3, metavar="N", help="table depth")
    p.add_argument(
        "--columns",
        type=_columns,
        metavar="COL[,COL...]",
        help="columns to show, from: "
        + ", ".join(c.value for c in Column)
        + f" (default: {','.join(c.value for c in DEFAULT_COLUMNS)})",
    )
    p.add_argument(
        "--format",
        choices=SummaryFormat.values(),
        default=SummaryFormat.TEXT.value,
        help="output format",
    )
    p.add_argument(
        "--meta",
        action="store_true",
        help="build the model on the meta device: any size, no memory for weights "
        "(e.g. zoo:LlamaDecoder, a 7B-parameter shape)",
    )
    common.add_out_file_option(p, "stdout")


def run(args: argparse.Namespace) -> int:
    common.check_out(args.out, args.overwrite)
    model = common.model_from_args(args, device="meta" if args.meta else None)
    sizes = common.input_sizes(args)
    dtypes: list[torch.dtype] | None = args.dtype
    if dtypes is not None and len(dtypes) not in (1, len(sizes)):
        raise common.UsageError(
            f"--dtype: expected one dtype for all inputs or one per --input ({len(sizes)}), "
            f"got {len(dtypes)}"
        )
    s = summary(model, input_size=sizes, depth=args.depth, columns=args.columns, dtypes=dtypes)
    common.emit(_RENDERERS[args.format](s), args.out)
    return 0


COMMAND = common.Command(
    "summary",
    "layer-by-layer summary of a model",
    configure,
    run,
    description="Print a layer-by-layer summary: shapes, parameters, mult-adds, memory.",
)
