"""Numbers as text for tables and CSV files, shared by the score report and the sweep report."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence


def format_number(value, digits: int = 3) -> str:
    """``digits`` decimals; an empty string for a missing or non-finite value (a blank CSV cell)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def format_value(value, digits: int = 3) -> str:
    """A table cell: ``digits`` decimals, or an en dash for a missing or non-finite value."""
    return format_number(value, digits) or "–"


def csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """``rows`` as CSV with ``columns`` as the header; floats with 6 decimals, missing values blank."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_number(row.get(k), 6) if isinstance(row.get(k), float) else ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()
