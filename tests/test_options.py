"""netsight.options: one parse with one error wording for every option set."""

from __future__ import annotations

import pytest

from netsight import options
from netsight.options import Execution, Mode, Option


def _option_sets() -> list[type[Option]]:
    return [getattr(options, n) for n in options.__all__ if n != "Option"]


@pytest.mark.parametrize("cls", _option_sets(), ids=lambda c: c.__name__)
def test_every_value_parses_to_its_member_and_is_a_plain_string(cls: type[Option]) -> None:
    for member in cls:
        assert cls.parse(member.value, "x") is member
        assert cls.parse(member, "x") is member
        assert member == member.value and str(member) == member.value
    assert cls.values() == tuple(m.value for m in cls)


@pytest.mark.parametrize("bad", ["EVAL", "", None, 1, ["eval"]])
def test_unknown_value_names_option_got_and_choices(bad: object) -> None:
    with pytest.raises(ValueError) as err:
        Mode.parse(bad, "mode")
    assert str(err.value) == f"mode: expected one of 'eval', 'train', 'same', got {bad!r}"


def test_choice_lists_are_in_definition_order() -> None:
    assert Execution.values() == ("auto", "meta", "real")


def _choices(command: str, option: str) -> tuple[str, ...]:
    import argparse

    from netsight.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    assert action.choices is not None
    return tuple(action.choices)


@pytest.mark.parametrize(
    ("command", "option", "cls"),
    [
        ("summary", "--format", options.SummaryFormat),
        ("diagram", "--direction", options.Direction),
        ("filters", "--mode", options.FilterMode),
    ],
)
def test_cli_choices_come_from_the_option_sets(
    command: str, option: str, cls: type[Option]
) -> None:
    assert _choices(command, option) == cls.values()


def test_diagram_writes_every_format_but_tikz_and_pdf_3d() -> None:
    from netsight.options import DiagramFormat

    left_out = (DiagramFormat.TIKZ.value, DiagramFormat.PDF_3D.value)
    expected = tuple(f for f in DiagramFormat.values() if f not in left_out)
    assert (
        _choices("diagram", "--format") == expected == ("svg", "png", "pdf", "dot", "tex", "blocks")
    )
