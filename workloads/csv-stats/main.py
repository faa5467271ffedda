"""csv-stats: a per-column summary of a CSV text, with the standard library.

Input  {"csv": str, "delimiter"?: one character (default: sniffed among , ; tab |), "header"?: bool (default true)}
Output {"rows": int, "delimiter": str, "columns": [
          {"name", "count" (present values), "missing", "type": "numeric"|"text"|"empty",
           numeric: "min", "max", "mean", "median", "stdev" (sample; null under 2 values),
           text: "unique", "top": [{"value", "count"}] (the 5 most common)}]}
A value is missing when empty or NA / N/A / null / none / nan (any case). A column is numeric when every present
value is a finite number. A row with more fields than the header is an error; a shorter row misses the rest.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from typing import Any

from workload_io import InputError, bool_field, emit, serve, text_field

MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_COLUMNS = 500
TOP_VALUES = 5
MAX_VALUE_CHARS = 200  # a top value longer than this is cut in the output
MISSING = frozenset({"", "na", "n/a", "null", "none", "nan"})
DELIMITERS = ",;\t|"


def read_rows(text: str, delimiter: str | None) -> tuple[list[list[str]], str]:
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:64 * 1024], delimiters=DELIMITERS).delimiter
        except csv.Error:
            delimiter = ","
    csv.field_size_limit(MAX_INPUT_BYTES)
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True) if row]
    except csv.Error as exc:
        raise InputError(f"the CSV is malformed: {exc}") from None
    return rows, delimiter


def summarize(name: str, values: list[str]) -> dict[str, Any]:
    present = [v.strip() for v in values if v.strip().lower() not in MISSING]
    column: dict[str, Any] = {"name": name, "count": len(present), "missing": len(values) - len(present)}
    numbers = _numbers(present)
    if not present:
        column["type"] = "empty"
    elif numbers is not None:
        column.update(type="numeric", min=_plain(min(numbers)), max=_plain(max(numbers)),
                      mean=statistics.fmean(numbers), median=_plain(statistics.median(numbers)),
                      stdev=statistics.stdev(numbers) if len(numbers) > 1 else None)
    else:
        counts = Counter(present)
        column.update(type="text", unique=len(counts),
                      top=[{"value": value[:MAX_VALUE_CHARS], "count": count}
                           for value, count in counts.most_common(TOP_VALUES)])
    return column


def _numbers(values: list[str]) -> list[float] | None:
    numbers = []
    for value in values:
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        numbers.append(number)
    return numbers


def _plain(number: float) -> int | float:
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def handle(job: dict[str, Any]) -> dict[str, Any]:
    text = text_field(job, "csv")
    assert text is not None
    delimiter = text_field(job, "delimiter", required=False, allow_empty=True)
    if delimiter is not None:
        delimiter = delimiter.replace("\\t", "\t")
        if len(delimiter) != 1 or delimiter in "\"\r\n":
            raise InputError("field 'delimiter' must be one character other than a quote or a line break")
    header = bool_field(job, "header", True)
    emit("status", message="parsing the CSV")
    rows, delimiter = read_rows(text, delimiter)
    width = len(rows[0]) if rows else 0
    if width > MAX_COLUMNS:
        raise InputError(f"the CSV has {width} columns; this workload summarizes at most {MAX_COLUMNS}")
    names = [n.strip() or f"column_{i + 1}" for i, n in enumerate(rows[0])] if header and rows else \
        [f"column_{i + 1}" for i in range(width)]
    body = rows[1:] if header else rows
    for number, row in enumerate(body, start=2 if header else 1):
        if len(row) > width:
            raise InputError(f"row {number} has {len(row)} fields but the {'header' if header else 'first row'} "
                             f"has {width}; is the delimiter {delimiter!r} right?")
    columns = []
    for index, name in enumerate(names):
        columns.append(summarize(name, [row[index] if index < len(row) else "" for row in body]))
        emit("progress", step=index + 1, total=len(names))
    return {"rows": len(body), "delimiter": delimiter, "columns": columns}


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
