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


def synth_table(result: Any) -> Table:
    """One row per synthetic speaker: voice, synthesiser, gender, corpus split, talks, minutes of speech."""
    from rich import box

    table = Table(
        title=f"fedw2v synth: {result.out_dir}", title_justify="left",
        box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
        caption=(f"{len(result.speakers)} speakers, {len(result.talks)} talks, {result.utterances} utterances, "
                 f"{result.speech_seconds / 60:.1f} min of speech (seed {result.seed})"),
        caption_justify="left",
    )
    for name in ("speaker", "voice", "synthesiser", "gender", "split", "talks", "minutes"):
        right = name in ("talks", "minutes")
        table.add_column(name, justify="right" if right else "left", no_wrap=not right)
    for s in result.speakers:
        minutes = f"{s.speech_seconds / 60:.1f}"
        table.add_row(s.speaker, s.voice, s.synthesiser, s.gender, s.split, str(len(s.talks)), minutes)
    return table


def partition_table(result: Any) -> Table:
    """Clients of `fedw2v partition`: utterances and minutes per client (min / median / max / total), the
    holdout, clients without local dev, what --max-clients dropped, and (for --from-lists) what was not used."""
    st = result.stats
    table = Table(title=f"fedw2v partition ({st.scheme})", title_justify="left")
    for name in ("per client", "clients", "min", "median", "max", "total"):
        table.add_column(name, justify="left" if name == "per client" else "right")

    def spread(label: str, clients: int, s: Any, fmt: str) -> None:
        table.add_row(label, str(clients), format(s.min, fmt), format(s.median, fmt), format(s.max, fmt), format(s.total, fmt))

    def fact(label: str, clients: Any, total: str = "") -> None:
        table.add_row(label, str(clients), "", "", "", total)

    clients = result.clients
    spread("utterances", st.clients, st.utterances, ".0f")
    spread("minutes", st.clients, st.minutes, ".1f")
    spread("local train minutes", st.clients, st.train_minutes, ".1f")
    for name in ("dev", "test"):
        values = clients.column(f"{name}_utterances").to_pylist()
        spread(f"local {name} utterances", st.clients, _spread(values), ".0f")
    spread("holdout minutes", st.clients_with_holdout, st.holdout_minutes, ".1f")
    fact("clients without local dev", len(st.clients_without_dev))
    if st.clients_without_train:
        fact("clients without local train", len(st.clients_without_train))
    if st.max_clients is not None:
        fact(f"dropped (--max-clients {st.max_clients})", st.dropped_clients,
             f"{st.dropped_utterances} utt, {st.dropped_minutes:.1f} min")  # fmt: skip
    fact("train utt. with no client", "", f"{st.unassigned_utterances} utt, {st.unassigned_minutes:.1f} min")
    imp = getattr(result, "imported", None)
    if imp is not None:
        fact("list folders read", imp.list_clients, f"{imp.list_rows} ids")
        fact(f"duplicate ids ({imp.duplicate_policy})", f"{imp.duplicate_ids_across_clients} across",
             f"{imp.duplicate_ids} ids, {imp.duplicate_rows_ignored} rows unused")  # fmt: skip
        fact("ids not in the manifest", "", f"{imp.unmatched_ids} ids")
        fact("ids of corpus dev/test", "", f"{imp.outside_train_ids} ids")
    return table


def _spread(values: Any) -> Any:
    from fedw2v.partition import Spread

    return Spread.of(values)
