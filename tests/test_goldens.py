"""Golden files for the Markdown, HTML and JSON netsight writes: the summary's renderings,
the manifests of `netsight cam`, `features`, `filters` and `patterns`, and the report page.

What legitimately varies from run to run or machine to machine is normalised before the
comparison: library versions, the date, timings, absolute paths, embedded image bytes,
and floats beyond a few significant digits. The goldens pin structure and text.
Rewrite them with ``pytest --update-golden`` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import netsight
from helpers import noise_pictures
from netsight.cli import main
from test_cli_cam import MODELS
from test_summary import ALL_COLUMNS, SmallNet

#: Significant digits a float keeps in a normalised JSON golden, and in an HTML one.
JSON_DIGITS = 3
HTML_DIGITS = 2


def _round(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def normalise_json(data: Any, tmp: Path | None = None) -> Any:
    """``data`` with versions, ``tmp`` paths and float noise taken out."""
    if isinstance(data, dict):
        return {
            key: "<version>" if key.endswith("_version") else normalise_json(value, tmp)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [normalise_json(value, tmp) for value in data]
    if isinstance(data, float):
        return _round(data, JSON_DIGITS)
    if isinstance(data, str) and tmp is not None:
        return data.replace(str(tmp), "<tmp>")
    return data


def json_golden(path: Path, tmp: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    return json.dumps(normalise_json(data, tmp), indent=2, ensure_ascii=False) + "\n"


_DATA_URI = re.compile(r"data:([a-z/+]+);base64,[A-Za-z0-9+/=]+")
_MADE_BY = re.compile(r"made by netsight \S+ with torch \S+ on [0-9: -]+<")
_SECONDS = re.compile(r"\b\d+\.\d+ s\b")
_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")


def normalise_html(page: str, tmp: Path) -> str:
    """``page`` with embedded pictures, versions, the date, timings and float noise taken out."""
    page = _DATA_URI.sub(lambda m: f"data:{m.group(1)};base64,<bytes>", page)
    page = _MADE_BY.sub("made by netsight <version> with torch <version> on <date><", page)
    page = _SECONDS.sub("<seconds> s", page)
    style, _, body = page.rpartition("</style>")  # the numbers of the style sheet stay
    body = _FLOAT.sub(lambda m: f"{_round(float(m.group()), HTML_DIGITS):g}", body)
    return (style + "</style>" + body).replace(str(tmp), "<tmp>")


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    """An RGB picture (24 x 32) and a grayscale one (20 x 20), the same in every run."""
    return noise_pictures(tmp_path, seed=7)


# --------------------------------------------------------------------------- summary


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("markdown.md", netsight.Summary.to_markdown),
        ("json.json", lambda s: json.dumps(normalise_json(s.to_dict()), indent=2)),
        ("html.html", lambda s: s.to_html(full_page=True)),
    ],
)
def test_summary_renderings(golden, name: str, render: Any) -> None:  # type: ignore[no-untyped-def]
    s = netsight.summary(SmallNet(), input_size=(2, 3, 16, 16), columns=ALL_COLUMNS)
    golden(f"summary_smallnet_{name}", render(s).rstrip("\n") + "\n")


# --------------------------------------------------------------------------- commands

#: golden file, the command line (MODEL, IMAGES: both pictures, IMAGE: the first, and OUT,
#: the output directory, are filled in) and the file in OUT the golden is made from.
COMMANDS = [
    (
        "cam_tinycnn.json",
        "cam MODEL IMAGES --method gradcam,eigencam,cam --save-maps --evaluate 3 --out OUT",
        "cam.json",
    ),
    ("features_tinycnn.json", "features MODEL IMAGE --out OUT", "manifest.json"),
    ("filters_tinycnn.json", "filters MODEL --layer conv1 conv2 --out OUT", "filters.json"),
    (
        "patterns_tinycnn.json",
        "patterns MODEL --layer conv2 --channels 1,4 --steps 4 --size 16 --out OUT",
        "patterns_conv2.json",
    ),
    (
        "report_tinycnn.html",
        "report MODEL IMAGES --size 16,16 --labels 1,3 --faithfulness-steps 3 "
        "--pattern-steps 4 --out OUT/report.html",
        "report.html",
    ),
]


@pytest.mark.parametrize(("name", "command", "written"), COMMANDS)
def test_command_output(  # type: ignore[no-untyped-def]
    golden,
    tmp_path: Path,
    pictures: list[Path],
    name: str,
    command: str,
    written: str,
) -> None:
    out = tmp_path / "out"
    models = tmp_path / "models.py"
    models.write_text(MODELS)
    fill = {
        "MODEL": [f"{models}:TinyCNN"],
        "IMAGES": [str(p) for p in pictures],
        "IMAGE": [str(pictures[0])],
        "OUT": [str(out)],
        "OUT/report.html": [str(out / "report.html")],
    }
    argv = [part for word in command.split() for part in fill.get(word, [word])]
    code = main(argv)
    assert code == 0, f"netsight {' '.join(argv)}: exit {code}"
    if name.endswith(".html"):
        golden(name, normalise_html((out / written).read_text(encoding="utf-8"), tmp_path))
    else:
        golden(name, json_golden(out / written, tmp_path))
