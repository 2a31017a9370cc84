"""What a partition returns: the manifest with ``client_id`` / ``local_split`` filled for the corpus-train rows,
one row per client (``CLIENT_COLUMNS``) and the summary stats the CLI prints. Built the same way for every scheme
and for an import of the authors' lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedw2v.manifest import LOCAL_SPLITS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

    from fedw2v.partition.lists import ImportReport
    from fedw2v.partition.schemes import PartitionConfig
    from fedw2v.partition.train_rows import TrainRows


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


def build_result(
    table: pa.Table,
    train: TrainRows,
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
    """The result of a partition whose per-train-row client numbers (-1: none) and local split codes are
    ``client`` and ``local``: ``table`` with the two columns filled, the client table and the stats."""
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


def _client_table(client: np.ndarray, local: np.ndarray, train: TrainRows) -> pa.Table:
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
    train: TrainRows,
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
