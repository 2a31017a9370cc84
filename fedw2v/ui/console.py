"""The one console object and the rendering helpers the commands share (tables, progress, problem lists)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(description: str, total: int | None = None, transient: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `update(done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            bar.update(task, completed=done, total=new_total if new_total is not None else total)

        yield update


def print_problems(problems: Iterable[Any], limit: int = 20) -> None:
    """Print the first `limit` problems, one line each, and how many more there are."""
    problems = list(problems)
    for p in problems[:limit]:
        err_console.print(f"[yellow]skipped[/yellow] {escape(str(p))}", soft_wrap=True)
    if len(problems) > limit:
        err_console.print(f"[yellow]… and {len(problems) - limit} more problems[/yellow]")


@contextmanager
def train_progress(enabled: bool = True) -> Iterator[Any]:
    """The live bar of `fedw2v train` on stderr (epoch, batches, loss, audio seconds per second); yields the
    callback `fedw2v.train.local_train` takes as ``progress``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} s audio/s"), TimeElapsedColumn(),
        console=err_console, transient=True, disable=not enabled or not err_console.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task("train", total=None, epoch="-", loss="-", speed="-")

        def update(p: Any) -> None:
            bar.update(task, completed=p.epoch * p.batches + p.batch, total=p.epochs * p.batches,
                       epoch=f"{p.epoch + 1}/{p.epochs}", loss=f"{p.loss:.3f}",
                       speed=f"{p.audio_seconds_per_second:.1f}")  # fmt: skip

        yield update
