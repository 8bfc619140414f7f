"""The ``netsight`` command line, run in-process through ``main([...])`` (and once
as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from netsight import __version__
from netsight.cli import COMMANDS, main
from netsight.models import ModelSpecError, load_model

MODEL_FILE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(6, 3)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.out = nn.Linear(16, 100)

    def forward(self, tokens):
        return self.out(self.embed(tokens))


class Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
"""


class Settings:
    """Pickled next to the weights: needs --trust-weights."""

    def __init__(self) -> None:
        self.lr = 0.1


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(MODEL_FILE)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "summary", "zoo:Vgg16Net", "--depth", "1")
    assert code == 0, err
    assert err == ""
    assert out.startswith("====")
    assert "Output Shape" in out
    assert "Total params:                    15,118,538" in out
    assert "'layer1' is also registered as 'conv.0'" in out


def test_summary_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "zoo:Vgg16Net", "--format", "markdown")
    assert code == 0
    assert out.startswith("| Layer (type) | Output Shape | Param # | Mult-Adds |\n|:---|")
    assert "- **Total params:** 15,118,538" in out


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "zoo:Vgg16Net", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "Vgg16Net"
    assert data["input"] == {"shape": [1, 1, 32, 32], "dtype": "float32"}
    assert data["totals"]["total_params"] == 15_118_538


def test_summary_html(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "zoo:Vgg16Net", "--format", "html", "--depth", "0")
    assert code == 0
    assert out.startswith("<!DOCTYPE html>")
    assert "<th>Total params</th><td>15,118,538</td>" in out
    assert out.rstrip().endswith("</html>")


def test_summary_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "summary", "zoo:Vgg16Net", "--columns", "input_size,kernel_size,trainable"
    )
    assert code == 0
    header = out.splitlines()[1]
    assert header.split() == ["Layer", "(type)", "Input", "Shape", "Kernel", "Shape", "Trainable"]
    assert "3x3" in out


def test_input_forms_and_several_inputs(
    capsys: pytest.CaptureFixture[str], model_file: Path
) -> None:
    outputs = []
    for shape in ("2,4", "2x4", "[2, 4]"):
        code, out, err = run(capsys, "summary", f"{model_file}:TinyNet", "--input", shape)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert "[2, 2]" in outputs[0]
    code, out, err = run(
        capsys,
        "summary",
        f"{model_file}:TwoInputs",
        "--input",
        "1,4",
        "--input",
        "1,6",
        "--format",
        "json",
    )
    assert code == 0, err
    assert json.loads(out)["input"] == [
        {"shape": [1, 4], "dtype": "float32"},
        {"shape": [1, 6], "dtype": "float32"},
    ]


def test_dtype(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    code, out, err = run(
        capsys,
        "summary",
        f"{model_file}:Tokens",
        "--input",
        "1x5",
        "--dtype",
        "long",
        "--format",
        "json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["input"] == {"shape": [1, 5], "dtype": "int64"}
    assert data["output"]["shape"] == [1, 5, 100]


def test_out_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, expected, _ = run(capsys, "summary", "zoo:Vgg16Net", "--format", "markdown")
    assert code == 0
    target = tmp_path / "vgg.md"
    code, out, err = run(
        capsys, "summary", "zoo:Vgg16Net", "--format", "markdown", "--out", str(target)
    )
    assert code == 0
    assert out == ""
    assert str(target) in err
    assert target.read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.md"]  # no temp file left


def test_out_file_replaces_whole(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("x" * 1_000_000)
    argv = ["summary", "zoo:Vgg16Net", "--format", "json", "--out", str(target)]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"netsight: error: {target} already exists; pass --overwrite" in err
    code, _, _ = run(capsys, *argv, "--overwrite")
    assert code == 0
    assert json.loads(target.read_text())["totals"]["total_params"] == 15_118_538


def test_weights_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model_file: Path
) -> None:
    spec = f"{model_file}:TinyNet"
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model_state_dict": load_model(spec).state_dict(), "epoch": 7}, ckpt)
    code, out, err = run(capsys, "summary", spec, "--input", "1,4", "--weights", str(ckpt))
    assert code == 0, err
    assert "Total params:" in out

    # A checkpoint of another model is refused with the keys listed.
    other = tmp_path / "other.pt"
    torch.save(load_model(f"{model_file}:Other").state_dict(), other)
    code, out, err = run(capsys, "summary", spec, "--input", "1,4", "--weights", str(other))
    assert code == 2
    assert out == ""
    assert "netsight: error: checkpoint" in err
    assert "unexpected keys" in err
    assert "conv.weight" in err

    # A checkpoint with pickled Python objects needs --trust-weights.
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": load_model(spec).state_dict(), "settings": Settings()}, pickled)
    code, _, err = run(capsys, "summary", spec, "--input", "1,4", "--weights", str(pickled))
    assert code == 2
    assert "--trust-weights" in err
    assert "Traceback" not in err
    code, out, err = run(
        capsys, "summary", spec, "--input", "1,4", "--weights", str(pickled), "--trust-weights"
    )
    assert code == 0, err
    assert "Total params:" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["summary", "resnet18"], "did you mean 'torchvision:resnet18'"),
        (["summary", "torchvision:resnet181"], "'resnet18'"),
        (["summary", "zoo:Vgg16Net", "--input", "1,a"], "expected a shape such as 1,3,224,224"),
        (["summary", "zoo:Vgg16Net", "--columns", "params"], "unknown column 'params'"),
        (["summary", "zoo:Vgg16Net", "--dtype", "float33"], "unknown dtype 'float33'"),
        (["summary", "zoo:Vgg16Net", "--depth", "-1"], "expected an integer >= 0"),
        (["summary", "zoo:Vgg16Net", "--format", "pdf"], "invalid choice: 'pdf'"),
        (["summary", "zoo:Vgg16Net", "--weights", "/no/such/file.pt"], "/no/such/file.pt"),
        (["summary", "zoo:Vgg16Net", "--trust-weights"], "only applies together with"),
        (["summary", "zoo:Vgg16Net", "--out", "/no/such/dir/x.txt"], "does not exist"),
        (
            ["summary", "zoo:Vgg16Net", "--input", "1,3,32,32"],
            "the forward pass failed in 'layer1.0' (Conv2d)",
        ),
        (["summary", "zoo:NestedChain"], "needs arguments (depth)"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_errors(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "netsight: error: " in err
    assert expected in err
    assert "Traceback" not in err


def test_missing_input_size(capsys: pytest.CaptureFixture[str], model_file: Path) -> None:
    code, _, err = run(capsys, "summary", f"{model_file}:TinyNet")
    assert code == 2
    assert "pass --input" in err
    code, _, err = run(capsys, "summary", f"{model_file.parent / 'nope.py'}:TinyNet")
    assert code == 2
    assert "model file not found" in err


def test_traceback_flag_reraises(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ModelSpecError):
        main(["--traceback", "summary", "torchvision:resnet181"])


def test_version_help_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, f"netsight {__version__}")
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command.name in out
    code, _, err = run(capsys, "summary", "--help")
    assert code == 0
    code, out, err = run(capsys)
    assert code == 2
    assert "usage: netsight" in err


def test_python_m_netsight_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netsight", "summary", "torchvision:resnet18", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "ResNet"
    assert data["input"]["shape"] == [1, 3, 224, 224]
    assert data["totals"]["total_params"] == 11_689_512


def test_demo_out_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "demo", "--out", str(blocker))
    assert code == 2
    assert "not a directory" in err


def test_meta_flag_builds_a_7b_model_without_memory(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["summary", "zoo:LlamaDecoder", "--meta", "--input", "1,2048", "--dtype", "long"]
    assert main([*argv, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["total_params"] == 6_738_415_616
    assert data["totals"]["total_mult_adds"] == 14_630_806_093_824
    assert data["execution"] == "meta"
