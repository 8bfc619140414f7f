"""The command line reads as one tool: the same option name for the same thing on
every command (old spellings still accepted), every default stated in ``--help``,
one default output place (``out/<command>/``), no output replaced without
``--overwrite``, ``--seed`` making runs repeat, a note when the weights are random,
and class names for torchvision classifiers."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from helpers import noise_pictures
from netsight.cli import COMMANDS, build_parser, main
from netsight.cli.common import format_default
from netsight.models import class_names

MODELS = """
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding models.py (TinyCNN) and cat.png / gray.png."""
    (tmp_path / "models.py").write_text(MODELS)
    noise_pictures(tmp_path, seed=0)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --------------------------------------------------------------------------- one name each


@pytest.mark.parametrize(
    ("old", "new", "dest"),
    [
        (["cam", "m:N", "a.png", "--method", "gradcam"], ["--methods", "gradcam"], "methods"),
        (["report", "m:N", "a.png", "--method", "gradcam"], ["--methods", "gradcam"], "methods"),
        (["filters", "m:N", "--layer", "a", "b"], ["--layers", "a", "b"], "layers"),
        (["features", "m:N", "a.png", "--layer", "a", "b"], ["--layers", "a", "b"], "layers"),
        (["features", "m:N", "a.png", "--cmap", "gray"], ["--colormap", "gray"], "colormap"),
        (["cam", "m:N", "a.png", "--cmap", "gray"], ["--colormap", "gray"], "colormap"),
        (["cam", "m:N", "a.png", "--evaluate", "7"], ["--faithfulness-steps", "7"], None),
    ],
)
def test_old_spellings_parse_to_the_same_destination(
    old: list[str], new: list[str], dest: str | None
) -> None:
    command, *rest = old
    position = next(i for i, a in enumerate(rest) if a.startswith("--"))
    positional = rest[:position]
    canonical = parse(command, *positional, *new)
    aliased = parse(*old)
    assert vars(canonical) == {**vars(aliased), "run": canonical.run}
    if dest is not None:
        assert getattr(canonical, dest) == getattr(aliased, dest)
    # only the canonical spelling is shown in --help
    help_text = subparsers()[command].format_help()
    assert new[0] in help_text
    assert f"{old[len(positional) + 1]} " not in help_text.replace(new[0], "")


def test_evaluate_without_steps_keeps_its_old_meaning() -> None:
    assert parse("cam", "m:N", "a.png", "--evaluate").faithfulness_steps == 20
    assert parse("cam", "m:N", "a.png").faithfulness_steps == 0
    assert parse("report", "m:N", "a.png").faithfulness_steps == 0


def test_every_command_spells_shared_options_alike() -> None:
    """An option that means the same on several commands has one name there."""
    parsers = subparsers()
    seen: dict[str, set[str]] = {}
    for name, parser in parsers.items():
        for action in parser._actions:
            for option in action.option_strings:
                seen.setdefault(option, set()).add(name)
    commands_with_models = {"summary", "diagram", "features", "cam", "filters", "patterns"}
    commands_with_models |= {"layers", "report", "explore"}
    for option in ("--weights", "--trust-weights", "--seed"):
        assert seen[option] >= commands_with_models, option
    assert seen["--methods"] == {"cam", "report"}
    assert seen["--layers"] >= {"features", "filters"}
    assert seen["--faithfulness-steps"] == {"cam", "report"}
    assert seen["--classes"] == {"cam", "report", "explore"}
    assert seen["--colormap"] == {"cam", "features"}
    for writer in ("summary", "diagram", "features", "cam", "filters", "patterns", "report"):
        assert writer in seen["--overwrite"], writer


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cam", "m:N", "a.png", "--layer", "layer3,layer4"], "got 2: layer3, layer4"),
        (["cam", "m:N", "a.png", "--layers", "layer4"], "takes exactly one layer"),
        (["report", "m:N", "a.png", "--layers", "layer4"], "takes exactly one layer"),
        (["patterns", "m:N", "--layer", "conv1", "conv2"], "got 2: conv1, conv2"),
    ],
)
def test_one_layer_commands_refuse_several(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "pass --layer NAME" in err and "Traceback" not in err


# --------------------------------------------------------------------------- --help


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return " ".join(formatter._format_action(action).split())


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_help_states_every_default(command: str) -> None:
    parser = subparsers()[command]
    assert parser.format_help()  # renders
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue  # a flag is off unless given
        text = _option_help(parser, action)
        if action.required:
            assert "required" in text, text
            continue
        assert "(default: " in text, f"netsight {command}: {text}"
        if action.default not in (None, argparse.SUPPRESS):
            shown = " ".join(format_default(action.default).split())
            assert f"(default: {shown})" in text, f"netsight {command}: {text}"


def test_help_of_the_output_places(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("cam", "features", "filters", "patterns"):
        assert f"(default: out/{command})" in _squeezed(subparsers()[command].format_help())
    assert "out/diagram/NAME.FORMAT" in _squeezed(subparsers()["diagram"].format_help())
    assert "out/report/NAME.html" in _squeezed(subparsers()["report"].format_help())
    assert "(default: stdout)" in _squeezed(subparsers()["summary"].format_help())


def _squeezed(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- no overwrite

#: Each writing command, run in the work directory with its default output place,
#: and the file the second run finds there.
WRITERS = [
    (["cam", "models.py:TinyCNN", "cat.png"], "out/cam"),
    (["features", "models.py:TinyCNN", "cat.png"], "out/features"),
    (["filters", "models.py:TinyCNN"], "out/filters"),
    (["patterns", "models.py:TinyCNN", "--layer", "conv2", "--steps", "2", "--size", "8"], None),
    (["diagram", "models.py:TinyCNN", "--input", "1,3,8,8"], "out/diagram/TinyCNN.svg"),
    (["diagram", "models.py:TinyCNN", "--input", "1,3,8,8", "--format", "blocks"], None),
    (
        [
            "report",
            "models.py:TinyCNN",
            "cat.png",
            "--size",
            "16,16",
            "--pattern-steps",
            "0",
            "--no-diagram",
        ],
        "out/report/TinyCNN.html",
    ),
    (["summary", "models.py:TinyCNN", "--input", "1,3,8,8", "--out", "s.txt"], "s.txt"),
]


@pytest.mark.parametrize(
    ("argv", "place"),
    WRITERS,
    ids=["cam", "features", "filters", "patterns", "diagram", "blocks", "report", "summary"],
)
def test_a_second_run_does_not_overwrite(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], place: str | None
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    if place is not None:
        assert (workdir / place).exists()
    assert (workdir / "out").exists() or place == "s.txt"
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err and "--overwrite" in err
    assert re.search(r"already (exists|holds netsight)", err), err
    if place is not None:
        assert place.split("/")[-1] in err  # names what exists
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    assert after == before  # nothing was touched
    code, _, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err


# --------------------------------------------------------------------------- --seed


def _filters_png(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> bytes:
    argv = ["filters", "torchvision:resnet18", "--out", str(out), *extra]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    return (out / "filters_conv1.png").read_bytes()


def test_seed_makes_random_weights_repeat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _filters_png(capsys, tmp_path / "a")
    torch.manual_seed(1234)  # the caller's RNG does not matter: --seed (default 0) does
    assert _filters_png(capsys, tmp_path / "b") == first
    assert _filters_png(capsys, tmp_path / "c", "--seed", "0") == first
    assert _filters_png(capsys, tmp_path / "d", "--seed", "1") != first


def test_seed_repeats_the_cam_prediction(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = []
    for out, seed in (("a", "0"), ("b", "0"), ("c", "5")):
        argv = ["cam", "models.py:TinyCNN", "cat.png", "--out", out, "--seed", seed]
        assert run(capsys, *argv)[0] == 0
        record = json.loads((workdir / out / "cam.json").read_text())["images"][0]
        found.append((record["predicted"]["class"], record["target"]["score"]))
    assert found[0] == found[1]
    assert found[2] != found[0]


# --------------------------------------------------------------------------- random weights


def test_random_weights_are_said_on_stderr(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cam", "torchvision:resnet18", "cat.png", "--size", "32", "--out", "r"]
    code, out, err = run(capsys, *argv, "--seed", "3")
    assert code == 0, err
    note = (
        "netsight: note: random weights (seed 3): predictions are meaningless; "
        "pass --weights FILE.pth"
    )
    assert note in err.splitlines()
    assert "random weights" not in out
    # a file model is the user's own: no claim about its weights
    code, _, err = run(capsys, "cam", "models.py:TinyCNN", "cat.png", "--out", "f")
    assert code == 0 and "random weights" not in err
    # with --weights, no note
    from netsight.models import load_model

    torch.save(load_model("zoo:Vgg16Net").state_dict(), workdir / "vgg.pth")
    argv = ["features", "zoo:Vgg16Net", "gray.png", "--weights", "vgg.pth", "--out", "w"]
    code, _, err = run(capsys, *argv, "--layers", "layer1.0")
    assert code == 0 and "random weights" not in err
    code, _, err = run(capsys, "features", "zoo:Vgg16Net", "gray.png", "--layers", "layer1.0")
    assert code == 0 and "random weights (seed 0): the maps show an untrained model" in err
    # summary does not depend on the weights: no note
    code, _, err = run(capsys, "summary", "zoo:Vgg16Net", "--depth", "0")
    assert code == 0 and err == ""


# --------------------------------------------------------------------------- class names


def test_class_names_of_torchvision_classifiers() -> None:
    import torchvision

    names = class_names("torchvision:resnet18")
    assert names is not None and len(names) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert class_names("torchvision:mobilenet_v3_small") == names
    assert class_names("torchvision:fasterrcnn_resnet50_fpn") is None  # a detector
    assert class_names("zoo:Vgg16Net") is None
    assert class_names("models.py:TinyCNN") is None
    assert class_names(torchvision.models.resnet18()) == names
    assert class_names(torchvision.models.resnet18(num_classes=10)) is None
    assert class_names(torch.nn.Linear(3, 1000)) is None


def test_cam_names_imagenet_classes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = class_names("torchvision:resnet18")
    assert names is not None
    argv = ["cam", "torchvision:resnet18", "cat.png", "gray.png", "--size", "32", "--out", "n"]
    code, out, err = run(capsys, *argv, "--target", "281")
    assert code == 0, err
    data = json.loads((workdir / "n" / "cam.json").read_text())
    for record in data["images"]:
        assert record["target"] == {**record["target"], "class": 281, "name": "tabby"}
        predicted = record["predicted"]
        assert predicted["name"] == names[predicted["class"]]
    assert "281 tabby" in out  # the printed table

    # --classes FILE names the classes of any model
    (workdir / "classes.txt").write_text("zero\none\ntwo\nthree\nfour\n")
    argv = ["cam", "models.py:TinyCNN", "cat.png", "--classes", "classes.txt", "--out", "c"]
    code, out, err = run(capsys, *argv, "--target", "3")
    assert code == 0, err
    (record,) = json.loads((workdir / "c" / "cam.json").read_text())["images"]
    assert record["target"]["name"] == "three"
