"""The partition schemes: ``partition(table, PartitionConfig(...))`` deals the corpus-train rows of a manifest
(see the `fedw2v.partition` docstring for which rows) to clients, then splits each client's utterances into its
local splits.

Schemes (``PartitionConfig.scheme``):

- ``speaker`` (default, the paper): one client per speaker of the train split.
- ``iid``: ``num_clients`` clients of (nearly) equal size, drawn at random; ``unit="speaker"`` deals whole
  speakers (equal numbers of speakers), ``unit="utterance"`` deals single utterances (equal numbers of them).
- ``dirichlet``: ``num_clients`` clients drawn with concentration ``alpha`` (small alpha = very unequal,
  large alpha = close to iid). ``unit="speaker"``: client shares ``q ~ Dir(alpha)``; each speaker goes whole to
  client k with probability ``q_k`` (quantity skew). ``unit="utterance"``: for each speaker its own shares
  ``q_s ~ Dir(alpha)`` split its (shuffled) utterances over the clients -- the label-skew scheme of Flower
  Datasets' ``DirichletPartitioner(partition_by="speaker")``, with the speaker as the label. In both, one
  randomly chosen unit is first dealt to each client so that no client is empty (Flower instead redraws until
  a minimum partition size is met, which never succeeds for small alpha with many clients).

Clients are numbered by decreasing total speech (client 0 has the most); ties are broken by the speaker id
(``speaker`` scheme) or by the draw order (``iid``/``dirichlet``), so the numbering is deterministic.

Local split of each client: its utterances, taken in ``utt_id`` order and shuffled with a generator of its own
(``numpy.random.default_rng(SeedSequence(seed, spawn_key=(domain, key)))``, where ``key`` is a hash of the
speaker id in the ``speaker`` scheme and the client number otherwise), are cut at
``round_half_up(n * train)`` and ``round_half_up(n * (train + dev))``: the first part is local train, then dev,
then test. A client with any data always gets at least one local train utterance; a client with no dev
utterance (e.g. a 2-utterance speaker at 80/10/10) is listed in ``stats.clients_without_dev`` (and in the
output metadata) so that training can skip local validation for it instead of dividing by zero. Because each
client has its own generator, a client's split does not depend on the other clients (in the ``speaker``
scheme not even on which other speakers exist).

Holdout (the data of the privacy analysis): a client whose total speech (all its utterances) is strictly
more than ``holdout_min_minutes`` moves part of its local *train* utterances -- never dev or test -- to
``holdout``: the shortest prefix of its shuffled local train list whose duration does not exceed
``holdout_minutes``, plus the one further local train utterance that brings the total closest to the target
if that improves it. So the holdout is within about half an utterance of the target (usually within a
second). At least one local train utterance always stays in train. ``holdout_minutes=0`` disables it.

Flower Datasets (``flwr-datasets``) is not used: no release of it installs against this project's pinned
versions (requirements/constraints.txt). 0.6.x needs ``datasets>=4``, and every ``datasets`` 4.x release
requires ``fsspec<=2026.2.0`` (pinned: 2026.9.0); 0.6.0 also needs ``rich<14`` (pinned: 14.3.4); 0.5.0 needs
``datasets<=3.1`` (``fsspec<=2024.9.0``); 0.4.0 and older need ``numpy<2`` (pinned: 2.4.6). Besides, its
partitioners take a Hugging Face ``datasets.Dataset`` rather than a pyarrow Table, assign whole rows to
partitions only (no per-client train/dev/test split, no holdout), and the Dirichlet one redraws until a
minimum size is met. The ``iid`` scheme reproduces ``IidPartitioner`` (shuffle, then equal contiguous chunks)
and ``dirichlet``/``utterance`` reproduces ``DirichletPartitioner``'s per-label split, in vectorised numpy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedw2v.config.options import option
from fedw2v.errors import UsageError
from fedw2v.partition.result import PartitionResult, build_result
from fedw2v.partition.train_rows import DEV, HOLDOUT, TEST, TRAIN, TrainRows, keep_largest

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

SCHEMES = ("speaker", "iid", "dirichlet")
UNITS = ("speaker", "utterance")

# Spawn-key domains, so that the draws of different purposes never share a stream.
_DOMAIN_SPEAKER_LOCAL = 0  # local split of a speaker-scheme client, keyed by a hash of the speaker id
_DOMAIN_ASSIGN = 1  # the iid / dirichlet assignment of units to clients
_DOMAIN_CLIENT_LOCAL = 2  # local split of an iid / dirichlet client, keyed by its client number


def parse_local_split(value: str) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``; ValueError naming the expected form (the rules are checked by
    PartitionConfig)."""
    parts = [p.strip() for p in value.split(",")]
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"local split must be 3 comma-separated numbers (train,dev,test) like 0.8,0.1,0.1, got {value!r}"
        ) from None
    return numbers


@dataclass(frozen=True)
class PartitionConfig:
    scheme: str = option("speaker", "speaker (the paper: one client per speaker) | iid | dirichlet.",
                         choices=SCHEMES)
    num_clients: int | None = option(None, "Number of clients (iid, dirichlet).")
    alpha: float = option(0.5, "Dirichlet concentration (dirichlet): small = unequal clients, large = near iid.")
    unit: str = option("speaker", "What iid/dirichlet deal to clients: speaker (whole speakers) | utterance.",
                       choices=UNITS)
    local_split: tuple[float, float, float] = option((0.8, 0.1, 0.1), "Each client's local train,dev,test "
                                                     "fractions.", parse=parse_local_split)
    holdout_minutes: float = option(5.0, "Minutes of local train held out (never trained on) per client; 0: none.")
    holdout_min_minutes: float = option(10.0, "Only clients with more speech than this many minutes get a "
                                              "holdout.")
    max_clients: int | None = option(None, "Keep only the K clients with the most speech.")
    seed: int = option(0, "Random seed (same inputs and seed, same clients).")

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, not {self.scheme!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {self.unit!r}")
        if self.scheme == "speaker":
            if self.num_clients is not None:
                raise ValueError(
                    "num clients applies to the iid and dirichlet schemes only (speaker makes one client per "
                    "speaker; use max clients to keep the largest)"
                )
        elif self.num_clients is None or self.num_clients < 1:
            raise ValueError(f"the {self.scheme} scheme needs num clients >= 1, got {self.num_clients}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
        split = tuple(self.local_split)
        if (
            len(split) != 3
            or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in split)
            or abs(sum(split) - 1.0) > 1e-6
        ):
            raise ValueError(
                f"local split must be 3 non-negative numbers (train, dev, test) summing to 1, got {self.local_split}"
            )
        if split[0] <= 0:
            raise ValueError(f"local split must give local train a fraction > 0, got {self.local_split}")
        object.__setattr__(self, "local_split", tuple(float(x) for x in split))
        for name in ("holdout_minutes", "holdout_min_minutes"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value}")
        if self.max_clients is not None and self.max_clients < 1:
            raise ValueError(f"max clients must be >= 1, got {self.max_clients}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed}")


# ----------------------------------------------------------------------------------------------------------
# Public entry point


def partition(table: pa.Table, config: PartitionConfig, *, source: str = "manifest") -> PartitionResult:
    """Assign the corpus-train rows of ``table`` to clients and local splits (see the module docstring).

    Pure: no printing, no file I/O. Raises ManifestError for missing columns or bad values, InputError for an
    empty train split, UsageError when num_clients exceeds the units there are to deal.
    """
    import numpy as np

    train = TrainRows.of(table, source)
    if config.scheme == "speaker":
        # speaker codes follow the sorted speaker ids: equal speech -> the smaller speaker id comes first
        pre_client, n_pre = train.speaker_code, len(train.speakers)
    else:
        # draw numbers: equal speech -> the smaller draw number comes first
        pre_client, n_pre = _assign(train, config, source), int(config.num_clients or 0)
    client = _renumber_by_speech(pre_client, train.duration, n_pre)
    n_clients = int(client.max()) + 1
    if config.scheme == "speaker":
        # the speaker of each new client number -> a key that depends on the speaker id only
        speaker_of_client = np.empty(n_clients, dtype=np.int64)
        speaker_of_client[client] = train.speaker_code
        keys = [_stable_key(train.speakers[s]) for s in speaker_of_client]
        domain = _DOMAIN_SPEAKER_LOCAL
    else:
        keys = list(range(n_clients))
        domain = _DOMAIN_CLIENT_LOCAL
    client, dropped = keep_largest(client, train.duration, config.max_clients)
    local = _local_splits(client, train, keys, domain, config)
    extra = {
        "scheme": config.scheme,
        "local_split": list(config.local_split),
        "holdout_minutes": config.holdout_minutes,
        "holdout_min_minutes": config.holdout_min_minutes,
        "max_clients": config.max_clients,
    }
    if config.scheme != "speaker":
        extra.update(num_clients=config.num_clients, unit=config.unit)
    if config.scheme == "dirichlet":
        extra["alpha"] = config.alpha
    return build_result(table, train, client, local, dropped, config.scheme, config.max_clients, extra, config=config)


# ----------------------------------------------------------------------------------------------------------
# Assignment


def _rng(seed: int, *key: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _stable_key(text: str) -> int:
    """A 64-bit key that depends only on ``text`` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _equal_chunks(n_items: int, n_parts: int) -> np.ndarray:
    """Part of each of n_items consecutive items, in np.array_split's sizes (the first parts one larger)."""
    import numpy as np

    base, extra = divmod(n_items, n_parts)
    sizes = np.full(n_parts, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.repeat(np.arange(n_parts, dtype=np.int64), sizes)


def _assign(train: TrainRows, config: PartitionConfig, source: str) -> np.ndarray:
    """Draw number (0..num_clients-1) per train row for the iid / dirichlet schemes."""
    import numpy as np

    n = config.num_clients
    assert n is not None
    rng = _rng(config.seed, _DOMAIN_ASSIGN)
    n_speakers = len(train.speakers)
    n_rows = len(train.rows)
    if config.unit == "speaker":
        if n > n_speakers:
            raise UsageError(
                f"{source}: num clients {n} is more than the {n_speakers} speakers of the train split",
                hint="lower --num-clients or use --unit utterance",
            )
        perm = rng.permutation(n_speakers)  # speakers are sorted by id: a canonical order to draw from
        of_speaker = np.empty(n_speakers, dtype=np.int64)
        if config.scheme == "iid":
            of_speaker[perm] = _equal_chunks(n_speakers, n)
        else:
            shares = rng.dirichlet(np.full(n, config.alpha))
            of_speaker[perm[:n]] = np.arange(n)  # one speaker dealt to each client first
            of_speaker[perm[n:]] = rng.choice(n, size=n_speakers - n, p=shares / shares.sum())
        return of_speaker[train.speaker_code]
    if n > n_rows:
        raise UsageError(f"{source}: num clients {n} is more than the {n_rows} utterances of the train split")
    by_id = np.argsort(train.utt_rank)  # train rows in utt_id order
    perm = by_id[rng.permutation(n_rows)]
    out = np.empty(n_rows, dtype=np.int64)
    if config.scheme == "iid":
        out[perm] = _equal_chunks(n_rows, n)
        return out
    # dirichlet over utterances, the speaker as the label (Flower's DirichletPartitioner, partition_by=speaker)
    out[perm[:n]] = np.arange(n)  # one utterance dealt to each client first
    rest = perm[n:]
    shares = rng.dirichlet(np.full(n, config.alpha), size=n_speakers)  # one row of shares per speaker
    spk = train.speaker_code[rest]
    grouped = rest[np.argsort(spk, kind="stable")]  # by speaker, in the drawn order within each speaker
    counts = np.bincount(spk, minlength=n_speakers)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    for s in np.flatnonzero(counts):
        m = int(counts[s])
        bounds = (np.cumsum(shares[s]) * m).astype(np.int64)[:-1]  # Flower's split points
        out[grouped[starts[s] : starts[s] + m]] = np.searchsorted(bounds, np.arange(m), side="right")
    return out


def _renumber_by_speech(pre: np.ndarray, duration: np.ndarray, n_pre: int) -> np.ndarray:
    """New client numbers: by decreasing total duration, ties by the old number (ascending). Empty groups
    vanish."""
    import numpy as np

    totals = np.bincount(pre, weights=duration, minlength=n_pre)
    sizes = np.bincount(pre, minlength=n_pre)
    order = np.lexsort((np.arange(n_pre), -totals))
    order = order[sizes[order] > 0]
    new = np.full(n_pre, -1, dtype=np.int64)
    new[order] = np.arange(len(order))
    return new[pre]


# ----------------------------------------------------------------------------------------------------------
# Local splits and holdout


def _split_counts(counts: np.ndarray, fractions: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Local train/dev/test sizes per client: cut points round_half_up(n*train), round_half_up(n*(train+dev));
    at least one train utterance when n >= 1."""
    import numpy as np

    total = sum(fractions)
    f_train, f_dev = fractions[0] / total, fractions[1] / total
    cut1 = np.floor(counts * f_train + 0.5 + 1e-9).astype(np.int64)
    cut2 = np.floor(counts * (f_train + f_dev) + 0.5 + 1e-9).astype(np.int64)
    cut1 = np.minimum(np.maximum(cut1, np.minimum(counts, 1)), counts)
    cut2 = np.minimum(np.maximum(cut2, cut1), counts)
    return cut1, cut2 - cut1, counts - cut2


def _pick_holdout(durations: np.ndarray, target: float) -> np.ndarray:
    """Positions (into the shuffled local-train list) to hold out: the longest prefix not above ``target``
    seconds, plus the one further utterance that brings the sum closest to the target when that helps.
    At least one utterance is left."""
    import numpy as np

    cap = len(durations) - 1
    if cap <= 0 or target <= 0:
        return np.empty(0, dtype=np.int64)
    cum = np.cumsum(durations[:cap])
    k = int(np.searchsorted(cum, target, side="right"))
    base = float(cum[k - 1]) if k else 0.0
    chosen = np.arange(k, dtype=np.int64)
    if k < cap:
        rest = durations[k:]
        gaps = np.abs(base + rest - target)
        j = int(np.argmin(gaps))
        if gaps[j] < target - base:
            chosen = np.append(chosen, k + j)
    return chosen


def _local_splits(
    client: np.ndarray, train: TrainRows, keys: list[int], domain: int, config: PartitionConfig
) -> np.ndarray:
    """Local split code per train row (-1 where client is -1)."""
    import numpy as np

    local = np.full(len(client), -1, dtype=np.int8)
    rows = np.flatnonzero(client >= 0)
    if rows.size == 0:
        return local
    n_clients = int(client.max()) + 1
    order = rows[np.lexsort((train.utt_rank[rows], client[rows]))]  # by client, utt_id order inside
    c_sorted = client[order]
    counts = np.bincount(c_sorted, minlength=n_clients)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    random_keys = np.empty(len(order))
    for c in np.flatnonzero(counts):
        random_keys[starts[c] : starts[c] + counts[c]] = _rng(config.seed, domain, keys[c]).random(int(counts[c]))
    shuffled = order[np.lexsort((random_keys, c_sorted))]  # still grouped by client (c_sorted is sorted)
    position = np.arange(len(shuffled)) - starts[c_sorted]
    n_train, n_dev, _ = _split_counts(counts, config.local_split)
    code = np.where(
        position < n_train[c_sorted], TRAIN, np.where(position < (n_train + n_dev)[c_sorted], DEV, TEST)
    ).astype(np.int8)
    if config.holdout_minutes > 0:
        totals = np.bincount(c_sorted, weights=train.duration[order], minlength=n_clients)
        target = config.holdout_minutes * 60.0
        for c in np.flatnonzero(totals > config.holdout_min_minutes * 60.0):
            start = int(starts[c])
            seg = shuffled[start : start + int(n_train[c])]
            picked = _pick_holdout(train.duration[seg], target)
            code[start + picked] = HOLDOUT
    local[shuffled] = code
    return local
