"""Numbers as people read them: the one set of formatters for tables, summaries and reports.

A table column is ``(key, header, formatter)``; :func:`markdown_table` writes rows of dicts with
them. A formatter takes a value that is not None (missing values are written as ``missing``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Formatter = Callable[[Any], str]
Column = tuple[str, str, "Formatter | None"]


def count(n: float) -> str:
    """``1234567`` -> ``1.23M`` (K, M, G; plain below a thousand)."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def nbytes(n: float) -> str:
    """``2048`` -> ``2.05 KB`` (decimal units: KB, MB)."""
    for unit, div in (("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def percent(v: float) -> str:
    """A fraction as a percentage with two decimals, no sign: ``0.9812`` -> ``98.12``."""
    return f"{100 * v:.2f}"


def fixed(digits: int, floats_only: bool = False) -> Formatter:
    """``digits`` decimals; ``floats_only``: other values (an int target 0) as they are."""
    def fmt(v: Any) -> str:
        if floats_only and not isinstance(v, float):
            return str(v)
        return f"{v:.{digits}f}"
    return fmt


def cell(value: Any, fmt: Formatter | None, missing: str = "-") -> str:
    if value is None:
        return missing
    return fmt(value) if fmt is not None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                   missing: str = "-") -> str:
    """A markdown table, one line per row (ends with a newline)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r[k], f, missing) for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"
