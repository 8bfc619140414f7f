"""Filter patterns by activation maximisation: the input a channel likes best.

:func:`maximize` starts from faint noise and follows the gradient of one
channel's mean activation with respect to the *input*, the way the tutorials'
"what does this filter look for" pictures are made (and lucid/lucent do it):

* the image is parameterised in the Fourier domain with a 1/f spectrum scale
  (``parameterization="fourier"``, the default; ``"pixel"`` is plain pixels),
  which keeps the optimisation from filling the picture with high-frequency
  noise, and squashed into ``[0, 1]`` with a sigmoid;
* every step sees a randomly shifted and rescaled copy (``jitter``, ``scales``),
  so the pattern must survive small translations, as natural features do;
* all requested channels are optimised together, one image per channel in one
  batch, and the forward stops at the target layer.

Only the input is optimised: gradients are taken with ``torch.autograd.grad``
with respect to the image, so no parameter's ``.grad`` is touched, and the
model leaves as it came (hooks removed, modes restored, weights unchanged). A
private ``torch.Generator`` seeded with ``seed`` drives the noise and the
jitter: the same call gives the same pictures and the global RNG does not move.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from netsight._progress import ProgressBar
from netsight.capture import resolve_layers
from netsight.features import run_forward
from netsight.hooks import HookSet, StopForward, check_not_lazy, preserve_state, unwrap_compiled
from netsight.images import expected_channels

__all__ = ["SCHEMA", "Patterns", "maximize"]

#: The ``schema`` of the record :meth:`Patterns.save` writes.
SCHEMA = "netsight.patterns/1"

_PARAMETERIZATIONS = ("fourier", "pixel")


@dataclass(frozen=True)
class Patterns:
    """What :func:`maximize` found.

    Attributes:
        layer: the target layer's qualified name.
        channels: the channel each image maximises.
        images: ``(N, C, H, W)`` pictures in ``[0, 1]``, one per channel.
        start: ``(N,)`` each channel's mean activation on the starting noise.
        activation: ``(N,)`` the same on the final picture (no jitter).
        history: ``(steps, N)`` the objective at every step (on jittered copies).
        settings: the options :func:`maximize` ran with (steps, lr, seed, ...).
    """

    layer: str
    channels: tuple[int, ...]
    images: torch.Tensor
    start: torch.Tensor
    activation: torch.Tensor
    history: torch.Tensor
    settings: Mapping[str, Any] = field(default_factory=dict)

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        spec: str | None = None,
        weights: str | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write the figure (:meth:`plot`) and its record into ``directory``, whole or
        not at all: ``patterns_LAYER.png`` and ``patterns_LAYER.json`` (schema
        :data:`SCHEMA`, library versions, channels, the mean activation before and
        after, the settings). Another layer's patterns can share the directory; this
        layer's are not replaced unless ``overwrite``.

        Example:
            >>> netsight.maximize(model, "layer5.6", size=32).save("out/patterns")

        Args:
            directory: where the files go; created if missing.
            spec: how the model was named (``torchvision:resnet18``), for the record.
            weights: the checkpoint the model was loaded from, for the record.
            overwrite: replace this layer's patterns already in ``directory``.

        Returns:
            The figure's path and the record's.

        Raises:
            FileExistsError: ``directory`` holds this layer's patterns and
                ``overwrite`` is false.
        """
        from netsight._io import figure_bytes, safe_filename, versions, write_directory

        stem = f"patterns_{safe_filename(self.layer)}"
        height, width = self.images.shape[-2:]
        files = {f"{stem}.png": figure_bytes(self.plot())}
        record = {
            "schema": SCHEMA,
            **versions(),
            "model": spec,
            "weights": weights,
            "layer": self.layer,
            "channels": list(self.channels),
            "start": [float(v) for v in self.start],
            "activation": [float(v) for v in self.activation],
            "size": int(height) if height == width else [int(height), int(width)],
            "steps": int(self.history.shape[0]),
            "settings": dict(self.settings),
            "figure": f"{stem}.png",
            "files": list(files),
        }
        files[f"{stem}.json"] = (json.dumps(record, indent=2) + "\n").encode()
        return write_directory(directory, files, what="patterns", overwrite=overwrite)

    def grid(self, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
        """The pictures as one ``(3, H, W)`` grid (``torchvision.utils.make_grid``)."""
        from torchvision.utils import make_grid

        count = self.images.shape[0]
        columns = nrow or min(8, count)
        grid: torch.Tensor = make_grid(self.images, nrow=columns, padding=padding, pad_value=1.0)
        return grid

    def plot(self, *, ncols: int | None = None, title: str | None = None) -> Figure:
        """A figure: one picture per channel, titled with its channel and its mean
        activation on the starting noise and on the picture (``start -> end``).

        The pictures are inputs in ``[0, 1]``, drawn as images (a one-channel picture
        in grey), so they need no colour bar. Sized for a page: pictures of 1.35 in,
        ``ncols`` in a row (default: about twice as many columns as rows, at most 8),
        text at netsight's sizes (:data:`~netsight._figures.FONT_PT`).
        """
        from netsight._figures import FONT_PT
        from netsight.images import titled_figure

        count = self.images.shape[0]
        wanted = ncols if ncols is not None else min(8, math.ceil(math.sqrt(2 * count)))
        columns = max(1, min(wanted, count))
        rows = math.ceil(count / columns)
        side = 1.35
        heading = title or (
            f"{self.layer}: the input each channel responds to most "
            f"(mean activation: on noise -> on the picture)"
        )
        fig = titled_figure(max(4.5, side * columns + 0.3), (side + 0.45) * rows, heading)
        axes = fig.subplots(rows, columns, squeeze=False)
        for index, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if index >= count:
                ax.set_axis_off()
                continue
            picture = self.images[index].permute(1, 2, 0).clamp(0, 1).numpy()
            if picture.shape[2] == 1:  # grey, as a photo: no colour map, so no colour bar
                picture = picture.repeat(3, axis=2)
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(
                f"channel {self.channels[index]}\n"
                f"{float(self.start[index]):.2g} -> {float(self.activation[index]):.2g}",
                fontsize=FONT_PT["small"],
            )
        return fig


class _Reached(StopForward):
    """Raised by the layer hook: the forward need not go further."""


def _spectrum_scale(height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay


class _Image:
    """The optimised variable and how it becomes a ``[0, 1]`` picture."""

    def __init__(
        self,
        kind: str,
        shape: tuple[int, int, int, int],
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        n, c, h, w = shape
        self.kind, self.size = kind, (h, w)
        if kind == "fourier":
            noise = torch.randn((n, c, h, w // 2 + 1, 2), generator=generator) * 0.01
            self.scale = _spectrum_scale(h, w).to(device)
            self.scale = self.scale / self.scale.max() * 4.0  # unit-ish pixel variance
        else:
            noise = torch.randn((n, c, h, w), generator=generator) * 0.01
        self.param = noise.to(device).requires_grad_(True)

    def picture(self) -> torch.Tensor:
        if self.kind == "fourier":
            spectrum = torch.view_as_complex(self.param) * self.scale
            pixels = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        else:
            pixels = self.param
        return torch.sigmoid(pixels)


def _jittered(
    x: torch.Tensor, generator: torch.Generator, jitter: int, scales: Sequence[float]
) -> torch.Tensor:
    """A randomly shifted (by up to ``jitter`` px) and rescaled copy of ``x``."""
    h, w = x.shape[-2:]
    if scales:
        factor = float(scales[int(torch.randint(len(scales), (1,), generator=generator))])
        if factor != 1.0:
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if jitter > 0:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


def maximize(
    model: nn.Module,
    layer: str | nn.Module,
    channels: int | Sequence[int] | None = None,
    *,
    size: int | tuple[int, int] = 64,
    steps: int = 128,
    lr: float = 0.05,
    parameterization: str = "fourier",
    jitter: int = 4,
    scales: Sequence[float] = (1.0, 0.975, 1.025, 0.95, 1.05),
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_channels: int = 16,
    seed: int = 0,
    progress: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> Patterns:
    """Find, for each channel of ``layer``, an input that maximises its mean activation.

    Example:
        >>> p = netsight.maximize(model, "layer5.6", channels=range(8), size=32)
        >>> p.activation > p.start          # every channel ends higher
        tensor([True, True, True, True, True, True, True, True])
        >>> p.plot().savefig("patterns.png")

    Args:
        model: the network (left as it came).
        layer: the target layer: a qualified name (``"features.10"``), a glob
            matching one layer, or the module itself.
        channels: a channel index or several (default: the first
            ``max_channels`` channels of the layer).
        size: the picture's side, or ``(H, W)``. The forward stops at ``layer``,
            so any size the layers before it accept works.
        steps, lr: Adam steps and learning rate.
        parameterization: ``"fourier"`` (1/f-scaled spectrum, smoother pictures)
            or ``"pixel"``.
        jitter: random shift in pixels at every step (0: none).
        scales: random rescaling factors, one drawn per step (empty: none).
        in_channels: input channels (default: the first convolution's).
        mean, std: the normalisation the model expects (default 0.5 and 0.5, as
            :func:`netsight.load_image`); the pictures are in ``[0, 1]`` before it.
        max_channels: how many channels at most when ``channels`` is not given.
        seed: seeds the starting noise and the jitter (a private generator).
        progress: show a progress bar.
        on_step: called as ``on_step(done, steps)`` after every optimisation step
            (e.g. to stream progress to a page); it may raise to stop the run.

    Returns:
        :class:`Patterns` with the pictures and the objective before and after.

    Raises:
        KeyError: an unknown layer (close matches suggested).
        ValueError: a channel the layer does not have, a layer that never ran
            on an input of this size, or a bad option.
        netsight.TraceError: the model fails on a picture of this size and
            ``in_channels``; the message names the layer.
        RuntimeError: called inside ``torch.inference_mode()``.
    """
    if parameterization not in _PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization: expected one of {', '.join(_PARAMETERIZATIONS)}, "
            f"got {parameterization!r}"
        )
    if steps < 1 or lr <= 0 or jitter < 0 or max_channels < 1:
        raise ValueError("steps and max_channels must be >= 1, lr > 0 and jitter >= 0")
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "maximize needs gradients with respect to the input, but it was called inside "
            "torch.inference_mode(); call it outside (inside torch.no_grad() is fine)"
        )
    model = unwrap_compiled(model)
    check_not_lazy(model)
    found = resolve_layers(model, layer)
    if len(found) != 1:
        raise ValueError(f"layer: expected one layer, {layer!r} matches {len(found)}")
    name, module = next(iter(found.items()))
    height, width = (size, size) if isinstance(size, int) else size
    colour = in_channels or expected_channels(model) or 3
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mean_t = torch.tensor(mean if mean is not None else [0.5] * colour, device=device)
    std_t = torch.tensor(std if std is not None else [0.5] * colour, device=device)
    if mean_t.numel() not in (1, colour) or std_t.numel() not in (1, colour):
        raise ValueError(f"mean/std: expected 1 or {colour} values")
    mean_t, std_t = mean_t.view(1, -1, 1, 1), std_t.view(1, -1, 1, 1)

    captured: list[torch.Tensor] = []

    def grab(m: nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{name}: its output is a {type(out).__name__}, not a tensor")
        captured.append(out)
        raise _Reached

    def layer_output(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        with contextlib.suppress(_Reached):
            model((x - mean_t) / std_t)
        if not captured:
            raise ValueError(f"{name} did not run on a {height}x{width} input")
        return captured[0]

    generator = torch.Generator().manual_seed(seed)
    with preserve_state(model, "eval"), HookSet() as hooks, torch.enable_grad():
        hooks.add(module.register_forward_hook(grab))
        grey = torch.full((1, colour, height, width), 0.5, device=device)
        try:
            with torch.no_grad():
                probe = layer_output(grey)
        except RuntimeError:  # a wrong input shape: name the layer that failed
            # a re-run that reaches the layer names none: the original error stands
            with contextlib.suppress(_Reached):
                run_forward(model, (grey - mean_t) / std_t)
            raise
        available = probe.shape[1] if probe.dim() >= 2 else 1
        if channels is None:
            chosen = list(range(min(max_channels, available)))
        else:
            chosen = [channels] if isinstance(channels, int) else list(channels)
        bad = [c for c in chosen if not 0 <= c < available]
        if bad or not chosen:
            raise ValueError(
                f"channels: {name} has {available} channels (0-{available - 1}), "
                f"got {bad or chosen}"
            )
        index = torch.tensor(chosen, device=device)

        def objective(out: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(len(chosen), device=out.device)
            picked = out[rows, index]  # (N, ...) each image's own channel
            return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked

        image = _Image(parameterization, (len(chosen), colour, height, width), generator, device)
        optimizer = torch.optim.Adam([image.param], lr=lr)
        with torch.no_grad():
            start = objective(layer_output(image.picture())).detach().float().cpu()
        history = []
        bar = ProgressBar(progress, steps, f"maximising {name}")
        try:
            for _ in range(steps):
                picture = _jittered(image.picture(), generator, jitter, scales)
                values = objective(layer_output(picture))
                # the input's gradient only: no parameter's .grad is touched
                (image.param.grad,) = torch.autograd.grad(-values.sum(), [image.param])
                optimizer.step()
                history.append(values.detach().float().cpu())
                bar.advance()
                if on_step is not None:
                    on_step(len(history), steps)
        finally:
            bar.close()
        with torch.no_grad():
            final_picture = image.picture().detach()
            final = objective(layer_output(final_picture)).float().cpu()
    return Patterns(
        layer=name,
        channels=tuple(chosen),
        images=final_picture.float().cpu(),
        start=start,
        activation=final,
        history=torch.stack(history),
        settings={
            "lr": lr,
            "parameterization": parameterization,
            "jitter": jitter,
            "scales": [float(v) for v in scales],
            "in_channels": colour,
            "mean": [float(v) for v in mean] if mean is not None else None,
            "std": [float(v) for v in std] if std is not None else None,
            "seed": seed,
        },
    )
