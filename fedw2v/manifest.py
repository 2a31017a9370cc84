"""The utterance manifest: one Parquet file, one row per utterance. The contract between stages.

The schema is versioned in the Parquet key-value metadata (key ``fedw2v``, a JSON object) together with the
corpus root that ``audio_path`` is relative to, the text normalisation used, and the command (and seed) that
made the file. The file is plain Parquet: pandas, polars and duckdb read it without fedw2v.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.atomic import atomic_file
from fedw2v.errors import ManifestError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"fedw2v"
SPLITS = ("train", "dev", "test")
LOCAL_SPLITS = ("train", "dev", "test", "holdout")
GENDERS = ("male", "female", "unknown")

# (name, arrow type name, nullable, meaning) -- the table of ../shared/DESIGN.md, in column order.
COLUMNS: tuple[tuple[str, str, bool, str], ...] = (
    ("utt_id", "string", False, "unique; <talk>_<start>_<end> with times as written in the STM"),
    ("talk_id", "string", False, "recording id (the sph file stem)"),
    ("speaker", "string", False, "speaker id (several talks can share one)"),
    ("gender", "string", False, "male / female / unknown"),
    ("split", "string", False, "corpus split: train / dev / test"),
    ("audio_path", "string", False, "relative to the corpus root stored in the metadata"),
    ("start", "double", False, "segment start, seconds"),
    ("end", "double", False, "segment end, seconds"),
    ("duration", "double", False, "end - start, seconds"),
    ("sample_rate", "int32", False, "of the source file"),
    ("num_channels", "int32", False, "of the source file"),
    ("text", "string", False, "normalised transcript (the training target)"),
    ("text_raw", "string", False, "transcript as written in the corpus"),
    ("client_id", "int32", True, "set by `partition`"),
    ("local_split", "string", True, "set by `partition`: train / dev / test / holdout"),
)
COLUMN_NAMES = tuple(c[0] for c in COLUMNS)


def schema() -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "double": pa.float64(), "int32": pa.int32()}
    return pa.schema([pa.field(name, types[t], nullable=nullable) for name, t, nullable, _ in COLUMNS])


@dataclass(frozen=True)
class ManifestInfo:
    """What the Parquet metadata records about a manifest."""

    corpus_root: str  # absolute path that every audio_path is relative to
    normalization: str  # name of the text normalisation applied to `text` (see fedw2v.text)
    command: str  # the command line that made the file
    seed: int | None = None  # seed of the step that made it, when it used randomness
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific facts (e.g. partition scheme)

    def with_command(self, command: str, seed: int | None = None, **extra: Any) -> ManifestInfo:
        return replace(self, command=command, seed=seed, extra={**self.extra, **extra})


@dataclass(frozen=True)
class Manifest:
    table: pa.Table
    info: ManifestInfo

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def client_ids(self) -> list[int]:
        """The partition's client ids, ascending (empty before `fedw2v partition`)."""
        return sorted(int(c) for c in self.table.column("client_id").drop_null().unique().to_pylist())

    def audio_file(self, audio_path: str, corpus_root: str | os.PathLike | None = None) -> Path:
        """Absolute path of a row's audio (``corpus_root`` overrides the stored root, e.g. after a move)."""
        return Path(corpus_root or self.info.corpus_root) / audio_path


def empty_table() -> pa.Table:
    return schema().empty_table()


def from_rows(rows: dict[str, list]) -> pa.Table:
    """Build a table of the manifest schema from column lists (missing nullable columns become nulls)."""
    import pyarrow as pa

    sch = schema()
    n = len(next(iter(rows.values()))) if rows else 0
    arrays = []
    for f in sch:
        if f.name in rows:
            arrays.append(pa.array(rows[f.name], type=f.type))
        elif f.nullable:
            arrays.append(pa.nulls(n, type=f.type))
        else:
            raise ManifestError(f"column {f.name!r} is required to build a manifest")
    return pa.Table.from_arrays(arrays, schema=sch)


def validate(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Check columns, types and the basic invariants; return the table in canonical column order.

    Raises ManifestError naming the offending column or utterance.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    sch = schema()
    names = set(table.column_names)
    for f in sch:
        if f.name not in names:
            raise ManifestError(
                f"{source}: column {f.name!r} is missing",
                hint="was it written by fedw2v? rebuild it with `fedw2v prepare`",
            )
        col_type = table.schema.field(f.name).type
        if col_type != f.type:
            if pa.types.is_null(col_type) and f.nullable:
                continue
            raise ManifestError(f"{source}: column {f.name!r} has type {col_type}, expected {f.type}")
    for f in sch:
        if not f.nullable and table.column(f.name).null_count:
            raise ManifestError(f"{source}: column {f.name!r} has {table.column(f.name).null_count} empty values")
    table = table.select(list(COLUMN_NAMES)).cast(sch)
    if table.num_rows == 0:
        return table
    ids = table.column("utt_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        dup = next(item["values"] for item in counts.to_pylist() if item["counts"] > 1)
        raise ManifestError(f"{source}: utterance {dup!r} appears more than once (utt_id must be unique)")
    _check_values(table, "split", SPLITS, source)
    _check_values(table, "gender", GENDERS, source)
    _check_values(table, "local_split", LOCAL_SPLITS, source)
    bad = pc.or_(pc.less(table.column("start"), 0), pc.less_equal(table.column("end"), table.column("start")))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ManifestError(
            f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has start/end "
            f"{table.column('start')[row].as_py()}/{table.column('end')[row].as_py()} (need 0 <= start < end)"
        )
    return table


def _check_values(table: pa.Table, column: str, allowed: tuple[str, ...], source: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array(allowed))))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ManifestError(
            f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has {column}={col[row].as_py()!r}; "
            f"allowed: {', '.join(allowed)}"
        )


def _encode_info(info: ManifestInfo) -> bytes:
    return json.dumps(asdict(info), sort_keys=True).encode()


def _decode_info(raw: bytes | None, source: str) -> ManifestInfo:
    if raw is None:
        raise ManifestError(
            f"{source}: no fedw2v metadata in this Parquet file", hint="make it with `fedw2v prepare`"
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{source}: fedw2v metadata is not valid JSON ({exc})") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{source}: manifest schema version {version!r} is not supported (this fedw2v reads version "
            f"{SCHEMA_VERSION})",
            hint="rebuild it with this version's `fedw2v prepare`",
        )
    known = {f for f in ManifestInfo.__dataclass_fields__}
    missing = {"corpus_root", "normalization", "command"} - set(data)
    if missing:
        raise ManifestError(f"{source}: fedw2v metadata lacks {', '.join(sorted(missing))}")
    return ManifestInfo(**{k: v for k, v in data.items() if k in known})


def write(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Validate and write atomically: a temporary file in the same directory, fsync, then rename."""
    import pyarrow.parquet as pq

    path = Path(path)
    table = validate(manifest.table, source=str(path))
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = _encode_info(manifest.info)
    table = table.replace_schema_metadata(meta)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; ManifestError for a missing, non-Parquet or unknown-schema file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file", hint="make one with `fedw2v prepare`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    info = _decode_info((table.schema.metadata or {}).get(METADATA_KEY), str(path))
    return Manifest(validate(table, source=str(path)), info)
