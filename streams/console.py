"""What the commands show people on a terminal, through rich: a progress bar on stderr for long
work (replay, simulate) and plain aligned tables (``badgestream user``, ``leaderboard``, ``up``)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


class _Rate(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "?/s")


@contextmanager
def progress(total: int, label: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (done/total, rate, time left); yields ``update(done)``."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        task = bar.add_task(label, total=max(total, 1))
        yield lambda done: bar.update(task, completed=done)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned left, two spaces apart, no borders: easy to read and to grep."""
    grid = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, header_style="")
    for name in header:
        grid.add_column(Text(name))
    for row in rows:  # Text: ids such as "[bold]" are shown as they are, never read as markup
        grid.add_row(*(Text(cell) for cell in row))
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None, legacy_windows=False).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
