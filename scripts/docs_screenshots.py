"""Take the README's screenshots of a demo output: ``python scripts/docs_screenshots.py``.

Usage::

    make demo                                   # writes out/
    .venv/bin/python scripts/docs_screenshots.py out docs

Headless Chromium draws ``out/report.html`` (its top, the layer-by-layer section and
the CAM section) and the training monitor's page at 1280 px wide into ``docs/``.
The test suite takes the same pictures of a quick demo run and checks them
(``tests/test_demo.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import docs_screenshots


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("out")
    docs = Path(argv[1]) if len(argv) > 1 else Path("docs")
    for path in docs_screenshots(out, docs):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
