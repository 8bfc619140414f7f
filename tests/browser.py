"""Headless Chromium for the tests and the docs: measure a page as laid out, screenshot it.

Both work on any local HTML file without changing it: :func:`measure` loads the
page in an iframe of a small wrapper page at a fixed width, reads the layout from
there (``--allow-file-access-from-files`` lets a ``file://`` page read its
iframe) and dumps it as JSON; :func:`screenshot` draws the page, or the part below
one of its anchors, at a fixed width. ``scripts/docs_screenshots.py`` uses both for
the pictures in ``docs/``.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The width every page is measured and drawn at (a laptop browser window).
WIDTH = 1280

#: How the tests start Chromium: headless, no sandbox, GPU or background network.
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)

# Runs in the wrapper page once the iframe has loaded: every image as laid out, the
# smallest computed font size of any element that draws text, the page's height.
_PROBE = """
function probe() {
  var frame = document.getElementById("page");
  var doc = frame.contentDocument;
  var out = {images: [], minTextPx: null, minTextSample: "", height: 0, title: doc.title};
  var imgs = doc.images;
  for (var i = 0; i < imgs.length; i++) {
    var img = imgs[i];
    var box = img.getBoundingClientRect();
    var inClosed = img.closest("details:not([open])") !== null;
    out.images.push({
      alt: img.getAttribute("alt") || "",
      cls: img.getAttribute("class") || "",
      naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
      width: box.width, height: box.height, complete: img.complete,
      fontPx: img.getAttribute("data-font-px"), folded: inClosed
    });
  }
  var walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    var node = walker.currentNode;
    var text = node.textContent.trim();
    if (!text) { continue; }
    var el = node.parentElement;
    if (!el || el.closest("script,style") || el.getClientRects().length === 0) { continue; }
    var size = parseFloat(frame.contentWindow.getComputedStyle(el).fontSize);
    if (out.minTextPx === null || size < out.minTextPx) {
      out.minTextPx = size; out.minTextSample = text.slice(0, 40);
    }
  }
  out.height = doc.documentElement.scrollHeight;
  out.anchors = {};
  var marked = doc.querySelectorAll("[id]");
  for (var j = 0; j < marked.length; j++) {
    out.anchors[marked[j].id] = marked[j].getBoundingClientRect().top + frame.contentWindow.scrollY;
  }
  document.getElementById("out").textContent = JSON.stringify(out);
}
"""


def chromium() -> str | None:
    """The Chromium executable on PATH, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True)
class Layout:
    """A page as Chromium laid it out at :data:`WIDTH` px.

    Attributes:
        images: one dict per ``<img>``: ``alt``, ``cls``, ``naturalWidth``,
            ``naturalHeight``, ``width``, ``height`` (as drawn, CSS px), ``complete``,
            ``fontPx`` (the report's measured smallest figure text, if given) and
            ``folded`` (inside a closed ``<details>``, so not drawn).
        min_text_px: the smallest computed font size of any element with text.
        min_text_sample: that text.
        height: the page's full height in CSS px.
        title: the page's ``<title>``.
        anchors: the top of every element with an ``id``, in CSS px.
    """

    images: list[dict[str, Any]]
    min_text_px: float
    min_text_sample: str
    height: int
    title: str
    anchors: dict[str, float]


def _run(browser: str, profile: Path, *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def measure(page: Path, *, open_all: bool = True, browser: str | None = None) -> Layout:
    """Lay ``page`` out at :data:`WIDTH` px and read what a reader would see.

    With ``open_all``, every ``<details>`` is opened first, so folded figures are
    measured at the size they have when a reader opens them.
    """
    browser = browser or chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian package chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "wrapper.html"
        opener = (
            'var ds = document.getElementById("page").contentDocument'
            '.querySelectorAll("details"); for (var i = 0; i < ds.length; i++) '
            "{ ds[i].open = true; }"
            if open_all
            else ""
        )
        wrapper.write_text(
            "<!DOCTYPE html><html><body style='margin:0'>"
            f'<iframe id="page" src="{html.escape(page.resolve().as_uri())}" '
            f'style="width:{WIDTH}px;height:2000px;border:0"></iframe>'
            '<pre id="out"></pre><script>'
            + _PROBE
            + 'document.getElementById("page").addEventListener("load", function () {'
            + opener
            + " setTimeout(probe, 200); });</script></body></html>",
            encoding="utf-8",
        )
        dom = _run(
            browser,
            Path(tmp) / "profile",
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
            f"--window-size={WIDTH + 40},1000",
            "--dump-dom",
            wrapper.as_uri(),
        )
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    if found is None or not found.group(1).strip():
        raise RuntimeError(f"the page did not report its layout: {dom[-500:]}")
    data = json.loads(html.unescape(found.group(1)))
    return Layout(
        images=data["images"],
        min_text_px=float(data["minTextPx"] or 0.0),
        min_text_sample=data["minTextSample"],
        height=int(data["height"]),
        title=data["title"],
        anchors={k: float(v) for k, v in data["anchors"].items()},
    )


def screenshot(
    page: Path,
    png: Path,
    *,
    height: int = 1400,
    anchor: str | None = None,
    browser: str | None = None,
) -> Path:
    """Draw ``page`` at :data:`WIDTH` x ``height`` px into ``png``: from its top, or
    from the element with id ``anchor`` (the whole page is drawn, then cut)."""
    from PIL import Image

    browser = browser or chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH (Debian package chromium)")
    top = 0
    full = height
    if anchor is not None:
        layout = measure(page, open_all=False, browser=browser)
        if anchor not in layout.anchors:
            raise KeyError(f"{page.name} has no element with id {anchor!r}")
        top = max(0, int(layout.anchors[anchor]) - 8)
        full = min(layout.height, top + height)
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run(
            browser,
            Path(tmp) / "profile",
            "--virtual-time-budget=10000",
            f"--window-size={WIDTH},{full}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        )
    if top:
        with Image.open(png) as shot:
            part = shot.crop((0, top, WIDTH, min(shot.size[1], top + height)))
        part.save(png)
    return png


#: The pictures in docs/: (file, page under the demo's output, anchor, height).
DOCS_SHOTS = (
    ("report-overview.png", "report.html", None, 1500),
    ("report-layers.png", "report.html", "layers", 1500),
    ("report-cam.png", "report.html", "cam", 1500),
    ("monitor.png", "runs/vgg16-digits/index.html", None, 1500),
)


def docs_screenshots(out: Path, docs: Path, *, browser: str | None = None) -> list[Path]:
    """The README's pictures of a demo output directory ``out``, written to ``docs``
    (PNG, :data:`WIDTH` px wide)."""
    from PIL import Image

    written = []
    for name, page, anchor, height in DOCS_SHOTS:
        png = screenshot(out / page, docs / name, height=height, anchor=anchor, browser=browser)
        with Image.open(png) as shot:
            rgb = shot.convert("RGB")
        rgb.save(png, optimize=True)
        written.append(png)
    return written
