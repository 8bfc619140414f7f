"""Layer-by-layer model summary: numbers first, then text, rich, HTML, Markdown,
JSON and pandas renderings that all read the same rows.

Counting rules (they make every column add up to the totals):

* A parameter is counted once, in the first module call that owns it. A module
  registered under two names (an *alias*) is one module; a module called twice
  shows both calls, the second with its parameters marked as shared.
* Rows deeper than ``depth`` are folded into their ancestor at ``depth``, which
  then shows its whole subtree. A row above the cut shows what it owns itself
  (``--`` when nothing), so the column sums equal the totals.
* Parameters of modules that never ran in the forward are listed under the
  table and included in the totals.
* Mult-adds: see :mod:`netsight._flops`.
* Forward/backward pass size: twice the bytes of every leaf module's output
  (the activation kept for backward plus its gradient), the same convention as
  torchinfo.
"""

from __future__ import annotations

import enum
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from netsight._markdown import markdown_escape
from netsight._version import __version__
from netsight.trace import (
    LayerRecord,
    Trace,
    UncalledModule,
    format_structure,
    trace,
)

if TYPE_CHECKING:
    import pandas
    from rich.table import Table

__all__ = ["Column", "Row", "Summary", "summary"]

SCHEMA = "netsight.summary/1"


class Column(str, enum.Enum):
    """Columns a summary table can show."""

    INPUT_SIZE = "input_size"
    OUTPUT_SIZE = "output_size"
    NUM_PARAMS = "num_params"
    PARAMS_PERCENT = "params_percent"
    KERNEL_SIZE = "kernel_size"
    MULT_ADDS = "mult_adds"
    TRAINABLE = "trainable"

    def __str__(self) -> str:
        return self.value


DEFAULT_COLUMNS: tuple[Column, ...] = (Column.OUTPUT_SIZE, Column.NUM_PARAMS, Column.MULT_ADDS)

_HEADERS = {
    Column.INPUT_SIZE: "Input Shape",
    Column.OUTPUT_SIZE: "Output Shape",
    Column.NUM_PARAMS: "Param #",
    Column.PARAMS_PERCENT: "Param %",
    Column.KERNEL_SIZE: "Kernel Shape",
    Column.MULT_ADDS: "Mult-Adds",
    Column.TRAINABLE: "Trainable",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One displayed line: a record, with the values shown at the chosen depth."""

    record: LayerRecord
    folded: bool
    params: int
    trainable_params: int
    mult_adds: int

    @property
    def trainable(self) -> str:
        if self.params == 0:
            return "--"
        if self.trainable_params == self.params:
            return "True"
        if self.trainable_params == 0:
            return "False"
        return "Partial"


def _parse_columns(columns: Iterable[str | Column] | None) -> tuple[Column, ...]:
    if columns is None:
        return DEFAULT_COLUMNS
    parsed = []
    for c in columns:
        try:
            parsed.append(Column(c))
        except ValueError:
            choices = ", ".join(col.value for col in Column)
            raise ValueError(f"unknown column {c!r}; expected one of: {choices}") from None
    return tuple(parsed)


def _implied_alias(name: str, alias: str, aliases: dict[str, tuple[str, ...]]) -> bool:
    """Whether ``alias`` of ``name`` follows from an alias of one of its ancestors."""
    parts, alias_parts = name.split("."), alias.split(".")
    for k in range(1, min(len(parts), len(alias_parts))):
        if parts[-k:] != alias_parts[-k:]:
            break
        prefix, alias_prefix = ".".join(parts[:-k]), ".".join(alias_parts[:-k])
        if alias_prefix in aliases.get(prefix, ()):
            return True
    return False


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _count(n: int) -> str:
    return f"{n:,}"


def _scaled(n: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,}"


class Summary:
    """The result of :func:`summary`: numbers, records and renderers.

    Nothing is printed by itself: ``print(s)``, ``s.to_html()``, ``s.to_json()``.
    In a notebook the last expression ``s`` shows as an HTML table.
    """

    def __init__(
        self, trace: Trace, *, depth: int = 3, columns: Iterable[str | Column] | None = None
    ) -> None:
        if depth < 0:
            raise ValueError(f"depth: expected >= 0, got {depth}")
        self.trace = trace
        self.depth = depth
        self.columns = _parse_columns(columns)

    # ------------------------------------------------------------------ numbers
    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        """Every recorded module call, in call order."""
        return self.trace.records

    @property
    def total_params(self) -> int:
        return self.trace.total_params

    @property
    def trainable_params(self) -> int:
        return self.trace.trainable_params

    @property
    def non_trainable_params(self) -> int:
        return self.trace.non_trainable_params

    @property
    def total_mult_adds(self) -> int:
        return self.trace.total_mult_adds

    @property
    def input_bytes(self) -> int:
        return self.trace.input_bytes

    @property
    def forward_backward_bytes(self) -> int:
        return 2 * sum(r.output_bytes for r in self.trace.records if r.is_leaf)

    @property
    def params_bytes(self) -> int:
        return self.trace.params_bytes

    @property
    def buffers_bytes(self) -> int:
        return self.trace.buffers_bytes

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.forward_backward_bytes + self.params_bytes

    @property
    def uncalled(self) -> tuple[UncalledModule, ...]:
        return self.trace.uncalled

    @property
    def uncounted_ops(self) -> tuple[str, ...]:
        return self.trace.uncounted_ops

    @property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Modules registered under more than one name: canonical name -> other names."""
        return dict(self.trace.aliases)

    def rows(self, depth: int | None = None) -> list[Row]:
        """The lines shown at ``depth`` (default: the summary's depth)."""
        depth = self.depth if depth is None else depth
        rows = []
        for record in self.trace.records:
            if record.depth > depth:
                continue
            folded = record.depth == depth or record.is_leaf
            if folded:
                rows.append(
                    Row(
                        record,
                        True,
                        record.total_params,
                        record.total_trainable_params,
                        record.total_mult_adds,
                    )
                )
            else:
                rows.append(
                    Row(record, False, record.params, record.trainable_params, record.mult_adds)
                )
        return rows

    def with_options(
        self, *, depth: int | None = None, columns: Iterable[str | Column] | None = None
    ) -> Summary:
        """The same trace shown with another depth or columns."""
        return Summary(
            self.trace,
            depth=self.depth if depth is None else depth,
            columns=self.columns if columns is None else columns,
        )

    # ------------------------------------------------------------------ cells
    def _name_cell(self, row: Row) -> str:
        r = row.record
        text = f"{r.label} ({r.type_name})" if r.name else r.type_name
        if r.aliases:
            text += " = " + ", ".join(r.aliases)
        if r.repeat_of is not None:
            text += f" [call {r.call + 1}]"
        return text

    def _cell(self, row: Row, column: Column) -> str:
        r = row.record
        if column is Column.INPUT_SIZE:
            return format_structure(r.input)
        if column is Column.OUTPUT_SIZE:
            return format_structure(r.output)
        if column is Column.NUM_PARAMS:
            if row.params:
                return _count(row.params)
            if r.repeat_of is not None and (r.shared_params or r.total_params == 0):
                return "(shared)" if r.shared_params else "--"
            if r.shared_params:
                return "(shared)"
            return "--"
        if column is Column.PARAMS_PERCENT:
            if not row.params or not self.total_params:
                return "--"
            return f"{100 * row.params / self.total_params:.2f}%"
        if column is Column.KERNEL_SIZE:
            return "x".join(str(k) for k in r.kernel_size) if r.kernel_size else "--"
        if column is Column.MULT_ADDS:
            text = _count(row.mult_adds) if row.mult_adds else "--"
            if r.uncounted_ops:
                text += " +?"
            return text
        return row.trainable

    def table(self) -> tuple[list[str], list[list[str]], list[int]]:
        """Header, cells and depth of every row: what every table renderer draws."""
        header = ["Layer (type)", *(_HEADERS[c] for c in self.columns)]
        rows = self.rows()
        cells = [
            [self._name_cell(row), *(self._cell(row, c) for c in self.columns)] for row in rows
        ]
        return header, cells, [row.record.depth for row in rows]

    def footer(self) -> list[tuple[str, str]]:
        """(label, value) lines shown under every table."""
        lines = [
            ("Total params", _count(self.total_params)),
            ("Trainable params", _count(self.trainable_params)),
            ("Non-trainable params", _count(self.non_trainable_params)),
            ("Total mult-adds", _scaled(self.total_mult_adds)),
            ("Input size (MB)", _mb(self.input_bytes)),
            ("Forward/backward pass size (MB)", _mb(self.forward_backward_bytes)),
            ("Params size (MB)", _mb(self.params_bytes)),
            ("Estimated total size (MB)", _mb(self.total_bytes)),
        ]
        return lines

    def notes(self) -> list[str]:
        """Things the reader must know to trust the numbers."""
        notes = []
        aliases = self.trace.aliases
        for name, others in aliases.items():
            # 'layer1.0 = conv.0.0' follows from 'layer1 = conv.0': say only the latter.
            others = tuple(o for o in others if not _implied_alias(name, o, aliases))
            if not others:
                continue
            notes.append(
                f"'{name}' is also registered as {', '.join(repr(o) for o in others)}: "
                f"one module, its parameters counted once"
            )
        repeats = sorted({r.name for r in self.trace.records if r.repeat_of is not None})
        if repeats:
            notes.append(
                "called more than once (each call shown; parameters counted once): "
                + ", ".join(repeats)
            )
        used = [u for u in self.trace.uncalled if u.params and u.used_by is not None]
        if used:
            users = sorted({u.used_by or "" for u in used})
            names = ", ".join(u.name for u in used[:8])
            more = f" and {len(used) - 8} more" if len(used) > 8 else ""
            used_params = _count(sum(u.params for u in used))
            parents = ", ".join(users[:3]) + (" …" if len(users) > 3 else "")
            notes.append(
                f"read as weights by their parent's forward, never called as modules "
                f"({used_params} params, in the totals; their mult-adds are in the rows of "
                f"{parents}): {names}{more}"
            )
        scripted = self.trace.scripted
        if scripted:
            what = ", ".join(repr(name) if name else "the model" for name in scripted[:3])
            notes.append(
                f"{what}: a TorchScript module (torch.jit.script/trace), whose submodules run "
                f"where hooks cannot see them, so its parameters and mult-adds are counted on "
                f"its own row (summarise the model before scripting it for a row per layer)"
            )
        if self.trace.uncalled:
            with_params = [u for u in self.trace.uncalled if u.params and u.used_by is None]
            if with_params:
                total = sum(u.params for u in with_params)
                names = ", ".join(u.name or u.type_name for u in with_params[:8])
                more = f" and {len(with_params) - 8} more" if len(with_params) > 8 else ""
                notes.append(
                    f"not called in the forward pass ({_count(total)} params, included in the "
                    f"totals): {names}{more}"
                )
        if self.trace.uncounted_ops:
            notes.append(
                "mult-adds not counted for ops without a known formula (marked +?): "
                + ", ".join(self.trace.uncounted_ops)
            )
        if self.trace.execution == "meta":
            notes.append("shapes propagated on the meta device (no arithmetic, no memory)")
        else:
            reason = self.trace.fallback_reason
            why = f" because the meta-device pass failed ({reason})" if reason else ""
            notes.append(f"ran a real forward pass under torch.no_grad(){why}")
        return notes

    # ------------------------------------------------------------------ renderers
    def to_text(self) -> str:
        """A plain-text table in the style of torchinfo and Keras."""
        header, cells, depths = self.table()
        for line, depth in zip(cells, depths, strict=True):
            line[0] = "  " * depth + line[0]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        widths[0] = max(widths[0], 24)

        def fmt(values: Sequence[str]) -> str:
            parts = [values[0].ljust(widths[0])]
            parts += [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
            return "  ".join(parts).rstrip()

        width = sum(widths) + 2 * (len(widths) - 1)
        out = ["=" * width, fmt(header), "=" * width]
        out += [fmt(c) for c in cells]
        out.append("=" * width)
        label_width = max(len(label) for label, _ in self.footer())
        out += [f"{label + ':':<{label_width + 1}} {value}" for label, value in self.footer()]
        out.append("=" * width)
        out += [f"* {note}" for note in self.notes()]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (
            f"Summary({self.trace.model_type}, params={self.total_params:,}, "
            f"mult_adds={self.total_mult_adds:,}, layers={len(self.layers)})"
        )

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table plus totals and notes; every name from
        the model is escaped (see :func:`netsight._markdown.markdown_escape`)."""
        header, cells, depths = self.table()
        esc = markdown_escape
        out = ["| " + " | ".join(esc(h) for h in header) + " |"]
        out.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for line, depth in zip(cells, depths, strict=True):
            name = "&nbsp;&nbsp;" * depth + esc(line[0])
            out.append("| " + " | ".join([name, *(esc(c) for c in line[1:])]) + " |")
        out.append("")
        out += [f"- **{esc(label)}:** {esc(value)}" for label, value in self.footer()]
        out += [f"- {esc(note)}" for note in self.notes()]
        return "\n".join(out)

    def to_rich(self) -> Table:
        """A :class:`rich.table.Table` (``rich.print(s)`` also works)."""
        from rich.table import Table

        header, cells, depths = self.table()
        table = Table(title=f"{self.trace.model_type} summary", show_lines=False)
        table.add_column(header[0], no_wrap=True)
        for h in header[1:]:
            table.add_column(h, justify="right")
        for line, depth in zip(cells, depths, strict=True):
            table.add_row("  " * depth + line[0], *line[1:])
        caption = [f"{label}: {value}" for label, value in self.footer()]
        table.caption = "\n".join(caption + [f"* {n}" for n in self.notes()])
        return table

    def __rich__(self) -> Table:
        return self.to_rich()

    def to_html(self, *, full_page: bool = False) -> str:
        """An HTML table; every name from the model is escaped."""
        header, cells, depths = self.table()
        e = html.escape
        parts = [
            '<div class="netsight-summary">',
            f"<table><caption>{e(self.trace.model_type)} summary</caption>",
            "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>",
            "<tbody>",
        ]
        for line, depth in zip(cells, depths, strict=True):
            name = f'<td style="padding-left:{0.3 + 1.2 * depth:.1f}em;text-align:left">'
            name += f"{e(line[0])}</td>"
            rest = "".join(f'<td style="text-align:right">{e(c)}</td>' for c in line[1:])
            parts.append(f'<tr data-depth="{depth}">{name}{rest}</tr>')
        parts.append("</tbody></table>")
        parts.append('<table class="totals">')
        parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in self.footer()]
        parts.append("</table>")
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in self.notes()) + "</ul>")
        parts.append("</div>")
        body = "\n".join(parts)
        if not full_page:
            return body
        title = e(f"{self.trace.model_type} — netsight summary")
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return f"<style>{_CSS}</style>" + self.to_html()

    def to_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON-ready data."""
        t = self.trace

        def structure(s: Any) -> Any:
            if hasattr(s, "to_json"):
                return s.to_json()
            if isinstance(s, (tuple, list)):
                return [structure(x) for x in s]
            if isinstance(s, dict):
                return {k: structure(v) for k, v in s.items()}
            return s

        layers = []
        for r in t.records:
            layers.append(
                {
                    "index": r.index,
                    "name": r.name,
                    "aliases": list(r.aliases),
                    "type": r.type_name,
                    "depth": r.depth,
                    "parent": r.parent,
                    "call": r.call,
                    "repeat_of": r.repeat_of,
                    "input": structure(r.input),
                    "output": structure(r.output),
                    "params": r.params,
                    "trainable_params": r.trainable_params,
                    "shared_params": r.shared_params,
                    "buffers": r.buffers,
                    "total_params": r.total_params,
                    "kernel_size": list(r.kernel_size) if r.kernel_size else None,
                    "mult_adds": r.mult_adds,
                    "total_mult_adds": r.total_mult_adds,
                    "output_bytes": r.output_bytes,
                    "is_leaf": r.is_leaf,
                    "uncounted_ops": list(r.uncounted_ops),
                }
            )
        return {
            "schema": SCHEMA,
            "netsight_version": __version__,
            "torch_version": torch.__version__,
            "model": t.model_type,
            "execution": t.execution,
            "fallback_reason": t.fallback_reason,
            "mode": t.mode,
            "input": structure(t.input),
            "output": structure(t.output),
            "totals": {
                "total_params": self.total_params,
                "trainable_params": self.trainable_params,
                "non_trainable_params": self.non_trainable_params,
                "total_buffers": t.total_buffers,
                "total_mult_adds": self.total_mult_adds,
                "input_bytes": self.input_bytes,
                "forward_backward_bytes": self.forward_backward_bytes,
                "params_bytes": self.params_bytes,
                "buffers_bytes": self.buffers_bytes,
            },
            "aliases": {k: list(v) for k, v in t.aliases.items()},
            "uncalled": [
                {"name": u.name, "type": u.type_name, "params": u.params, "used_by": u.used_by}
                for u in t.uncalled
            ],
            "uncounted_ops": list(t.uncounted_ops),
            "layers": layers,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per module call (all depths); needs pandas (``pip install netsight[pandas]``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - exercised without pandas
            raise ImportError(
                "Summary.to_dataframe needs pandas: pip install 'netsight[pandas]'"
            ) from exc
        layers = self.to_dict()["layers"]
        for layer in layers:
            layer["input"] = format_structure(self.trace.records[layer["index"]].input)
            layer["output"] = format_structure(self.trace.records[layer["index"]].output)
            layer["aliases"] = ", ".join(layer["aliases"])
        return pd.DataFrame(layers).set_index("index")


_CSS = (
    ".netsight-summary table{border-collapse:collapse;font-family:ui-monospace,monospace;"
    "font-size:12px;margin-bottom:.6em}"
    ".netsight-summary th,.netsight-summary td{border-bottom:1px solid #ddd;padding:2px 8px}"
    ".netsight-summary thead th{border-bottom:2px solid #444}"
    ".netsight-summary caption{font-weight:bold;text-align:left}"
    ".netsight-summary ul{font-size:12px}"
)


def summary(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    *,
    depth: int = 3,
    columns: Iterable[str | Column] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | str | None = None,
    mode: str = "eval",
    execution: str = "auto",
    forward_kwargs: dict[str, Any] | None = None,
) -> Summary:
    """Summarise ``model`` layer by layer.

    Example:
        >>> import netsight, torchvision
        >>> s = netsight.summary(torchvision.models.resnet18(), input_size=(1, 3, 224, 224))
        >>> s.total_params, s.total_mult_adds
        (11689512, 1814073344)
        >>> print(s)  # doctest: +SKIP

    Args:
        model: the network. It is left exactly as it came.
        input_size: input shape(s) including the batch dimension.
        input_data: a real input instead (tensor, tuple of positional inputs, or a
            dict of keyword inputs).
        depth: how deep the table goes; deeper modules fold into their ancestor.
        columns: any of ``input_size``, ``output_size``, ``num_params``,
            ``params_percent``, ``kernel_size``, ``mult_adds``, ``trainable``.
        dtypes, device, mode, execution, forward_kwargs: see :func:`netsight.trace.trace`.
    """
    recorded = trace(
        model,
        input_size,
        input_data,
        dtypes=dtypes,
        device=device,
        mode=mode,
        execution=execution,
        forward_kwargs=forward_kwargs,
    )
    return Summary(recorded, depth=depth, columns=columns)
