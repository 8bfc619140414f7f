"""Test helpers: prove a model leaves a netsight call exactly as it came in; write
huge image files cheaply, and small noise pictures; compare CAMs with
pytorch-grad-cam."""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


# --------------------------------------------------------------------------- CAM references
# Shared by tests/test_cam_reference*.py: models, inputs and comparisons with
# pytorch-grad-cam (see tests/test_cam_reference.py's docstring for why the models
# are calibrated).

#: One class per image of the batch of 4.
CAM_TARGETS = [1, 3, 5, 7]
#: Pearson r of the final maps, per image.
R_MIN = 0.999
#: Largest difference of the raw maps, as a fraction of the reference's largest |value|.
RAW_TOL = 1e-3


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def _vgg11_bn() -> nn.Module:
    import torchvision

    return torchvision.models.vgg11_bn(num_classes=10)


def _vgg16net() -> nn.Module:
    from netsight.zoo import Vgg16Net

    return Vgg16Net()


# name -> (factory, input shape, target layer (>= 7x7) for the gradient methods and
#          Eigen-CAM, a 64-channel layer for Score-CAM / Ablation-CAM, input shape for those)
CAM_ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str, str, tuple[int, ...]]] = {
    "resnet18": (
        _resnet18,
        (4, 3, 224, 224),
        "layer4",  # 7x7
        "layer1",  # 8x8
        (4, 3, 32, 32),
    ),
    "vgg11_bn": (
        _vgg11_bn,
        (4, 3, 112, 112),
        "features.27",  # the last ReLU, 7x7
        "features.2",  # 32x32
        (4, 3, 32, 32),
    ),
    # The tutorials' VGG-16 takes 32x32 only (its head flattens 512x1x1); its last
    # block is 2x2, so the gradient methods are compared at layer3's last ReLU, 8x8.
    "vgg16net": (_vgg16net, (4, 1, 32, 32), "layer3.8", "layer1.2", (4, 1, 32, 32)),
}


def calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...]) -> None:
    """BatchNorm statistics from 64 random inputs (cumulative averages), as a
    trained model would have: see tests/test_cam_reference.py's docstring for why."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    generator = torch.Generator().manual_seed(2)
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *shape[1:], generator=generator))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def build_cam_model(arch: str) -> nn.Module:
    """A :data:`CAM_ARCHS` model with seeded random weights, not calibrated."""
    torch.manual_seed(0)
    model = CAM_ARCHS[arch][0]()
    if arch == "vgg11_bn":
        # A frozen 100M-parameter head: pytorch-grad-cam's backward then skips the
        # head's weight gradients (3x faster); netsight never computes them anyway.
        model.classifier.requires_grad_(False)
    return model


@functools.cache
def cam_model(arch: str) -> nn.Module:
    """A :data:`CAM_ARCHS` model, calibrated, in eval mode (one per process)."""
    model = build_cam_model(arch)
    calibrate_batchnorm(model, CAM_ARCHS[arch][4])
    return model


def seeded_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@contextmanager
def reset_after_reference(model: nn.Module) -> Iterator[None]:
    """pytorch-grad-cam calls ``model.eval()`` without restoring it and fills every
    parameter's ``.grad``: both undone on exit."""
    flags = [m.training for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in zip(model.modules(), flags, strict=True):
            module.training = flag
        for param in model.parameters():
            param.grad = None


def pgc_targets(targets: Sequence[Any]) -> list[Any]:
    """pytorch-grad-cam targets: an int becomes its ``ClassifierOutputTarget``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(t) if isinstance(t, int) else t for t in targets]


def pgc_reference(
    cls_name: str,
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    targets: Sequence[Any] = CAM_TARGETS,
    *,
    call_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's final maps and its raw maps (what its ``get_cam_image``
    returns: the signed weighted sum at layer resolution, before ReLU and scaling).

    Args:
        targets: class indices, or pytorch-grad-cam target objects.
        call_options: keyword arguments of the call (``eigen_smooth=True``).
        **options: keyword arguments of the constructor.
    """
    import pytorch_grad_cam as pgc

    module = dict(model.named_modules())[layer]
    raws: list[np.ndarray] = []
    with reset_after_reference(model), getattr(pgc, cls_name)(model, [module], **options) as cam:
        get_cam_image = cam.get_cam_image

        def keep_raw(*args: Any, **kwargs: Any) -> np.ndarray:
            raw = get_cam_image(*args, **kwargs)
            raws.append(raw)
            return raw

        cam.get_cam_image = keep_raw  # read the reference's intermediate, change nothing
        maps = cam(x, pgc_targets(targets), **(call_options or {}))
    (raw,) = raws
    return torch.from_numpy(maps), torch.from_numpy(np.asarray(raw))


def assert_raw_match(
    ours: torch.Tensor, theirs: torch.Tensor, what: str, tol: float = RAW_TOL
) -> None:
    """Each image's maps within ``tol`` of the reference's largest ``|value|``."""
    theirs = theirs.to(ours.dtype)
    assert ours.shape == theirs.shape, f"{what}: raw shape {ours.shape} vs {theirs.shape}"
    for i in range(ours.shape[0]):
        scale = float(theirs[i].abs().amax())
        err = float((ours[i] - theirs[i]).abs().amax())
        assert err <= tol * scale, (
            f"{what}: image {i}: raw maps differ by {err:.3g} "
            f"({err / max(scale, 1e-30):.3g} of the reference's largest |value| {scale:.3g})"
        )


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def minmax01(m: torch.Tensor) -> torch.Tensor:
    span = m.amax() - m.amin()
    return (m - m.amin()) / span if float(span) > 0 else torch.zeros_like(m)


def assert_maps_match(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> list[float]:
    """Pearson r >= :data:`R_MIN` per image; an all-zero reference map (no positive
    evidence) must be all zero here too. Returns the r of each image."""
    rs = []
    for i in range(ours.shape[0]):
        if float(theirs[i].amax() - theirs[i].amin()) < 1e-6:  # no positive evidence
            assert float(ours[i].abs().amax()) == 0.0, f"{what}: image {i} should be all zero"
            rs.append(1.0)
            continue
        r = pearson(ours[i], theirs[i])
        assert r >= R_MIN, f"{what}: image {i}: r = {r:.6f}"
        rs.append(r)
    return rs
