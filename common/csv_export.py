"""One CSV writer for every export (the audit log, a job's results, training outputs): csv.writer
with every text cell that a spreadsheet would run as a formula escaped.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP's
advice against CSV injection): user names, version names, finding names and uploaded file names
(a ZIP's member names too) may start with them. Numbers are written as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The same starts after a comma: what `plain_tail` must not find in its joined text.
_FORMULA_AFTER_COMMA = tuple("," + start for start in FORMULA_STARTS)


def cell_escaped(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter:
    """csv.writer over `file` (anything with write()), escaping formulas in every row."""

    def __init__(self, file) -> None:
        self._writer = csv.writer(file)

    def writerow(self, cells: Iterable[Any]) -> None:
        self._writer.writerow([cell_escaped(cell) for cell in cells])

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
    if any(start in text for start in _FORMULA_AFTER_COMMA):
        return None
    return text


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """The whole CSV of `rows` (the first being the header), formulas escaped."""
    buffer = CsvBuffer()
    buffer.writerows(rows)
    return buffer.take()
