"""Markdown tables: the one renderer behind report tables, eval tables and model cards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def cell(value: Any) -> str:
    """Text safe inside a table cell: one line, pipes escaped, floats to 4 significant digits."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("|", "\\|") or "—"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A table of `rows` (dicts) with `columns` (default: every key, first-seen order)."""
    cols = list(columns or dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def keyed_table(rows: Mapping[str, Mapping[str, Any]], first: str = "") -> str:
    """A table of {row name: {column: value}}, the row names in a first column."""
    return table([{first: name, **r} for name, r in rows.items()])
