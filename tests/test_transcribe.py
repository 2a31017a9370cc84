"""`fedw2v transcribe`: formats, long files, bad files, the default model, and the HF pipeline equivalence."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from fedw2v import runs
from fedw2v.cli import app
from fedw2v.decode import Transcript, Word
from fedw2v.model import load_model, save_model
from fedw2v.transcribe import format_srt, srt_time

runner = CliRunner()
SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two flite sentences as 16 kHz wav, and a 12 s file (the test talk) as 44.1 kHz stereo flac."""
    from tests import asr_fixtures as af

    if not af.have_flite():
        pytest.skip("needs flite")
    d = tmp_path_factory.mktemp("speech")
    a = af.speak(af.SENTENCES[0])
    sf.write(d / "short.wav", a, 16000, subtype="PCM_16")
    b = af.speak(af.TEST_SENTENCES[1], "rms")
    sf.write(d / "other.wav", b, 16000, subtype="PCM_16")
    import soxr

    long = np.concatenate([af.speak(s) for s in (*af.SENTENCES, *af.TEST_SENTENCES)])[: 16000 * 12]
    st = soxr.resample(np.stack([long, long * 0.5], axis=1), 16000, 44100)
    sf.write(d / "long.flac", st, 44100, subtype="PCM_16")
    return d


def _run(*args):
    return runner.invoke(app, ["transcribe", *map(str, args)])


def test_text_json_srt(speech, tiny_model_dir):
    res = _run(speech / "short.wav", "--model", tiny_model_dir)
    assert res.exit_code == 0, res.output
    text = res.stdout.strip()
    assert "\n" not in text and f"model: {tiny_model_dir}" in res.stderr  # says which model it used
    res = _run(speech / "short.wav", "--model", tiny_model_dir, "--format", "json")
    doc = json.loads(res.stdout)
    (f,) = doc["files"]
    assert doc["errors"] == [] and doc["model"].startswith(str(tiny_model_dir))
    assert f["text"] == text == " ".join(w["word"] for w in f["words"])
    assert all(0 <= w["start"] < w["end"] <= f["duration"] + 1e-6 for w in f["words"])
    assert all(a["end"] <= b["start"] for a, b in zip(f["words"], f["words"][1:]))
    res = _run(speech / "short.wav", "--model", tiny_model_dir, "--format", "srt")
    blocks = [b for b in res.stdout.strip().split("\n\n") if b]
    assert blocks
    for i, block in enumerate(blocks, start=1):
        lines = block.splitlines()
        assert lines[0] == str(i) and re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1]) and lines[2]
    assert " ".join(b.splitlines()[2] for b in blocks) == text


def test_srt_formatting():
    assert srt_time(3725.4567) == "01:02:05,457" and srt_time(0) == "00:00:00,000"
    words = [Word("a", 0.0, 0.5), Word("b", 0.6, 1.0), Word("c", 3.0, 3.5)]  # pause > 0.8 s starts a new cue
    assert format_srt(Transcript("a b c", words)) == (
        "1\n00:00:00,000 --> 00:00:01,000\na b\n\n2\n00:00:03,000 --> 00:00:03,500\nc\n"
    )


def test_long_stereo_file_is_chunked(speech, tiny_model_dir):
    res = _run(speech / "long.flac", "--model", tiny_model_dir, "--format", "json", "--chunk-seconds", "5",
               "--overlap-seconds", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    f = json.loads(res.stdout)["files"][0]
    assert f["duration"] == pytest.approx(12.0, abs=0.01) and f["chunks"] == 4  # 12 s in 5 s chunks, 3 s steps
    assert f["words"] and f["words"][-1]["end"] <= 12.0
    res = _run(speech / "long.flac", "--model", tiny_model_dir, "--chunk-seconds", "2", "--overlap-seconds", "1")
    assert res.exit_code == 2 and "longer than twice" in res.output


def test_bad_files_are_reported_and_others_transcribed(tmp_path, speech, tiny_model_dir):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (tmp_path / "notes.txt").write_text("hello\n" * 50)
    (tmp_path / "folder").mkdir()
    files = [speech / "short.wav", tmp_path / "missing.wav", tmp_path / "empty.wav", tmp_path / "corrupt.wav",
             tmp_path / "folder", tmp_path / "notes.txt", speech / "other.wav"]  # fmt: skip
    res = _run(*files, "--model", tiny_model_dir)
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5
    for bad, reason in zip(files[1:6], ("no such file", "empty file", "not a readable audio file",
                                        "is a directory", "not a readable audio file")):  # fmt: skip
        assert any(str(bad) in e and reason in e for e in errors)
    assert "5 of 7 files failed" in res.stderr and "Traceback" not in res.output
    assert res.stdout.count("==> ") == 2 and f"==> {speech / 'other.wav'} <==" in res.stdout
    res = _run(*files[:3], "--model", tiny_model_dir, "--format", "json")
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and len(doc["files"]) == 1 and [e["file"] for e in doc["errors"]] == list(map(str, files[1:3]))


def test_out_dir_writes_one_file_per_input(tmp_path, speech, tiny_model_dir):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "short.wav").write_bytes((speech / "short.wav").read_bytes())
    res = _run(speech / "short.wav", sub / "short.wav", speech / "other.wav", "--model", tiny_model_dir,
               "--format", "srt", "--out", tmp_path / "out")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other.srt", "short-2.srt", "short.srt"]
    assert res.stdout == ""


def test_default_model_is_the_newest_run(tmp_path, speech, monkeypatch):
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "runs"))
    res = _run(speech / "short.wav")
    assert res.exit_code == 2 and "no --model given" in res.output
    loaded = load_model("tiny", seed=5)
    run = tmp_path / "runs" / "demo"
    save_model(loaded.model, loaded.processor, run / "checkpoints" / "round-0003")
    runs.publish_checkpoint(run, "round-0003")
    res = _run(speech / "short.wav")
    assert res.exit_code == 0, res.output
    assert f"model: {(run / 'checkpoints' / 'round-0003').resolve()} (run {run})" in res.stderr


def _pipeline_text(model_dir, wav):
    from transformers import pipeline

    audio, sr = sf.read(wav, dtype="float32")
    asr = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu", trust_remote_code=False)
    return " ".join(asr({"raw": audio, "sampling_rate": sr})["text"].split())


def test_hf_pipeline_gives_the_same_text(speech, tiny_model_dir):
    """Every saved model loads in `transformers.pipeline`; its text equals `fedw2v transcribe`'s (runs of
    spaces collapsed; a random model's text, including any <unk>, matched character for character)."""
    for wav in ("short.wav", "other.wav"):
        res = _run(speech / wav, "--model", tiny_model_dir)
        assert res.exit_code == 0, res.output
        ours = res.stdout.strip()
        assert len(ours) > 10
        assert ours == _pipeline_text(tiny_model_dir, speech / wav)


@pytest.mark.slow
def test_hf_pipeline_same_text_trained_model(trained_tiny, speech):
    """The same with the trained tiny model: real words, identical in both."""
    model_dir, *_ = trained_tiny
    res = _run(speech / "short.wav", "--model", model_dir)
    assert res.exit_code == 0, res.output
    ours = res.stdout.strip()
    assert ours == _pipeline_text(model_dir, speech / "short.wav")
    assert "cat" in ours.split() or "mat" in ours.split()
