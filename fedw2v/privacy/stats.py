"""Trials, EER and bootstrap statistics of the footprint attack: pure numpy (importing this module, or running
it, loads no torch), so scores can be analysed anywhere.

Score = cosine similarity of an enrollment and a test footprint, per layer; target trials pair one client's two
models, non-target trials models of different clients. EER (%) per layer, per round and pooled over rounds
(each round's scores standardised by its non-target scores first: a monotone change that leaves the round's EER
as it is and puts rounds on one scale), with a percentile bootstrap confidence interval. Fewer than
`MIN_TARGETS` target trials are not measurable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MIN_TARGETS = 2  # a round with fewer target trials is not measurable


@dataclass
class Trials:
    """Cosine scores per layer: target (same client) and non-target (different clients) trials."""

    clients: list[int]  # clients with both an enrollment and a test footprint
    target: np.ndarray  # (layers, n_target)
    nontarget: np.ndarray  # (layers, n_nontarget)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (enroll client, test client) of each non-target


def cosine_scores(enroll: Mapping[int, np.ndarray], test: Mapping[int, np.ndarray]) -> np.ndarray:
    """(layers, len(enroll), len(test)) cosine similarities of every pair, per layer (sorted client order).
    A zero footprint scores 0 against everything."""
    import numpy as np

    e = np.stack([np.asarray(enroll[c], dtype=np.float64) for c in sorted(enroll)], axis=1)  # (L, nE, D)
    t = np.stack([np.asarray(test[c], dtype=np.float64) for c in sorted(test)], axis=1)
    ne = np.linalg.norm(e, axis=-1, keepdims=True)
    nt = np.linalg.norm(t, axis=-1, keepdims=True)
    e = np.divide(e, ne, out=np.zeros_like(e), where=ne > 0)
    t = np.divide(t, nt, out=np.zeros_like(t), where=nt > 0)
    return np.einsum("led,ltd->let", e, t)


def make_trials(enroll: Mapping[int, np.ndarray], test: Mapping[int, np.ndarray]) -> Trials:
    """Target trials: each client with both footprints; non-target: every (enroll c, test c') with c != c'."""
    import numpy as np

    clients = sorted(set(enroll) & set(test))
    if not clients:
        empty = np.zeros((0, 0))
        return Trials([], empty, empty, [])
    scores = cosine_scores({c: enroll[c] for c in clients}, {c: test[c] for c in clients})
    n = len(clients)
    off = ~np.eye(n, dtype=bool)
    pairs = [(clients[i], clients[j]) for i in range(n) for j in range(n) if i != j]
    return Trials(clients, scores[:, np.arange(n), np.arange(n)], scores[:, off], pairs)


def _eer_rows(target: np.ndarray, nontarget: np.ndarray) -> np.ndarray:
    """EER (fraction) of each row of (B, n_target) and (B, n_nontarget) score arrays.

    Operating points: accept scores above a threshold placed between consecutive distinct scores (ties move
    together); the miss rate rises and the false-alarm rate falls along them. The EER is where the straight
    segment between the last point with miss < false alarm and the next one crosses miss = false alarm."""
    import numpy as np

    t = np.asarray(target, dtype=np.float64)
    f = np.asarray(nontarget, dtype=np.float64)
    rows, nt, nn = t.shape[0], t.shape[1], f.shape[1]
    scores = np.concatenate([t, f], axis=1)
    labels = np.concatenate([np.ones((rows, nt)), np.zeros((rows, nn))], axis=1)
    order = np.argsort(scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    lab = np.take_along_axis(labels, order, axis=1)
    miss = np.concatenate([np.zeros((rows, 1)), np.cumsum(lab, axis=1) / nt], axis=1)
    fa = np.concatenate([np.ones((rows, 1)), 1.0 - np.cumsum(1.0 - lab, axis=1) / nn], axis=1)
    end = np.ones((rows, nt + nn + 1), dtype=bool)
    end[:, 1:-1] = s[:, 1:] != s[:, :-1]  # a point exists only after the last of equal scores
    idx = np.maximum.accumulate(np.where(end, np.arange(nt + nn + 1), 0), axis=1)
    miss = np.take_along_axis(miss, idx, axis=1)
    fa = np.take_along_axis(fa, idx, axis=1)
    cross = np.argmax(miss >= fa, axis=1)  # >= 1: the start point has miss 0 < false alarm 1
    r = np.arange(rows)
    m0, a0, m1, a1 = miss[r, cross - 1], fa[r, cross - 1], miss[r, cross], fa[r, cross]
    u = (a0 - m0) / ((m1 - a1) - (m0 - a0))
    return m0 + u * (m1 - m0)


def eer(target_scores: Sequence[float] | np.ndarray, nontarget_scores: Sequence[float] | np.ndarray) -> float:
    """Equal error rate in percent (higher scores = more likely the same speaker), interpolated linearly at the
    crossing of the miss and false-alarm rates. ValueError when either list is empty."""
    import numpy as np

    t = np.asarray(target_scores, dtype=np.float64).ravel()
    f = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    if t.size == 0 or f.size == 0:
        raise ValueError("EER needs at least one target and one non-target score")
    if not (np.isfinite(t).all() and np.isfinite(f).all()):
        raise ValueError("EER scores must be finite")
    return float(100.0 * _eer_rows(t[None], f[None])[0])


def eer_ci(
    target_scores: Sequence[float] | np.ndarray, nontarget_scores: Sequence[float] | np.ndarray,
    resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the EER (percent): target and non-target trials resampled with
    replacement, independently, from a seeded generator (same inputs and seed, same interval)."""
    import numpy as np

    t = np.asarray(target_scores, dtype=np.float64).ravel()
    f = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    if t.size == 0 or f.size == 0:
        raise ValueError("EER needs at least one target and one non-target score")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("resamples must be at least 1 and level in (0, 1)")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, 250):  # bounded memory for large trial lists
        b = min(250, resamples - start)
        out.append(_eer_rows(t[rng.integers(0, t.size, (b, t.size))], f[rng.integers(0, f.size, (b, f.size))]))
    values = 100.0 * np.concatenate(out)
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


@dataclass
class LayerEER:
    """EER per layer (percent) with its confidence interval, over some trials; None when not measurable."""

    targets: int
    nontargets: int
    eer: list[float] | None = None
    ci: list[tuple[float, float]] | None = None
    reason: str = ""  # why not measurable

    @property
    def measurable(self) -> bool:
        return self.eer is not None

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "nontargets": self.nontargets, "measurable": self.measurable,
                "eer": self.eer, "ci": [list(c) for c in self.ci] if self.ci else None, "reason": self.reason}


def normalised_scores(trials: Trials) -> tuple[np.ndarray, np.ndarray]:
    """(target, non-target) scores of one round standardised per layer by the round's non-target scores (mean 0,
    standard deviation 1; a shift only when they do not vary). Monotone within the round, so the round's own EER
    is unchanged; it puts rounds on one scale (the global model, hence the score range, changes every round)."""
    import numpy as np

    mu = trials.nontarget.mean(axis=1, keepdims=True)
    sd = trials.nontarget.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return (trials.target - mu) / sd, (trials.nontarget - mu) / sd


def layer_eer(trials: Sequence[Trials], resamples: int = 1000, level: float = 0.95, seed: int = 0) -> LayerEER:
    """EER per layer (and CI) over the trials of one or more rounds (each round's scores `normalised_scores`
    first, so pooled rounds share a scale); not measurable below `MIN_TARGETS` target trials or without a
    non-target trial."""
    import numpy as np

    usable = [t for t in trials if t.target.size and t.nontarget.size]  # a lone client has no non-target
    nt = sum(t.target.shape[1] for t in usable)
    nn = sum(t.nontarget.shape[1] for t in usable)
    if nt < MIN_TARGETS or nn < 1:
        nt = max(nt, sum(t.target.shape[1] for t in trials if t.target.size))
        return LayerEER(nt, nn, reason=f"{nt} target trial{'s' if nt != 1 else ''} (at least {MIN_TARGETS} needed)"
                        if nt < MIN_TARGETS else "no non-target trial")
    scored = [normalised_scores(t) for t in usable]
    target = np.concatenate([t for t, _ in scored], axis=1)
    nontarget = np.concatenate([n for _, n in scored], axis=1)
    eers = [eer(target[l], nontarget[l]) for l in range(target.shape[0])]
    cis = [eer_ci(target[l], nontarget[l], resamples, level, seed + l) for l in range(target.shape[0])]
    return LayerEER(nt, nn, eers, cis)


__all__ = [
    "LayerEER", "MIN_TARGETS", "Trials", "cosine_scores", "eer", "eer_ci", "layer_eer", "make_trials",
    "normalised_scores",
]
