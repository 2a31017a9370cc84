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


def train_table(metrics: Any, model: str, out: Any) -> Any:
    """`fedw2v train`: loss per epoch (and dev loss), then steps, skipped batches, throughput, the saved model."""
    from rich.console import Group

    table = Table(title="fedw2v train", title_justify="left")
    for name in ("epoch", "train loss", "dev loss"):
        table.add_column(name, justify="right")
    for i, loss in enumerate(metrics.epoch_loss):
        dev = metrics.dev_loss[i] if i < len(metrics.dev_loss) else None
        table.add_row(str(i + 1), f"{loss:.4f}", "-" if dev is None else f"{dev:.4f}")
    speed = metrics.audio_seconds / metrics.seconds if metrics.seconds else 0.0
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for key, value in (
        ("model", model),
        ("utterances", f"{metrics.samples} ({metrics.filtered} outside the duration filter)"),
        ("steps", f"{metrics.steps} ({metrics.skipped_batches} batches skipped: non-finite loss or gradient)"),
        ("final lr", f"encoder {metrics.lr_encoder:.3g}, head {metrics.lr_head:.3g}"),
        ("time", f"{metrics.seconds:.1f} s, {speed:.1f} s of audio per second on {metrics.device} ({metrics.precision})"),
        ("saved", str(out)),
    ):
        facts.add_row(key, value)
    return Group(table, facts)


def evaluate_table(result: Any) -> Table:
    """`fedw2v evaluate`: WER, CER and the edit counts on the scored split (with --decoder beam, a row for the
    greedy decoding of the same run above the beam row)."""
    rows = [result.greedy, result] if result.greedy is not None else [result]
    table = Table(title=f"fedw2v evaluate ({result.split}, normalisation {result.normalization})", title_justify="left")
    names = ("utterances", "words", "WER %", "CER %", "sub", "del", "ins", "audio h", "RTF")
    for name in (("decoder",) if len(rows) > 1 else ()) + names:
        table.add_column(name, justify="left" if name == "decoder" else "right")
    for r in rows:
        c = r.overall
        rtf = f"{r.seconds / r.audio_seconds:.3f}" if r.audio_seconds else "-"
        cells = [str(c.utterances), str(c.ref_words), f"{100 * c.wer:.2f}", f"{100 * c.cer:.2f}",
                 str(c.substitutions), str(c.deletions), str(c.insertions), f"{r.audio_seconds / 3600:.2f}", rtf]
        table.add_row(*([r.decoder] if len(rows) > 1 else []), *cells)
    table.caption = f"model {result.model}" + (_beam_caption(result) if result.greedy is not None else "")
    table.caption_justify = "left"
    return table


def evaluate_report(result: Any, speakers: bool, out: Any = None) -> list[Any]:
    """What `fedw2v evaluate` prints: its table, the per-speaker table, where the hypotheses went."""
    items: list[Any] = [evaluate_table(result)] + ([speaker_table(result)] if speakers else [])
    if out is not None:
        items.append(f"wrote {result.all_hypotheses().num_rows} hypotheses to {out}")
    return items


def _beam_caption(result: Any) -> str:
    b, g = result.beam or {}, result.greedy.overall
    w = b.get("weights") or {}
    drop = f"{100 * (g.wer - result.overall.wer) / g.wer:.1f}%" if g.wer else "-"
    how = w.get("chosen_by", "")
    return (f"\nbeam: size {b.get('beam_size')}, LM {b.get('lm') or 'none'}, lexicon {b.get('lexicon') or 'none'}, "
            f"--lm-weight {w.get('lm_weight', 0):g} --word-score {w.get('word_score', 0):g} ({how}); "
            f"relative WER change from greedy: -{drop}")


def speaker_table(result: Any) -> Table:
    """`fedw2v evaluate --by speaker`: one row per speaker (greedy and beam columns with --decoder beam)."""
    table = Table(title=f"per speaker ({result.split})", title_justify="left")
    both = result.greedy is not None
    names = ("WER % greedy", "WER % beam", "CER % greedy", "CER % beam") if both else ("WER %", "CER %")
    for name in ("speaker", "utterances", "words", *names):
        table.add_column(name, justify="left" if name == "speaker" else "right")
    for spk, c in result.by_speaker.items():
        if both:
            g = result.greedy.by_speaker[spk]
            rates = (g.wer, c.wer, g.cer, c.cer)
        else:
            rates = (c.wer, c.cer)
        table.add_row(spk, str(c.utterances), str(c.ref_words), *(f"{100 * r:.2f}" for r in rates))
    return table


def lm_build_lines(result: Any) -> list[str]:
    """`fedw2v lm build`: what was read and written, in a few lines."""
    p = result.provenance
    c = p["counts"]
    sources = "; ".join(f"{s['path']} ({s['kind']}, {s['sentences']} sentences)" for s in p["sources"])
    skipped = p["skipped_words"]
    lines = [
        f"read {c['sentences']} sentences, {c['words']} words, {c['vocabulary']} distinct, normalisation "
        f"{p['normalization']}: {sources}",
        f"lm.arpa: {p['order']}-gram interpolated modified Kneser-Ney, n-grams per order "
        f"{', '.join(str(n) for n in c['ngrams'])}"
        + (f" (fallback discounts for orders {', '.join(map(str, p['fallback_discounts_orders']))}: too little text "
           "to estimate them)" if p["fallback_discounts_orders"] else ""),
        f"lexicon.txt: {p['lexicon']['words']} words spelled in {p['lexicon']['characters']}",
    ]
    if skipped["distinct"]:
        examples = ", ".join(repr(w) for w, _ in skipped["most_common"][:5])
        lines.append(f"skipped {skipped['distinct']} words ({skipped['occurrences']} occurrences) with characters "
                     f"outside the model's vocabulary, replaced by <unk>: {examples}")
    if p["character_lm"]:
        lines.append(f"chars.arpa: {p['character_lm']['order']}-gram over characters (for --lexicon-free)")
    lines += [f"binary: {p['binary']}", f"wrote {result.out_dir} (provenance: lm.json)"]
    return lines


SIMULATE_ROWS = 25  # evaluations shown one per row; longer runs show the first, the best and the newest ones


def simulate_rows(history: list[dict], limit: int = SIMULATE_ROWS) -> list[dict]:
    """The evaluations `simulate_table` shows: all of them up to ``limit``; beyond, the first, the best and the
    ``limit - 2`` newest (in round order)."""
    if len(history) <= limit:
        return list(history)
    best = min(history, key=lambda h: h["wer"])
    keep = {id(history[0]), id(best), *(id(h) for h in history[-(limit - 2):])}
    return [h for h in history if id(h) in keep]


def simulate_table(config: Any, state: Any) -> Table:
    """Summary of a finished federated run: WER/CER/loss of the global model at each evaluated round (all of them
    for short runs, see `simulate_rows`), its change from the evaluation before, and the best round (*)."""
    history = state.history
    shown = simulate_rows(history)
    table = Table(title=f"fedw2v simulate: {state.round} rounds, {config.clients_per_round} clients per round",
                  title_justify="left")
    dp = getattr(config, "dp", "off") != "off"
    epsilons = {e["round"]: e["epsilon"] for e in (getattr(state, "privacy", None) or {}).get("history", [])}
    for name in ("round", "WER %", "ΔWER", "CER %", "ΔCER", "loss") + (("ε",) if dp else ()):
        table.add_column(name, justify="right")
    best = min(history, key=lambda h: h["wer"]) if history else None
    previous: dict[int, dict] = {id(h): history[i - 1] for i, h in enumerate(history) if i}
    for h in shown:
        before = previous.get(id(h))
        loss = "-" if h.get("loss") is None else f"{h['loss']:.3f}"
        delta = (lambda key: "" if before is None else f"{100 * (h[key] - before[key]):+.2f}")
        mark = " *" if h is best else ""
        eps = (_epsilon_cell(h["round"], epsilons),) if dp else ()
        table.add_row(f"{h['round']}{mark}", f"{100 * h['wer']:.2f}", delta("wer"), f"{100 * h['cer']:.2f}",
                      delta("cer"), loss, *eps)
    if history:
        hidden = len(history) - len(shown)
        table.caption = (f"the global model on the {config.eval_split} split; * best WER (round {best['round']}); "
                         "Δ: change from the evaluation before"
                         + (f"; {hidden} evaluations not shown (metrics.jsonl has them all)" if hidden else "")
                         + (f"; ε at δ {config.dp_delta:g} after the round (--dp {config.dp}, "
                            f"z {config.dp_noise_multiplier:g}, C {config.dp_clip:g})" if dp else ""))
        table.caption_justify = "left"
    return table


def _epsilon_cell(round_: int, epsilons: dict[int, float | None]) -> str:
    from fedw2v.ui.progress import epsilon_text

    if round_ == 0:
        return "0"
    return epsilon_text(epsilons[round_]) if round_ in epsilons else "-"


def participation_table(report: Any) -> Table:
    """WER % (clients) per checkpoint round and participation bucket (rounds each client took part in)."""
    from fedw2v.participation import BUCKETS

    table = Table(title="WER on clients' local test data, by rounds each client took part in", title_justify="left")
    table.add_column("after round", justify="right")
    for b in BUCKETS:
        table.add_column(f"{b} rounds", justify="right")
    for r in report.rounds:
        cells = []
        for b in BUCKETS:
            s = report.scores[r][b]
            cells.append("-" if s.wer is None else f"{100 * s.wer:.1f}% ({s.clients})")
        table.add_row(str(r), *cells)
    return table


def footprint_table(report: Any) -> Any:
    """`fedw2v footprint`: EER (%) per layer (rows) and analysed round (columns), their average and the pooled
    EER with its confidence interval; then trials per round, who was left out and why, and where the test
    footprints came from."""
    from rich.console import Group

    level = f"{100 * report.confidence:.0f}% CI"
    table = Table(title=f"fedw2v footprint: {report.run_dir} (EER %, lower = more speaker identity leaks)",
                  title_justify="left")
    table.add_column("layer", justify="left")
    for r in report.rounds:
        table.add_column(f"round {r.round}", justify="right")
    table.add_column("average", justify="right")
    table.add_column("pooled", justify="right")
    table.add_column(f"pooled {level}", justify="right")
    best = report.best_layer()
    for i, layer in enumerate(report.layers):
        cells = [f"{r.result.eer[i]:.1f}" if r.result.measurable else "n/m" for r in report.rounds]
        avg = f"{report.average[i]:.1f}" if report.average else "-"
        pooled = report.pooled
        if pooled.measurable:
            lo, hi = pooled.ci[i]
            mark = " *" if best is not None and best[0] == layer else ""
            cells += [avg, f"{pooled.eer[i]:.1f}{mark}", f"{lo:.1f}-{hi:.1f}"]
        else:
            cells += [avg, "n/m", "-"]
        table.add_row(layer, *cells)
    table.add_section()
    trials = [f"{r.result.targets} / {r.result.nontargets}" for r in report.rounds]
    table.add_row("trials (target / non-target)", *trials,
                  "", f"{report.pooled.targets} / {report.pooled.nontargets}", "")
    table.add_row("clients (analysed / sampled)", *[f"{len(r.analysed)} / {len(r.sampled)}" for r in report.rounds],
                  "", "", "")

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    ind = report.indicator
    excluded = f"; {ind['excluded_utterances']} utterances of analysed speakers left out" if ind.get(
        "excluded_utterances") else ""
    if getattr(report, "defence", ""):
        facts.add_row("defence", report.defence)
    facts.add_row("indicator", f"{ind['utterances']} utterances ({ind['seconds']:.0f} s, {len(ind['speakers'])} "
                  f"speakers) of split {ind['split'] or '?'} from {ind['manifest']}{excluded}")
    for r in report.rounds:
        parts = [f"test footprints {r.test_detail or r.test_source}",
                 f"enrollment: {r.base_checkpoint} fine-tuned {report.enroll_epochs} epochs on each holdout"
                 + (f" ({r.enroll_reused} reused)" if r.enroll_reused else "")]
        if r.excluded:
            parts.append("left out: " + ", ".join(f"client {c} ({why})" for c, why in sorted(r.excluded.items())))
        if not r.result.measurable:
            parts.append(f"not measurable: {r.result.reason}")
        facts.add_row(f"round {r.round}", "; ".join(parts))
    if best is not None:
        facts.add_row("lowest pooled EER", f"{best[1]:.1f}% at {best[0]} (*); 50% = chance")
    elif not report.pooled.measurable:
        facts.add_row("pooled", f"not measurable: {report.pooled.reason}")
    facts.add_row("time", f"{report.seconds:.0f} s")
    return Group(table, facts)


def import_warnings(imp: Any, manifest_path: Any) -> list[str]:
    """One line per kind of list row `fedw2v partition --from-lists` could not use as it was."""
    lines = []
    if imp.duplicate_ids:
        lines.append(
            f"warning: {imp.duplicate_ids} ids listed more than once ({imp.duplicate_ids_across_clients} in "
            f"several clients; e.g. {', '.join(imp.duplicate_examples[:3])}): policy {imp.duplicate_policy}, "
            f"{imp.duplicate_rows_ignored} list rows ignored")
    if imp.unmatched_ids:
        lines.append(f"warning: {imp.unmatched_ids} listed ids are not in {manifest_path} "
                     f"(e.g. {', '.join(imp.unmatched_examples[:3])}): ignored")
    if imp.outside_train_ids:
        lines.append(f"warning: {imp.outside_train_ids} listed ids belong to the corpus dev/test split: ignored")
    return lines


def export_note(exported: Any) -> str:
    """The end of `fedw2v partition`'s last line when it exported each client's manifest (else '')."""
    if exported is None:
        return ""
    audio = f", {exported.audio_files} audio files" if exported.audio_files else ""
    return (f"; one folder per client in {exported.directory} ({len(exported.manifests)} manifests{audio}): "
            "hand each participant theirs")
