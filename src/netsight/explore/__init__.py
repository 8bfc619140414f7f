"""``netsight explore``: an interactive explorer of a model in the browser or notebook.

:func:`explore` starts a local web server (Starlette on uvicorn, in a background
thread) over a :class:`netsight.live.Session` and returns an :class:`Explorer`
handle: its ``url`` (with the access token), ``stop()``, a context manager, and
``_repr_html_`` so that it shows inline as the last expression of a notebook cell.
"""

from __future__ import annotations

from netsight.explore.server import DEFAULT_MAX_UPLOAD, Explorer, explore

__all__ = ["DEFAULT_MAX_UPLOAD", "Explorer", "explore"]
