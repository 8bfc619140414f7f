"""The explorer's web server: Starlette routes over a :class:`~netsight.live.Session`.

Why Starlette on uvicorn: Starlette is the small ASGI toolkit FastAPI is built on
(routing, static files with path checks, streaming responses, middleware) without
FastAPI's pydantic layer, which a dozen JSON endpoints do not need; uvicorn is the
reference ASGI server and runs in a background thread, so a notebook keeps its
kernel. Model work runs in Starlette's thread pool behind the session's lock: one
request at a time uses the model while the page and other requests stay served.

Security, for a server on the user's machine:

- it binds 127.0.0.1 unless told otherwise (another host warns);
- every ``/api`` call needs the random token of the URL (header
  ``X-Netsight-Token`` or ``?token=``), as Jupyter does; the page itself too;
- the ``Host`` header must name this server and an ``Origin``, when sent, must be
  this server's own (no DNS rebinding, no cross-site calls);
- no endpoint reads a path: images come from the command line or as uploads held
  in memory, limited in size and decoded as :func:`netsight.load_image` does;
- the page inserts every model-derived string as text (see ``static/app.js``),
  under a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import secrets
import socket
import sys
import threading
import time
import warnings
import webbrowser
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netsight.errors import NetsightWarning
from netsight.live import Session, SessionError
from netsight.trace import TraceError

__all__ = ["DEFAULT_MAX_UPLOAD", "ExploreWarning", "Explorer", "create_app", "explore"]

#: Largest upload accepted, in bytes.
DEFAULT_MAX_UPLOAD = 20 << 20
#: Hosts that are this machine.
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors *; base-uri 'none'; "
    "form-action 'none'"
)


class ExploreWarning(NetsightWarning):
    """The explorer was asked for something risky (a host other than this machine)."""


def _need_web() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"netsight explore needs Starlette and uvicorn ({exc.name} is missing): "
            f"pip install 'netsight[explore]'"
        ) from None


def _static_dir() -> Path:
    return Path(str(resources.files("netsight.explore") / "static"))


def create_app(
    session: Session,
    token: str,
    allowed_hosts: Sequence[str],
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
) -> Any:
    """The Starlette application serving ``session``.

    Args:
        session: what the pages ask about.
        token: the secret every request must carry.
        allowed_hosts: ``host:port`` values the ``Host`` header may take; an
            ``Origin`` must be ``http://`` one of them.
        max_upload: the largest image upload, in bytes.
    """
    _need_web()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        Response,
        StreamingResponse,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send

    hosts = {h.lower() for h in allowed_hosts}
    origins = {f"http://{h}" for h in hosts}
    static = _static_dir()

    class Guard:
        """Host, Origin and token checks before any route."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            path: str = scope["path"]
            refusal = None
            if headers.get("host", "").lower() not in hosts:
                refusal = (400, "this server answers only to its own address (Host header refused)")
            elif "origin" in headers and headers["origin"].lower() not in origins:
                refusal = (403, "cross-origin request refused")
            elif path == "/" or path.startswith("/api/"):
                query = scope.get("query_string", b"").decode("latin-1")
                given = headers.get("x-netsight-token") or _query_token(query)
                if not given or not secrets.compare_digest(given, token):
                    refusal = (403, "missing or wrong token: open the URL netsight printed")
            if refusal is not None:
                response = PlainTextResponse(refusal[1], status_code=refusal[0])
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)

    def error(exc: BaseException, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": str(exc) or type(exc).__name__}, status_code=status)

    async def run(func: Any, *args: Any, **kwargs: Any) -> Any:
        """Model work in the thread pool (the session's lock serialises it)."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(func, *args, **kwargs)

    async def answer(func: Any, *args: Any, **kwargs: Any) -> Response:
        try:
            result = await run(func, *args, **kwargs)
        except (SessionError, ValueError, TypeError, IndexError, KeyError, TraceError) as exc:
            return error(exc)
        except Exception as exc:  # the model failed: say so, keep serving
            return error(RuntimeError(f"{type(exc).__name__}: {exc}"), 500)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    html = (static / "index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(
            html, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
        )

    async def model(request: Request) -> Response:
        def both() -> dict[str, Any]:
            info = session.model_info()
            info["layers"] = session.layers()
            return info

        return await answer(both)

    async def graph(request: Request) -> Response:
        q = request.query_params
        return await answer(
            lambda: session.graph(
                depth=_int(q.get("depth"), "depth"),
                expanded=q.getlist("expanded"),
                collapsed=q.getlist("collapsed"),
                unrolled=q.getlist("unrolled"),
            )
        )

    async def images(request: Request) -> Response:
        if request.method == "GET":
            return await answer(session.images)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            return error(ValueError(f"upload too large: over {max_upload >> 20} MB"), 413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_upload:
                return error(ValueError(f"upload too large: over {max_upload >> 20} MB"), 413)
        if not body:
            return error(ValueError("upload: empty body (send the image file's bytes)"))
        name = request.query_params.get("name") or "upload"
        return await answer(session.add_image, bytes(body), name=name[:200])

    async def remove(request: Request) -> Response:
        return await answer(session.remove_image, request.path_params["image"])

    def _int(value: str | None, what: str) -> int | None:
        """A query parameter as an int (None when absent); a SessionError, which
        :func:`answer` turns into a 400, when it is not one."""
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise SessionError(f"{what}: expected an integer, got {value!r}") from None

    async def layer(request: Request) -> Response:
        q = request.query_params
        return await answer(
            lambda: session.layer(
                q.get("image", ""),
                q.get("layer", ""),
                _int(q.get("call"), "call") or 0,
                normalize=q.get("normalize", "each"),
                page=_int(q.get("page"), "page") or 0,
                cmap=q.get("cmap", "viridis"),
            )
        )

    async def channel(request: Request) -> Response:
        q = request.query_params
        return await answer(
            lambda: session.channel(
                q.get("image", ""),
                q.get("layer", ""),
                _int(q.get("channel"), "channel") or 0,
                _int(q.get("call"), "call") or 0,
            )
        )

    async def cam(request: Request) -> Response:
        q = request.query_params
        return await answer(
            lambda: session.cam(
                q.get("image", ""),
                q.get("layer") or None,
                _int(q.get("class"), "class"),
                q.get("method", "gradcam"),
            )
        )

    async def patterns(request: Request) -> Response:
        try:
            body = await request.json()
            layer_name = str(body["layer"])
            channels = [int(c) for c in body.get("channels", [0])][:16]
            steps = max(1, min(512, int(body.get("steps", 64))))
        except (ValueError, KeyError, TypeError) as exc:
            return error(ValueError(f"patterns: expected JSON {{layer, channels, steps}} ({exc})"))
        updates: queue.Queue[dict[str, Any] | None] = queue.Queue()
        cancelled = threading.Event()

        def on_step(done: int, total: int) -> None:
            if cancelled.is_set():
                raise RuntimeError("cancelled: the page went away")
            updates.put({"progress": done, "total": total})

        def work() -> None:
            try:
                result = session.patterns(layer_name, channels, steps=steps, on_step=on_step)
                updates.put({"result": result})
            except Exception as exc:
                updates.put({"error": f"{exc}"})
            finally:
                updates.put(None)

        threading.Thread(target=work, name="netsight-patterns", daemon=True).start()

        async def stream() -> Any:
            loop = asyncio.get_running_loop()
            try:
                while True:
                    item = await loop.run_in_executor(None, updates.get)
                    if item is None:
                        return
                    yield json.dumps(item) + "\n"
            finally:
                cancelled.set()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def report(request: Request) -> Response:
        chosen = [i for i in request.query_params.get("images", "").split(",") if i]
        try:
            html = await run(session.report_html, image_ids=chosen or None)
        except (SessionError, ValueError, TraceError) as exc:
            return error(exc)
        return HTMLResponse(
            html,
            headers={"Content-Disposition": 'attachment; filename="netsight-report.html"'},
        )

    routes = [
        Route("/", page),
        Route("/api/model", model),
        Route("/api/graph", graph),
        Route("/api/images", images, methods=["GET", "POST"]),
        Route("/api/images/{image}", remove, methods=["DELETE"]),
        Route("/api/layer", layer),
        Route("/api/channel", channel),
        Route("/api/cam", cam),
        Route("/api/patterns", patterns, methods=["POST"]),
        Route("/api/report", report),
        Mount("/static", app=StaticFiles(directory=static), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard)])


def _query_token(query: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(query).get("token")
    return values[0] if values else None


class Explorer:
    """A running explorer: ``url`` (token included), ``stop()``, a context manager.

    As the last expression of a notebook cell it shows the page inline.
    """

    def __init__(
        self,
        session: Session,
        server: Any,
        thread: threading.Thread,
        host: str,
        port: int,
        token: str,
        loader: threading.Thread | None = None,
    ) -> None:
        self.session = session
        self._loader = loader
        self.host = host
        self.port = port
        self.token = token
        self._server = server
        self._thread = thread
        self._warned = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/?token={self.token}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the server and wait (at most ``timeout`` seconds) for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    @property
    def loading(self) -> bool:
        """Whether the images given to :func:`explore` are still having their first forward."""
        return self._loader is not None and self._loader.is_alive()

    def wait_loaded(self, timeout: float | None = None) -> list[str]:
        """Wait until the images given to :func:`explore` are loaded; returns the
        problems met (an image that is not one, a forward that failed), each also
        warned about."""
        if self._loader is not None:
            self._loader.join(timeout)
        problems = list(self.session.load_errors)
        for problem in problems[self._warned :]:
            warnings.warn(f"explore: {problem}", ExploreWarning, stacklevel=2)
        self._warned = len(problems)
        return problems

    def wait(self) -> None:
        """Block until the server stops."""
        while self._thread.is_alive():
            self._thread.join(0.2)

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<netsight explorer of {self.session.name} at {self.url} ({state})>"

    def _repr_html_(self) -> str:
        from html import escape

        return (
            f'<iframe src="{escape(self.url)}" width="100%" height="820" '
            f'style="border:1px solid #ccc;border-radius:4px"></iframe>'
        )


def _load(session: Session, batch: list[Any], labels: list[str | None]) -> None:
    """Draw the graph, then run each image's first forward (the page polls for them).
    Without images there is nothing to get ahead of: the page's first request draws
    the graph."""
    if not batch:
        return
    try:
        session.warm()
    except Exception as exc:  # the page shows the graph's own error; images still load
        session.load_errors.append(f"graph: {type(exc).__name__}: {exc}")
    for item, label in zip(batch, labels, strict=True):
        try:
            info = session.add_image(item, name=label)
        except Exception as exc:
            session.load_errors.append(f"{label or 'image'}: {exc}")
            continue
        finally:
            session.pending_images -= 1
        if info["error"]:
            session.load_errors.append(f"{info['name']}: {info['error']}")
    ready = [image["id"] for image in session.images() if not image["error"]]
    if ready:  # the default CAM layer, so that the first CAM on the page is quick
        try:
            session.target_layer(ready[0])
        except Exception as exc:
            session.load_errors.append(f"CAM layer: {type(exc).__name__}: {exc}")


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def explore(
    model: nn.Module | Session,
    images: Sequence[torch.Tensor | str | os.PathLike[str]] | torch.Tensor = (),
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
    image_names: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool | None = None,
    budget: int | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    name: str | None = None,
    wait: bool = True,
) -> Explorer:
    """Explore ``model`` in the browser: start a local server and return its handle.

    Example:
        >>> with netsight.explore(model, images=["cat.jpg"], class_names=names) as ex:
        ...     print(ex.url)          # open it; ex.stop() or leaving the block ends it

    Args:
        model: the network (never changed), or a prepared :class:`Session`.
        images: image files, ``(C, H, W)``/``(1, C, H, W)`` normalised tensors, or a
            ``(B, C, H, W)`` batch; more can be dropped on the page.
        class_names: one name per class, shown with predictions and CAMs.
        mean, std: the model's input normalisation (default 0.5 per channel).
        size: ``(H, W)`` images are loaded at (default: the first image's size, else 224).
        image_names: names shown for ``images``.
        host: the address to bind; anything but this machine's own warns.
        port: the port (0: a free one).
        open_browser: open the page in the default browser (default: yes, except
            in a notebook, where the handle shows inline).
        budget: bytes of layer outputs to keep (default: a quarter of the free memory).
        max_upload: the largest image upload accepted, in bytes.
        name: what the page calls the model.
        wait: return once every image has had its first forward; with ``False``
            return as soon as the server is up: the graph is drawn first and the
            images arrive on the page as their forwards finish
            (:meth:`Explorer.wait_loaded` waits for them).
    """
    _need_web()
    import uvicorn

    if isinstance(model, Session):
        session = model
    else:
        session = Session(
            model, class_names=class_names, mean=mean, std=std, size=size, budget=budget, name=name
        )
    batch: list[Any]
    if isinstance(images, torch.Tensor):
        batch = list(images.unbind(0)) if images.dim() == 4 else [images]
    else:
        batch = list(images)
    names = list(image_names) if image_names is not None else []
    labels = []
    for k, item in enumerate(batch):
        label = names[k] if k < len(names) else None
        if label is None and isinstance(item, (str, os.PathLike)):
            label = Path(item).name
        labels.append(label)
    # the first image fixes the input the graph is drawn for: read it now (a bad file
    # fails here, before a server starts)
    if batch:
        batch[0] = session.prepare(batch[0])
    if host not in _LOCAL_HOSTS:
        warnings.warn(
            f"explore: serving on {host!r}, reachable from other machines: anyone who "
            f"has the URL's token can run the model and see its images",
            ExploreWarning,
            stacklevel=2,
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"explore: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    allowed = [f"{h}:{bound}" for h in ("127.0.0.1", "localhost", "[::1]")]
    if host not in _LOCAL_HOSTS:
        allowed.append(f"{host}:{bound}")
        allowed.append(f"{socket.gethostname()}:{bound}")
    app = create_app(session, token, allowed, max_upload=max_upload)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        lifespan="off",
    )
    server = uvicorn.Server(config)

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=serve, name=f"netsight-explore-{bound}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    session.pending_images = len(batch)  # before the page can ask
    loader = threading.Thread(
        target=_load,
        args=(session, batch, labels),
        name=f"netsight-explore-loader-{bound}",
        daemon=True,
    )
    loader.start()
    handle = Explorer(session, server, thread, host, bound, token, loader)
    if wait:
        handle.wait_loaded()
    if open_browser is None:
        open_browser = not _in_notebook()
    if open_browser:
        webbrowser.open(handle.url)
    return handle
