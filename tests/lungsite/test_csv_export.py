"""The one CSV writer of every export (common.csv_export): formulas escaped, the rest as csv.writer
writes it."""

import csv
import io

import pytest

from common.csv_export import CsvBuffer, csv_text, plain_tail


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_it_escapes_a_cell_that_a_spreadsheet_would_run(start):
    text = csv_text([["name", "n"], [f"{start}HYPERLINK(1)", 3]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["name", "n"], [f"'{start}HYPERLINK(1)", "3"]]


def test_it_leaves_numbers_and_plain_text_as_csv_writer_writes_them():
    rows = [["a,b", 'say "hi"', -1.5, 0, "", None, "x=1"]]
    expected = io.StringIO()
    csv.writer(expected).writerows(rows)
    assert csv_text(rows) == expected.getvalue()


def test_the_plain_tail_is_only_taken_when_nothing_needs_quoting_or_escaping():
    assert plain_tail(["0.25", "0.5", "yes", ""]) == ",0.25,0.5,yes,"
    for cells in (["a,b"], ['"x"'], ["1\n2"], ["=1"], ["-0.5"], ["@x"], ["+1"], ["\tx"], [None], [0.5]):
        assert plain_tail(cells) is None, cells

    buffer = CsvBuffer()
    buffer.writerow_with_tail(["=id", 7], plain_tail(["0.25", "no"]))
    buffer.writerow(["=id", 7, "0.25", "no"])
    first, second = buffer.take().splitlines()
    assert first == second == "'=id,7,0.25,no"
