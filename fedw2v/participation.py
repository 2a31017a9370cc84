"""The paper's speaker analysis: how well the global model serves clients by how often they took part.

For each kept checkpoint (the global model after round r) every client's local *test* split is decoded and
scored; clients are grouped by the number of rounds up to r in which they took part (were sampled and their
update was aggregated): 0, 1, 2-3, 4+. For a Deployment Engine run whose data stayed on the SuperNodes the
scores are the ones the nodes reported during the run (federated evaluation, "node_evaluate" events). The
paper found the global model serves speakers who never took part about as well as those who did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedw2v.errors import InputError
from fedw2v.metrics import ErrorCounts, total

BUCKETS = ("0", "1", "2-3", "4+")


def bucket(rounds_taken_part: int) -> str:
    if rounds_taken_part <= 1:
        return str(max(0, rounds_taken_part))
    return "2-3" if rounds_taken_part <= 3 else "4+"


def participation(events: list[dict], upto_round: int) -> dict[int, int]:
    """{client id: rounds <= upto_round in which its update was aggregated} (failed fits do not count)."""
    counts: dict[int, int] = {}
    for e in events:
        if e.get("event") == "fit" and e.get("error") is None and 1 <= e.get("round", 0) <= upto_round:
            counts[int(e["client"])] = counts.get(int(e["client"]), 0) + 1
    return counts


@dataclass
class BucketScore:
    clients: int = 0
    counts: ErrorCounts = field(default_factory=ErrorCounts)  # summed over the bucket's clients' utterances

    @property
    def wer(self) -> float | None:
        return self.counts.wer if self.counts.ref_words else None

    @property
    def cer(self) -> float | None:
        return self.counts.cer if self.counts.ref_chars else None

    def to_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "utterances": self.counts.utterances, "ref_words": self.counts.ref_words,
                "word_errors": self.counts.word_errors, "wer": self.wer, "cer": self.cer}


@dataclass
class ParticipationReport:
    run_dir: str
    rounds: list[int]
    scores: dict[int, dict[str, BucketScore]]  # checkpoint round -> bucket -> score
    per_client: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)  # round -> client -> details
    clients_without_test: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir, "rounds": self.rounds, "buckets": list(BUCKETS),
            "scores": {str(r): {b: s.to_dict() for b, s in by.items()} for r, by in self.scores.items()},
            "per_client": {str(r): {str(c): d for c, d in by.items()} for r, by in self.per_client.items()},
            "clients_without_test": self.clients_without_test, "seconds": round(self.seconds, 3),
        }


def analyse(
    run_dir: str | os.PathLike,
    manifest_path: str | os.PathLike | None = None,
    rounds: list[int] | None = None,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
) -> ParticipationReport:
    """Score the kept checkpoints (or `rounds`) of a federated run on every client's local test split."""
    from fedw2v.device import resolve_device

    t0 = time.perf_counter()
    run = Path(run_dir)
    if manifest_path is None and _data_on_nodes(run):
        return _from_node_evaluations(run, rounds, t0)
    inputs = _load(run, manifest_path, rounds)
    dev = resolve_device(device)
    scores: dict[int, dict[str, BucketScore]] = {}
    per_client: dict[int, dict[int, dict[str, Any]]] = {}
    for r in inputs.rounds:
        by_client = _score_checkpoint(run, r, inputs, dev, progress)
        scores[r], per_client[r] = _bucket_scores(by_client, participation(inputs.events, r))
    return ParticipationReport(str(run), inputs.rounds, scores, per_client, inputs.without_test,
                               time.perf_counter() - t0)


def _data_on_nodes(run: Path) -> bool:
    """A Deployment Engine run whose data stayed on the SuperNodes (no clients manifest on the server)."""
    from fedw2v.config.simulate import load_run_config

    return load_run_config(run).nodes_hold_data


def _from_node_evaluations(run: Path, rounds: list[int] | None, t0: float) -> ParticipationReport:
    """Such a run's report from what its SuperNodes said during the run: each node scored every evaluated global
    model on its local test split ("node_evaluate" events in metrics.jsonl); nothing is decoded here, and the
    server never saw the clients' speech. Rounds: the evaluated ones, or ``rounds``."""
    from fedw2v import runs

    events = runs.read_metrics(run)
    evaluated: dict[int, dict[int, ErrorCounts]] = {}
    for e in events:
        if e.get("event") == "node_evaluate" and e.get("error") is None and e.get("client") is not None:
            counts = ErrorCounts(**{k: int(e[k]) for k in ErrorCounts.__dataclass_fields__})
            evaluated.setdefault(int(e["round"]), {})[int(e["client"])] = counts
    chosen = sorted(set(rounds)) if rounds else sorted(evaluated)
    missing = [r for r in chosen if r not in evaluated]
    if missing or not chosen:
        raise InputError(f"{run}: no federated evaluation by the SuperNodes for round(s) "
                         f"{', '.join(map(str, missing)) or 'any'} (evaluated: {', '.join(map(str, evaluated))})",
                         hint="the nodes score the global model at every --eval-every round")
    scores, per_client = {}, {}
    for r in chosen:
        by_client = {c: [n] for c, n in sorted(evaluated[r].items()) if n.utterances}
        scores[r], per_client[r] = _bucket_scores(by_client, participation(events, r))
    without = sorted({c for by in evaluated.values() for c, n in by.items() if not n.utterances})
    return ParticipationReport(str(run), chosen, scores, per_client, without, time.perf_counter() - t0)


@dataclass
class _Inputs:
    """What `analyse` scores."""

    events: list[dict]  # the run's metrics events
    rounds: list[int]  # checkpoint rounds to score
    utterances: list[tuple[int, Any]]  # (client id, utterance) for every client's local test split, by client id
    without_test: list[int]  # clients with no local test utterance
    normalization: str  # the manifest's text normalisation


def _load(run: Path, manifest_path: str | os.PathLike | None, rounds: list[int] | None) -> _Inputs:
    """The run's events and checkpoint rounds (the kept ones, or `rounds`), and every client's local test
    utterances from the run's partitioned manifest (or `manifest_path`). InputError when one is missing."""
    from fedw2v import manifest as mf
    from fedw2v import runs
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.config.simulate import load_run_config

    config = load_run_config(run)
    if not (run / runs.METRICS).is_file():
        raise InputError(f"{run}: not a federated run directory (no {runs.METRICS})",
                         hint="make one with `fedw2v simulate`")
    events = runs.read_metrics(run)
    kept = runs.checkpoint_rounds(run)
    if rounds:
        missing = sorted(set(rounds) - set(kept))
        if missing:
            raise InputError(f"{run}: no checkpoint for rounds {', '.join(map(str, missing))} "
                             f"(kept: {', '.join(map(str, kept))})")
        kept = sorted(set(rounds))
    if not kept:
        raise InputError(f"{run}: no checkpoints to score")
    manifest = mf.read(manifest_path or config.clients_manifest, allow_outside_audio=config.allow_outside_audio)
    ids = manifest.client_ids
    if not ids:
        raise InputError(f"{manifest_path or config.clients_manifest}: no clients (run `fedw2v partition`)")
    root = config.corpus_root or None
    tests = {c: utterances_from_manifest(manifest, split="train", local_split="test", client_id=c, corpus_root=root)
             for c in ids}
    return _Inputs(events, kept, [(c, u) for c in ids for u in tests[c]], [c for c, u in tests.items() if not u],
                   manifest.info.normalization)


def _score_checkpoint(
    run: Path, round_: int, inputs: _Inputs, device: str, progress: Callable[[str, int, int], None] | None
) -> dict[int, list[ErrorCounts]]:
    """Decode every client's local test utterances with the global model after `round_`: per client, the error
    counts of each of its utterances."""
    from fedw2v import runs
    from fedw2v.decode import Decoder
    from fedw2v.metrics import normalize_pair, utterance_counts
    from fedw2v.model import load_model

    lm = load_model(str(run / "checkpoints" / runs.checkpoint_name(round_)))
    hyps = Decoder(lm.model, lm.processor, device).decode_utterances(
        [u for _, u in inputs.utterances],
        progress=(lambda d, t: progress(f"round {round_}", d, t)) if progress else None)
    by_client: dict[int, list[ErrorCounts]] = {}
    for (c, u), h in zip(inputs.utterances, hyps):
        by_client.setdefault(c, []).append(utterance_counts(*normalize_pair(u.text, h, inputs.normalization)))
    return by_client


def _bucket_scores(
    by_client: dict[int, list[ErrorCounts]], taken: dict[int, int]
) -> tuple[dict[str, BucketScore], dict[int, dict[str, Any]]]:
    """One checkpoint's scores: summed per participation bucket (``taken``: rounds each client took part in),
    and per client."""
    scores = {b: BucketScore() for b in BUCKETS}
    per_client: dict[int, dict[str, Any]] = {}
    for c, counts in by_client.items():
        b = bucket(taken.get(c, 0))
        client = total(counts)
        scores[b].clients += 1
        scores[b].counts = scores[b].counts + client
        per_client[c] = {"rounds_taken_part": taken.get(c, 0), "bucket": b, "utterances": client.utterances,
                         "wer": client.wer if client.ref_words else None}
    return scores, per_client


def plot(report: ParticipationReport, path: str | os.PathLike) -> Path:
    """WER per checkpoint round, one line per participation bucket."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fedw2v.plots import _save_atomic

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for b in BUCKETS:
        pts = [(r, report.scores[r][b].wer) for r in report.rounds if report.scores[r][b].wer is not None]
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", markersize=3,
                    label=f"took part in {b} rounds")
    ax.set_xlabel("round (global model after it)")
    ax.set_ylabel("WER on clients' local test data (%)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title("WER by participation")
    fig.tight_layout()
    return _save_atomic(fig, path)
