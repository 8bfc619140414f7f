"""Markdown text that shows exactly what it says: escaping names from the model."""

from __future__ import annotations

import unicodedata

__all__ = ["markdown_escape"]

# HTML-special characters become entities: raw HTML in Markdown is rendered by
# notebooks and most documentation tools.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}

# Characters that act inside a table cell: the cell separator, the escape character,
# emphasis, code spans, links and images, strikethrough, math ($, in notebooks and
# on GitHub) and expressions (MDX). CommonMark allows a backslash before any ASCII
# punctuation, so escaping these never shows the backslash.
_BACKSLASHED = frozenset("\\|`*_[]{}~$")

# Named forms of the control characters a name is most likely to hold.
_CONTROL_NAMES = {"\n": "n", "\r": "r", "\t": "t"}


def markdown_escape(text: str) -> str:
    """``text`` as inline Markdown that renders as ``text`` itself, safe in a table cell.

    HTML-special characters become entities, Markdown-active punctuation gets a
    backslash, and line breaks and other control characters (which would end the
    table row) are shown as escapes such as ``\\n``.

    Args:
        text: any string, for example a module or type name from a user's model.

    Returns:
        One line of Markdown.
    """
    out = []
    for char in text:
        if char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char in _BACKSLASHED:
            out.append("\\" + char)
        elif unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            code = ord(char)
            name = _CONTROL_NAMES.get(char) or (f"x{code:02x}" if code < 256 else f"u{code:04x}")
            out.append("\\\\" + name)  # an escaped backslash, then the name
        else:
            out.append(char)
    return "".join(out)
