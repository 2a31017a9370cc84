"""The corpus-train rows of a manifest, as the partition schemes and the list import see them, and the
``max_clients`` rule (keep the clients with the most speech) that both apply to their per-row client numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedw2v.errors import InputError, ManifestError
from fedw2v.manifest import LOCAL_SPLITS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa

NEEDED_COLUMNS = ("utt_id", "speaker", "split", "duration")

# Local split codes used internally (index into LOCAL_SPLITS); -1 = no client.
TRAIN, DEV, TEST, HOLDOUT = range(4)
assert LOCAL_SPLITS == ("train", "dev", "test", "holdout")


@dataclass
class TrainRows:
    rows: np.ndarray  # row numbers of the corpus-train rows in the table
    speakers: list[str]  # distinct speakers of the train split, sorted
    speaker_code: np.ndarray  # per train row: index into speakers
    utt_rank: np.ndarray  # per train row: rank of its utt_id among the train rows (the canonical order)
    duration: np.ndarray  # per train row, seconds
    all_utt_ids: pa.Array  # utt_id of every table row

    @classmethod
    def of(cls, table: pa.Table, source: str) -> TrainRows:
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


def keep_largest(
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
