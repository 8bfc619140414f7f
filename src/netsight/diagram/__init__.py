"""Architecture drawings: a Graphviz dataflow graph, TikZ and block pictures.

:func:`diagram` traces the model once and returns a :class:`Diagram`: the DOT
text (always available, no binary needed), the graph's nodes and edges, and
``save``/``render`` through Graphviz's ``dot``. ``format="tex"``/``"tikz"``,
``"pdf-3d"`` and ``"blocks"`` hand over to :mod:`netsight.diagram.tikz` and
:mod:`netsight.diagram.blocks`.

The graph's steps are public for tools that redraw it (an interactive
explorer): :func:`record_dataflow` once (``partial=True`` keeps what a failing
forward recorded), then :func:`build_graph` with ``expanded``, ``collapsed``
and ``unrolled`` module names per view, :func:`to_dot` and :func:`render`;
:meth:`Graph.module_nodes` maps module names to the node ids drawn.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn

from netsight._io import atomic_write_bytes, atomic_write_text
from netsight.diagram.graph import (
    CATEGORY_COLORS,
    RENDER_FORMATS,
    Cluster,
    Dataflow,
    Edge,
    Graph,
    GraphvizNotFoundError,
    Node,
    build_graph,
    record_dataflow,
    render,
    to_dot,
)
from netsight.options import DiagramFormat, Direction

__all__ = [
    "CATEGORY_COLORS",
    "Cluster",
    "Dataflow",
    "Diagram",
    "Edge",
    "Graph",
    "GraphvizNotFoundError",
    "Node",
    "build_graph",
    "diagram",
    "record_dataflow",
    "render",
    "to_dot",
]

_TEXT_SUFFIXES = (".dot", ".gv")


@dataclass(frozen=True)
class Diagram:
    """A model's dataflow graph and its DOT text.

    Attributes:
        graph: the collapsed graph (:class:`Graph`).
        dot: DOT text; needs no Graphviz binary.
        format: the default format of :meth:`render` and of :meth:`save` for a
            path without a suffix.
        executable: the ``dot`` program to use (default: ``dot`` on PATH).

    Example:
        >>> d = netsight.diagram(model, input_size=(1, 3, 224, 224))
        >>> d.save("resnet.svg")  # or .png, .pdf, .dot
    """

    graph: Graph
    dot: str
    format: str = "svg"
    executable: str | None = None

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.graph.nodes

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self.graph.edges

    @property
    def notes(self) -> tuple[str, ...]:
        return self.graph.notes

    def render(self, format: str | None = None) -> bytes:
        """The drawing as ``"svg"``, ``"png"`` or ``"pdf"`` bytes (runs ``dot``)."""
        return render(self.dot, format or self._render_format(), executable=self.executable)

    def _render_format(self) -> str:
        return self.format if self.format in RENDER_FORMATS else "svg"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the drawing; the format follows the suffix (.svg, .png, .pdf, .dot, .gv).

        When ``dot`` is missing, the DOT text is written next to ``path`` (same
        name, ``.dot``) and :class:`GraphvizNotFoundError` says where it went.

        Returns:
            The path written.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if not suffix:
            fmt = self.format if self.format in (*RENDER_FORMATS, "dot") else "svg"
            target = target.with_suffix("." + fmt)
            suffix = target.suffix
        if suffix in _TEXT_SUFFIXES:
            return atomic_write_text(target, self.dot)
        fmt = suffix[1:]
        if fmt not in RENDER_FORMATS:
            raise ValueError(
                f"cannot save a diagram as {target.name!r}: expected a suffix from "
                f".svg, .png, .pdf, .dot, .gv, got {suffix!r}"
            )
        try:
            data = render(self.dot, fmt, executable=self.executable)
        except GraphvizNotFoundError as exc:
            fallback = atomic_write_text(target.with_suffix(".dot"), self.dot)
            raise GraphvizNotFoundError(f"{exc}. The DOT text was written to {fallback}") from exc
        return atomic_write_bytes(target, data)

    def _repr_svg_(self) -> str | None:
        try:
            return self.render("svg").decode("utf-8")
        except (GraphvizNotFoundError, RuntimeError):
            return None  # the notebook falls back to the text repr

    def __str__(self) -> str:
        return self.dot


_Formats = Literal["svg", "png", "pdf", "dot"]


#: Formats that draw the model's stages (TikZ, its PDF, the block picture), not the graph.
_STAGE_FORMATS = frozenset(
    {DiagramFormat.TEX, DiagramFormat.TIKZ, DiagramFormat.PDF_3D, DiagramFormat.BLOCKS}
)


@overload
def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = ...,
    input_data: Any = ...,
    *,
    format: _Formats = ...,
    depth: int = ...,
    direction: str = ...,
    roll: bool = ...,
    legend: bool = ...,
    dtypes: Sequence[torch.dtype] | None = ...,
    mode: str = ...,
    execution: str = ...,
    forward_kwargs: Mapping[str, Any] | None = ...,
    out: str | os.PathLike[str] | None = ...,
    executable: str | None = ...,
) -> Diagram: ...


@overload
def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = ...,
    input_data: Any = ...,
    *,
    format: Literal["tex", "tikz"],
    depth: int = ...,
    direction: str = ...,
    roll: bool = ...,
    legend: bool = ...,
    dtypes: Sequence[torch.dtype] | None = ...,
    mode: str = ...,
    execution: str = ...,
    forward_kwargs: Mapping[str, Any] | None = ...,
    out: str | os.PathLike[str] | None = ...,
    executable: str | None = ...,
) -> str: ...


@overload
def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = ...,
    input_data: Any = ...,
    *,
    format: Literal["blocks"],
    depth: int = ...,
    direction: str = ...,
    roll: bool = ...,
    legend: bool = ...,
    dtypes: Sequence[torch.dtype] | None = ...,
    mode: str = ...,
    execution: str = ...,
    forward_kwargs: Mapping[str, Any] | None = ...,
    out: str | os.PathLike[str] | None = ...,
    executable: str | None = ...,
) -> bytes: ...


@overload
def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = ...,
    input_data: Any = ...,
    *,
    format: Literal["pdf-3d"],
    depth: int = ...,
    direction: str = ...,
    roll: bool = ...,
    legend: bool = ...,
    dtypes: Sequence[torch.dtype] | None = ...,
    mode: str = ...,
    execution: str = ...,
    forward_kwargs: Mapping[str, Any] | None = ...,
    out: str | os.PathLike[str] | None = ...,
    executable: str | None = ...,
) -> Path: ...


def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    *,
    format: str = "svg",
    depth: int = 3,
    direction: str = "TB",
    roll: bool = True,
    legend: bool = True,
    dtypes: Sequence[torch.dtype] | None = None,
    mode: str = "eval",
    execution: str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    executable: str | None = None,
) -> Diagram | str | bytes | Path:
    """Draw the model's architecture as a dataflow graph.

    Nodes are module calls collapsed to ``depth`` (type, output shape,
    parameter count) and the functional ops that join branches (residual
    additions, concatenations), so skip connections show. Runs of identical
    consecutive blocks become one node marked "x N" (``roll=True``). The model
    runs once, on the meta device when it can (else on real tensors under
    ``no_grad``, which :attr:`Diagram.notes` says), and leaves as it came.

    Args:
        model: the network.
        input_size: a shape with the batch dimension, or a list of shapes.
        input_data: real input instead: tensor, tuple/list or dict of kwargs.
        format: ``"svg"`` (default), ``"png"``, ``"pdf"`` or ``"dot"``: the
            default format of the returned :class:`Diagram`. ``"tex"``/``"tikz"``
            return TikZ source (str), ``"blocks"`` a block picture (PNG bytes),
            ``"pdf-3d"`` compiles the TikZ picture to ``out`` (returns the path).
        depth: module calls at this depth are single boxes (the model is 0).
        direction: ``"TB"`` (top to bottom) or ``"LR"`` (left to right).
        roll: draw repeated identical consecutive blocks once, marked "x N".
        legend: add a legend of the layer-kind colours.
        dtypes: dtypes of the inputs made from ``input_size`` (default float32).
        mode: ``"eval"`` (default), ``"train"`` or ``"same"`` during the pass.
        execution: ``"auto"``, ``"meta"`` or ``"real"``.
        forward_kwargs: extra keyword arguments for ``model.forward``.
        out: also save the drawing there (required for ``"pdf-3d"``).
        executable: the Graphviz ``dot`` program (default: ``dot`` on PATH).

    Returns:
        A :class:`Diagram` (str, bytes or Path for the TikZ/blocks formats).

    Raises:
        TraceError: the model cannot run on this input; the message names the layer.
        GraphvizNotFoundError: ``out`` needs ``dot`` and it is not installed (the
            ``.dot`` text is written next to ``out`` first).

    Example:
        >>> d = netsight.diagram(torchvision.models.resnet18(), input_size=(1, 3, 224, 224))
        >>> sum(n.name == "add" for n in d.nodes)
        8
    """
    kind = DiagramFormat.parse(format, "format")
    rankdir = Direction.parse(direction, "direction").value
    run_options: dict[str, Any] = {
        "dtypes": dtypes,
        "mode": mode,
        "execution": execution,
        "forward_kwargs": forward_kwargs,
    }
    if kind in _STAGE_FORMATS:
        graph_only = {
            "depth": depth != 3,
            "direction": rankdir != "TB",
            "roll": roll is not True,
            "legend": legend is not True,
        }
        given = [name for name, changed in graph_only.items() if changed]
        if given:
            raise ValueError(
                f"{', '.join(given)}: options of the Graphviz dataflow graph; "
                f"format={kind.value!r} draws the model's stages and has no such option"
            )
    if kind in (DiagramFormat.TEX, DiagramFormat.TIKZ, DiagramFormat.PDF_3D):
        tikz = importlib.import_module("netsight.diagram.tikz")
        tex: str = tikz.to_tikz(model, input_size, input_data, **run_options)
        if kind != DiagramFormat.PDF_3D:
            if out is not None:
                atomic_write_text(out, tex)
            return tex
        if out is None:
            raise ValueError("format='pdf-3d' needs out=PATH for the PDF")
        pdf: Path = tikz.compile_pdf(tex, Path(out))
        return pdf
    if kind == DiagramFormat.BLOCKS:
        blocks = importlib.import_module("netsight.diagram.blocks")
        data: bytes = blocks.block_picture(
            model, input_size, input_data, format="png", **run_options
        )
        if out is not None:
            atomic_write_bytes(out, data)
        return data
    flow = record_dataflow(model, input_size, input_data, **run_options)
    graph = build_graph(flow, depth=depth, roll=roll)
    dot = to_dot(graph, direction=rankdir, legend=legend)
    result = Diagram(graph, dot, kind.value, executable)
    if out is not None:
        result.save(out)
    return result
