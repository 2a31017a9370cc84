"""Clients from a manifest: which utterance of the corpus ``train`` split belongs to which client, and to which
of the client's local splits (``train`` / ``dev`` / ``test`` / ``holdout``).

Only rows of the corpus ``train`` split are assigned. Rows of the corpus ``dev`` and ``test`` splits are returned
unchanged (they are the server's evaluation sets). A train row that ends up in no client (dropped by
``max_clients``, absent from imported lists, or an imported duplicate under the ``drop`` policy) gets
``client_id`` null and ``local_split`` null, and is counted in the stats.

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

Imported lists (``import_lists``): the authors' ``client_<k>/`` folders; see its docstring.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.errors import InputError, ManifestError, UsageError
from fedw2v.manifest import LOCAL_SPLITS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

SCHEMES = ("speaker", "iid", "dirichlet")
UNITS = ("speaker", "utterance")
DUPLICATE_POLICIES = ("first", "drop")
NEEDED_COLUMNS = ("utt_id", "speaker", "split", "duration")

# Local split codes used internally (index into LOCAL_SPLITS); -1 = no client.
TRAIN, DEV, TEST, HOLDOUT = range(4)
assert LOCAL_SPLITS == ("train", "dev", "test", "holdout")

# Spawn-key domains, so that the draws of different purposes never share a stream.
_DOMAIN_SPEAKER_LOCAL = 0  # local split of a speaker-scheme client, keyed by a hash of the speaker id
_DOMAIN_ASSIGN = 1  # the iid / dirichlet assignment of units to clients
_DOMAIN_CLIENT_LOCAL = 2  # local split of an iid / dirichlet client, keyed by its client number

# The authors' list files (one client folder) and the column read from them.
LIST_TRAIN, LIST_DEV, LIST_TEST = "ted_train.csv", "ted_dev.csv", "ted_test.csv"
LIST_HOLDOUT, LIST_TRAIN_WITHOUT_HOLDOUT = "ted_train_full5.csv", "ted_train_wo5.csv"
LIST_ID_COLUMN = "ID"
_CLIENT_DIR = re.compile(r"^client_(\d+)$")


@dataclass(frozen=True)
class PartitionConfig:
    scheme: str = "speaker"  # speaker (one client per speaker, the paper) | iid | dirichlet
    num_clients: int | None = None  # number of clients for iid / dirichlet (speaker: one per speaker)
    alpha: float = 0.5  # Dirichlet concentration (dirichlet only): small = unequal, large = close to iid
    unit: str = "speaker"  # what iid / dirichlet deal to clients: whole speakers | single utterances
    local_split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # local train / dev / test fractions
    holdout_minutes: float = 5.0  # minutes of local train held out per eligible client (0: no holdout)
    holdout_min_minutes: float = 10.0  # only clients with strictly more speech than this get a holdout
    max_clients: int | None = None  # keep only the K largest clients (the others' rows get no client)
    seed: int = 0  # same inputs and seed -> same assignment

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


@dataclass(frozen=True)
class Spread:
    """min / median / max / total of a per-client quantity."""

    min: float
    median: float
    max: float
    total: float

    @classmethod
    def of(cls, values: Any) -> Spread:
        import numpy as np

        v = np.asarray(values, dtype=float)
        if v.size == 0:
            return cls(0.0, 0.0, 0.0, 0.0)
        return cls(float(v.min()), float(np.median(v)), float(v.max()), float(v.sum()))


@dataclass(frozen=True)
class PartitionStats:
    """The summary the CLI prints (and the metadata records)."""

    scheme: str  # speaker | iid | dirichlet | lists
    clients: int  # clients kept (each has at least one utterance)
    utterances: Spread  # utterances per client (all local splits)
    minutes: Spread  # minutes of speech per client (all local splits)
    train_minutes: Spread  # minutes of local train per client (holdout excluded)
    local_utterances: dict[str, int]  # local split -> utterances over all kept clients
    clients_with_holdout: int
    holdout_minutes: Spread  # over the clients with a holdout
    clients_without_dev: tuple[int, ...]  # client ids with no local dev utterance
    clients_without_train: tuple[int, ...]  # client ids with no local train utterance (only possible on import)
    max_clients: int | None
    dropped_clients: int  # clients left out by max_clients
    dropped_utterances: int
    dropped_minutes: float
    unassigned_utterances: int  # corpus-train rows with no client (dropped ones included)
    unassigned_minutes: float


@dataclass(frozen=True)
class ImportReport:
    """What `import_lists` found besides the clients: nothing is dropped without being counted here."""

    lists_dir: str
    list_clients: int  # client_<k> folders read
    list_rows: int  # ids read from all the CSV files (holdout counted once per client)
    clients_with_wo5: int  # client folders that had ted_train_wo5.csv
    clients_with_full5: int  # client folders that had ted_train_full5.csv
    duplicate_policy: str  # first (the lowest client number, then train/dev/test/holdout, wins) | drop
    duplicate_ids: int  # distinct ids listed more than once
    duplicate_ids_across_clients: int  # of those, ids listed in more than one client
    duplicate_rows_ignored: int  # list rows not used because of the policy
    duplicate_examples: tuple[str, ...]
    unmatched_ids: int  # distinct ids (after the policy) not found in the manifest
    unmatched_examples: tuple[str, ...]
    outside_train_ids: int  # distinct ids found in the manifest's corpus dev/test split (ignored)
    matched_ids: int  # distinct ids assigned to a client


@dataclass(frozen=True)
class PartitionResult:
    table: pa.Table  # the input manifest with client_id / local_split filled for the corpus train rows
    clients: pa.Table  # one row per kept client (see CLIENT_COLUMNS)
    stats: PartitionStats
    config: PartitionConfig | None = None  # None for an import
    imported: ImportReport | None = None  # set by import_lists
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for the manifest metadata

    @property
    def minutes_per_client(self) -> list[float]:
        return self.clients.column("minutes").to_pylist()


CLIENT_COLUMNS = (
    "client_id", "speakers", "utterances", "minutes",
    "train_utterances", "train_minutes", "dev_utterances", "dev_minutes",
    "test_utterances", "test_minutes", "holdout_utterances", "holdout_minutes",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def partition(table: pa.Table, config: PartitionConfig, *, source: str = "manifest") -> PartitionResult:
    """Assign the corpus-train rows of ``table`` to clients and local splits (see the module docstring).

    Pure: no printing, no file I/O. Raises ManifestError for missing columns or bad values, InputError for an
    empty train split, UsageError when num_clients exceeds the units there are to deal.
    """
    import numpy as np

    train = _TrainRows.of(table, source)
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
    client, dropped = _keep_largest(client, train.duration, config.max_clients)
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
    return _result(table, train, client, local, dropped, config.scheme, config.max_clients, extra, config=config)


def import_lists(
    table: pa.Table,
    lists_dir: str | Path,
    duplicate_policy: str = "first",
    *,
    max_clients: int | None = None,
    source: str = "manifest",
) -> PartitionResult:
    """Import the authors' client lists: ``lists_dir/client_<k>/ted_{train,dev,test}.csv`` (+ optional
    ``ted_train_full5.csv`` and ``ted_train_wo5.csv``), each with a column ``ID`` = ``<talk>_<start>_<end>``
    (other columns are ignored).

    Client ``k`` comes from the folder name. Per client: ``ted_train_full5.csv`` rows -> ``holdout``;
    ``ted_train_wo5.csv`` rows (if the file exists), else ``ted_train.csv`` rows minus the holdout ids ->
    ``train``; ``ted_dev.csv`` -> ``dev``; ``ted_test.csv`` -> ``test``. The ids are matched exactly to the
    manifest's ``utt_id``. An id listed more than once (in one client or in several) is a duplicate:
    ``duplicate_policy="first"`` keeps its first listing (lowest client number, then the order train, dev,
    test, holdout), ``"drop"`` leaves the utterance without a client. Ids absent from the manifest, and ids of
    its corpus dev/test split, are ignored. All of these are counted in ``result.imported``; corpus-train rows
    that no list names get no client and are counted in ``result.stats.unassigned_utterances``.
    ``max_clients`` keeps the K clients with the most speech (client ids stay the authors').

    Raises InputError for a missing directory, no ``client_*`` folder, a bad folder name, a missing or
    unreadable CSV, a CSV without ``ID``, or when no listed id matches a corpus-train utterance.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if duplicate_policy not in DUPLICATE_POLICIES:
        raise UsageError(f"duplicate policy must be one of {', '.join(DUPLICATE_POLICIES)}, not {duplicate_policy!r}")
    if max_clients is not None and max_clients < 1:
        raise UsageError(f"max clients must be >= 1, got {max_clients}")
    train = _TrainRows.of(table, source)
    lists_dir = Path(lists_dir)
    folders = _client_folders(lists_dir)

    ids: list[pa.Array] = []
    row_client: list[np.ndarray] = []
    row_local: list[np.ndarray] = []
    with_wo5 = with_full5 = 0
    for k, folder in folders:
        holdout = _read_ids(folder / LIST_HOLDOUT) if (folder / LIST_HOLDOUT).is_file() else pa.array([], pa.string())
        with_full5 += (folder / LIST_HOLDOUT).is_file()
        if (folder / LIST_TRAIN_WITHOUT_HOLDOUT).is_file():
            with_wo5 += 1
            local_train = _read_ids(folder / LIST_TRAIN_WITHOUT_HOLDOUT)
        else:
            local_train = _read_ids(folder / LIST_TRAIN)
            if len(holdout):
                local_train = local_train.filter(pc.invert(pc.is_in(local_train, value_set=holdout)))
        parts = (local_train, _read_ids(folder / LIST_DEV), _read_ids(folder / LIST_TEST), holdout)
        for code, arr in enumerate(parts):
            ids.append(arr)
            row_client.append(np.full(len(arr), k, dtype=np.int64))
            row_local.append(np.full(len(arr), code, dtype=np.int8))
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    r_client = np.concatenate(row_client) if row_client else np.empty(0, np.int64)
    r_local = np.concatenate(row_local) if row_local else np.empty(0, np.int8)
    n_rows = len(all_ids)

    # duplicates: the rows are in policy order (client number, then train/dev/test/holdout)
    enc = pc.dictionary_encode(all_ids)
    code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = enc.dictionary
    counts = np.bincount(code, minlength=len(dictionary))
    dup_codes = np.flatnonzero(counts > 1)
    dup_rows = counts[code] > 1
    width = int(r_client.max(initial=0)) + 1  # (id, client) pairs as one integer
    pairs = np.unique(code[dup_rows] * width + r_client[dup_rows])
    across = int((np.bincount(pairs // width, minlength=len(dictionary)) > 1).sum())
    if duplicate_policy == "first":
        _, first = np.unique(code, return_index=True)
        keep = np.zeros(n_rows, dtype=bool)
        keep[first] = True
    else:
        keep = counts[code] == 1
    ignored = int(n_rows - keep.sum())

    kept_ids = all_ids.filter(pa.array(keep))
    k_client, k_local = r_client[keep], r_local[keep]
    pos = pc.index_in(kept_ids, value_set=train.all_utt_ids)
    found = pos.is_valid().to_numpy(zero_copy_only=False)
    pos_np = pos.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    train_index = np.full(len(train.all_utt_ids), -1, dtype=np.int64)
    train_index[train.rows] = np.arange(len(train.rows))
    t_index = np.where(found, train_index[pos_np], -1)
    in_train = t_index >= 0
    unmatched = ~found
    outside = found & ~in_train
    if not in_train.any():
        example = kept_ids[0].as_py() if len(kept_ids) else None
        raise InputError(
            f"{lists_dir}: none of the {n_rows} listed ids matches an utterance of the {source}'s corpus train split"
            + (f" (e.g. {example!r})" if example else ""),
            hint="the ids must be <talk>_<start>_<end> with the times as written in the STM",
        )
    client = np.full(len(train.rows), -1, dtype=np.int64)
    local = np.full(len(train.rows), -1, dtype=np.int8)
    client[t_index[in_train]] = k_client[in_train]
    local[t_index[in_train]] = k_local[in_train]
    client, dropped = _keep_largest(client, train.duration, max_clients, renumbered=False)
    local[client < 0] = -1

    report = ImportReport(
        lists_dir=str(lists_dir),
        list_clients=len(folders),
        list_rows=n_rows,
        clients_with_wo5=with_wo5,
        clients_with_full5=with_full5,
        duplicate_policy=duplicate_policy,
        duplicate_ids=len(dup_codes),
        duplicate_ids_across_clients=across,
        duplicate_rows_ignored=ignored,
        duplicate_examples=tuple(dictionary.take(pa.array(dup_codes[:5])).to_pylist()),
        unmatched_ids=int(unmatched.sum()),
        unmatched_examples=tuple(kept_ids.filter(pa.array(unmatched)).slice(0, 5).to_pylist()),
        outside_train_ids=int(outside.sum()),
        matched_ids=int(in_train.sum()),
    )
    extra = {
        "scheme": "lists",
        "lists_dir": str(lists_dir),
        "duplicate_policy": duplicate_policy,
        "max_clients": max_clients,
        "duplicate_ids": report.duplicate_ids,
        "unmatched_ids": report.unmatched_ids,
        "outside_train_ids": report.outside_train_ids,
    }
    return _result(table, train, client, local, dropped, "lists", max_clients, extra, imported=report)


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


# ----------------------------------------------------------------------------------------------------------
# The corpus-train rows


@dataclass
class _TrainRows:
    rows: np.ndarray  # row numbers of the corpus-train rows in the table
    speakers: list[str]  # distinct speakers of the train split, sorted
    speaker_code: np.ndarray  # per train row: index into speakers
    utt_rank: np.ndarray  # per train row: rank of its utt_id among the train rows (the canonical order)
    duration: np.ndarray  # per train row, seconds
    all_utt_ids: pa.Array  # utt_id of every table row

    @classmethod
    def of(cls, table: pa.Table, source: str) -> _TrainRows:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        missing = [c for c in NEEDED_COLUMNS if c not in table.column_names]
        if missing:
            raise ManifestError(
                f"{source}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"missing (partition needs {', '.join(NEEDED_COLUMNS)})",
                hint="make the manifest with `fedw2v prepare`",
            )
        for c in NEEDED_COLUMNS:
            if table.column(c).null_count:
                raise ManifestError(f"{source}: column {c!r} has {table.column(c).null_count} empty values")
        split = table.column("split").combine_chunks()
        mask = pc.equal(split, "train")
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if rows.size == 0:
            raise InputError(
                f"{source}: the corpus train split is empty (partition makes clients from train utterances)",
                hint="prepare the manifest with --splits including train",
            )
        take = pa.array(rows)
        utt = table.column("utt_id").combine_chunks()
        spk = table.column("speaker").combine_chunks().take(take)
        duration = table.column("duration").combine_chunks().take(take).to_numpy(zero_copy_only=False)
        duration = np.asarray(duration, dtype=np.float64)
        bad = ~(np.isfinite(duration) & (duration > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ManifestError(
                f"{source}: utterance {utt[int(rows[i])].as_py()!r} has duration {duration[i]} (need > 0 seconds)"
            )
        speakers = pc.unique(spk)
        speakers = speakers.take(pc.sort_indices(speakers))
        code = pc.index_in(spk, value_set=speakers).to_numpy(zero_copy_only=False).astype(np.int64)
        order = pc.sort_indices(utt.take(take)).to_numpy(zero_copy_only=False)
        rank = np.empty(len(rows), dtype=np.int64)
        rank[order] = np.arange(len(rows))
        return cls(rows, speakers.to_pylist(), code, rank, duration, utt)


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


def _assign(train: _TrainRows, config: PartitionConfig, source: str) -> np.ndarray:
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


def _keep_largest(
    client: np.ndarray, duration: np.ndarray, max_clients: int | None, renumbered: bool = True
) -> tuple[np.ndarray, tuple[int, int, float]]:
    """Keep the ``max_clients`` clients with the most speech; the others' rows get -1.

    Returns the new client array and (dropped clients, dropped utterances, dropped seconds)."""
    import numpy as np

    if max_clients is None:
        return client, (0, 0, 0.0)
    has = client >= 0
    if renumbered:  # numbers are already by decreasing speech
        drop_row = has & (client >= max_clients)
        n_clients = int(client.max(initial=-1)) + 1
    else:
        totals = np.bincount(client[has], weights=duration[has])
        ids = np.flatnonzero(np.bincount(client[has]))
        order = ids[np.lexsort((ids, -totals[ids]))]
        keep = np.zeros(len(totals), dtype=bool)
        keep[order[:max_clients]] = True
        drop_row = has & ~keep[np.where(has, client, 0)]
        n_clients = len(ids)
    out = np.where(drop_row, -1, client)
    return out, (max(0, n_clients - max_clients), int(drop_row.sum()), float(duration[drop_row].sum()))


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
    client: np.ndarray, train: _TrainRows, keys: list[int], domain: int, config: PartitionConfig
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


# ----------------------------------------------------------------------------------------------------------
# Lists


def _client_folders(lists_dir: Path) -> list[tuple[int, Path]]:
    if not lists_dir.exists():
        raise InputError(f"{lists_dir}: no such lists directory")
    if not lists_dir.is_dir():
        raise InputError(f"{lists_dir}: not a directory (--from-lists wants the folder holding client_<k>/)")
    folders = []
    for p in lists_dir.iterdir():
        if not p.name.startswith("client_") or not p.is_dir():
            continue
        m = _CLIENT_DIR.match(p.name)
        if not m:
            raise InputError(f"{p}: client folder name must be client_<number>")
        folders.append((int(m.group(1)), p))
    if not folders:
        raise InputError(
            f"{lists_dir}: no client_* folders",
            hint="expected client_<k>/ted_train.csv, ted_dev.csv, ted_test.csv as in the authors' lists",
        )
    folders.sort()
    for (a, pa_), (b, pb) in zip(folders, folders[1:]):
        if a == b:
            raise InputError(f"{pa_} and {pb} are the same client {a}")
    return folders


def _read_ids(path: Path) -> pa.Array:
    """The ``ID`` column of one list CSV (whitespace trimmed); InputError when missing or unreadable."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    if not path.is_file():
        raise InputError(f"{path}: list file missing", hint="every client_<k> folder needs ted_train/dev/test.csv")
    try:
        table = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(
                include_columns=[LIST_ID_COLUMN], column_types={LIST_ID_COLUMN: pa.string()}, strings_can_be_null=False
            ),
        )
    except KeyError:  # pyarrow's ArrowKeyError: the column is not in the header
        raise InputError(f"{path}: no {LIST_ID_COLUMN!r} column in the header") from None
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable CSV list ({first})") from None
    ids = pc.utf8_trim_whitespace(table.column(LIST_ID_COLUMN).combine_chunks())
    return ids.filter(pc.not_equal(ids, ""))


# ----------------------------------------------------------------------------------------------------------
# Output table and stats


def _result(
    table: pa.Table,
    train: _TrainRows,
    client: np.ndarray,
    local: np.ndarray,
    dropped: tuple[int, int, float],
    scheme: str,
    max_clients: int | None,
    extra: dict[str, Any],
    *,
    config: PartitionConfig | None = None,
    imported: ImportReport | None = None,
) -> PartitionResult:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from fedw2v import manifest

    sch = manifest.schema()
    n = table.num_rows
    train_mask = np.zeros(n, dtype=bool)
    train_mask[train.rows] = True
    mask = pa.array(train_mask)
    none = client < 0
    new_client = pa.array(client.astype(np.int32), type=pa.int32(), mask=none)
    new_local = pa.array(list(LOCAL_SPLITS), pa.string()).take(pa.array(np.where(none, 0, local), mask=none))

    def replaced(name: str, values: pa.Array) -> pa.Array:
        if name in table.column_names:
            old = table.column(name).combine_chunks()
            if pa.types.is_null(old.type):
                old = pa.nulls(n, type=values.type)
            return pc.replace_with_mask(old.cast(values.type), mask, values)
        return pc.replace_with_mask(pa.nulls(n, type=values.type), mask, values)

    out = table
    for name, values in (("client_id", new_client), ("local_split", new_local)):
        col = replaced(name, values)
        if name in out.column_names:
            out = out.set_column(out.column_names.index(name), sch.field(name), col)
        else:
            out = out.append_column(sch.field(name), col)

    clients = _client_table(client, local, train)
    stats = _stats(clients, client, train, dropped, scheme, max_clients)
    extra = {**extra, "clients": stats.clients, "clients_without_dev": list(stats.clients_without_dev)}
    return PartitionResult(out, clients, stats, config=config, imported=imported, extra=extra)


def _client_table(client: np.ndarray, local: np.ndarray, train: _TrainRows) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    has = client >= 0
    c, loc, dur = client[has], local[has], train.duration[has]
    ids = np.flatnonzero(np.bincount(c)) if c.size else np.empty(0, np.int64)
    size = int(c.max()) + 1 if c.size else 0
    cols: dict[str, Any] = {"client_id": pa.array(ids.astype(np.int32), pa.int32())}
    pairs = np.unique(c * (len(train.speakers) + 1) + train.speaker_code[has]) if c.size else np.empty(0, np.int64)
    cols["speakers"] = pa.array(np.bincount(pairs // (len(train.speakers) + 1), minlength=size)[ids].astype(np.int32))
    cols["utterances"] = pa.array(np.bincount(c, minlength=size)[ids])
    cols["minutes"] = pa.array(np.bincount(c, weights=dur, minlength=size)[ids] / 60.0)
    for code, name in enumerate(LOCAL_SPLITS):
        sel = loc == code
        cols[f"{name}_utterances"] = pa.array(np.bincount(c[sel], minlength=size)[ids])
        cols[f"{name}_minutes"] = pa.array(np.bincount(c[sel], weights=dur[sel], minlength=size)[ids] / 60.0)
    return pa.table({name: cols[name] for name in CLIENT_COLUMNS})


def _stats(
    clients: pa.Table,
    client: np.ndarray,
    train: _TrainRows,
    dropped: tuple[int, int, float],
    scheme: str,
    max_clients: int | None,
) -> PartitionStats:

    def col(name: str) -> np.ndarray:
        return clients.column(name).to_numpy()

    ids = col("client_id")
    holdout = col("holdout_utterances") > 0
    none = client < 0
    return PartitionStats(
        scheme=scheme,
        clients=clients.num_rows,
        utterances=Spread.of(col("utterances")),
        minutes=Spread.of(col("minutes")),
        train_minutes=Spread.of(col("train_minutes")),
        local_utterances={name: int(col(f"{name}_utterances").sum()) for name in LOCAL_SPLITS},
        clients_with_holdout=int(holdout.sum()),
        holdout_minutes=Spread.of(col("holdout_minutes")[holdout]),
        clients_without_dev=tuple(int(i) for i in ids[col("dev_utterances") == 0]),
        clients_without_train=tuple(int(i) for i in ids[col("train_utterances") == 0]),
        max_clients=max_clients,
        dropped_clients=dropped[0],
        dropped_utterances=dropped[1],
        dropped_minutes=dropped[2] / 60.0,
        unassigned_utterances=int(none.sum()),
        unassigned_minutes=float(train.duration[none].sum()) / 60.0,
    )
