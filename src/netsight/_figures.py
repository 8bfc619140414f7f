"""What makes a figure readable, measured: titles, colour bars and font sizes.

Every figure netsight draws with matplotlib should pass :func:`audit_figure`: it has
a title, every heatmap (a scalar image drawn through a colour map) can be read
against a colour bar, and no text is smaller than :data:`MIN_FONT_PX` pixels at the
resolution it is saved at. The report records the audit of every figure it embeds
(``Report.figures``) and the tests hold the figures to it, so a picture that a
reader could not read fails CI instead of reaching a projector.

The rules, precisely:

* **title**: the figure's ``suptitle``, or, when it has a single content axes,
  that axes' title;
* **colour bar**: a heatmap is covered when it has a colour bar, or shares its
  ``norm`` (the same object) and colour map with one that has: a grid of tiles on
  one scale needs one bar. RGB(A) images (photos, overlays drawn into pixels) are
  not heatmaps;
* **font size**: every visible, non-empty text (titles, labels, tick labels,
  legends, annotations, colour-bar ticks) at ``size_pt * dpi / 72`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FONT_PT", "MIN_FONT_PX", "FigureAudit", "audit_figure", "title_of"]

#: The smallest text, in pixels of the saved image, that a figure may carry.
MIN_FONT_PX = 10.0
#: Font sizes (points) netsight's figures use: at the report's 90 dpi the smallest
#: (``small``, 8.5 pt) is 10.6 px.
FONT_PT = {"title": 11.0, "label": 9.5, "small": 8.5}


@dataclass(frozen=True)
class FigureAudit:
    """What :func:`audit_figure` measured on one figure.

    Attributes:
        width_px, height_px: the saved size at ``dpi``.
        dpi: the resolution the sizes are measured at.
        title: the figure's title (see the module docstring), or ``None``.
        min_font_px: the smallest text in pixels (``inf`` when there is no text).
        smallest_text: that text (cut to 40 characters).
        heatmaps: how many scalar images the figure draws.
        uncovered_heatmaps: how many of them no colour bar explains.
    """

    width_px: int
    height_px: int
    dpi: float
    title: str | None
    min_font_px: float
    smallest_text: str
    heatmaps: int
    uncovered_heatmaps: int

    def problems(self, min_font_px: float = MIN_FONT_PX) -> list[str]:
        """What a reader could not read, in words; empty when the figure passes."""
        found = []
        if not self.title:
            found.append("no title")
        if self.uncovered_heatmaps:
            found.append(
                f"{self.uncovered_heatmaps} of {self.heatmaps} heatmaps without a colour bar"
            )
        if self.min_font_px < min_font_px:
            found.append(
                f"text of {self.min_font_px:.1f} px (< {min_font_px:g} px): {self.smallest_text!r}"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "width_px": self.width_px,
            "height_px": self.height_px,
            "dpi": self.dpi,
            "title": self.title,
            "min_font_px": self.min_font_px,
            "smallest_text": self.smallest_text,
            "heatmaps": self.heatmaps,
            "uncovered_heatmaps": self.uncovered_heatmaps,
        }


def _is_colorbar_axes(ax: Any) -> bool:
    return hasattr(ax, "_colorbar")


def _content_axes(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible() and not _is_colorbar_axes(ax)]


def title_of(fig: Any) -> str | None:
    """The figure's title: its suptitle, or the title of its only content axes."""
    suptitle = fig.get_suptitle()
    if suptitle.strip():
        return str(suptitle.strip())
    axes = _content_axes(fig)
    if len(axes) == 1:
        for loc in ("center", "left", "right"):
            text = axes[0].get_title(loc=loc).strip()
            if text:
                return str(text)
    return None


def _texts(fig: Any) -> list[Any]:
    """Every text a reader would see on ``fig``."""
    from matplotlib.text import Text

    found: list[Any] = []
    if fig._suptitle is not None:
        found.append(fig._suptitle)
    for attr in ("_supxlabel", "_supylabel"):
        text = getattr(fig, attr, None)
        if text is not None:
            found.append(text)
    found.extend(fig.texts)
    for legend in fig.legends:
        found.extend(legend.get_texts())
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        found.extend([ax.title, ax._left_title, ax._right_title])
        found.extend(t for t in ax.texts)
        found.extend(a for a in ax.get_children() if isinstance(a, Text) and a not in found)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            found.extend(legend.get_texts())
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                if not axis.get_visible():
                    continue
                found.append(axis.label)
                found.append(axis.get_offset_text())
                lo, hi = sorted(axis.get_view_interval())
                for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                    inside = (
                        lo - 1e-9 * max(1.0, abs(hi - lo))
                        <= tick.get_loc()
                        <= hi + 1e-9 * max(1.0, abs(hi - lo))
                    )
                    if not inside:
                        continue
                    for label in (tick.label1, tick.label2):
                        found.append(label)
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def _heatmaps(fig: Any) -> tuple[int, int]:
    """(scalar images, how many of them no colour bar covers)."""
    from matplotlib.collections import QuadMesh
    from matplotlib.image import AxesImage

    mappables: list[Any] = []
    for ax in fig.axes:
        if not ax.get_visible() or _is_colorbar_axes(ax):
            continue
        for artist in ax.get_children():
            if isinstance(artist, AxesImage) and artist.get_visible():
                array = artist.get_array()
                if array is not None and array.ndim == 2:
                    mappables.append(artist)
            elif isinstance(artist, QuadMesh) and artist.get_visible():
                mappables.append(artist)
    explained = {
        (id(m.norm), m.cmap.name) for m in mappables if getattr(m, "colorbar", None) is not None
    }
    # a colour bar drawn for a ScalarMappable that is not itself on an axes
    for ax in fig.axes:
        if _is_colorbar_axes(ax):
            bar = ax._colorbar
            explained.add((id(bar.mappable.norm), bar.mappable.cmap.name))
    uncovered = sum(
        1
        for m in mappables
        if getattr(m, "colorbar", None) is None and (id(m.norm), m.cmap.name) not in explained
    )
    return len(mappables), uncovered


def audit_figure(fig: Any, dpi: float | None = None) -> FigureAudit:
    """Measure ``fig`` as it would be saved at ``dpi`` (default: the figure's own)."""
    resolution = float(dpi if dpi is not None else fig.dpi)
    width, height = fig.get_size_inches()
    smallest, text = float("inf"), ""
    for item in _texts(fig):
        size = float(item.get_fontsize()) * resolution / 72.0
        if size < smallest:
            smallest, text = size, item.get_text().strip()[:40]
    heatmaps, uncovered = _heatmaps(fig)
    return FigureAudit(
        width_px=round(width * resolution),
        height_px=round(height * resolution),
        dpi=resolution,
        title=title_of(fig),
        min_font_px=smallest,
        smallest_text=text,
        heatmaps=heatmaps,
        uncovered_heatmaps=uncovered,
    )
