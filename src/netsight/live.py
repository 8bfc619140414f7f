"""A live session on one model: the library behind ``netsight explore``.

A :class:`Session` holds a model, the images it is shown and what their forwards
produced, and answers one question at a time about them: the top-5 predictions
of an image, a layer's output as a channel grid, its mean map and statistics, a
convolution's kernels beside the maps they make, a class activation map for any
class, method and layer, filter patterns, the dataflow graph, and the whole state
as netsight's report. Every answer is a plain dict (JSON-ready; pictures as PNG
``data:`` URLs) so that a page, a notebook or a test can read it.

Speed comes from keeping things, within a memory budget:

- An image's first forward runs with autograd recording and keeps every module's
  output (:class:`ActivationCache`, least recently used first out, the budget a
  fraction of the memory available): a click on a layer afterwards draws what is
  kept. A layer no longer kept costs one forward stopped at that layer.
- The autograd graph of the most recent images is kept too (while it fits in
  half the budget), so a gradient CAM for a new class or layer is one backward
  from the score to that layer, not a new forward.

The model is never changed: each forward runs in eval mode with every module's
flag restored afterwards, hooks are removed on every path, gradients are taken
with ``torch.autograd.grad`` (no ``.grad`` is written), and a lock serialises
every use of the model, so a server may call a session from many threads.
"""

from __future__ import annotations

import base64
import io
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from netsight.cam import METHODS, overlay
from netsight.cam.gradient import GradientCAM
from netsight.diagram import graph as dataflow
from netsight.features import feature_grid, run_forward
from netsight.hooks import HookSet, StopForward, preserve_state, unwrap_compiled
from netsight.images import (
    colorize,
    denormalize,
    expected_channels,
    load_image,
    normalize_maps,
    to_pil,
)
from netsight.options import Normalization
from netsight.trace import LayerRecord, Trace, TraceError, trace

__all__ = [
    "DEFAULT_BUDGET_FRACTION",
    "ActivationCache",
    "CAMMap",
    "LayerKey",
    "Session",
    "SessionError",
    "available_memory",
    "png_data_url",
]

#: Default memory budget: this fraction of the memory available when the session starts.
DEFAULT_BUDGET_FRACTION = 0.25
#: Channels drawn per grid page.
GRID_PAGE = 256
#: Most images a session holds.
MAX_IMAGES = 64
#: Side of a zoomed channel, in pixels (nearest-neighbour upscaling to about this).
ZOOM_PX = 320


class SessionError(ValueError):
    """A question the session cannot answer (unknown image or layer, a layer
    without maps...); the message says why."""


#: A layer is a module name and which of its calls (0: the first).
LayerKey = tuple[str, int]


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``), or 4 GiB
    when the system does not tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def png_data_url(picture: Image.Image | torch.Tensor) -> str:
    """A PNG ``data:`` URL of a PIL image or a ``(C, H, W)`` tensor in ``[0, 1]``."""
    image = picture if isinstance(picture, Image.Image) else to_pil(picture)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ActivationCache:
    """Layer outputs kept within a byte budget, least recently used first out.

    Keys are ``(image id, layer name, call)``; values are detached tensors. A
    tensor larger than the whole budget is not kept.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget: expected bytes >= 0, got {budget}")
        self.budget = int(budget)
        self._items: OrderedDict[tuple[str, str, int], torch.Tensor] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: tuple[str, str, int]) -> torch.Tensor | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, int], tensor: torch.Tensor) -> None:
        size = tensor.untyped_storage().nbytes()
        if key in self._items:
            self.bytes -= self._items.pop(key).untyped_storage().nbytes()
        if size > self.budget:
            return
        while self._items and self.bytes + size > self.budget:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.untyped_storage().nbytes()
        self._items[key] = tensor
        self.bytes += size

    def drop_image(self, image: str) -> None:
        for key in [k for k in self._items if k[0] == image]:
            self.bytes -= self._items.pop(key).untyped_storage().nbytes()


@dataclass
class _Image:
    id: str
    name: str
    tensor: torch.Tensor  # (1, C, H, W), normalised as the model expects
    output: torch.Tensor | None = None  # the model's output (detached), after the first forward
    error: str | None = None
    ready: bool = False  # its first forward is over (succeeded or failed)
    exception: BaseException | None = None  # why the first forward failed
    picture: str | None = None  # its PNG data: URL, made once (pages poll the list)


@dataclass
class _Graph:
    """An image's forward with autograd recording: every module output in the graph."""

    output: Any
    kept: dict[LayerKey, torch.Tensor]
    bytes: int
    calls: dict[str, int] = field(default_factory=dict)  # how often each module ran
    # d score / d output of the kept outputs, for one class (see Session._gradient)
    grads: dict[LayerKey, torch.Tensor | None] = field(default_factory=dict)
    grads_target: int | None = None


@dataclass
class _Timer:
    started: float = field(default_factory=time.perf_counter)

    def ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class CAMMap:
    """A CAM of one image: the ``(H, W)`` map in ``[0, 1]`` and what it explains."""

    map: torch.Tensor
    layer: str | None
    target: int
    method: str
    reused_graph: bool


class _Reached(StopForward):
    """The stopped forward got the layer it wanted."""


class Session:
    """A model, its images and what their forwards produced (see the module docs).

    Args:
        model: the network (never changed).
        class_names: one name per output class, shown with the predictions.
        mean, std: the normalisation the model expects (default 0.5 per channel),
            used to load images and to draw them.
        size: ``(H, W)`` images are loaded at (default: the first image's size, else
            224 x 224).
        budget: bytes of layer outputs and graphs to keep (default
            :data:`DEFAULT_BUDGET_FRACTION` of the memory available).
        name: what the model is called on the page (default: its class name).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: tuple[int, int] | None = None,
        budget: int | None = None,
        name: str | None = None,
        graph_depth: int = 3,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_compiled(model)
        self.name = name or type(self.model).__name__
        self.class_names = list(class_names) if class_names is not None else None
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.size = size
        self.budget = int(
            budget if budget is not None else available_memory() * DEFAULT_BUDGET_FRACTION
        )
        self.cache = ActivationCache(self.budget)
        self.graph_depth = graph_depth
        self.lock = threading.RLock()
        self._images: dict[str, _Image] = {}
        self._graphs: OrderedDict[str, _Graph] = OrderedDict()
        self._trace: Trace | None = None
        self._trace_error: str | None = None
        self._flow: dataflow.Dataflow | None = None
        self._svgs: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
        self._modules: dict[str, nn.Module] = dict(self.model.named_modules())
        self._counter = 0
        self.forwards = 0  # full or stopped forwards run (for tests and benchmarks)
        self.backwards = 0  # backwards through a kept graph
        self.changed_in_place = 0  # outputs of the last first forward changed in place later
        self._auto_layers: dict[tuple[int, ...], str] = {}
        self._first_input: torch.Tensor | None = None
        self.load_errors: list[str] = []  # problems met loading images in the background
        self.pending_images = 0  # images still waiting for their first forward

    # ------------------------------------------------------------------ images
    def add_image(
        self, source: torch.Tensor | str | os.PathLike[str] | bytes, name: str | None = None
    ) -> dict[str, Any]:
        """Add an image (a ``(1, C, H, W)`` / ``(C, H, W)`` normalised tensor, a file
        path or the bytes of an image file) and run its first forward.

        Returns:
            The image's description (:meth:`image_info`).

        Raises:
            ValueError: not an image (the message says why), or too many images.
        """
        with self.lock:
            if len(self._images) >= MAX_IMAGES:
                raise SessionError(f"a session holds at most {MAX_IMAGES} images; remove one first")
            tensor = self._to_input(source)
            self._counter += 1
            image_id = f"i{self._counter}"
            label = name or (
                os.path.basename(os.fspath(source))
                if isinstance(source, (str, os.PathLike))
                else f"image {self._counter}"
            )
            image = _Image(image_id, str(label), tensor)
            self._images[image_id] = image
            try:
                self._first_forward(image)
            except Exception as exc:  # the page shows why; the image stays for the graph
                image.error = f"{type(exc).__name__}: {exc}"
                image.exception = exc
            finally:
                image.ready = True
            return self.image_info(image_id)

    def remove_image(self, image_id: str) -> None:
        with self.lock:
            self._image(image_id)
            del self._images[image_id]
            self._graphs.pop(image_id, None)
            self.cache.drop_image(image_id)

    def images(self) -> list[dict[str, Any]]:
        """Every image whose first forward is over (:meth:`image_info` each).

        Reads only what the forwards left, without waiting for the model: a page
        polling while images load sees each as soon as it is ready."""
        return [self._info(image) for image in list(self._images.values()) if image.ready]

    def image_info(self, image_id: str) -> dict[str, Any]:
        """``{id, name, shape, picture, predictions, error}``."""
        return self._info(self._image(image_id))

    def _info(self, image: _Image) -> dict[str, Any]:
        return {
            "id": image.id,
            "name": image.name,
            "shape": list(image.tensor.shape),
            "picture": self._thumbnail(image),
            "predictions": self._top(image) if image.error is None else [],
            "error": image.error,
        }

    def predictions(self, image_id: str, k: int = 5) -> list[dict[str, Any]]:
        """The top-``k`` classes of an image: ``[{index, name, probability}]`` (the
        softmax of a ``(1, K)`` output; empty for other outputs)."""
        return self._top(self._image(image_id), k)

    def _top(self, image: _Image, k: int = 5) -> list[dict[str, Any]]:
        out = image.output
        if out is None or out.dim() != 2 or out.shape[0] != 1 or not out.is_floating_point():
            return []
        probs = torch.softmax(out[0].float(), dim=0)
        values, indices = torch.topk(probs, min(k, probs.numel()))
        return [
            {"index": int(i), "name": self._class_name(int(i)), "probability": float(v)}
            for v, i in zip(values, indices, strict=True)
        ]

    def _class_name(self, index: int) -> str | None:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return None

    def prepare(self, source: torch.Tensor | str | os.PathLike[str] | bytes) -> torch.Tensor:
        """An image as the model's ``(1, C, H, W)`` input (loaded, resized to the
        session's size, normalised), without running the model; the first one
        prepared fixes the size and is what the graph and the summary trace."""
        with self.lock:
            return self._to_input(source)

    def _to_input(self, source: torch.Tensor | str | os.PathLike[str] | bytes) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            tensor = source.detach()
            if tensor.dim() == 3:
                tensor = tensor.unsqueeze(0)
            if tensor.dim() != 4 or tensor.shape[0] != 1:
                raise SessionError(
                    f"image: expected a (1, C, H, W) or (C, H, W) tensor, got {list(source.shape)}"
                )
            tensor = tensor.float().cpu()
        else:
            tensor = load_image(
                source if isinstance(source, bytes) else os.fspath(source),
                size=self._size(),
                model=self.model,
                mean=self.mean,
                std=self.std,
            )
        if self.size is None:
            self.size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        if self._first_input is None:
            self._first_input = tensor
        elif tuple(tensor.shape[-2:]) != tuple(self.size):
            tensor = torch.nn.functional.interpolate(
                tensor, size=self.size, mode="bilinear", align_corners=False, antialias=True
            )
        return tensor

    def _size(self) -> tuple[int, int]:
        return self.size if self.size is not None else (224, 224)

    def _image(self, image_id: str) -> _Image:
        image = self._images.get(image_id)
        if image is None:
            raise SessionError(
                f"no image {image_id!r}; the session has {', '.join(self._images) or 'none'}"
            )
        return image

    def _picture(self, image: _Image) -> torch.Tensor:
        """The image as the model saw it, normalisation undone, in ``[0, 1]``."""
        return denormalize(image.tensor[0], self.mean, self.std)

    def _thumbnail(self, image: _Image) -> str:
        if image.picture is None:
            image.picture = png_data_url(self._picture(image))
        return image.picture

    # ------------------------------------------------------------------ forwards
    @contextmanager
    def _as_is(self) -> Iterator[None]:
        """Eval mode and the global RNG for the block; every module's flag and the RNG
        state restored afterwards."""
        with torch.random.fork_rng(devices=[]), preserve_state(self.model, "eval"):
            yield

    def _first_forward(self, image: _Image) -> None:
        """One forward with autograd recording; keep every module's output.

        Outputs are kept as they are, not copied; one the model changes in place later
        in the forward (a BatchNorm's output under ``ReLU(inplace=True)``, a block's
        ``out += identity``) no longer holds what the module returned, so it is not
        kept: a click on it costs a forward stopped there, which copies it.
        """
        kept: dict[LayerKey, tuple[torch.Tensor, int]] = {}
        calls: dict[str, int] = {}

        def make_hook(name: str) -> Callable[..., Any]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                tensor = _first_tensor(output)
                call = calls.get(name, 0)
                calls[name] = call + 1
                if tensor is not None and tensor.is_floating_point():
                    kept[(name, call)] = (tensor, tensor._version)

            return hook

        x = image.tensor.clone().requires_grad_(True)
        self.forwards += 1
        try:
            with self._as_is(), HookSet() as hooks, torch.enable_grad():
                for name, module in self._modules.items():
                    hooks.add(module.register_forward_hook(make_hook(name)))
                output = self.model(x)
        except Exception:
            with self._as_is():
                run_forward(self.model, image.tensor)  # raises the error naming the layer
            raise
        first = _first_tensor(output)
        image.output = first.detach().clone() if first is not None else None
        intact = {key: t for key, (t, version) in kept.items() if t._version == version}
        self.changed_in_place = len(kept) - len(intact)
        size = 0
        for (name, call), tensor in intact.items():
            self.cache.put((image.id, name, call), tensor.detach())
            size += tensor.untyped_storage().nbytes()
        graph_bytes = 2 * size  # the kept outputs and about as much saved for backward
        if first is not None and first.requires_grad and graph_bytes <= self.budget // 2:
            self._graphs[image.id] = _Graph(output, intact, graph_bytes, dict(calls))
            while sum(g.bytes for g in self._graphs.values()) > self.budget // 2:
                self._graphs.popitem(last=False)

    def activation(self, image_id: str, layer: str, call: int = 0) -> torch.Tensor:
        """A layer's output for an image: kept, or made by a forward stopped there."""
        with self.lock:
            image = self._image(image_id)
            key = (image_id, layer, call)
            found = self.cache.get(key)
            if found is not None:
                return found
            module = self._module(layer)
            seen = [0]
            got: list[torch.Tensor] = []

            def hook(m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if seen[0] == call:
                    tensor = _first_tensor(output)
                    if tensor is not None:
                        got.append(tensor.detach().clone())
                    raise _Reached
                seen[0] += 1

            self.forwards += 1
            with self._as_is(), HookSet() as hooks:
                hooks.add(module.register_forward_hook(hook))
                with suppress(_Reached):
                    run_forward(self.model, image.tensor)
            if not got:
                raise SessionError(
                    f"layer {layer!r} (call {call + 1}) did not run, or returned no tensor, "
                    f"in the forward of image {image.name!r}"
                )
            self.cache.put(key, got[0])
            return got[0]

    def _module(self, layer: str) -> nn.Module:
        module = self._modules.get(layer)
        if module is None:
            import difflib

            close = difflib.get_close_matches(layer, list(self._modules), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise SessionError(f"no layer named {layer!r} in {self.name}{hint}")
        return module

    # ------------------------------------------------------------------ structure
    def layers(self) -> list[dict[str, Any]]:
        """Every module call of the traced forward: ``{name, call, type, depth,
        input, output, params, trainable, kernel, mult_adds, conv}``."""
        return [self._row(r) for r in self._records()]

    def _records(self) -> tuple[LayerRecord, ...]:
        """The traced layers (traced once, under the lock; read without it after)."""
        if self._trace is None and self._trace_error is None:
            with self.lock:
                if self._trace is None and self._trace_error is None:
                    try:
                        self._trace = trace(self.model, **self._example())
                    except TraceError as exc:
                        self._trace_error = str(exc)
        return self._trace.records if self._trace is not None else ()

    def _row(self, record: LayerRecord) -> dict[str, Any]:
        module = self._modules.get(record.name)
        return {
            "name": record.name,
            "label": record.label,
            "call": record.call,
            "type": record.type_name,
            "depth": record.depth,
            "input": str(record.input),
            "output": str(record.output),
            "params": record.params,
            "trainable": record.trainable_params,
            "kernel": list(record.kernel_size) if record.kernel_size else None,
            "mult_adds": record.mult_adds,
            "total_mult_adds": record.total_mult_adds,
            "leaf": record.is_leaf,
            "conv": module is not None and _is_conv(module),
        }

    def model_info(self) -> dict[str, Any]:
        """The model's name, totals, class count and the methods a CAM can use."""
        self._records()
        t = self._trace
        return {
            "name": self.name,
            "type": type(self.model).__name__,
            "params": t.total_params
            if t is not None
            else sum(p.numel() for p in self.model.parameters()),
            "mult_adds": t.total_mult_adds if t is not None else None,
            "input": list(self._first_input.shape)
            if self._first_input is not None
            else list(self._example()["input_size"]),
            "classes": len(self.class_names) if self.class_names is not None else self._classes(),
            "class_names": self.class_names,
            "methods": [name for name, cls in METHODS.items() if cls.interactive],
            "trace_error": self._trace_error,
            "budget": self.budget,
            "pending_images": self.pending_images,
            "load_errors": list(self.load_errors),
        }

    def _classes(self) -> int | None:
        for image in list(self._images.values()):
            if image.output is not None and image.output.dim() == 2:
                return int(image.output.shape[1])
        return None

    def graph(
        self,
        *,
        depth: int | None = None,
        expanded: Sequence[str] = (),
        collapsed: Sequence[str] = (),
        unrolled: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The dataflow graph as SVG with what each box stands for:
        ``{svg, nodes: {id: {...}}, layers: {module name: node id}, error}``."""
        key = (
            depth,
            tuple(sorted(expanded)),
            tuple(sorted(collapsed)),
            tuple(sorted(unrolled)),
        )
        found = self._svgs.get(key)  # drawn already: no need to wait for the model
        if found is not None:
            return found
        with self.lock:
            found = self._svgs.get(key)
            if found is not None:
                return found
            flow = self._dataflow()
            built = dataflow.build_graph(
                flow,
                depth=self.graph_depth if depth is None else depth,
                expanded=tuple(expanded),
                collapsed=tuple(collapsed),
                unrolled=tuple(unrolled),
            )
            svg = dataflow.render(dataflow.to_dot(built, legend=False), "svg").decode("utf-8")
            nodes = {
                n.id: {
                    "name": n.name,
                    "type": n.type_name,
                    "kind": n.kind,
                    "repeat": n.repeat,
                    "expandable": n.expandable,
                    "rolled": list(n.rolled_names),
                    "failed": n.failed,
                    "shape": [list(s) for s in n.out_shapes],
                }
                for n in built.nodes
            }
            clusters = {
                c.id: {
                    "label": c.label,
                    "repeat": c.repeat,
                    "names": list(c.names),
                    "parent": c.names[0].rpartition(".")[0] if c.names else None,
                }
                for c in built.clusters
            }
            answer = {
                "svg": svg,
                "nodes": nodes,
                "clusters": clusters,
                "layers": built.module_nodes(),
                "error": flow.error,
            }
            self._svgs[key] = answer
            while len(self._svgs) > 16:
                self._svgs.popitem(last=False)
            return answer

    def _dataflow(self) -> dataflow.Dataflow:
        if self._flow is None:
            self._flow = dataflow.record_dataflow(self.model, partial=True, **self._example())
        return self._flow

    def _example(self) -> dict[str, Any]:
        """What the structural passes run on: the first image prepared, else an input
        of the model's channel count at the session's size (shapes only matter)."""
        if self._first_input is not None:
            return {"input_data": self._first_input}
        channels = expected_channels(self.model) or 3
        return {"input_size": (1, channels, *self._size())}

    def warm(self) -> None:
        """Trace the model and draw its default graph now, so that a page opened next
        gets them at once (the explorer calls it before the images' forwards)."""
        with self.lock:
            self.graph()
            self._records()

    # ------------------------------------------------------------------ a layer
    def layer(
        self,
        image_id: str,
        layer: str,
        call: int = 0,
        *,
        normalize: str = "each",
        page: int = 0,
        cmap: str = "viridis",
    ) -> dict[str, Any]:
        """What a click on a layer shows for an image: its summary row, its output as
        a channel grid (one page of :data:`GRID_PAGE` channels), its mean map, its
        statistics, and its kernels when it is a convolution."""
        timer = _Timer()
        scaling = Normalization.parse(normalize, "normalize")
        with self.lock:
            module = self._module(layer)
            was_kept = (image_id, layer, call) in self.cache
            activation = self.activation(image_id, layer, call)
            forward_ms = 0.0 if was_kept else timer.ms()
            row = next(
                (self._row(r) for r in self._records() if r.name == layer and r.call == call), None
            )
            answer: dict[str, Any] = {
                "name": layer,
                "call": call,
                "type": type(module).__name__,
                "row": row,
                "shape": list(activation.shape),
                "stats": _statistics(activation),
                "grid": None,
                "mean": None,
                "kernels": None,
                "note": None,
                "kept": was_kept,
                "forward_ms": forward_ms,
            }
            maps = _spatial(activation, module)
            if maps is None:
                answer["note"] = (
                    f"output of shape {list(activation.shape)}: no spatial maps to draw"
                )
                # one value per class (the model's output, its last linear layer): named
                names = self.class_names
                per_class = names is not None and activation.numel() == len(names)
                answer["values"] = _top_values(activation, names if per_class else None)
            else:
                answer["note"] = _layout_note(activation, maps)
                total = maps.shape[0]
                pages = max(1, math.ceil(total / GRID_PAGE))
                page = min(max(0, int(page)), pages - 1)
                chosen = list(range(page * GRID_PAGE, min(total, (page + 1) * GRID_PAGE)))
                height, width = int(maps.shape[-2]), int(maps.shape[-1])
                # small maps drawn at least ~32 px, no tile over 256 px
                upscale = max(
                    1, min(math.ceil(32 / max(1, min(height, width))), 256 // max(height, width))
                )
                grid = feature_grid(
                    maps,
                    channels=chosen,
                    max_channels=GRID_PAGE,
                    normalize=scaling.value,
                    cmap=cmap,
                    upscale=upscale,
                )
                answer["grid"] = {
                    "picture": png_data_url(grid.image),
                    "channels": list(grid.indices),
                    "total": total,
                    "page": page,
                    "pages": pages,
                    "nrow": grid.nrow,
                    "tile": [height * upscale, width * upscale],
                    "padding": 1,
                    "size": [int(grid.image.shape[1]), int(grid.image.shape[2])],
                    "note": grid.note,
                }
                mean_map = maps.float().mean(0, keepdim=True)
                answer["mean"] = _map_picture(mean_map[0], cmap)
            if _is_conv(module):
                answer["kernels"] = self._kernels(layer)
            answer["ms"] = timer.ms()
            return answer

    def channel(
        self, image_id: str, layer: str, channel: int, call: int = 0, *, cmap: str = "viridis"
    ) -> dict[str, Any]:
        """One channel zoomed, with its value range, and for a convolution the kernel
        that made it (its weight averaged over input channels, or in colour for an
        RGB input), on a diverging scale centred at 0."""
        with self.lock:
            module = self._module(layer)
            maps = _spatial(self.activation(image_id, layer, call), module)
            if maps is None:
                raise SessionError(f"layer {layer!r} has no spatial maps")
            if not 0 <= channel < maps.shape[0]:
                raise SessionError(
                    f"channel: {layer!r} has {maps.shape[0]} channels, got {channel}"
                )
            one = maps[channel].float()
            answer: dict[str, Any] = {
                "layer": layer,
                "channel": channel,
                "picture": _map_picture(one, cmap, zoom=True),
                "min": float(one.min()),
                "max": float(one.max()),
                "mean": float(one.mean()),
                "kernel": None,
            }
            if _is_conv(module):
                answer["kernel"] = _kernel_picture(module, channel)
            return answer

    def _kernels(self, layer: str) -> dict[str, Any] | None:
        from netsight.filters import filter_grid

        try:
            grid = filter_grid(self.model, layer, max_tiles=GRID_PAGE)
        except (ValueError, TypeError) as exc:
            return {"picture": None, "note": str(exc)}
        return {"picture": png_data_url(grid.image), "note": getattr(grid, "note", "")}

    # ------------------------------------------------------------------ CAM
    def cam_map(
        self,
        image_id: str,
        layer: str | None = None,
        target: int | None = None,
        method: str = "gradcam",
    ) -> CAMMap:
        """A class activation map for an image, as the CAM class would make it.

        Args:
            layer: the target layer (default: netsight's automatic choice, the last
                layer with a spatial map).
            target: the class (default: the top prediction).
            method: a name of :data:`netsight.cam.METHODS`.

        A gradient method reuses the image's kept autograd graph when there is one:
        the cost is one backward from the score to the layer's last call.
        """
        shown = [name for name, cls in METHODS.items() if cls.interactive]
        if method not in shown:
            why = " (too slow for a click: use netsight cam)" if method in METHODS else ""
            raise SessionError(f"method: expected one of {', '.join(shown)}, got {method!r}{why}")
        with self.lock:
            image = self._image(image_id)
            if image.output is None:
                raise SessionError(
                    f"image {image.name!r} has no output: {image.error}"
                ) from image.exception
            if target is None:
                target = int(image.output[0].argmax()) if image.output.dim() == 2 else 0
            classes = image.output.shape[-1]
            if not 0 <= target < classes:
                raise SessionError(f"class: the model has {classes} classes, got {target}")
            cls = METHODS[method]
            if layer is None and cls.uses_layers:
                layer = self.target_layer(image_id)
            explainer = cls(self.model, target_layers=layer if cls.uses_layers else None)
            size = (int(image.tensor.shape[-2]), int(image.tensor.shape[-1]))
            graph = self._graphs.get(image_id)
            # the layer's last call, as the CAM classes take it
            last = graph.calls.get(layer, 0) - 1 if graph is not None and layer else -1
            if (
                isinstance(explainer, GradientCAM)
                and graph is not None
                and layer is not None
                and (layer, last) in graph.kept
            ):
                grad = self._gradient(graph, target, (layer, last))
                if grad is not None:
                    self._graphs.move_to_end(image_id)
                    kept = graph.kept[(layer, last)]
                    maps = explainer.maps_from({layer: kept}, {layer: grad}, size)
                    return CAMMap(maps[0], layer, target, method, reused_graph=True)
            with self._as_is():
                maps = explainer(image.tensor, target)
            return CAMMap(maps[0], layer, target, method, reused_graph=False)

    def _gradient(self, graph: _Graph, target: int, key: LayerKey) -> torch.Tensor | None:
        """``d score / d output`` of one kept layer output, from the kept graph.

        The backward from the score to a layer passes every layer that ran after it,
        so their gradients are taken in the same call and kept for this class: a CAM
        of the same class at a later layer then costs no backward at all."""
        if graph.grads_target != target:
            graph.grads.clear()
            graph.grads_target = target
        found = graph.grads.get(key)
        if found is not None or key in graph.grads:
            return found
        order = list(graph.kept)
        wanted = order[order.index(key) :]
        self.backwards += 1
        score = _first_tensor(graph.output)[0, target]  # type: ignore[index]
        grads = torch.autograd.grad(
            score, [graph.kept[k] for k in wanted], retain_graph=True, allow_unused=True
        )
        size = sum(g.untyped_storage().nbytes() for g in grads if g is not None)
        if size > self.budget // 4:  # too many to keep: only the one asked for
            return grads[0]
        graph.grads.update(zip(wanted, grads, strict=True))
        return grads[0]

    def cam(
        self,
        image_id: str,
        layer: str | None = None,
        target: int | None = None,
        method: str = "gradcam",
        *,
        alpha: float = 0.5,
    ) -> dict[str, Any]:
        """:meth:`cam_map` overlaid on the image: ``{picture, layer, method, class,
        class_name, probability, reused_graph, map_ms, ms}``."""
        timer = _Timer()
        with self.lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = self.cam_map(image_id, layer, target, method)
            map_ms = timer.ms()
            image = self._image(image_id)
            picture = overlay(self._picture(image), found.map, alpha=alpha)
            output = image.output
            probs = (
                torch.softmax(output[0].float(), 0)
                if output is not None and output.dim() == 2
                else None
            )
            return {
                "picture": png_data_url(picture),
                "layer": found.layer,
                "method": method,
                "class": found.target,
                "class_name": self._class_name(found.target),
                "probability": float(probs[found.target]) if probs is not None else None,
                "reused_graph": found.reused_graph,
                "warnings": list(dict.fromkeys(str(w.message) for w in caught)),
                "map_ms": map_ms,
                "ms": timer.ms(),
            }

    def target_layer(self, image_id: str) -> str:
        """The layer a CAM uses by default for an image's input shape: netsight's
        automatic choice (the last layer with a spatial map), found once per shape."""
        from netsight.cam.base import find_target_layer

        with self.lock:
            image = self._image(image_id)
            shape = tuple(image.tensor.shape)
            if shape not in self._auto_layers:
                with self._as_is():
                    self._auto_layers[shape] = find_target_layer(self.model, image.tensor)
            return self._auto_layers[shape]

    # ------------------------------------------------------------------ patterns
    def patterns(
        self,
        layer: str,
        channels: Sequence[int],
        *,
        steps: int = 64,
        size: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Filter patterns (activation maximisation) of chosen channels, as one grid."""
        from netsight.patterns import maximize

        timer = _Timer()
        with self.lock:
            self._module(layer)
            side = size or min(128, max(32, min(self._size())))
            first = next(iter(self._images.values()), None)
            channels_in = int(first.tensor.shape[1]) if first is not None else None
            with self._as_is():
                result = maximize(
                    self.model,
                    layer,
                    list(channels),
                    size=side,
                    steps=steps,
                    in_channels=channels_in,
                    mean=self.mean,
                    std=self.std,
                    on_step=on_step,
                )
            return {
                "layer": layer,
                "channels": list(result.channels),
                "picture": png_data_url(result.grid(nrow=min(8, len(result.channels)))),
                "start": [float(v) for v in result.start],
                "activation": [float(v) for v in result.activation],
                "ms": timer.ms(),
            }

    # ------------------------------------------------------------------ report
    def report_html(self, *, image_ids: Sequence[str] | None = None) -> str:
        """The session's state (its images, class names, normalisation) as
        netsight's report page."""
        from netsight.report import report

        with self.lock:
            chosen = [self._image(i) for i in (image_ids or list(self._images))]
            if not chosen:
                raise SessionError("the report needs at least one image")
            batch = torch.cat([i.tensor for i in chosen])
            page = report(
                self.model,
                batch,
                class_names=self.class_names,
                mean=self.mean,
                std=self.std,
                title=f"netsight explore: {self.name}",
            )
            return page.html


# --------------------------------------------------------------------------- pictures
def _spatial(activation: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor | None:
    """One image's ``(C, H, W)`` maps from a layer output, or None: ``(B, C, H, W)``
    as it is, ``(B, C, D, H, W)`` at its middle depth, ``(B, C, L)`` (a 1-d
    convolution's) as one row per channel, and ``(B, N, C)`` transformer tokens as their
    patch grid (after a class token) when that is square."""
    from netsight.cam.base import tokens_to_grid

    x = activation.detach()
    if x.dim() == 4:
        return x[0]
    if x.dim() == 5:
        return x[0][:, x.shape[2] // 2]
    if x.dim() == 3 and x.shape[0] == 1:
        sequence = module is not None and type(module).__name__.endswith("1d")
        if not sequence:
            try:
                return tokens_to_grid(x[:1])[0]
            except ValueError:
                return None
        return x[0][:, None, :] if x.shape[2] > 1 else None
    return None


def _layout_note(activation: torch.Tensor, maps: torch.Tensor) -> str | None:
    """Says how a non-image output was laid out as maps."""
    if activation.dim() != 3:
        return None
    if maps.shape[-2] == 1:
        return f"a (1, {activation.shape[1]}, {activation.shape[2]}) output: one row per channel"
    side = maps.shape[-1]
    dropped = activation.shape[1] - side * side
    prefix = " after the first (class) token" if dropped else ""
    return (
        f"{activation.shape[1]} tokens of {activation.shape[2]} channels shown as a "
        f"{side} x {side} patch grid{prefix}"
    )


def _statistics(activation: torch.Tensor) -> dict[str, Any]:
    x = activation.detach().float()
    finite = torch.isfinite(x)
    values = x[finite]
    stats: dict[str, Any] = {
        "numel": int(x.numel()),
        "nonfinite": int((~finite).sum()),
        "sparsity": float((x == 0).float().mean()) if x.numel() else 0.0,
        "mean": float(values.mean()) if values.numel() else None,
        "std": float(values.std()) if values.numel() > 1 else None,
        "min": float(values.min()) if values.numel() else None,
        "max": float(values.max()) if values.numel() else None,
        "channels": None,
        "dead_channels": None,
    }
    if x.dim() >= 3:
        per_channel = x[0].reshape(x.shape[1], -1)
        stats["channels"] = int(per_channel.shape[0])
        stats["dead_channels"] = int((per_channel.amax(dim=1) <= 0).sum())
    return stats


def _top_values(
    activation: torch.Tensor, class_names: Sequence[str] | None
) -> list[dict[str, Any]]:
    x = activation.detach().float().reshape(-1)
    k = min(10, x.numel())
    values, indices = torch.topk(x, k)
    return [
        {
            "index": int(i),
            "value": float(v),
            "name": class_names[int(i)]
            if class_names is not None and int(i) < len(class_names)
            else None,
        }
        for v, i in zip(values, indices, strict=True)
    ]


def _map_picture(one: torch.Tensor, cmap: str, *, zoom: bool = False) -> str:
    scaled = normalize_maps(one[None].float(), "each")
    rgb = colorize(scaled, cmap)[0]
    factor = max(1, ZOOM_PX // max(one.shape)) if zoom else max(1, 128 // max(one.shape))
    if factor > 1:
        rgb = rgb.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return png_data_url(rgb)


def _kernel_picture(module: nn.Module, channel: int) -> dict[str, Any]:
    weight = cast(torch.Tensor, module.weight).detach().float().cpu()[channel]
    if weight.dim() == 4:  # Conv3d: the middle depth slice
        weight = weight[:, weight.shape[1] // 2]
    if weight.dim() == 2:  # Conv1d: (in, k) as one row per input channel
        rgb = colorize(normalize_maps(weight[None], "none", _symmetric(weight)), "RdBu_r")[0]
        how = "one row per input channel"
    elif weight.shape[0] == 3:
        low, high = _symmetric(weight)
        rgb = ((weight - low) / (high - low)).clamp(0, 1)
        how = "RGB, grey at 0"
    else:
        mean = weight.mean(0)
        rgb = colorize(normalize_maps(mean[None], "none", _symmetric(mean)), "RdBu_r")[0]
        how = (
            f"mean over {weight.shape[0]} input channels"
            if weight.shape[0] > 1
            else "its one input channel"
        )
    factor = max(1, 160 // max(rgb.shape[-2:]))
    rgb = rgb.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return {"picture": png_data_url(rgb), "how": how, "size": list(weight.shape[-2:])}


def _symmetric(weight: torch.Tensor) -> tuple[float, float]:
    bound = float(weight.abs().max()) or 1.0
    return -bound, bound
