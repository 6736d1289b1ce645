"""Text tables for the commands' terminal output: one cell per value, columns two spaces apart."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def cell(value: Any, width: int | None = None) -> str:
    """One value as a single line: NULL as empty, floats to 4 decimals (in lists and structs too), cut to
    ``width`` (ending in ``...``)."""
    text = " ".join(_text(value).split())
    if width is not None and len(text) > width:
        text = text[: max(width - 3, 0)] + "..."
    return text


def text_table(
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    widths: Mapping[str, int] | None = None,
    width: int | None = None,
    right: Collection[str] = (),
    upper: bool = True,
    rule: bool = False,
) -> list[str]:
    """A header line and one line per row: each column as wide as its widest cell, cells cut to
    ``widths[name]`` (else ``width``), the columns in ``right`` right-aligned (numbers), headers upper-cased
    when ``upper``, and with ``rule`` a line of dashes under the header."""
    limits = widths or {}
    cells = [[cell(v, limits.get(n, width)) for n, v in zip(names, row, strict=True)] for row in rows]
    header = [n.upper() if upper else n for n in names]
    sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(s) if n in right else v.ljust(s) for n, v, s in zip(names, values, sizes, strict=True)
        ]
        return "  ".join(parts).rstrip()

    dashes = [line(["-" * size for size in sizes])] if rule else []
    return [line(header), *dashes, *(line(r) for r in cells)]
