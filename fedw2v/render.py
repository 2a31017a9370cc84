"""Rich tables for command output. Pure: data in, renderable out (printing stays in the CLI)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _reasons(counter: Any) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counter.items())) or "-"


def prepare_table(result: Any) -> Table:
    """One row per corpus split: talks, speakers, utterances, hours, kept-out and skipped segments by reason."""
    table = Table(title="fedw2v prepare", title_justify="left")
    for name in ("split", "talks", "speakers", "utterances", "hours", "empty text", "skipped (by reason)"):
        table.add_column(name, justify="left" if name in ("split", "skipped (by reason)") else "right")
    for split, st in result.stats.items():
        table.add_row(
            split, str(len(st.talks)), str(len(st.speakers)), str(st.utterances), f"{st.seconds / 3600:.2f}",
            str(st.empty_text), _reasons(st.skipped),
        )
    return table
