"""Model specs and safe checkpoint loading.

A *model spec* is a short string that names a network, as the command line takes it:

* ``torchvision:NAME``: a torchvision model with random weights (``resnet18``; drawn
  from the global RNG: seed it, as the CLI's ``--seed`` does, for the same weights);
* ``timm:NAME``: a timm model with random weights (needs ``pip install 'netsight[timm]'``);
* ``zoo:NAME``: one of netsight's reference models (``zoo:Vgg16Net``);
* ``path/to/file.py:NAME``: a class, zero-argument factory or ``nn.Module`` instance
  defined in a Python file;
* ``package.module:NAME``: the same, from an importable module.

:func:`load_weights` loads a checkpoint into a model with
``torch.load(..., weights_only=True)`` unless the caller says the file is trusted,
unwraps the usual checkpoint layouts and checks keys and shapes before it touches
the model. :func:`class_names` gives the class names of a torchvision classifier
(ImageNet's, from torchvision's weight metadata; nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import itertools
import os
import pickle
import re
import sys
import tarfile
import traceback
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from netsight.errors import ModelSpecError, UntrustedCheckpointError
from netsight.hooks import model_device

__all__ = [
    "ModelSpecError",
    "UntrustedCheckpointError",
    "class_names",
    "default_input_size",
    "load_model",
    "load_weights",
]

_SOURCES = ("torchvision", "timm", "zoo")
_SPEC_FORMS = "torchvision:NAME, timm:NAME, zoo:NAME, path/to/file.py:NAME or package.module:NAME"
#: Entries of a checkpoint dict that hold the model's state dict, in lookup order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Prefixes added by wrappers (DataParallel / DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: The legacy (pre-zip) torch.save format starts with this magic number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_SHOWN = 10

_file_counter = itertools.count()


# --------------------------------------------------------------------------- helpers


def _did_you_mean(word: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(word, candidates, n=5, cutoff=0.6)
    if matches:
        return "; did you mean " + ", ".join(repr(m) for m in matches) + "?"
    return ""


def _where(exc: BaseException, source: Path | None = None) -> str:
    """`` at file.py:LINE`` for where ``exc`` was raised, or ``""``.

    With ``source``, the innermost frame in that file is preferred (a model file's
    line says more than a line inside torch).
    """
    if isinstance(exc, SyntaxError) or exc.__traceback__ is None:
        return ""  # a SyntaxError already names its file and line
    frames = list(traceback.extract_tb(exc.__traceback__))
    if source is not None:
        frames = [f for f in frames if Path(f.filename) == source] or frames
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno}"


def _split_spec(spec: str) -> tuple[str, str, str]:
    """``(kind, location, name)`` with kind ``torchvision``, ``timm``, ``zoo``, ``file``
    or ``module``."""
    if not isinstance(spec, str):
        raise TypeError(
            f"model spec: expected a string such as 'torchvision:resnet18', "
            f"got {type(spec).__name__}"
        )
    spec = spec.strip()
    if "\x00" in spec:
        raise ModelSpecError(
            f"model spec {spec!r}: contains a NUL character; expected {_SPEC_FORMS}"
        )
    head, sep, tail = spec.partition(":")
    if sep and head in _SOURCES:
        if not tail:
            raise ModelSpecError(f"model spec {spec!r}: expected a name after '{head}:'")
        return head, "", tail
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name or "/" in name or "\\" in name:
        hint = ""
        if spec in _torchvision_names():
            hint = f"; did you mean 'torchvision:{spec}'?"
        elif spec.endswith(".py"):
            hint = f"; name the class or factory in the file: '{spec}:NAME'"
        raise ModelSpecError(f"model spec {spec!r}: expected one of {_SPEC_FORMS}{hint}")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    return ("file" if is_file else "module"), location, name


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def _resolve_attr(module: ModuleType, name: str, where: str) -> Any:
    """``module.NAME``, where NAME may be dotted (``Outer.inner``)."""
    obj: Any = module
    done: list[str] = []
    for part in name.split("."):
        if not part.isidentifier():
            raise ModelSpecError(f"{where}: {name!r} is not a Python name")
        if not hasattr(obj, part):
            container = f"{where}:{'.'.join(done)}" if done else where
            public = [n for n in dir(obj) if not n.startswith("_")]
            hint = _did_you_mean(part, public)
            if not hint and obj is module:
                modules = [
                    n
                    for n, v in vars(module).items()
                    if not n.startswith("_")
                    and isinstance(v, type)
                    and issubclass(v, nn.Module)
                    and v.__module__ == module.__name__
                ]
                if modules:
                    hint = "; nn.Module classes defined there: " + ", ".join(sorted(modules))
            raise ModelSpecError(f"{container} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        done.append(part)
    return obj


def _instantiate(obj: Any, where: str, source: Path | None = None) -> nn.Module:
    """An ``nn.Module`` from an instance, a class or a zero-argument factory
    (``source``: the file it comes from, for error locations)."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise TypeError(
            f"{where} is the class {obj.__qualname__}, which is not a torch.nn.Module "
            f"subclass; expected an nn.Module subclass, a factory returning one, or an "
            f"nn.Module instance"
        )
    if not callable(obj):
        raise TypeError(
            f"{where} is a {type(obj).__name__}, expected an nn.Module subclass, a "
            f"zero-argument factory returning one, or an nn.Module instance"
        )
    try:
        signature: inspect.Signature | None = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            raise ModelSpecError(
                f"{where} needs arguments ({', '.join(required)}) but netsight calls it with "
                f"none; point the spec at a zero-argument factory, e.g. "
                f"'def make_model(): return ...'"
            )
    try:
        result = obj()
    except Exception as exc:
        raise ModelSpecError(
            f"calling {where}() failed{_where(exc, source)}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, nn.Module):
        raise TypeError(f"{where}() returned a {type(result).__name__}, expected a torch.nn.Module")
    return result


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Put ``directory`` first on ``sys.path`` for the block, so a model file can
    import the modules next to it."""
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)


def _import_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system, ...
        raise ModelSpecError(
            f"model file {path_text}: {exc.strerror or exc}; expected an existing Python file "
            f"in 'path/to/file.py:NAME'"
        ) from None
    if not exists:
        raise FileNotFoundError(
            f"model file not found: {path_text} (looked for {path.resolve()}); expected an "
            f"existing Python file in 'path/to/file.py:NAME'"
        )
    if not path.is_file():
        raise ModelSpecError(f"model file {path_text}: expected a Python file, got a directory")
    resolved = path.resolve()
    stem = re.sub(r"\W", "_", resolved.stem)
    module_name = f"_netsight_user_{next(_file_counter)}_{stem}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path_text} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as a normal import does (dataclasses, pickle need it).
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelSpecError(
            f"importing {path_text} failed{_where(exc, resolved)}: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ModelSpecError(
                f"cannot import module {name!r}: {exc}; expected an importable module in "
                f"'package.module:NAME' (or a file path ending in .py)"
            ) from exc
        raise ModelSpecError(
            f"importing module {name!r} failed{_where(exc)}: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelSpecError(
            f"importing module {name!r} failed{_where(exc)}: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- load_model


def _load_torchvision(name: str) -> nn.Module:
    import torchvision

    names = _torchvision_names()
    key = name.lower()
    if key not in names:
        raise ModelSpecError(
            f"unknown torchvision model {name!r}{_did_you_mean(key, names)} "
            f"(torchvision.models.list_models() has {len(names)} names)"
        )
    with warnings.catch_warnings():
        # googlenet and inception_v3 warn that their default init will change: noise here.
        warnings.filterwarnings(
            "ignore", message="The default weight initialization", category=FutureWarning
        )
        model = torchvision.models.get_model(key, weights=None)
    if not isinstance(model, nn.Module):  # pragma: no cover - torchvision always builds one
        raise TypeError(f"torchvision:{name} built a {type(model).__name__}, not an nn.Module")
    return model


def _load_timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f"timm:{name} needs timm, which is not installed: pip install 'netsight[timm]'"
        ) from exc
    names = list(timm.list_models())
    # timm also takes pretrained tags ("resnet50.a1_in1k") and hub names ("hf-hub:...").
    arch = name.split(".", 1)[0]
    if not name.startswith(("hf-hub:", "hf_hub:")) and arch not in names:
        raise ModelSpecError(
            f"unknown timm model {name!r}{_did_you_mean(arch, names)} "
            f"(timm.list_models() has {len(names)} names)"
        )
    model = timm.create_model(name, pretrained=False)
    if not isinstance(model, nn.Module):  # pragma: no cover - timm always builds one
        raise TypeError(f"timm:{name} built a {type(model).__name__}, not an nn.Module")
    return model


def _load_zoo(name: str) -> nn.Module:
    from netsight import zoo

    available = list(zoo.__all__)
    if name not in available:
        raise ModelSpecError(
            f"unknown zoo model {name!r}{_did_you_mean(name, available)} "
            f"(available: {', '.join(available)})"
        )
    return _instantiate(getattr(zoo, name), f"zoo:{name}")


def load_model(spec: str, *, device: torch.device | str | None = None) -> nn.Module:
    """Build the model a spec names.

    Example:
        >>> model = load_model("torchvision:resnet18")   # random weights
        >>> model = load_model("zoo:Vgg16Net")
        >>> model = load_model("models/net.py:Net")      # a class in a file

    Args:
        spec: ``torchvision:NAME`` (random weights), ``timm:NAME`` (random weights,
            needs timm), ``zoo:NAME`` (:mod:`netsight.zoo`), ``path/to/file.py:NAME``
            or ``package.module:NAME``. ``NAME`` is an ``nn.Module`` subclass, a
            factory called with no arguments, or an ``nn.Module`` instance; it may be
            dotted (``Outer.inner``). A file is imported under a private module name
            (its ``if __name__ == "__main__":`` block does not run), with its
            directory on ``sys.path`` while it is imported and called.

        device: build the model under ``torch.device(device)``; ``"meta"`` builds a
            model of any size without allocating its weights (enough for a summary).

    Returns:
        The model (in whatever train/eval mode its constructor left it).

    Raises:
        ModelSpecError: a malformed spec, an unknown name (with close matches), a
            missing attribute, a module that fails to import, or a factory that
            needs arguments or fails. ``ModelSpecError`` is a ``ValueError``.
        FileNotFoundError: the ``.py`` file does not exist.
        TypeError: the name resolves to something that is not (and does not make)
            an ``nn.Module``.
        ImportError: ``timm:`` without timm installed.
    """
    if device is not None:
        with torch.device(device):
            return load_model(spec)
    kind, location, name = _split_spec(spec)
    if kind == "torchvision":
        return _load_torchvision(name)
    if kind == "timm":
        return _load_timm(name)
    if kind == "zoo":
        return _load_zoo(name)
    if kind == "file":
        directory = str(Path(location).expanduser().resolve().parent)
        with _on_sys_path(directory):
            module = _import_file(location)
            obj = _resolve_attr(module, name, location)
            return _instantiate(obj, f"{location}:{name}", Path(module.__file__ or location))
    module = _import_module(location)
    obj = _resolve_attr(module, name, location)
    return _instantiate(obj, f"{location}:{name}")


def _timm_input_size(name: str) -> tuple[int, ...] | None:
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):  # a malformed name: no config
        return None
    size = getattr(cfg, "input_size", None)
    if (
        isinstance(size, (tuple, list))
        and size
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)
    ):
        return (1, *size)
    return None


def default_input_size(spec: str) -> tuple[int, ...] | None:
    """The input shape a spec's model is usually run at, if netsight knows it.

    For torchvision classification models it is ``(1, 3, crop, crop)`` with the crop
    size of the model's first published weights (read from torchvision's metadata;
    nothing is downloaded): 224 for most, 299 for ``inception_v3``. ViTs built
    without weights are fixed to 224 px, so for them the first 224 px weights are
    used (``vit_h_14``'s first weights are for 518 px). For ``timm:NAME`` it is
    ``(1, *input_size)`` of timm's pretrained config for the name (tags such as
    ``resnet50.a1_in1k`` included; nothing is built or downloaded), ``None``
    without timm. ``zoo:Vgg16Net`` takes ``(1, 1, 32, 32)``.

    Args:
        spec: a model spec, as for :func:`load_model`.

    Returns:
        The shape including the batch dimension, or ``None`` when unknown.

    Raises:
        ModelSpecError: the spec is malformed.
    """
    kind, _, name = _split_spec(spec)
    if kind == "zoo":
        return (1, 1, 32, 32) if name == "Vgg16Net" else None
    if kind == "timm":
        return _timm_input_size(name)
    if kind != "torchvision":
        return None
    import torchvision

    key = name.lower()
    models = torchvision.models
    classification = set(models.list_models(module=models))
    classification |= set(models.list_models(module=models.quantization))
    if key not in classification:
        return None
    try:
        entries = list(models.get_model_weights(key))
    except (ValueError, KeyError):  # pragma: no cover - every classifier has weights
        return None
    crops: list[int] = []
    for entry in entries:
        crop = getattr(entry.transforms(), "crop_size", None)
        if isinstance(crop, (list, tuple)) and len(crop) == 1 and isinstance(crop[0], int):
            crops.append(crop[0])
    if not crops:
        return None
    crop_size = crops[0]
    if key.startswith("vit_") and 224 in crops:
        crop_size = 224
    return (1, 3, crop_size, crop_size)


def _torchvision_classifiers() -> set[str]:
    import torchvision

    models = torchvision.models
    found = set(models.list_models(module=models))
    return found | set(models.list_models(module=models.quantization))


def _torchvision_categories(name: str) -> list[str] | None:
    """The ``categories`` of the first published weights of a torchvision classifier."""
    import torchvision

    key = name.lower()
    if key not in _torchvision_classifiers():
        return None
    try:
        entries = list(torchvision.models.get_model_weights(key))
    except (ValueError, KeyError):  # pragma: no cover - every classifier has weights
        return None
    for entry in entries:
        categories = entry.meta.get("categories")
        if isinstance(categories, list) and all(isinstance(c, str) for c in categories):
            return list(categories)
    return None


def _output_features(model: nn.Module) -> int | None:
    """The ``out_features`` of the model's last ``nn.Linear`` (its class count, for
    torchvision's classifiers)."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else None


def class_names(model: str | nn.Module) -> list[str] | None:
    """The names of a torchvision classifier's classes, when netsight knows them.

    They come from torchvision's weight metadata (``Weights.meta["categories"]``: the
    ImageNet-1k names for every image classifier), which ships with torchvision:
    nothing is downloaded. A model built with random weights has them too: the names
    belong to the architecture's published classes, not to any weights.

    Example:
        >>> class_names("torchvision:resnet18")[:3]
        ['tench', 'goldfish', 'great white shark']
        >>> class_names("zoo:Vgg16Net") is None
        True

    Args:
        model: a model spec (``torchvision:resnet18``), or a model built by
            torchvision's classification builders; a model whose last ``nn.Linear``
            does not have as many outputs as there are names gets ``None``.

    Returns:
        One name per class index, or ``None`` when netsight does not know them
        (other specs, detectors, segmenters, video models, ``timm:`` models).

    Raises:
        ModelSpecError: a malformed spec.
    """
    if isinstance(model, str):
        kind, _, name = _split_spec(model)
        return _torchvision_categories(name) if kind == "torchvision" else None
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected a model spec or a torch.nn.Module, got {type(model).__name__}"
        )
    module = type(model).__module__
    if not module.startswith("torchvision.models.") or module.count(".") != 2:
        return None  # detection, segmentation, video, optical_flow live one level deeper
    # Every torchvision image classifier is published for ImageNet-1k: the same names.
    names = _torchvision_categories("resnet18")
    if names is None or _output_features(model) != len(names):
        return None
    return names


# --------------------------------------------------------------------------- load_weights


def _looks_like_checkpoint(path: Path) -> bool:
    """Whether ``path`` is in a format ``torch.save`` writes (zip, legacy pickle, tar)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:  # pragma: no cover - unreadable files fail earlier
        return False


def _format_hint(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) >= 10 and head[8:10] == b'{"':
        return (
            "; it looks like a safetensors file: load it with "
            "safetensors.torch.load_file() and model.load_state_dict()"
        )
    if head.startswith(b"\x80"):
        return "; it looks like a plain pickle (pickle.dump), not torch.save output"
    return ""


def _is_state_dict(obj: Any) -> bool:
    """Names mapped to tensors (``*_extra_state`` entries may hold anything)."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return False
    return all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())


def _describe_keys(obj: Mapping[Any, Any]) -> str:
    keys = [repr(k) for k in list(obj)[:_SHOWN]]
    more = f", ... ({len(obj)} in all)" if len(obj) > _SHOWN else ""
    return ", ".join(keys) + more if keys else "none"


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint."""
    for _ in range(3):  # {"model": {"state_dict": ...}} at most
        if isinstance(obj, nn.Module):
            return dict(obj.state_dict())
        if _is_state_dict(obj):
            break
        if isinstance(obj, Mapping):
            inner = next(
                (obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))),
                None,
            )
            if inner is not None:
                obj = inner
                continue
            raise ValueError(
                f"checkpoint {path} is a dict with keys {_describe_keys(obj)}; expected a "
                f"state dict (parameter names mapped to tensors) or a dict with a "
                f"{', '.join(repr(k) for k in _WRAPPER_KEYS)} entry holding one"
            )
        raise ValueError(
            f"checkpoint {path} holds a {type(obj).__name__}; expected a state dict "
            f"(parameter names mapped to tensors), a dict wrapping one, or an nn.Module"
        )
    if not _is_state_dict(obj):
        raise ValueError(f"checkpoint {path}: found no state dict of tensors inside it")
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {len(items)} {title}: {shown}{more}"


def _check_compatible(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, *, strict: bool
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key, tensor in state.items():
        own = expected.get(key)
        if isinstance(own, torch.Tensor) and tuple(own.shape) != tuple(tensor.shape):
            mismatched.append(f"{key} (checkpoint {list(tensor.shape)}, model {list(own.shape)})")
    if not mismatched and (not strict or not (missing or unexpected)):
        return
    lines = [f"checkpoint {path} does not fit the model ({type(model).__name__}):"]
    if strict and missing:
        lines.append(_listing("missing keys (in the model, not in the checkpoint)", missing))
    if strict and unexpected:
        lines.append(_listing("unexpected keys (in the checkpoint, not in the model)", unexpected))
    if mismatched:
        lines.append(_listing("shape mismatches", mismatched))
    lines.append(
        f"  the model expects {len(expected)} entries, the checkpoint has {len(state)}; "
        f"it was probably saved from another architecture (or another configuration of it). "
        f"The model was not changed."
    )
    raise ValueError("\n".join(lines))


def _refused_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _torch_load(path: Path, device: torch.device, *, trust: bool) -> Any:
    not_checkpoint = f"{path} is not a PyTorch checkpoint (a file written by torch.save)"
    if not _looks_like_checkpoint(path):
        raise ValueError(f"{not_checkpoint}, or it is truncated{_format_hint(path)}")
    try:
        return torch.load(path, map_location=device, weights_only=not trust)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if not trust and refused is not None:
            raise UntrustedCheckpointError(
                f"{path} holds pickled Python objects besides tensors (the first one "
                f"refused is {refused}). Loading such objects can run arbitrary code, so "
                f"netsight loads checkpoints with torch.load(weights_only=True), which "
                f"refuses them. If you trust the file (you or someone you trust made it), "
                f"pass trust=True (command line: --trust-weights)."
            ) from exc
        raise ValueError(f"{not_checkpoint}, or it is corrupt: {_first_line(exc)}") from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        # Trusted loading of a pickle whose classes are not importable here.
        raise ValueError(
            f"{path} refers to Python code that cannot be imported here "
            f"({type(exc).__name__}: {exc}); import the module that defines the pickled "
            f"classes first, or save a plain state dict (model.state_dict())"
        ) from exc
    except (RuntimeError, EOFError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{not_checkpoint}, or it is corrupt: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    trust: bool = False,
    strict: bool = True,
) -> nn.Module:
    """Load a checkpoint into ``model`` in place.

    The file is read with ``torch.load(path, map_location=<the model's device>,
    weights_only=not trust)``. Accepted layouts: a state dict; a dict with a
    ``state_dict``, ``model_state_dict``, ``model`` or ``net`` entry holding one
    (training checkpoints); a whole pickled ``nn.Module`` (trusted files only). A
    ``module.`` prefix on every key (``DataParallel``) or ``_orig_mod.``
    (``torch.compile``) is removed. Keys and shapes are compared before the model
    is touched, so on any error the model is unchanged.

    Example:
        >>> model = load_model("torchvision:resnet18")
        >>> load_weights(model, "resnet18.pth")  # doctest: +SKIP

    Args:
        model: the network to fill.
        path: the checkpoint file.
        trust: allow arbitrary unpickling (``weights_only=False``). Only for files
            you trust: unpickling can run code.
        strict: require the checkpoint's keys to match the model's exactly. With
            ``strict=False`` missing and unexpected keys are ignored; shapes must
            still match.

    Returns:
        ``model``, with the checkpoint's values.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UntrustedCheckpointError: the file holds pickled Python objects besides
            tensors and ``trust`` is False (a ``ValueError``).
        ValueError: the file is not a PyTorch checkpoint, holds no state dict, or
            its keys or shapes do not fit the model (missing, unexpected and
            mismatched keys are listed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"weights file not found: {os.fspath(path)}")
    if file.is_dir():
        raise IsADirectoryError(
            f"weights file {os.fspath(path)} is a directory; expected a checkpoint file"
        )
    device = model_device(model)
    on_meta = device.type == "meta"
    loaded = _torch_load(file, torch.device("cpu") if on_meta else device, trust=trust)
    state = _unwrap(loaded, file)
    _check_compatible(model, state, file, strict=strict)
    # A model built on the meta device has no storage to copy into: take the tensors.
    model.load_state_dict(state, strict=strict, assign=on_meta)
    return model
