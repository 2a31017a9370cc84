"""The utterance manifest: one Parquet file, one row per utterance. The contract between stages.

The schema is versioned in the Parquet key-value metadata (key ``fedw2v``, a JSON object) together with the
corpus root that ``audio_path`` is relative to, the text normalisation used, and the command (and seed) that
made the file. The file is plain Parquet: pandas, polars and duckdb read it without fedw2v.

A manifest is input a user may have been handed: `read` refuses anything that does not hold (missing or
mistyped columns or metadata, NaN or infinite times, an ``audio_path`` that leaves the corpus root) with one
line naming the column or utterance. Audio outside the corpus root (an absolute ``audio_path`` or one climbing
out with ``..``) is read only with ``--allow-outside-audio`` (`allow_outside_audio_option`), for a manifest
the user trusts; the check is on the path as written (a symbolic link inside the corpus is the corpus's own
business).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.atomic import atomic_file
from fedw2v.errors import ManifestError
from fedw2v.text import NORMALIZATIONS

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
TIME_COLUMNS = ("start", "end", "duration")
OUTSIDE_AUDIO_HELP = ("Read manifest rows whose audio_path leaves the corpus root (an absolute path, or one with "
                      "..): only for a manifest you trust.")


def allow_outside_audio_option() -> Any:
    """The one declaration of ``--allow-outside-audio``: a field of the config of every command that reads audio
    named by a manifest (train, evaluate, simulate). A trust decision made at each invocation: it may change on
    ``--resume`` (and runs recorded before it existed resume without it)."""
    from fedw2v.config.options import option

    return option(False, OUTSIDE_AUDIO_HELP, flags="--allow-outside-audio", resumable=True)


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
    twice = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if twice:
        raise ManifestError(f"{source}: column {twice[0]!r} appears more than once")
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
    _check_times(table, source)
    return table


def _check_times(table: pa.Table, source: str) -> None:
    """Finite times, positive durations, 0 <= start < end; ManifestError naming the first offending utterance."""
    import pyarrow.compute as pc

    for name in TIME_COLUMNS:  # NaN passes every comparison below, so it is refused first
        bad = pc.invert(pc.is_finite(table.column(name)))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise ManifestError(
                f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has {name}="
                f"{table.column(name)[row].as_py()} (need a finite number of seconds)"
            )
    bad = pc.less_equal(table.column("duration"), 0)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ManifestError(
            f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has duration "
            f"{table.column('duration')[row].as_py()} (need duration > 0)"
        )
    bad = pc.or_(pc.less(table.column("start"), 0), pc.less_equal(table.column("end"), table.column("start")))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise ManifestError(
            f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has start/end "
            f"{table.column('start')[row].as_py()}/{table.column('end')[row].as_py()} (need 0 <= start < end)"
        )


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
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: fedw2v metadata is JSON but not an object ({type(data).__name__})",
                            hint="rebuild it with `fedw2v prepare`")
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
    _check_info_types(data, source)
    return ManifestInfo(**{k: v for k, v in data.items() if k in known})


def _check_info_types(data: dict[str, Any], source: str) -> None:
    def bad(key: str, need: str) -> ManifestError:
        return ManifestError(f"{source}: fedw2v metadata has {key}={data[key]!r} (need {need})")

    if not isinstance(data["corpus_root"], str) or not data["corpus_root"].strip():
        raise bad("corpus_root", "the corpus directory as a string")
    if data["normalization"] not in NORMALIZATIONS:
        raise bad("normalization", f"one of {', '.join(NORMALIZATIONS)}")
    if not isinstance(data["command"], str):
        raise bad("command", "a string")
    if data.get("seed") is not None and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)):
        raise bad("seed", "an integer or null")
    if not isinstance(data.get("extra", {}), dict):
        raise bad("extra", "an object")


def outside_root(audio_path: str) -> bool:
    """An ``audio_path`` that leaves the corpus root as written: absolute, or climbing out with ``..``."""
    import posixpath

    return posixpath.isabs(audio_path) or posixpath.normpath(audio_path).split("/")[0] == ".."


def check_audio_paths(table: pa.Table, source: str = "manifest", allow_outside: bool = False) -> None:
    """ManifestError naming the first utterance whose ``audio_path`` contains a NUL character or (unless
    ``allow_outside``) leaves the corpus root (`outside_root`). Each distinct path is checked once."""
    import pyarrow.compute as pc

    paths = table.column("audio_path")
    for value in pc.unique(paths).to_pylist():
        if "\0" in value:
            problem = "contains a NUL character"
        elif not allow_outside and outside_root(value):
            problem = "leaves the corpus root"
        else:
            continue
        row = pc.index(paths, value).as_py()
        raise ManifestError(
            f"{source}: utterance {table.column('utt_id')[row].as_py()!r} has audio_path {value!r}, which {problem}",
            hint="audio must lie under the manifest's corpus root; pass --allow-outside-audio only for a manifest "
                 "you trust" if problem.startswith("leaves") else None,
        )


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


def read(path: str | os.PathLike, allow_outside_audio: bool = False) -> Manifest:
    """Read and validate a manifest; ManifestError for a missing, non-Parquet or unknown-schema file, invalid
    rows or metadata, and (unless ``allow_outside_audio``) audio paths outside the corpus root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not a manifest file")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file", hint="make one with `fedw2v prepare`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ManifestError(f"{path}: not a readable Parquet file ({reason})") from None
    info = _decode_info((table.schema.metadata or {}).get(METADATA_KEY), str(path))
    table = validate(table, source=str(path))
    check_audio_paths(table, str(path), allow_outside_audio)
    return Manifest(table, info)
