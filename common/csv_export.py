"""One CSV writer for every export (the audit log, a job's results, training outputs): csv.writer
with every text cell that a spreadsheet would run as a formula escaped.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP's
advice against CSV injection): user names, version names, finding names and uploaded file names
(a ZIP's member names too) may start with them. Numbers are written as they are.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A cell of `plain_tail`'s joined text starting with one of them (CR is refused there anyway).
_FORMULA_AFTER_COMMA = re.compile(r",[=+\-@\t]")


def cell_escaped(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter:
    """csv.writer over `file` (anything with write()), escaping formulas in every row."""

    def __init__(self, file) -> None:
        self._writer = csv.writer(file)

    def writerow(self, cells: Iterable[Any]) -> None:
        # cell_escaped, inlined: a wide export writes millions of cells.
        self._writer.writerow(
            [
                "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell
                for cell in cells
            ]
        )

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for cells in rows:
            self.writerow(cells)


class CsvBuffer(CsvWriter):
    """A CsvWriter into memory whose text is taken a piece at a time (streamed responses)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        super().__init__(self)

    def write(self, text: str) -> None:
        self._parts.append(text)

    def writerow_with_tail(self, cells: Iterable[Any], tail: str) -> None:
        """The row `cells` followed by `tail`, text from `plain_tail` (already CSV, nothing to escape)."""
        self.writerow(cells)
        self._parts[-1] = self._parts[-1][:-2] + tail + "\r\n"

    def take(self) -> str:
        text, self._parts = "".join(self._parts), []
        return text


def plain_tail(cells: list) -> str | None:
    """`,cell,cell...` when every cell is text that needs neither quoting nor escaping (numbers as
    the database wrote them, yes, no, nothing), else None. Joining costs a fraction of what
    csv.writer takes for such cells, which make up most of a wide export."""
    try:
        text = "," + ",".join(cells)
    except TypeError:  # not all text
        return None
    if text.count(",") != len(cells) or '"' in text or "\n" in text or "\r" in text:
        return None
    if _FORMULA_AFTER_COMMA.search(text):
        return None
    return text


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """The whole CSV of `rows` (the first being the header), formulas escaped."""
    buffer = CsvBuffer()
    buffer.writerows(rows)
    return buffer.take()
