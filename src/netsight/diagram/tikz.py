"""PlotNeuralNet-style drawings written as our own TikZ, and their compilation.

:func:`to_tikz` traces the model (see :mod:`netsight.diagram.stages` for how
stages, blocks and skip connections are found and sized) and returns a complete
LaTeX document: one A4 landscape page with a row of 3D boxes (thickness grows
with channels, height and depth with spatial size), pools as thin slabs, fully
connected layers and softmax as bars, arrows between blocks and residual
shortcuts as arcs over their block. Captions give channels and spatial size;
every user string is escaped. The document needs only Debian's
texlive-latex-base (article, geometry, graphicx), texlive-latex-recommended and
texlive-pictures (TikZ); no style files of another project.

:func:`compile_pdf` writes the ``.tex`` next to the PDF and runs ``pdflatex``.

Example:
    >>> tex = to_tikz(torchvision.models.resnet18(), input_size=(1, 3, 224, 224))
    >>> compile_pdf(tex, Path("resnet18.pdf"))
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netsight._io import atomic_write_bytes, atomic_write_text
from netsight._version import __version__
from netsight.diagram.stages import COLORS, KIND_LABELS, Layout, extract, fmt_size, layout
from netsight.errors import LatexError, LatexNotFoundError

__all__ = [
    "LatexError",
    "LatexNotFoundError",
    "compile_pdf",
    "tex_escape",
    "to_tikz",
]


_TEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "%": r"\%",
    "&": r"\&",
    "_": r"\_",
    "#": r"\#",
    "$": r"{\char36}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    '"': "''",
}


def tex_escape(text: str) -> str:
    """``text`` as LaTeX that prints it literally with pdflatex's default fonts.

    The special characters ``\\ { } % & _ # $ ^ ~ < > | "`` become commands or
    safe equivalents, the times sign of sizes (``64×32``) becomes math; accented
    letters lose their accent and other non-ASCII characters become ``?`` (the
    Type 1 Computer Modern fonts of texlive-base have no glyphs for them).
    """
    out: list[str] = []
    for ch in text:
        if ch in _TEX_SPECIALS:
            out.append(_TEX_SPECIALS[ch])
        elif ch == "\u00d7":
            out.append(r"\ensuremath{\times}")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        elif ord(ch) > 127:
            # the Type 1 Computer Modern fonts of texlive-base only: accents
            # dropped, anything else a question mark
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(tex_escape(plain) if plain and plain.isprintable() else "?")
        else:
            out.append(ch)
    return "".join(out)


def _shorten(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(v: float) -> str:
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _pt(p: tuple[float, float]) -> str:
    return f"({_num(p[0])},{_num(p[1])})"


_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[a4paper,landscape,margin=1cm]{geometry}
\usepackage{graphicx}
\usepackage{tikz}
\usetikzlibrary{arrows.meta}
\pagestyle{empty}
\setlength{\parindent}{0pt}
"""

_MACROS = r"""% \nsbox{x}{thickness}{height}{depth}{colour}: a box centred on y = z = 0
% whose front-left edge is at x; its front, top and right faces are drawn.
\newcommand{\nsbox}[5]{%
  \begin{scope}[shift={(#1,0,0)}]
    \pgfmathsetmacro{\nsW}{#2}\pgfmathsetmacro{\nsH}{#3/2}\pgfmathsetmacro{\nsD}{#4/2}
    \filldraw[nsface, fill=#5] (0,-\nsH,-\nsD) -- (\nsW,-\nsH,-\nsD) -- (\nsW,\nsH,-\nsD)
      -- (0,\nsH,-\nsD) -- cycle;
    \filldraw[nsface, fill=#5!55!white] (0,\nsH,-\nsD) -- (\nsW,\nsH,-\nsD)
      -- (\nsW,\nsH,\nsD) -- (0,\nsH,\nsD) -- cycle;
    \filldraw[nsface, fill=#5!80!black] (\nsW,-\nsH,-\nsD) -- (\nsW,-\nsH,\nsD)
      -- (\nsW,\nsH,\nsD) -- (\nsW,\nsH,-\nsD) -- cycle;
  \end{scope}}
% \nsband{x}{thickness}{height}{depth}{colour}: the front and top faces only,
% a band painted on a box (the activation at the end of a convolution).
\newcommand{\nsband}[5]{%
  \begin{scope}[shift={(#1,0,0)}]
    \pgfmathsetmacro{\nsW}{#2}\pgfmathsetmacro{\nsH}{#3/2}\pgfmathsetmacro{\nsD}{#4/2}
    \filldraw[nsface, fill=#5] (0,-\nsH,-\nsD) -- (\nsW,-\nsH,-\nsD) -- (\nsW,\nsH,-\nsD)
      -- (0,\nsH,-\nsD) -- cycle;
    \filldraw[nsface, fill=#5!55!white] (0,\nsH,-\nsD) -- (\nsW,\nsH,-\nsD)
      -- (\nsW,\nsH,\nsD) -- (0,\nsH,\nsD) -- cycle;
  \end{scope}}
\newsavebox{\nsnet}
"""


def _color_name(kind: str) -> str:
    return "ns" + kind


def _picture(lay: Layout, title: str) -> list[str]:
    from netsight.diagram.stages import ZX, ZY

    net = lay.network
    out = [
        rf"\begin{{tikzpicture}}[x=1cm, y=1cm, z={{({ZX}cm,{ZY}cm)}}, font=\sffamily,",
        r"  nsface/.style={draw=black!70, line width=0.35pt, line join=round},",
        r"  nsarrow/.style={draw=black!75, line width=0.7pt},",
        r"  nsskip/.style={draw=nsskip, line width=0.9pt, -{Stealth[length=5pt]}}]",
    ]
    out.append(
        rf"\node[anchor=south west, font=\sffamily\bfseries] at "
        rf"({_num(lay.xmin)},{_num(lay.ymax + 0.45)}) {{{title}}};"
    )
    arrows = {round(a[1][0], 6): a for a in lay.arrows}
    for box in lay.boxes:
        arrow = arrows.get(round(box.x, 6))
        if arrow is not None and box.stage > 0:
            (x0, y0), (x1, y1) = arrow
            mid = (x0 + x1) / 2 + 0.12
            out.append(
                rf"\draw[nsarrow, -{{Stealth[length=5pt]}}] {_pt((x0, y0))} -- {_pt((mid, y0))};"
            )
            out.append(rf"\draw[nsarrow] {_pt((mid - 0.05, y0))} -- {_pt((x1, y1))};")
        stage = net.stages[box.stage]
        out.append(f"% {tex_escape(stage.kind)}: {tex_escape(', '.join(stage.layers) or 'input')}")
        size = f"{{{_num(box.h)}}}{{{_num(box.d)}}}"
        out.append(rf"\nsbox{{{_num(box.x)}}}{{{_num(box.w)}}}{size}{{{_color_name(box.kind)}}}")
        if box.band:
            x_band = box.x + box.w - box.band
            out.append(rf"\nsband{{{_num(x_band)}}}{{{_num(box.band)}}}{size}{{nsrelu}}")
    for arc in lay.arcs:
        skip = net.skips[arc.skip]
        style = "nsskip, dashed" if arc.dashed else "nsskip"
        (x0, y0), (x1, y1) = arc.start, arc.end
        out.append(f"% skip connection added in {tex_escape(skip.container or '(model)')}")
        out.append(
            rf"\draw[{style}] {_pt(arc.start)} .. controls {_pt((x0, arc.control))} and "
            rf"{_pt((x1, arc.control))} .. {_pt(arc.end)};"
        )
        if arc.label:
            out.append(
                rf"\node[anchor=south, font=\sffamily\tiny, text=nsskip, inner sep=1pt] at "
                rf"{_pt(((x0 + x1) / 2, arc.apex))} {{{tex_escape(arc.label)}}};"
            )
    for label in lay.labels:
        size = r"\tiny" if label.size == "tiny" else r"\scriptsize"
        weight = r"\bfseries" if label.bold else ""
        out.append(
            rf"\node[anchor={label.anchor}, font=\sffamily{size}{weight}, inner sep=1pt] "
            rf"at {_pt(label.at)} {{{tex_escape(_shorten(label.text))}}};"
        )
    # legend
    x, y = lay.xmin, lay.ymin - 0.1
    for kind in lay.kinds:
        text = KIND_LABELS[kind]
        if kind == "skip":
            out.append(rf"\draw[nsskip] {_pt((x, y + 0.05))} -- {_pt((x + 0.5, y + 0.05))};")
            swatch = 0.6
        else:
            out.append(
                rf"\filldraw[nsface, fill={_color_name(kind)}] ({_num(x)},{_num(y - 0.1)}) "
                rf"rectangle ({_num(x + 0.3)},{_num(y + 0.2)});"
            )
            swatch = 0.4
        out.append(
            rf"\node[anchor=west, font=\sffamily\scriptsize, inner sep=0pt] at "
            rf"({_num(x + swatch)},{_num(y + 0.05)}) {{{text}}};"
        )
        x += swatch + 0.125 * len(text) + 0.5
    out.append(r"\end{tikzpicture}")
    return out


def render_tex(lay: Layout, *, title: str | None = None) -> str:
    """The LaTeX document for a :class:`~netsight.diagram.stages.Layout`."""
    net = lay.network
    first = net.stages[0] if net.stages else None
    if title is None:
        title = net.model_type
        if first is not None and first.shape:
            title += f", input {fmt_size(first.shape)}"
    lines = [
        f"% {tex_escape(net.model_type)}: drawn by netsight {__version__}; compile with pdflatex.",
        "% Needs only texlive-latex-base, texlive-latex-recommended and texlive-pictures.",
    ]
    lines += [f"% note: {tex_escape(n)}" for n in net.notes]
    lines.append(_PREAMBLE.rstrip("\n"))
    for kind, color in COLORS.items():
        lines.append(rf"\definecolor{{{_color_name(kind)}}}{{HTML}}{{{color.lstrip('#')}}}")
    lines.append(_MACROS.rstrip("\n"))
    lines.append(r"\begin{document}")
    lines.append(r"\begin{lrbox}{\nsnet}")
    lines += _picture(lay, tex_escape(title))
    lines.append(r"\end{lrbox}")
    # a safety net: shrink the picture if it would not fit the page
    lines += [
        r"\ifdim\wd\nsnet>\linewidth",
        r"  \sbox{\nsnet}{\resizebox{\linewidth}{!}{\usebox{\nsnet}}}\fi",
        r"\ifdim\dimexpr\ht\nsnet+\dp\nsnet\relax>0.95\textheight",
        r"  \sbox{\nsnet}{\resizebox{!}{0.95\textheight}{\usebox{\nsnet}}}\fi",
        r"\vspace*{\fill}",
        r"\begin{center}\usebox{\nsnet}\end{center}",
        r"\vspace*{\fill}",
        r"\end{document}",
    ]
    return "\n".join(lines) + "\n"


def to_tikz(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    input_data: Any = None,
    *,
    title: str | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    mode: str = "eval",
    execution: str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """A standalone LaTeX document drawing ``model`` in the PlotNeuralNet look.

    Args:
        model: the network (it leaves as it came: one traced pass, meta device
            when possible).
        input_size: a shape with the batch dimension, e.g. ``(1, 3, 224, 224)``.
        input_data: real input instead of ``input_size``.
        dtypes, mode, execution, forward_kwargs: how the model runs, as in
            :func:`netsight.diagram.graph.record_dataflow`.
        title: the heading (default: the model's class and input size); escaped.

    Returns:
        The ``.tex`` text: one A4 landscape page, compiles with ``pdflatex``.

    Raises:
        TraceError: the model cannot run on this input; the message names the layer.

    Example:
        >>> tex = to_tikz(netsight.zoo.Vgg16Net(), input_size=(1, 1, 32, 32))
        >>> compile_pdf(tex, Path("vgg16.pdf"))
    """
    return render_tex(
        layout(
            extract(
                model,
                input_size,
                input_data,
                dtypes=dtypes,
                mode=mode,
                execution=execution,
                forward_kwargs=forward_kwargs,
            )
        ),
        title=title,
    )


_TEX_PACKAGE = "texlive-latex-base"


def _find_pdflatex(executable: str | os.PathLike[str] | None) -> str | None:
    name = os.fspath(executable) if executable is not None else "pdflatex"
    return shutil.which(name)


def _log_excerpt(log: str, limit: int = 25) -> str:
    """The error lines of a LaTeX log (``! ...`` and the few lines after)."""
    lines = log.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("!") or "LaTeX Error" in line:
            picked.extend(lines[i : i + 4])
    if not picked:
        picked = lines[-15:]
    return "\n".join("  " + line for line in picked[:limit])


def compile_pdf(
    tex: str,
    out_pdf: str | os.PathLike[str],
    *,
    executable: str | os.PathLike[str] | None = None,
    timeout: float = 180.0,
) -> Path:
    """Compile a TikZ document with ``pdflatex`` to ``out_pdf``.

    The ``.tex`` is written next to the PDF first (same name, ``.tex``), so it
    is there even when compiling fails; ``pdflatex`` runs in a temporary
    directory (``-interaction=nonstopmode -halt-on-error``, no shell escape)
    and the PDF is copied over whole.

    Example:
        >>> compile_pdf(to_tikz(model, input_size=(1, 1, 32, 32)), Path("vgg16.pdf"))
        PosixPath('vgg16.pdf')

    Args:
        tex: the document, e.g. from :func:`to_tikz`.
        out_pdf: where the PDF goes.
        executable: the ``pdflatex`` program (default: ``pdflatex`` on PATH).
        timeout: seconds before the run is abandoned.

    Returns:
        The PDF's path.

    Raises:
        LatexNotFoundError: ``pdflatex`` is not installed; names the Debian package.
        LatexError: ``pdflatex`` failed or timed out; shows the log's error lines.
    """
    target = Path(out_pdf)
    if target.suffix.lower() != ".pdf":
        raise ValueError(f"out_pdf: expected a path ending in .pdf, got {target.name!r}")
    tex_path = atomic_write_text(target.with_suffix(".tex"), tex)
    program = _find_pdflatex(executable)
    if program is None:
        name = os.fspath(executable) if executable is not None else "pdflatex"
        raise LatexNotFoundError(
            f"LaTeX's {name!r} program was not found on PATH; install the Debian/Ubuntu "
            f"packages {_TEX_PACKAGE} and texlive-pictures (sudo apt-get install "
            f"{_TEX_PACKAGE} texlive-latex-recommended texlive-pictures). "
            f"The TeX source was written to {tex_path}"
        )
    with tempfile.TemporaryDirectory(prefix="netsight-tex-") as tmp:
        work = Path(tmp)
        (work / "diagram.tex").write_text(tex, encoding="utf-8")
        command = [program, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape"]
        try:
            proc = subprocess.run(
                [*command, "diagram.tex"],
                cwd=work,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LatexError(f"pdflatex did not finish within {timeout:g} s on {tex_path}") from exc
        pdf = work / "diagram.pdf"
        if proc.returncode != 0 or not pdf.exists():
            log_file = work / "diagram.log"
            log = (
                log_file.read_text(encoding="utf-8", errors="replace")
                if log_file.exists()
                else proc.stdout.decode("utf-8", "replace")
            )
            raise LatexError(
                f"pdflatex failed (exit {proc.returncode}) on {tex_path}:\n{_log_excerpt(log)}"
            )
        return atomic_write_bytes(target, pdf.read_bytes())
