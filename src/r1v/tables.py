"""Tables on the terminal (rich): `print_table` for a stage's summary, `print_wide_table` for a table whose
figures must never wrap (the pipeline's stage table)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(console: Console, title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A titled table; floats shown with 4 significant digits."""
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    console.print(table)


def print_wide_table(console: Console, title: str, headers: list[str], cells: list[list[str]]) -> None:
    """A table never squeezed into unreadable columns: figures do not wrap, and the table is printed at its
    natural width even when the output is a pipe or a narrow terminal."""
    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, no_wrap=i > 0, justify="left" if i == 0 else "right")
    for row in cells:
        t.add_row(*row)
    need = sum(max(len(h), *(len(r[i]) for r in cells)) + 3 for i, h in enumerate(headers)) + 1
    if need > console.width:  # a wider console on the same stream (a pipe or log file gets the full table)
        console = Console(file=console.file, width=need, force_terminal=console.is_terminal,
                          color_system=console.color_system)
    console.print(t)
