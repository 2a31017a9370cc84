"""Import the authors' client lists (``fedw2v partition --from-lists``): the ``client_<k>/`` folders of CSV files
that name, by utterance id, each client's local train / dev / test / holdout utterances.

One function per step: read the lists (`_read_lists`: every listed id with its client and local split, in the
order of the duplicate policy), resolve ids listed more than once (`_resolve_duplicates`), match the ids to the
manifest's corpus-train rows (`_match_ids`), then count in an `ImportReport` everything that was not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.errors import InputError, UsageError
from fedw2v.partition.result import PartitionResult, build_result
from fedw2v.partition.train_rows import TrainRows, keep_largest

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

DUPLICATE_POLICIES = ("first", "drop")

# The authors' list files (one client folder) and the column read from them.
LIST_TRAIN, LIST_DEV, LIST_TEST = "ted_train.csv", "ted_dev.csv", "ted_test.csv"
LIST_HOLDOUT, LIST_TRAIN_WITHOUT_HOLDOUT = "ted_train_full5.csv", "ted_train_wo5.csv"
LIST_ID_COLUMN = "ID"
_CLIENT_DIR = re.compile(r"^client_(\d+)$")


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
    if duplicate_policy not in DUPLICATE_POLICIES:
        raise UsageError(f"duplicate policy must be one of {', '.join(DUPLICATE_POLICIES)}, not {duplicate_policy!r}")
    if max_clients is not None and max_clients < 1:
        raise UsageError(f"max clients must be >= 1, got {max_clients}")
    train = TrainRows.of(table, source)
    lists_dir = Path(lists_dir)
    listed = _read_lists(lists_dir)
    duplicates = _resolve_duplicates(listed, duplicate_policy)
    matches = _match_ids(listed, duplicates.keep, train, lists_dir, source)
    client, dropped = keep_largest(matches.client, train.duration, max_clients, renumbered=False)
    local = matches.local
    local[client < 0] = -1  # the rows of the clients that max_clients left out
    report = _report(lists_dir, duplicate_policy, listed, duplicates, matches)
    extra = {
        "scheme": "lists",
        "lists_dir": str(lists_dir),
        "duplicate_policy": duplicate_policy,
        "max_clients": max_clients,
        "duplicate_ids": report.duplicate_ids,
        "unmatched_ids": report.unmatched_ids,
        "outside_train_ids": report.outside_train_ids,
    }
    return build_result(table, train, client, local, dropped, "lists", max_clients, extra, imported=report)


# ----------------------------------------------------------------------------------------------------------
# Reading the lists


@dataclass(frozen=True)
class _Listed:
    """Every id read from the lists, in the policy's order: client number, then train, dev, test, holdout."""

    ids: pa.Array  # string
    client: np.ndarray  # per id: the number of its client folder
    local: np.ndarray  # per id: its local split code (train, dev, test, holdout = 0..3)
    folders: int  # client folders read
    with_wo5: int  # of those, folders with ted_train_wo5.csv
    with_full5: int  # folders with ted_train_full5.csv


def _read_lists(lists_dir: Path) -> _Listed:
    import numpy as np
    import pyarrow as pa

    folders = _client_folders(lists_dir)
    ids: list[pa.Array] = []
    row_client: list[np.ndarray] = []
    row_local: list[np.ndarray] = []
    with_wo5 = with_full5 = 0
    for k, folder in folders:
        parts, has_wo5, has_full5 = _read_client(folder)
        with_wo5 += has_wo5
        with_full5 += has_full5
        for code, arr in enumerate(parts):
            ids.append(arr)
            row_client.append(np.full(len(arr), k, dtype=np.int64))
            row_local.append(np.full(len(arr), code, dtype=np.int8))
    return _Listed(
        ids=pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
        client=np.concatenate(row_client) if row_client else np.empty(0, np.int64),
        local=np.concatenate(row_local) if row_local else np.empty(0, np.int8),
        folders=len(folders),
        with_wo5=with_wo5,
        with_full5=with_full5,
    )


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


def _read_client(folder: Path) -> tuple[tuple[pa.Array, pa.Array, pa.Array, pa.Array], bool, bool]:
    """One client folder: its ids by local split (train, dev, test, holdout), and whether it has
    ted_train_wo5.csv and ted_train_full5.csv. Local train is ted_train_wo5.csv when there is one, else
    ted_train.csv without the holdout ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    has_full5 = (folder / LIST_HOLDOUT).is_file()
    holdout = _read_ids(folder / LIST_HOLDOUT) if has_full5 else pa.array([], pa.string())
    has_wo5 = (folder / LIST_TRAIN_WITHOUT_HOLDOUT).is_file()
    if has_wo5:
        local_train = _read_ids(folder / LIST_TRAIN_WITHOUT_HOLDOUT)
    else:
        local_train = _read_ids(folder / LIST_TRAIN)
        if len(holdout):
            local_train = local_train.filter(pc.invert(pc.is_in(local_train, value_set=holdout)))
    return (local_train, _read_ids(folder / LIST_DEV), _read_ids(folder / LIST_TEST), holdout), has_wo5, has_full5


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
# Duplicates, matching, the report


@dataclass(frozen=True)
class _Duplicates:
    keep: np.ndarray  # per listed id (row of _Listed): used under the policy
    ids: int  # distinct ids listed more than once
    across_clients: int  # of those, ids listed in more than one client
    rows_ignored: int  # listed ids not used because of the policy
    examples: tuple[str, ...]


def _resolve_duplicates(listed: _Listed, policy: str) -> _Duplicates:
    """Which listed ids are used: ``first`` keeps the first listing of each id (the rows are in the policy's
    order), ``drop`` keeps only the ids listed once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n_rows = len(listed.ids)
    enc = pc.dictionary_encode(listed.ids)
    code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = enc.dictionary
    counts = np.bincount(code, minlength=len(dictionary))
    dup_codes = np.flatnonzero(counts > 1)
    dup_rows = counts[code] > 1
    width = int(listed.client.max(initial=0)) + 1  # (id, client) pairs as one integer
    pairs = np.unique(code[dup_rows] * width + listed.client[dup_rows])
    across = int((np.bincount(pairs // width, minlength=len(dictionary)) > 1).sum())
    if policy == "first":
        _, first = np.unique(code, return_index=True)
        keep = np.zeros(n_rows, dtype=bool)
        keep[first] = True
    else:
        keep = counts[code] == 1
    return _Duplicates(
        keep=keep,
        ids=len(dup_codes),
        across_clients=across,
        rows_ignored=int(n_rows - keep.sum()),
        examples=tuple(dictionary.take(pa.array(dup_codes[:5])).to_pylist()),
    )


@dataclass(frozen=True)
class _Matches:
    client: np.ndarray  # per corpus-train row: the client that lists it (-1: none)
    local: np.ndarray  # per corpus-train row: its local split code (-1: none)
    unmatched: int  # distinct kept ids not in the manifest
    unmatched_examples: tuple[str, ...]
    outside_train: int  # distinct kept ids of the manifest's corpus dev/test split
    matched: int  # distinct kept ids of corpus-train rows


def _match_ids(listed: _Listed, keep: np.ndarray, train: TrainRows, lists_dir: Path, source: str) -> _Matches:
    """The kept ids matched exactly to the manifest's ``utt_id``; InputError when none is a corpus-train row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kept_ids = listed.ids.filter(pa.array(keep))
    k_client, k_local = listed.client[keep], listed.local[keep]
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
            f"{lists_dir}: none of the {len(listed.ids)} listed ids matches an utterance of the {source}'s corpus "
            "train split" + (f" (e.g. {example!r})" if example else ""),
            hint="the ids must be <talk>_<start>_<end> with the times as written in the STM",
        )
    client = np.full(len(train.rows), -1, dtype=np.int64)
    local = np.full(len(train.rows), -1, dtype=np.int8)
    client[t_index[in_train]] = k_client[in_train]
    local[t_index[in_train]] = k_local[in_train]
    return _Matches(
        client=client,
        local=local,
        unmatched=int(unmatched.sum()),
        unmatched_examples=tuple(kept_ids.filter(pa.array(unmatched)).slice(0, 5).to_pylist()),
        outside_train=int(outside.sum()),
        matched=int(in_train.sum()),
    )


def _report(lists_dir: Path, policy: str, listed: _Listed, duplicates: _Duplicates, matches: _Matches) -> ImportReport:
    return ImportReport(
        lists_dir=str(lists_dir), list_clients=listed.folders, list_rows=len(listed.ids),
        clients_with_wo5=listed.with_wo5, clients_with_full5=listed.with_full5,
        duplicate_policy=policy, duplicate_ids=duplicates.ids, duplicate_ids_across_clients=duplicates.across_clients,
        duplicate_rows_ignored=duplicates.rows_ignored, duplicate_examples=duplicates.examples,
        unmatched_ids=matches.unmatched, unmatched_examples=matches.unmatched_examples,
        outside_train_ids=matches.outside_train, matched_ids=matches.matched,
    )
