"""The paper's speaker analysis: how well the global model serves clients by how often they took part.

For each kept checkpoint (the global model after round r) every client's local *test* split is decoded and
scored; clients are grouped by the number of rounds up to r in which they took part (were sampled and their
update was aggregated): 0, 1, 2-3, 4+. The paper found the global model serves speakers who never took part
about as well as those who did.
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

    from fedw2v import manifest as mf
    from fedw2v import runs
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.config.simulate import load_run_config
    from fedw2v.decode import Decoder
    from fedw2v.metrics import normalize_pair, utterance_counts
    from fedw2v.model import load_model
    from fedw2v.device import resolve_device

    t0 = time.perf_counter()
    run = Path(run_dir)
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
    without = [c for c, u in tests.items() if not u]
    utts = [(c, u) for c in ids for u in tests[c]]
    scores: dict[int, dict[str, BucketScore]] = {}
    per_client: dict[int, dict[int, dict[str, Any]]] = {}
    dev = resolve_device(device)
    normalization = manifest.info.normalization
    for r in kept:
        lm = load_model(str(run / "checkpoints" / runs.checkpoint_name(r)))
        hyps = Decoder(lm.model, lm.processor, dev).decode_utterances(
            [u for _, u in utts], progress=(lambda d, t, r=r: progress(f"round {r}", d, t)) if progress else None)
        taken = participation(events, r)
        by_client: dict[int, list] = {}
        for (c, u), h in zip(utts, hyps):
            by_client.setdefault(c, []).append(utterance_counts(*normalize_pair(u.text, h, normalization)))
        scores[r] = {b: BucketScore() for b in BUCKETS}
        per_client[r] = {}
        for c, counts in by_client.items():
            b = bucket(taken.get(c, 0))
            client = total(counts)
            scores[r][b].clients += 1
            scores[r][b].counts = scores[r][b].counts + client
            per_client[r][c] = {"rounds_taken_part": taken.get(c, 0), "bucket": b, "utterances": len(counts),
                                "wer": client.wer if client.ref_words else None}
        del lm
    return ParticipationReport(str(run), kept, scores, per_client, without, time.perf_counter() - t0)


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
