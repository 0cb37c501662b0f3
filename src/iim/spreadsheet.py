"""CSV text a spreadsheet will not run as formulas (OWASP's "CSV injection" advice), in one place.

Excel, LibreOffice and Google Sheets treat a cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return as a formula. Every CSV iim writes passes its text cells through :func:`cell`, which
puts a single quote ``'`` in front of such text (a spreadsheet shows the rest as text); numbers, such as
``-0.25`` or ``1e-05``, stay as they are. :func:`plain` undoes it exactly, for iim's own reading back:

    cell("=HYPERLINK(...)")   # "'=HYPERLINK(...)"
    cell("-0.25")             # "-0.25" (a number)
    plain(cell(text)) == text # for every string
    csv_text([["path", "class"], ["=a.png", "cat"]])   # "path,class\n'=a.png,cat\n"

:func:`csv_text` is the one writer of iim's CSV files: every cell through :func:`cell`, lines ended by
``\n``, and a cell holding a carriage return quoted (the csv module quotes only the characters of its
line terminator, so with ``\n`` a bare CR would split the row for every reader).
"""
from __future__ import annotations

import csv
import io
import re
from typing import Iterable, Sequence

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _quoted(text: str) -> bool:
    """True when :func:`cell` quotes ``text``: it starts with a trigger and is not a plain number, or it
    starts with ``'`` before such text (so that :func:`plain` can tell a quote of ours from the data's)."""
    if text.startswith(TRIGGERS):
        return _NUMBER.fullmatch(text) is None
    return text.startswith("'") and _quoted(text[1:])


def cell(value):
    """``value`` as a CSV cell: a string a spreadsheet would run gets a leading ``'``; anything else
    (numbers, empty, safe text) is returned unchanged."""
    if isinstance(value, str) and _quoted(value):
        return "'" + value
    return value


def plain(text: str) -> str:
    """The string :func:`cell` was given, from the cell it wrote."""
    return text[1:] if text.startswith("'") and _quoted(text[1:]) else text


def csv_text(rows: Iterable[Sequence]) -> str:
    """``rows`` (the header first) as CSV text: cells through :func:`cell`, ``\n`` line ends, CR and LF
    inside a cell quoted."""
    buf, lines = io.StringIO(), []
    writer = csv.writer(buf, lineterminator="\r\n")        # both CR and LF are then quoted in a cell
    for row in rows:
        writer.writerow([cell(c) for c in row])
        lines.append(buf.getvalue()[:-2] + "\n")
        buf.seek(0)
        buf.truncate()
    return "".join(lines)
