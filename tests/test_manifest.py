"""The manifest contract: schema, metadata, atomic write, validation errors, readable without fedw2v."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedw2v import manifest
from fedw2v.errors import ManifestError


def _rows(n=3, **override):
    rows = {
        "utt_id": [f"T_2010_{i}.00_{i + 1}.00" for i in range(n)],
        "talk_id": ["T_2010"] * n,
        "speaker": ["T"] * n,
        "gender": ["female"] * n,
        "split": ["train"] * n,
        "audio_path": ["data/sph/T_2010.sph"] * n,
        "start": [float(i) for i in range(n)],
        "end": [float(i + 1) for i in range(n)],
        "duration": [1.0] * n,
        "sample_rate": [16000] * n,
        "num_channels": [1] * n,
        "text": ["hello"] * n,
        "text_raw": ["hello <unk>"] * n,
    }
    rows.update(override)
    return rows


INFO = manifest.ManifestInfo(corpus_root="/data/TEDLIUM_release-3", normalization="paper", command="fedw2v prepare x")


def test_schema_matches_the_design_table():
    sch = manifest.schema()
    assert sch.names == [
        "utt_id", "talk_id", "speaker", "gender", "split", "audio_path", "start", "end", "duration",
        "sample_rate", "num_channels", "text", "text_raw", "client_id", "local_split",
    ]
    assert sch.field("start").type == pa.float64()
    assert sch.field("sample_rate").type == pa.int32()
    assert sch.field("client_id").type == pa.int32() and sch.field("client_id").nullable
    assert not sch.field("utt_id").nullable


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    path = tmp_path / "m.parquet"
    info = INFO.with_command("fedw2v partition m", seed=7, scheme="speaker")
    manifest.write(manifest.Manifest(manifest.from_rows(_rows()), info), path)
    back = manifest.read(path)
    assert back.info == info
    assert back.info.seed == 7 and back.info.extra == {"scheme": "speaker"}
    assert back.table.column("utt_id").to_pylist() == _rows()["utt_id"]
    assert back.table.column("client_id").null_count == 3
    assert back.audio_file("data/sph/T_2010.sph").as_posix() == "/data/TEDLIUM_release-3/data/sph/T_2010.sph"
    assert back.audio_file("a.sph", corpus_root="/moved").as_posix() == "/moved/a.sph"
    raw = json.loads(pq.read_schema(path).metadata[b"fedw2v"])
    assert raw["schema_version"] == manifest.SCHEMA_VERSION
    assert raw["corpus_root"] == "/data/TEDLIUM_release-3"
    assert raw["normalization"] == "paper" and raw["command"] == "fedw2v partition m"


def test_readable_by_pandas_pyarrow_polars_and_duckdb_without_fedw2v(tmp_path):
    path = tmp_path / "m.parquet"
    manifest.write(manifest.Manifest(manifest.from_rows(_rows()), INFO), path)
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(path)
    assert list(df["utt_id"]) == _rows()["utt_id"] and df["duration"].sum() == 3.0
    assert pq.read_table(path).num_rows == 3
    pl = pytest.importorskip("polars")
    assert pl.read_parquet(path).height == 3
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*) from read_parquet('{path}') where split = 'train'").fetchall()[0][0] == 3


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.parquet"
    manifest.write(manifest.Manifest(manifest.from_rows(_rows()), INFO), path)
    before = path.read_bytes()
    bad = manifest.from_rows(_rows(split=["train", "nope", "train"]))
    with pytest.raises(ManifestError):
        manifest.write(manifest.Manifest(bad, INFO), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_write_cleans_up_when_interrupted(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(KeyboardInterrupt):
        manifest.write(manifest.Manifest(manifest.from_rows(_rows()), INFO), tmp_path / "m.parquet")
    assert list(tmp_path.iterdir()) == []


def _write_raw(path, table, info=None, meta=None):
    md = {b"fedw2v": json.dumps(info if info is not None else {
        "schema_version": 1, "corpus_root": "/c", "normalization": "paper", "command": "x"}).encode()}
    if meta is not None:
        md = meta
    pq.write_table(table.replace_schema_metadata(md), path)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "m.parquet"
    _write_raw(path, manifest.from_rows(_rows()).drop_columns(["speaker"]))
    with pytest.raises(ManifestError, match="column 'speaker' is missing"):
        manifest.read(path)


def test_mistyped_column_is_named(tmp_path):
    path = tmp_path / "m.parquet"
    t = manifest.from_rows(_rows())
    t = t.set_column(t.schema.get_field_index("start"), "start", pa.array(["0", "1", "2"]))
    _write_raw(path, t)
    with pytest.raises(ManifestError, match="column 'start' has type string, expected double"):
        manifest.read(path)


def test_unknown_version_and_missing_metadata_are_rejected(tmp_path):
    path = tmp_path / "m.parquet"
    _write_raw(path, manifest.from_rows(_rows()), info={"schema_version": 99, "corpus_root": "/c",
                                                       "normalization": "paper", "command": "x"})
    with pytest.raises(ManifestError, match="schema version 99 is not supported"):
        manifest.read(path)
    _write_raw(path, manifest.from_rows(_rows()), meta={})
    with pytest.raises(ManifestError, match="no fedw2v metadata"):
        manifest.read(path)


def test_not_a_parquet_file_or_no_file(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_text("hello")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        manifest.read(path)
    with pytest.raises(ManifestError, match="no such manifest file"):
        manifest.read(tmp_path / "missing.parquet")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"utt_id": ["a", "a", "b"]}, "utterance 'a' appears more than once"),
        ({"gender": ["female", "x", "male"]}, "has gender='x'"),
        ({"end": [1.0, 0.5, 3.0]}, "need 0 <= start < end"),
        ({"start": [-1.0, 1.0, 2.0]}, "need 0 <= start < end"),
        ({"local_split": [None, "train", "elsewhere"]}, "local_split='elsewhere'"),
    ],
)
def test_validation_names_the_utterance(override, message):
    with pytest.raises(ManifestError, match=message):
        manifest.validate(manifest.from_rows(_rows(**override)))


def test_null_in_a_required_column_is_rejected():
    t = manifest.from_rows(_rows())
    idx = t.schema.get_field_index("text")
    t = t.set_column(idx, pa.field("text", pa.string()), pa.array(["a", None, "c"]))
    with pytest.raises(ManifestError, match="column 'text' has 1 empty values"):
        manifest.validate(t)


def test_validate_restores_column_order():
    t = manifest.from_rows(_rows())
    shuffled = t.select(list(reversed(t.column_names)))
    assert manifest.validate(shuffled).column_names == t.column_names
