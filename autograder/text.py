"""Text that came from a submission, made safe to show.

Exception messages, printed output and file names written by a student reach the terminal,
the text and JSON reports and Gradescope's results.json. Raw, they can carry terminal
escapes (colours, cursor moves, a changed window title, a hidden line after ``\\r``), text
direction overrides that make a line read differently from what it holds, and lone
surrogates, which are not valid UTF-8 and crash ``print`` and strict JSON readers.
``clean`` keeps what a person needs to read (letters, newlines, tabs) and nothing that
acts on the screen.
"""
from __future__ import annotations

import re

LIMIT = 20_000  # characters: far more than any useful message, far less than a flood

# whole escape sequences, so that "\x1b[31m" does not leave "[31m" behind:
# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), other two-byte ESC sequences
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]"
                      r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # unterminated: up to the line's end
                      r"|\x1b[ -/]*[0-~]"
                      r"|\x9b[0-?]*[ -/]*[@-~]")
# C0 controls but tab and newline, DEL, C1 controls; bidirectional overrides and isolates
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text, limit: int | None = LIMIT) -> str:
    """``text`` (any object: it is made a str) without control characters other than newline
    and tab, with every lone surrogate replaced by U+FFFD, and at most ``limit`` characters
    (a longer text is cut, and the cut says how much was left out)."""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception as exc:  # a hostile __str__: say so rather than fail the report
            text = f"<unprintable {type(text).__name__}: {type(exc).__name__}>"
    text = _SURROGATES.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = _ESCAPES.sub("", text)
    text = _CONTROLS.sub("", text)
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit] + f" [... {cut} more characters cut]"
    return text


def clean_name(name, limit: int = 120) -> str:
    """A file or student name on one line: each control character, newline and tab shown
    as "?", surrogates (undecodable bytes in a file name) as U+FFFD."""
    text = _SURROGATES.sub("\ufffd", str(name))
    text = _ESCAPES.sub("?", text)
    text = re.sub("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]", "?", text)
    return text if len(text) <= limit else text[:limit] + "..."


def clean_data(value, limit: int | None = LIMIT):
    """``clean`` applied to every string in a JSON-like value (dict keys too)."""
    if isinstance(value, str):
        return clean(value, limit)
    if isinstance(value, dict):
        return {clean(k, limit) if isinstance(k, str) else k: clean_data(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_data(v, limit) for v in value]
    return value


def ascii_text(text: str) -> str:
    """A last resort for a terminal that cannot show the text: plain ASCII."""
    return clean(text, None).encode("ascii", "replace").decode("ascii")
