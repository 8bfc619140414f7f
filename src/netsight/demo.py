"""The demo: summaries of the tutorials' VGG-16 and of ResNet-18, printed and saved.

Run it with ``netsight demo --out out`` (or ``make demo``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from netsight._io import atomic_write_text
from netsight.summary import Summary, summary
from netsight.zoo import Vgg16Net

__all__ = ["run_demo"]

_DEPTH = 3


def _build(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with a fixed seed without moving the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory()


def _demo_summaries() -> list[tuple[str, str, Summary]]:
    """``(file stem, title, summary)`` for every model the demo shows."""
    vgg = _build(Vgg16Net)
    resnet = _build(torchvision.models.resnet18)
    return [
        (
            "vgg16",
            "The tutorials' VGG-16 (netsight.zoo.Vgg16Net), input (1, 1, 32, 32)",
            summary(vgg, input_size=(1, 1, 32, 32), depth=_DEPTH),
        ),
        (
            "resnet18",
            "torchvision ResNet-18 (random weights), input (1, 3, 224, 224)",
            summary(resnet, input_size=(1, 3, 224, 224), depth=_DEPTH),
        ),
    ]


def run_demo(out_dir: str | os.PathLike[str] = "out") -> list[Path]:
    """Print two model summaries and save them as HTML and JSON.

    Prints the text summary (depth 3) of the tutorials' VGG-16
    (:class:`netsight.zoo.Vgg16Net`, input ``(1, 1, 32, 32)``) and of torchvision's
    ResNet-18 (random weights, input ``(1, 3, 224, 224)``), then writes
    ``vgg16.html``, ``vgg16.json``, ``resnet18.html`` and ``resnet18.json`` under
    ``out_dir`` (each file written whole or not at all) and prints their paths.
    The global RNG state is left as it was.

    Args:
        out_dir: where the files go; created if missing.

    Returns:
        The paths written, in the order above.

    Raises:
        OSError: ``out_dir`` cannot be created or written to.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, title, s in _demo_summaries():
        print(title)
        print(s.to_text())
        print()
        written.append(atomic_write_text(out / f"{stem}.html", s.to_html(full_page=True)))
        written.append(atomic_write_text(out / f"{stem}.json", s.to_json() + "\n"))
    print("Wrote:")
    for path in written:
        print(f"  {path}")
    return written
