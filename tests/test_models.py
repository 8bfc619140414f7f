"""Model specs (load_model, default_input_size) and checkpoint loading (load_weights),
with real files written to tmp_path."""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import netsight
from netsight.hooks import model_device
from netsight.models import (
    ModelSpecError,
    UntrustedCheckpointError,
    default_input_size,
    load_model,
    load_weights,
)
from netsight.zoo import Vgg16Net


@dataclass
class TrainingConfig:
    """A custom class pickled into a checkpoint next to the weights."""

    lr: float
    epochs: int


def _small() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _other() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


def _randomised(model: nn.Module) -> nn.Module:
    """``model`` with every parameter and float buffer set to fresh random values."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.fill_(7)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def source() -> nn.Module:
    """A model whose weights a checkpoint holds."""
    return _randomised(_small())


@pytest.fixture
def target() -> nn.Module:
    """A model of the same architecture with other weights."""
    return _small()


# --------------------------------------------------------------------------- load_weights


def test_plain_state_dict(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    assert not _same(_state(target), _state(source))
    result = load_weights(target, path)
    assert result is target
    assert _same(_state(target), _state(source))


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net"])
def test_wrapped_state_dict(tmp_path: Path, source: nn.Module, target: nn.Module, key: str) -> None:
    path = tmp_path / "wrapped.pt"
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 3, key: source.state_dict(), "optimizer": optimizer.state_dict()}, path)
    load_weights(target, str(path))
    assert _same(_state(target), _state(source))


def test_data_parallel_prefix_is_stripped(
    tmp_path: Path, source: nn.Module, target: nn.Module
) -> None:
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    load_weights(target, path)
    assert _same(_state(target), _state(source))


def test_other_architecture_is_refused_and_model_unchanged(
    tmp_path: Path, target: nn.Module
) -> None:
    path = tmp_path / "other.pt"
    torch.save(_other().state_dict(), path)
    before = copy.deepcopy(_state(target))
    with pytest.raises(ValueError, match="another architecture") as info:
        load_weights(target, path)
    message = str(info.value)
    assert "missing keys" in message
    assert "3.weight" in message  # in the model, not in the checkpoint
    assert "unexpected keys" in message
    assert "2.bias" in message  # in the checkpoint, not in the model
    assert "0.weight (checkpoint [4, 3, 3, 3], model [8, 4])" in message
    assert str(path) in message
    assert _same(_state(target), before)


def test_shape_mismatch_is_refused_even_when_not_strict(tmp_path: Path, target: nn.Module) -> None:
    wider = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    path = tmp_path / "wider.pt"
    torch.save(wider.state_dict(), path)
    before = _state(target)
    for strict in (True, False):
        with pytest.raises(ValueError, match="shape mismatches") as info:
            load_weights(target, path, strict=strict)
        assert "missing keys" not in str(info.value)
        assert "0.weight (checkpoint [16, 4], model [8, 4])" in str(info.value)
    assert _same(_state(target), before)


def test_long_key_lists_are_shortened(tmp_path: Path) -> None:
    path = tmp_path / "many.pt"
    torch.save({f"extra{i}": torch.zeros(1) for i in range(25)}, path)
    with pytest.raises(ValueError, match="25 unexpected keys") as info:
        load_weights(_small(), path)
    assert "and 15 more" in str(info.value)
    assert "extra24" not in str(info.value)


def test_not_strict_loads_a_partial_checkpoint(
    tmp_path: Path, source: nn.Module, target: nn.Module
) -> None:
    path = tmp_path / "partial.pt"
    partial = {k: v for k, v in source.state_dict().items() if k.startswith("0.")}
    torch.save(partial, path)
    untouched = _state(target)["3.weight"]
    with pytest.raises(ValueError, match="missing keys"):
        load_weights(target, path)
    load_weights(target, path, strict=False)
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])
    assert torch.equal(target.state_dict()["3.weight"], untouched)


def test_corrupt_file(tmp_path: Path, target: nn.Module) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    before = _state(target)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        load_weights(target, path)
    assert not isinstance(info.value, UntrustedCheckpointError)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_weights(target, path, trust=True)
    assert _same(_state(target), before)


@pytest.mark.parametrize("content", ["empty", "text", "truncated"])
def test_other_broken_files(
    tmp_path: Path, source: nn.Module, target: nn.Module, content: str
) -> None:
    path = tmp_path / "broken.pt"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("this is not a checkpoint\n")
    else:
        torch.save(source.state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_weights(target, path)


def test_missing_weights_file(tmp_path: Path, target: nn.Module) -> None:
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*weights\.pt"):
        load_weights(target, path)


def test_pickled_custom_class_needs_trust(
    tmp_path: Path, source: nn.Module, target: nn.Module
) -> None:
    path = tmp_path / "with_config.pt"
    torch.save({"state_dict": source.state_dict(), "config": TrainingConfig(0.1, 90)}, path)
    before = _state(target)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "TrainingConfig" in message
    assert "can run arbitrary code" in message
    assert "trust=True" in message
    assert "--trust-weights" in message
    assert _same(_state(target), before)
    load_weights(target, path, trust=True)
    assert _same(_state(target), _state(source))


def test_whole_pickled_module(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(UntrustedCheckpointError, match=r"torch\.nn\.modules"):
        load_weights(target, path)
    load_weights(target, path, trust=True)
    assert _same(_state(target), _state(source))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [([1, 2, 3], "holds a list"), ({"epoch": 3, "lr": 0.1}, "'epoch', 'lr'")],
)
def test_checkpoint_without_state_dict(
    tmp_path: Path, target: nn.Module, payload: object, expected: str
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=expected):
        load_weights(target, path)


def test_meta_model_takes_the_tensors(tmp_path: Path, source: nn.Module) -> None:
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    with torch.device("meta"):
        model = _small()
    load_weights(model, path)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert _same(_state(model), _state(source))


def test_model_device_parameter_then_buffer_then_the_default() -> None:
    # the one helper load_weights and the CAMs read the model's device with
    with torch.device("meta"):
        on_meta = _small()
    assert model_device(on_meta) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(4, affine=False).to("meta")
    assert model_device(buffers_only) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.ReLU(), default=None) is None
    assert model_device(nn.ReLU(), default=torch.device("meta")) == torch.device("meta")
    assert model_device(on_meta, default=None) == torch.device("meta")


def test_exported_from_package() -> None:
    assert netsight.load_model is load_model
    assert netsight.load_weights is load_weights


# --------------------------------------------------------------------------- load_model

MODEL_FILE = """
import torch
from torch import nn

from blocks import make_block


class TinyNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = make_block(4, width)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x))


class NeedsArgs(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)


class NotAModule:
    pass


def make_wide():
    return TinyNet(width=32)


def make_list():
    return [nn.Linear(2, 2)]


def broken_factory():
    return 1 / 0


instance = TinyNet(width=3)
CONFIG = {"width": 8}
"""

BLOCKS_FILE = """
from torch import nn


def make_block(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU())
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A model file importing a helper module next to it."""
    (tmp_path / "blocks.py").write_text(BLOCKS_FILE)
    path = tmp_path / "tiny_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_torchvision_model() -> None:
    model = load_model("torchvision:resnet18")
    assert isinstance(model, torchvision.models.ResNet)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_unknown_torchvision_model_suggests_close_names() -> None:
    with pytest.raises(ModelSpecError, match="unknown torchvision model 'resnet181'") as info:
        load_model("torchvision:resnet181")
    assert "'resnet18'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_zoo_model() -> None:
    model = load_model("zoo:Vgg16Net")
    assert isinstance(model, Vgg16Net)
    assert sum(p.numel() for p in model.parameters()) == 15_118_538


def test_unknown_zoo_model() -> None:
    with pytest.raises(ModelSpecError, match="Vgg16Net"):
        load_model("zoo:Vgg16")


def test_file_class(model_file: Path) -> None:
    path_before = list(sys.path)
    model = load_model(f"{model_file}:TinyNet")
    assert type(model).__name__ == "TinyNet"
    assert model.head.in_features == 8
    assert model(torch.zeros(1, 4)).shape == (1, 2)
    assert sys.path == path_before  # the file's directory was only added while loading


def test_file_factory_and_instance(model_file: Path) -> None:
    wide = load_model(f"{model_file}:make_wide")
    assert wide.head.in_features == 32
    instance = load_model(f"{model_file}:instance")
    assert instance.head.in_features == 3


def test_relative_file_path(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_file.parent)
    model = load_model("tiny_model.py:TinyNet")
    assert type(model).__name__ == "TinyNet"


def test_file_missing_attribute_suggests_close_names(model_file: Path) -> None:
    with pytest.raises(ModelSpecError, match="has no attribute 'TinyNett'") as info:
        load_model(f"{model_file}:TinyNett")
    assert "'TinyNet'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("make_list", "returned a list, expected a torch.nn.Module"),
        ("CONFIG", "is a dict"),
        ("NotAModule", "not a torch.nn.Module subclass"),
    ],
)
def test_file_result_not_a_module(model_file: Path, name: str, expected: str) -> None:
    with pytest.raises(TypeError, match=expected):
        load_model(f"{model_file}:{name}")


def test_file_factory_needing_arguments(model_file: Path) -> None:
    with pytest.raises(ModelSpecError, match=r"needs arguments \(width\)"):
        load_model(f"{model_file}:NeedsArgs")


def test_file_factory_that_fails(model_file: Path) -> None:
    with pytest.raises(ModelSpecError, match="ZeroDivisionError") as info:
        load_model(f"{model_file}:broken_factory")
    assert "tiny_model.py:" in str(info.value)


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ModelSpecError, match=r"importing .*bad\.py failed at bad\.py:2") as info:
        load_model(f"{path}:Net")
    assert "RuntimeError: boom" in str(info.value)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model file not found: .*nope\.py"):
        load_model(f"{tmp_path / 'nope.py'}:Net")


def test_module_spec() -> None:
    assert isinstance(load_model("netsight.zoo:Vgg16Net"), Vgg16Net)
    with pytest.raises(ModelSpecError, match="cannot import module"):
        load_model("no_such_module_for_netsight:Net")
    with pytest.raises(TypeError, match=r"not a torch\.nn\.Module subclass"):
        load_model("collections:OrderedDict")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resnet18", "did you mean 'torchvision:resnet18'"),
        ("model.py", "'model.py:NAME'"),
        ("torchvision:", "expected a name"),
        ("", "expected one of"),
    ],
)
def test_malformed_specs(spec: str, expected: str) -> None:
    with pytest.raises(ModelSpecError, match=expected):
        load_model(spec)


def test_timm_model_or_install_hint() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'netsight\[timm\]'"):
            load_model("timm:resnet18")
    else:
        assert isinstance(load_model("timm:resnet18"), nn.Module)
        with pytest.raises(ModelSpecError, match="resnet18"):
            load_model("timm:resnet181")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("torchvision:resnet18", (1, 3, 224, 224)),
        ("torchvision:inception_v3", (1, 3, 299, 299)),
        ("torchvision:efficientnet_b3", (1, 3, 300, 300)),
        ("torchvision:vit_h_14", (1, 3, 224, 224)),  # built without weights: 224 px only
        ("zoo:Vgg16Net", (1, 1, 32, 32)),
        ("zoo:LlamaDecoder", None),
        ("torchvision:fcn_resnet50", None),  # segmentation: no crop size
        ("torchvision:no_such_model", None),
        ("path/to/model.py:Net", None),
    ],
)
def test_default_input_size(spec: str, expected: tuple[int, ...] | None) -> None:
    assert default_input_size(spec) == expected
