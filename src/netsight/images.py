"""Images in and out: normalising maps, colormaps, grids, loading user images.

Grids come from :func:`torchvision.utils.make_grid`, colormaps from matplotlib;
these helpers only glue them together with the two things every caller needs:
non-finite values are *flagged* (drawn in a conspicuous colour and counted), and
constant maps never divide by zero.

Two kinds of grid: :func:`map_grid` colours maps into one RGB image (for
TensorBoard), while the figures tile the *values* (:func:`tile_maps`, NaN
padding), lay the tiles out for a page (:func:`plan_tiles`) and draw them with one
colour scale (:func:`color_scale`: diverging and centred at 0 for signed values)
that a colour bar explains (:func:`draw_tiles`).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch import nn

from netsight.options import Normalization

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DIVERGING_CMAP",
    "NONFINITE_COLOR",
    "SEQUENTIAL_CMAP",
    "ColorScale",
    "MapGrid",
    "TilePlan",
    "check_colormap",
    "color_scale",
    "colorize",
    "denormalize",
    "draw_map",
    "draw_tiles",
    "expected_channels",
    "label_rows_and_columns",
    "load_image",
    "map_grid",
    "minmax_scale",
    "normalize_maps",
    "plan_tiles",
    "scaled_each",
    "thinned",
    "tile_maps",
    "titled_figure",
    "to_pil",
]

#: Colour of NaN/Inf pixels in every netsight picture (magenta: no colormap uses it).
NONFINITE_COLOR = (1.0, 0.0, 1.0)


@torch.no_grad()
def normalize_maps(
    maps: torch.Tensor,
    mode: str = "each",
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Scale maps of shape ``(N, H, W)`` to ``[0, 1]``.

    Args:
        maps: the maps; NaN/Inf are ignored when finding the range and stay
            non-finite in the result, so they can be flagged.
        mode: ``"each"`` (every map its own min/max), ``"shared"`` (one range for
            all), or ``"none"`` (clamp ``value_range`` or ``[0, 1]``).
        value_range: fixed ``(low, high)``; overrides ``mode``.

    A constant map becomes all zeros instead of dividing by zero.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps: expected shape (N, H, W), got {list(maps.shape)}")
    scaling = Normalization.parse(mode, "mode")
    x = maps.detach().float()
    finite = torch.isfinite(x)
    if value_range is not None:
        low = torch.full((x.shape[0], 1, 1), float(value_range[0]), device=x.device)
        high = torch.full((x.shape[0], 1, 1), float(value_range[1]), device=x.device)
    elif scaling == Normalization.NONE:
        low = torch.zeros((x.shape[0], 1, 1), device=x.device)
        high = torch.ones((x.shape[0], 1, 1), device=x.device)
    else:
        big = torch.finfo(torch.float32).max
        lows = torch.where(finite, x, torch.full_like(x, big)).amin(dim=(1, 2), keepdim=True)
        highs = torch.where(finite, x, torch.full_like(x, -big)).amax(dim=(1, 2), keepdim=True)
        empty = lows > highs  # a map with no finite value
        lows = torch.where(empty, torch.zeros_like(lows), lows)
        highs = torch.where(empty, torch.zeros_like(highs), highs)
        if scaling == Normalization.SHARED:
            lows = lows.amin().expand_as(lows)
            highs = highs.amax().expand_as(highs)
        low, high = lows, highs
    scaled, _ = minmax_scale(x, low, high)
    return torch.where(finite, scaled.clamp(0.0, 1.0), x)  # keep NaN/Inf so colorize can flag them


def minmax_scale(
    maps: torch.Tensor,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one min-max step: ``(maps - low) / (high - low)``, and zeros where that
    span is not positive (a constant map) instead of a division by zero.

    :func:`normalize_maps` calls it with the range it chose; the CAM methods and
    their metrics call it on finite maps with the default range. It works in the
    maps' dtype and on their device, and neither clamps nor skips NaN/Inf (which
    range to take around them is the caller's choice).

    Args:
        maps: ``(N, H, W)`` maps.
        low: the bottom of each map's range, broadcast against ``maps``; default
            each map's minimum (``(N, 1, 1)``).
        high: the top, likewise; default each map's maximum.

    Returns:
        The scaled maps and ``varies``, the ``(N, 1, 1)`` (broadcast) mask of the
        maps whose span ``high - low`` is positive; the others come out as zeros.
    """
    if low is None:
        low = maps.amin(dim=(-2, -1), keepdim=True)
    if high is None:
        high = maps.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    varies = span > 0
    scaled = (maps - low) / torch.where(varies, span, torch.ones_like(span))
    return torch.where(varies, scaled, torch.zeros_like(scaled)), varies


@torch.no_grad()
def check_colormap(name: str, what: str = "cmap") -> None:
    """Refuse a name that is not a matplotlib colormap (with close matches as a hint).

    Raises:
        ValueError: ``"{what}: unknown matplotlib colormap 'jett'; did you mean 'jet'?"``
    """
    import difflib

    import matplotlib

    if not isinstance(name, str) or name not in matplotlib.colormaps:
        names = list(matplotlib.colormaps)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{what}: unknown matplotlib colormap {name!r}{hint}")


def colorize(maps: torch.Tensor, cmap: str = "viridis") -> torch.Tensor:
    """Map values in ``[0, 1]`` of shape ``(N, H, W)`` to RGB ``(N, 3, H, W)`` with a
    matplotlib colormap; non-finite pixels get :data:`NONFINITE_COLOR`."""
    import matplotlib

    check_colormap(cmap)
    colormap = matplotlib.colormaps[cmap]
    lut = torch.tensor(
        colormap(np.linspace(0.0, 1.0, 256))[:, :3], dtype=torch.float32, device=maps.device
    )
    finite = torch.isfinite(maps)
    index = (torch.where(finite, maps, torch.zeros_like(maps)).clamp(0, 1) * 255).round().long()
    rgb = lut[index]  # (N, H, W, 3)
    flag = torch.tensor(NONFINITE_COLOR, dtype=torch.float32, device=maps.device)
    rgb = torch.where(finite.unsqueeze(-1), rgb, flag)
    return rgb.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class MapGrid:
    """A grid image and what it shows.

    Attributes:
        image: ``(3, H, W)`` float tensor in ``[0, 1]`` (ready for
            ``SummaryWriter.add_image`` or :func:`to_pil`).
        indices: which maps (channels) are shown, in grid order.
        total: how many there were.
        nonfinite: how many NaN/Inf values were drawn in magenta.
        nrow: tiles per grid row.
    """

    image: torch.Tensor
    indices: tuple[int, ...]
    total: int
    nonfinite: int
    nrow: int

    @property
    def note(self) -> str:
        """A one-line caption: what is shown, what was left out, what was flagged."""
        parts = [f"showing {len(self.indices)} of {self.total}"]
        if len(self.indices) < self.total:
            parts.append(f"{self.total - len(self.indices)} left out")
        if self.nonfinite:
            parts.append(f"{self.nonfinite} NaN/Inf values in magenta")
        return ", ".join(parts)


@torch.no_grad()
def map_grid(
    maps: torch.Tensor,
    *,
    indices: Sequence[int] | None = None,
    normalize: str = "each",
    value_range: tuple[float, float] | None = None,
    cmap: str = "viridis",
    nrow: int | None = None,
    padding: int = 1,
    upscale: int = 1,
) -> MapGrid:
    """Colour a stack of maps ``(N, H, W)`` and lay them out with ``make_grid``."""
    if maps.dim() != 3:
        raise ValueError(f"maps: expected shape (N, H, W), got {list(maps.shape)}")
    total = maps.shape[0]
    chosen = list(range(total)) if indices is None else [int(i) for i in indices]
    if not chosen:
        raise ValueError("nothing to draw: no maps selected")
    selected = maps[chosen].detach().float().cpu()
    nonfinite = int((~torch.isfinite(selected)).sum())
    scaled = normalize_maps(selected, normalize, value_range)
    rgb = colorize(scaled, cmap)
    if upscale > 1:
        rgb = rgb.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    if nrow is None:
        nrow = max(1, int(np.ceil(np.sqrt(len(chosen)))))
    from torchvision.utils import make_grid  # torchvision is slow to import: only when drawing

    grid = make_grid(rgb, nrow=nrow, padding=padding, pad_value=1.0)
    return MapGrid(grid, tuple(chosen), total, nonfinite, nrow)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` or ``(1, H, W)`` float tensor in ``[0, 1]`` as a PIL image."""
    from torchvision.transforms.functional import to_pil_image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image: expected shape (3, H, W) or (1, H, W), got {list(image.shape)}")
    clean = torch.nan_to_num(image.detach().float().cpu(), nan=0.0).clamp(0, 1)
    pil: Image.Image = to_pil_image(clean)
    return pil


def expected_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution, if it has one."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return None


def load_image(
    path: str | Path | bytes,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    model: nn.Module | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Read an image file as a normalised ``(1, C, H, W)`` float tensor.

    Any Pillow-readable file works: grayscale, RGB, RGBA (composited on white),
    palette, 16-bit and 32-bit integer or float images (scaled by their range).

    With ``size``, a file much larger than the target is shrunk while it is read
    (JPEG: decoded at 1/2, 1/4 or 1/8 scale; others: box-averaged by whole
    factors), never below three times the target, before the final antialiased resize
    to exactly ``size``; memory then follows ``size`` rather than the file.

    Args:
        path: the file, or the bytes of one (an upload held in memory; decoded
            with the same limits).
        size: resize to ``(H, W)`` (an int makes a square).
        channels: 1 or 3; by default the first convolution of ``model`` decides,
            else the file's own (grayscale stays 1, everything else 3).
        model: used only to find the expected channel count.
        mean, std: per-channel normalisation (default: 0.5 and 0.5 for each channel,
            which maps [0, 1] to [-1, 1]; pass ImageNet statistics for ImageNet models).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image, an image over twice Pillow's decompression-bomb
            limit (``PIL.Image.MAX_IMAGE_PIXELS``), or a channel count that cannot
            be made.

    Warns:
        PIL.Image.DecompressionBombWarning: the image has more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (but not twice as many); it is loaded.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(path))
        file = Path("uploaded image")
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"image: no such file {str(file)!r}")
        source = file
    target = None if size is None else (size, size) if isinstance(size, int) else tuple(size)
    if target is not None and (
        len(target) != 2 or not all(isinstance(n, int) and n > 0 for n in target)
    ):
        raise ValueError(f"size: expected a positive int or (H, W) of them, got {size!r}")
    try:
        with warnings.catch_warnings():
            # Pillow's own warning names neither the file nor its size: ours below does
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened_file = Image.open(source)
        with opened_file as opened:
            _warn_if_huge(file, opened)
            img = _read_reduced(opened, target)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"image: {str(file)!r} is too large to decode safely ({exc}); Pillow refuses "
            "images over twice PIL.Image.MAX_IMAGE_PIXELS: raise that limit if you trust "
            "the file, or shrink the file"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image: {str(file)!r} is not an image Pillow can read ({exc})") from exc
    source = "asked for"
    if channels is None and model is not None:
        channels = expected_channels(model)
        source = "expected by the model's first convolution"
    array = _to_float_array(img)
    if channels is None:
        channels = 1 if array.shape[2] == 1 else 3
    if channels not in (1, 3):
        raise ValueError(
            f"image: netsight makes 1- or 3-channel inputs, but {channels} channels were "
            f"{source}; pass the tensor yourself"
        )
    if channels == 1 and array.shape[2] == 3:
        array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0)
    if target is not None:
        tensor = torch.nn.functional.interpolate(
            tensor, size=target, mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
    mean_t = torch.tensor(mean if mean is not None else [0.5] * channels).view(1, -1, 1, 1)
    std_t = torch.tensor(std if std is not None else [0.5] * channels).view(1, -1, 1, 1)
    if mean_t.shape[1] != channels or std_t.shape[1] != channels:
        raise ValueError(
            f"mean/std: expected {channels} values each, got {mean_t.shape[1]} and {std_t.shape[1]}"
        )
    return (tensor - mean_t) / std_t


#: Never shrink a file below this many times the target before the final resize
#: (Pillow: from 3 on, "indistinguishable from fair resampling in most cases").
_REDUCING_GAP = 3

# EXIF orientations 5 to 8 store the picture rotated by 90 degrees: width and height swap.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def _warn_if_huge(file: Path, image: Image.Image) -> None:
    """Warn, naming the file, about an image over ``PIL.Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        warnings.warn(
            f"image: {str(file)!r} is {width}x{height} ({width * height:,} pixels), more than "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,}), the size of a possible decompression "
            "bomb; loading it anyway",
            Image.DecompressionBombWarning,
            stacklevel=3,
        )


def _read_reduced(opened: Image.Image, target: tuple[int, ...] | None) -> Image.Image:
    """Decode ``opened`` upright (EXIF orientation applied), shrunk by whole factors
    while staying at least ``_REDUCING_GAP`` times ``target`` ``(H, W)``, if given.

    A JPEG is decoded at reduced scale (``Image.draft``); other formats are decoded
    in full and box-averaged (``Image.reduce``) before any float copy is made, so
    the large buffers are the file's 8-bit pixels at most.
    """
    if target is None:
        opened.load()
        return ImageOps.exif_transpose(opened)
    height, width = target
    orientation = opened.getexif().get(ExifTags.Base.Orientation)
    if orientation in _SWAPPING_ORIENTATIONS:
        height, width = width, height  # the target as the pixels are stored
    wanted = (width * _REDUCING_GAP, height * _REDUCING_GAP)
    opened.draft(None, wanted)  # JPEG only; a no-op for other formats
    opened.load()
    factors = (max(1, opened.width // wanted[0]), max(1, opened.height // wanted[1]))
    if factors == (1, 1):
        return ImageOps.exif_transpose(opened)
    img = _reduce(opened, factors)
    if orientation in _TRANSPOSES:
        img = img.transpose(_TRANSPOSES[orientation])
    return img


#: How to turn each EXIF orientation upright (as ``ImageOps.exif_transpose`` does).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _reduce(img: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """``img.reduce(factors)`` in a mode that averages correctly and that
    :func:`_to_float_array` reads as it would the original (palette and bilevel
    pixels cannot be averaged; 16-bit ones are averaged as 32-bit and put back)."""
    if img.mode == "1":
        return img.convert("L").reduce(factors)
    if img.mode in ("P", "PA"):
        transparent = img.mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if transparent else "RGB").reduce(factors)
    if img.mode.startswith("I;16"):
        return img.convert("I").reduce(factors).convert("I;16")
    return img.reduce(factors)


def _to_float_array(img: Image.Image) -> np.ndarray:
    """(H, W, C) float32 in [0, 1], C in (1, 3)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(img, dtype=np.float32) / 65535.0
        return array[:, :, None]
    if img.mode in ("I", "F"):
        array = np.asarray(img, dtype=np.float32)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scale = high - low if high > low else 1.0
        return ((array - low) / scale)[:, :, None]
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32)[:, :, None] / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def denormalize(
    tensor: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Undo :func:`load_image`'s normalisation for display: ``x * std + mean``, clamped
    to ``[0, 1]``. Works on ``(C, H, W)`` and ``(B, C, H, W)``."""
    if tensor.dim() < 3:
        raise ValueError(
            f"denormalize: expected a (C, H, W) or (B, C, H, W) tensor, got shape "
            f"{list(tensor.shape)}"
        )
    channels = tensor.shape[-3]
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(
                f"denormalize: {what} has {len(values)} values for a tensor with {channels} "
                f"channels (shape {list(tensor.shape)}); expected 1 or {channels}"
            )
    mean_t = torch.tensor(mean if mean is not None else [0.5] * channels, device=tensor.device)
    std_t = torch.tensor(std if std is not None else [0.5] * channels, device=tensor.device)
    shape = (-1, 1, 1)
    return (tensor * std_t.view(shape) + mean_t.view(shape)).clamp(0, 1)


# --------------------------------------------------------------------------- scalar tiles


@dataclass(frozen=True)
class ColorScale:
    """How scalar values become colours in a figure: one matplotlib ``norm`` and colormap.

    Attributes:
        norm: a ``matplotlib.colors.Normalize``; tiles drawn with this very object
            share the one colour bar that explains them.
        cmap: the colormap name.
        diverging: the scale is symmetric around 0 (the values have both signs).
    """

    norm: Any
    cmap: str
    diverging: bool


#: The colormap of values with both signs (centred at 0: blue below, red above) and of
#: values that are never negative (after a ReLU, say).
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "viridis"


def color_scale(
    values: torch.Tensor | np.ndarray,
    *,
    cmap: str | None = None,
    value_range: tuple[float, float] | None = None,
    centred: bool = False,
) -> ColorScale:
    """One colour scale for ``values``: symmetric around 0 with a diverging colormap
    when any finite value is negative, ``[0, max]`` with a sequential one otherwise.

    NaN/Inf are ignored (callers flag them). ``value_range`` fixes ``(low, high)``;
    ``cmap`` overrides the colormap (a diverging default is kept only when the
    range straddles 0). ``centred`` makes the scale symmetric around 0 whatever the
    signs (kernels: a weight's sign is what matters). A scale without finite values,
    or of all-zero values, is ``[-1, 1]`` or ``[0, 1]`` so that nothing divides by zero.
    """
    from matplotlib.colors import Normalize

    if cmap is not None:
        check_colormap(cmap)
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
        if not low < high:
            raise ValueError(
                f"value_range: expected (low, high) with low < high, got {value_range}"
            )
        diverging = low < 0 < high
        default = DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP
        return ColorScale(Normalize(low, high), cmap or default, diverging)
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else values
    finite = np.asarray(array, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if low < 0 or centred:
        bound = max(-low, high) or 1.0
        return ColorScale(Normalize(-bound, bound), cmap or DIVERGING_CMAP, True)
    return ColorScale(Normalize(0.0, high if high > 0 else 1.0), cmap or SEQUENTIAL_CMAP, False)


def scaled_each(maps: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Every map ``(N, H, W)`` divided by its own largest finite ``|value|`` (so each
    lies in ``[-1, 1]``, signs kept), and whether any value is negative."""
    x = maps.detach().float()
    finite = torch.isfinite(x)
    size = torch.where(finite, x.abs(), torch.zeros_like(x)).amax(dim=(-2, -1), keepdim=True)
    scaled = x / torch.where(size > 0, size, torch.ones_like(size))
    negative = bool((torch.where(finite, x, torch.zeros_like(x)) < 0).any())
    return scaled, negative


@torch.no_grad()
def tile_maps(
    maps: torch.Tensor, *, ncol: int, padding: int = 1, upscale: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Lay scalar maps ``(N, H, W)`` out as one mosaic with ``make_grid``, keeping values.

    Returns:
        ``(values, inside)``: the ``(rows, cols)`` float mosaic, NaN in the
        padding, and the boolean mask of the pixels that belong to a map (so a
        NaN of the data can be told from the padding).
    """
    if maps.dim() != 3:
        raise ValueError(f"maps: expected shape (N, H, W), got {list(maps.shape)}")
    from torchvision.utils import make_grid  # torchvision is slow to import: only when drawing

    x = maps.detach().float().cpu()
    if upscale > 1:
        x = x.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    x = x.unsqueeze(1)
    ones = torch.ones_like(x)
    if x.shape[0] == 1:  # make_grid returns a lone tile without its padding
        values = nn.functional.pad(x[0, 0], [padding] * 4, value=float("nan"))
        inside = nn.functional.pad(ones[0, 0], [padding] * 4, value=0.0)
    else:
        values = make_grid(x, nrow=ncol, padding=padding, pad_value=float("nan"))[0]
        inside = make_grid(ones, nrow=ncol, padding=padding, pad_value=0.0)[0]
    return values.numpy(), inside.numpy() > 0.5


@dataclass(frozen=True)
class TilePlan:
    """Where tiles go in a mosaic and how large they are drawn.

    Attributes:
        count, ncol, nrow: tiles, tiles per row, rows.
        tile: ``(h, w)`` of a tile in mosaic units (after ``upscale``).
        upscale: integer zoom of every tile (so that padding can be thin).
        padding: mosaic units around and between tiles.
        unit_in: inches a mosaic unit is drawn at.
        labelled: each tile has room above it for its number; otherwise rows and
            columns are labelled instead.
    """

    count: int
    ncol: int
    nrow: int
    tile: tuple[int, int]
    upscale: int
    padding: int
    unit_in: float
    labelled: bool

    @property
    def size_in(self) -> tuple[float, float]:
        """The mosaic's drawn ``(width, height)`` in inches."""
        h, w = self.tile
        p = self.padding
        return (
            (self.ncol * (w + p) + p) * self.unit_in,
            (self.nrow * (h + p) + p) * self.unit_in,
        )

    def origin(self, index: int) -> tuple[float, float]:
        """``(x, y)`` data coordinates of the top-left corner of tile ``index``."""
        row, col = divmod(index, self.ncol)
        h, w = self.tile
        return (
            self.padding + col * (w + self.padding) - 0.5,
            self.padding + row * (h + self.padding) - 0.5,
        )

    def row_centres(self) -> list[float]:
        h = self.tile[0]
        return [self.origin(r * self.ncol)[1] + h / 2 for r in range(self.nrow)]

    def col_centres(self) -> list[float]:
        w = self.tile[1]
        return [self.origin(c)[0] + w / 2 for c in range(min(self.ncol, self.count))]


#: Inches above a tile that its number needs (8.5 pt text), and the narrowest tile
#: that carries one (a three-digit number).
_LABEL_GAP_IN = 0.2
_MIN_LABELLED_TILE_IN = 0.32


def plan_tiles(
    count: int,
    tile: tuple[int, int],
    *,
    ncol: int | None = None,
    width_in: float = 9.0,
    height_in: float = 7.5,
    max_tile_in: float = 3.5,
    labels: bool = True,
) -> TilePlan:
    """Lay out ``count`` tiles of ``tile`` ``(h, w)`` pixels in a box of
    ``width_in`` x ``height_in`` inches: about square, tiles at most ``max_tile_in``
    across, with a gap above each tile for its number when ``labels`` and the tiles
    are drawn large enough to carry one."""
    if count < 1:
        raise ValueError("nothing to draw: no tiles")
    h0, w0 = max(1, tile[0]), max(1, tile[1])
    upscale = max(1, math.ceil(32 / max(h0, w0)))
    h, w = h0 * upscale, w0 * upscale
    if ncol is None:
        ncol = max(1, math.ceil(math.sqrt(count * h / w)))
    ncol = max(1, min(ncol, count))
    nrow = math.ceil(count / ncol)

    def unit(padding: int) -> float:
        across = ncol * (w + padding) + padding
        down = nrow * (h + padding) + padding
        return min(width_in / across, height_in / down, max_tile_in / max(h, w))

    padding = max(1, round(0.04 / unit(1)))  # a thin white line between tiles
    labelled = False
    if labels:
        for _ in range(6):
            s = unit(padding)
            need = max(1, math.ceil(_LABEL_GAP_IN / s))
            if need == padding:
                break
            padding = need
        s = unit(padding)
        labelled = w * s >= _MIN_LABELLED_TILE_IN and padding * s >= _LABEL_GAP_IN * 0.95
        if not labelled:
            padding = max(1, round(0.04 / unit(1)))
    return TilePlan(count, ncol, nrow, (h, w), upscale, padding, unit(padding), labelled)


def draw_tiles(
    ax: Any,
    maps: torch.Tensor,
    plan: TilePlan,
    scale: ColorScale,
    *,
    labels: Sequence[str] | None = None,
    font_pt: float = 8.5,
) -> Any:
    """Draw scalar maps ``(N, H, W)`` as one mosaic on ``ax`` (``imshow``, nearest
    interpolation, ``scale``'s norm and colormap; padding left white) and return
    the image, for a colour bar. NaN/Inf pixels are painted
    :data:`NONFINITE_COLOR` on top. With ``labels`` and a ``plan.labelled``, each
    tile's label is written in the gap above it."""
    import matplotlib

    values, inside = tile_maps(maps, ncol=plan.ncol, padding=plan.padding, upscale=plan.upscale)
    colormap = matplotlib.colormaps[scale.cmap].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
    ax.set_facecolor("white")
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=colormap, norm=scale.norm, interpolation="nearest"
    )
    flagged = inside & ~np.isfinite(values)
    if flagged.any():
        overlay = np.zeros((*values.shape, 4), dtype=np.float32)
        overlay[flagged] = (*NONFINITE_COLOR, 1.0)
        ax.imshow(overlay, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if labels is not None and plan.labelled:
        for index, text in enumerate(labels[: plan.count]):
            x, y = plan.origin(index)
            ax.text(x, y - 0.3 * plan.padding / 2, text, ha="left", va="bottom", fontsize=font_pt)
    return image


def draw_map(ax: Any, data: np.ndarray, scale: ColorScale) -> Any:
    """Draw one scalar map ``(H, W)`` on ``ax`` (``imshow``, nearest interpolation,
    ``scale``'s norm and colormap) and return the image, for a colour bar; NaN/Inf
    pixels are painted :data:`NONFINITE_COLOR` on top."""
    finite = np.isfinite(data)
    image = ax.imshow(
        np.where(finite, data, np.nan), cmap=scale.cmap, norm=scale.norm, interpolation="nearest"
    )
    if not finite.all():
        overlay = np.zeros((*data.shape, 4), dtype=np.float32)
        overlay[~finite] = (*NONFINITE_COLOR, 1.0)
        ax.imshow(overlay, interpolation="nearest")
    return image


def thinned(count: int, room_in: float, label_in: float) -> list[int]:
    """Indices of ``count`` evenly spaced labels, ``room_in`` inches apart, keeping every
    ``k``-th so that labels ``label_in`` wide do not overlap."""
    step = max(1, math.ceil(label_in / max(room_in, 1e-9)))
    return list(range(0, count, step))


def titled_figure(width_in: float, height_in: float, title: str) -> Figure:
    """A constrained-layout ``Figure`` (no pyplot state) whose suptitle is ``title``,
    wrapped to the figure's width at netsight's title size, with the height grown
    by the lines the title takes."""
    import textwrap

    from matplotlib.figure import Figure

    from netsight._figures import FONT_PT

    per_line = max(30, int(width_in * 72 / (0.55 * FONT_PT["title"])))
    lines = [textwrap.fill(part, per_line) for part in title.split("\n")]
    wrapped = "\n".join(lines)
    count = wrapped.count("\n") + 1
    fig = Figure(figsize=(width_in, height_in + 0.22 * count), layout="constrained")
    fig.suptitle(wrapped, fontsize=FONT_PT["title"])
    return fig


def label_rows_and_columns(
    ax: Any,
    plan: TilePlan,
    ids: Sequence[int],
    what: str,
    *,
    font_pt: float = 8.5,
    label_pt: float = 9.5,
) -> None:
    """Row and column labels for tiles too small to carry their own numbers: the
    ``what`` number (channel, filter) of each row's first tile, and each column's
    offset from it (thinned so that labels do not overlap)."""
    row_in = (plan.tile[0] + plan.padding) * plan.unit_in
    col_in = (plan.tile[1] + plan.padding) * plan.unit_in
    rows = thinned(plan.nrow, row_in, 0.17)
    consecutive = list(ids) == list(range(ids[0], ids[0] + len(ids)))
    centres = plan.row_centres()
    ax.set_yticks(
        [centres[r] for r in rows], [str(ids[r * plan.ncol]) for r in rows], fontsize=font_pt
    )
    cols = thinned(min(plan.ncol, len(ids)), col_in, 0.3)
    xs = plan.col_centres()
    ax.set_xticks([xs[c] for c in cols], [f"+{c}" for c in cols], fontsize=font_pt)
    ax.tick_params(length=0, pad=1)
    ax.set_ylabel(f"{what} (first in row)", fontsize=label_pt)
    ax.set_xlabel(
        "+ column" if consecutive else "+ column (tiles in the order given)", fontsize=label_pt
    )
