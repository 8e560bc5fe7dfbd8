"""Text received from the network, made safe to show: to a terminal, in a log line, in a spreadsheet.

Everything the collector stores came from anyone who could reach it. A model name may hold
an escape sequence (which repaints the operator's terminal), a newline (which forges a line
of the report or the log) or a leading ``=`` (which a spreadsheet runs as a formula). The
values are stored as they came; they are neutralised where they are shown, here.
"""

from __future__ import annotations

from typing import Any

#: Characters a spreadsheet reads as the start of a formula (OWASP's list, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """`text` with every non-printable character (controls, line breaks, bidi overrides...)
    written as a Python escape, and backslashes doubled so that an escape cannot be forged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def csv_cell(value: Any) -> Any:
    """`value` as a CSV cell no spreadsheet runs and no terminal obeys: a text starting like a
    formula gets a leading apostrophe (shown as text, the apostrophe hidden), then its control
    characters are escaped as in `printable` (a CSV is also read with ``cat``; and a NUL makes
    Python's csv reader before 3.11 refuse the line). Numbers and None pass unchanged."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_START):
        value = "'" + value
    return printable(value)
