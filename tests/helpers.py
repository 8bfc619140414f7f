"""Test helpers: prove a model leaves a netsight call exactly as it came in; write
huge image files cheaply, and small noise pictures."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import netsight


@dataclass
class ModelState:
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    tensors: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    devices: dict[str, torch.device]
    hooks: int
    rng: torch.Tensor


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict, also those a quantized module packs in a tuple
    (its ``_packed_params``), quantized ones as their integer representation."""
    found: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        items = [(name, value)]
        if isinstance(value, tuple):
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        for key, t in items:
            if isinstance(t, torch.Tensor):
                found[key] = t.int_repr() if t.is_quantized else t
    return found


def snapshot(model: nn.Module) -> ModelState:
    state = _state_tensors(model)
    return ModelState(
        training={n: m.training for n, m in model.named_modules(remove_duplicate=False)},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        tensors={n: t.detach().clone() for n, t in state.items() if t.device.type != "meta"},
        grads={
            n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters()
        },
        devices={n: t.device for n, t in state.items()},
        hooks=netsight.count_hooks(model),
        rng=torch.get_rng_state(),
    )


def assert_unchanged(model: nn.Module, before: ModelState) -> None:
    after = snapshot(model)
    assert after.training == before.training, "training flags changed"
    assert after.requires_grad == before.requires_grad, "requires_grad changed"
    assert after.devices == before.devices, "a tensor moved device"
    assert after.hooks == before.hooks == 0, f"{after.hooks} hooks left on the model"
    assert after.tensors.keys() == before.tensors.keys()
    for name, tensor in before.tensors.items():
        assert torch.equal(after.tensors[name], tensor), f"{name} changed"
    for name, grad in before.grads.items():
        new = after.grads[name]
        assert (grad is None) == (new is None), f"{name}.grad appeared or vanished"
        if grad is not None and new is not None:
            assert torch.equal(grad, new), f"{name}.grad changed"
    assert torch.equal(after.rng, before.rng), "the global RNG state moved"


def noise_pictures(directory: Path, seed: int) -> list[Path]:
    """``cat.png``, an RGB picture (24 x 32), and ``gray.png`` (20 x 20) of seeded noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = directory / "cat.png"
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype("uint8")).save(rgb)
    gray = directory / "gray.png"
    Image.fromarray((rng.random((20, 20)) * 255).astype("uint8"), "L").save(gray)
    return [rgb, gray]


def zeros_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black bilevel PNG of any size, written without holding its pixels
    (Pillow would allocate a byte per pixel: 400 MB for 20000 x 20000)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path
