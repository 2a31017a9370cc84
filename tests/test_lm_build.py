"""`fedw2v lm build`: a manifest's train text (never dev or test) or text files -> lm.arpa, lexicon.txt,
chars.arpa and provenance; unspellable words counted; every bad input one line with exit 2."""

from __future__ import annotations

import gzip
import json
import os
import stat

import pytest
from typer.testing import CliRunner

from fedw2v import manifest
from fedw2v.cli import app
from fedw2v.lm.lexicon import arpa_words

runner = CliRunner()
TRAIN = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "it 's a café"]
DEV = ["zebras never dance"]
TEST = ["quokkas smile often"]


def text_manifest(path):
    """A manifest with train, dev and test text (the audio paths are never read by `lm build`)."""
    rows = {k: [] for k in ("utt_id", "talk_id", "speaker", "gender", "split", "audio_path", "start", "end",
                            "duration", "sample_rate", "num_channels", "text", "text_raw")}
    for split, texts in (("train", TRAIN), ("dev", DEV), ("test", TEST)):
        for i, text in enumerate(texts):
            for key, value in (("utt_id", f"{split}{i}"), ("talk_id", split), ("speaker", split), ("gender", "male"),
                               ("split", split), ("audio_path", f"sph/{split}.sph"), ("start", float(i)),
                               ("end", i + 0.5), ("duration", 0.5), ("sample_rate", 16000), ("num_channels", 1),
                               ("text", text), ("text_raw", text)):
                rows[key].append(value)
    info = manifest.ManifestInfo(corpus_root=str(path.parent), normalization="paper", command="tests")
    return manifest.write(manifest.Manifest(manifest.from_rows(rows), info), path)


def _build(*args):
    return runner.invoke(app, ["lm", "build", *map(str, args)])


def _one_error_line(res, code=2):
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    return lines[0]


def test_build_from_a_manifest_uses_its_train_text_only(tmp_path):
    res = _build(text_manifest(tmp_path / "m.parquet"), "-o", tmp_path / "lm", "--order", "3")
    assert res.exit_code == 0, res.output
    out = tmp_path / "lm"
    assert sorted(p.name for p in out.iterdir()) == ["chars.arpa", "lexicon.txt", "lm.arpa", "lm.json"]
    words = {w for _, w in arpa_words(out / "lm.arpa")}
    assert {"cat", "dog", "mat", "'s"} <= words and not words & {"zebras", "quokkas", "dance", "smile"}
    lexicon = dict(line.split("\t") for line in (out / "lexicon.txt").read_text().splitlines())
    assert lexicon["cat"] == "c a t |" and lexicon["'s"] == "' s |" and "zebras" not in lexicon
    prov = json.loads((out / "lm.json").read_text())
    assert prov["sources"][0]["kind"] == "manifest (train split)" and prov["sources"][0]["sentences"] == 4
    assert prov["order"] == 3 and prov["normalization"] == "paper" and len(prov["counts"]["ngrams"]) == 3
    assert prov["counts"]["sentences"] == 4 and prov["counts"]["words"] == sum(len(t.split()) for t in TRAIN)
    # "café" has a character the base vocabulary lacks: skipped from the lexicon, <unk> in the LM, and said so
    assert prov["skipped_words"]["distinct"] == 1 and prov["skipped_words"]["most_common"] == [["café", 1]]
    assert "café" not in lexicon and "café" not in words and "<unk>" in words
    assert "skipped 1 words (1 occurrences)" in res.output and "'café'" in res.output
    assert "build_binary" in prov["binary"] and not (out / "lm.bin").exists()
    assert stat.S_IMODE(out.stat().st_mode) & 0o055, "the LM directory is readable by others, like any other"


def test_build_from_text_files_plain_and_gzipped(tmp_path):
    (tmp_path / "a.txt").write_text("The CAT sat. {NOISE}\n\n<unk> dog (2)\n")
    with gzip.open(tmp_path / "b.en.gz", "wt") as fh:
        fh.write("a dog 's life\n")
    res = _build(tmp_path / "a.txt", tmp_path / "b.en.gz", "-o", tmp_path / "lm", "--normalization", "joined",
                 "--char-order", "0")
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "lm" / "lm.json").read_text())
    assert [s["kind"] for s in prov["sources"]] == ["text", "gzipped text"] and prov["normalization"] == "joined"
    assert prov["character_lm"] is None and not (tmp_path / "lm" / "chars.arpa").exists()
    words = {w for _, w in arpa_words(tmp_path / "lm" / "lm.arpa")}
    assert {"cat", "dog", "dog's", "life"} <= words and not words & {"The", "CAT", "{NOISE}", "sat."}
    assert "sat." in prov["skipped_words"]["most_common"][0]  # '.' is no model character


def test_lexicon_spelled_in_a_models_characters(tmp_path, tiny_model_dir):
    vocab = json.loads((tiny_model_dir / "vocab.json").read_text())
    vocab["é"] = max(vocab.values()) + 1
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "vocab.json").write_text(json.dumps(vocab))
    res = _build(text_manifest(tmp_path / "m.parquet"), "-o", tmp_path / "lm", "--model", model)
    assert res.exit_code == 0, res.output
    lexicon = dict(line.split("\t") for line in (tmp_path / "lm" / "lexicon.txt").read_text().splitlines())
    assert lexicon["café"] == "c a f é |"


def test_rebuild_replaces_an_lm_directory_but_nothing_else(tmp_path):
    m = text_manifest(tmp_path / "m.parquet")
    assert _build(m, "-o", tmp_path / "lm").exit_code == 0
    res = _build(m, "-o", tmp_path / "lm", "--order", "2")
    assert res.exit_code == 0 and json.loads((tmp_path / "lm" / "lm.json").read_text())["order"] == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    line = _one_error_line(_build(m, "-o", other))
    assert str(other) in line and "not replaced" in line and (other / "thesis.tex").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory left"


def test_bad_input_is_one_line(tmp_path):
    m = text_manifest(tmp_path / "m.parquet")
    for order in ("0", "1", "7"):
        line = _one_error_line(_build(m, "-o", tmp_path / "lm", "--order", order))
        assert "--order must be 2 to 6" in line
    assert "--char-order" in _one_error_line(_build(m, "-o", tmp_path / "lm", "--char-order", "1"))
    assert "no such file" in _one_error_line(_build(tmp_path / "missing.txt", "-o", tmp_path / "lm"))
    (tmp_path / "latin1.txt").write_bytes(b"ok line\nna\xefve\n")
    line = _one_error_line(_build(tmp_path / "latin1.txt", "-o", tmp_path / "lm"))
    assert "latin1.txt line 2" in line and "UTF-8" in line
    (tmp_path / "empty.txt").write_text("\n{NOISE}\n")
    assert "no text" in _one_error_line(_build(tmp_path / "empty.txt", "-o", tmp_path / "lm"))
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _one_error_line(_build(m, "-o", tmp_path / "file"))
    assert "normalised with 'paper'" in _one_error_line(_build(m, "-o", tmp_path / "lm", "--normalization", "joined"))
    assert not (tmp_path / "lm").exists()


def test_unreadable_source_is_one_line():
    from tests.unprivileged import run_fedw2v, shared_dir

    d = shared_dir()
    (d / "text.txt").write_text("a b\n")
    (d / "text.txt").chmod(0)
    res = run_fedw2v(["lm", "build", "text.txt", "-o", "lm"], d)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert lines[0].startswith("error: text.txt: cannot read (Permission denied)")


def test_a_kenlm_build_binary_on_path_makes_lm_bin(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "build_binary"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\ncp "$1" "$2"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    res = _build(text_manifest(tmp_path / "m.parquet"), "-o", tmp_path / "lm")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lm" / "lm.bin").read_bytes() == (tmp_path / "lm" / "lm.arpa").read_bytes()
    assert json.loads((tmp_path / "lm" / "lm.json").read_text())["binary"] == f"lm.bin, made by {tool}"
