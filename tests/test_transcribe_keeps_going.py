"""`fedw2v transcribe` keeps going (issue 11): every per-file failure is one line and the other files are still
transcribed; long audio is read and resampled in blocks and decoded chunk by chunk in bounded memory; a long
silence never makes an SRT cue longer than ~10 s; NaN/inf audio and bad chunk options are one line."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import warnings

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from fedw2v.audio import load_audio, read_segment, stream_audio
from fedw2v.cli import app
from fedw2v.decode import Chunks, Vocab, chunk_plan, text_and_words
from fedw2v.errors import InputError
from fedw2v.text import character_vocabulary
from fedw2v.transcribe import SRT_MAX_CUE_S, srt_cues
from tests.unprivileged import open_up, run_fedw2v, shared_dir

runner = CliRunner()
VOCAB = character_vocabulary()


def _noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def test_every_per_file_failure_is_one_line_and_the_others_are_transcribed(tiny_model_dir):
    """As a user without CAP_DAC_OVERRIDE: a mode-000 file, a file in a folder that cannot be opened, and an
    output name that is a folder; the two good files are written, exit 1."""
    d = shared_dir()
    try:
        shutil.copytree(tiny_model_dir, d / "model")
        for name in ("a.wav", "noread.wav", "b.wav"):
            sf.write(d / name, _noise(2), 16000, subtype="PCM_16")
        (d / "locked").mkdir()
        sf.write(d / "locked" / "x.wav", _noise(2), 16000, subtype="PCM_16")
        (d / "out" / "b.txt").mkdir(parents=True)  # b's transcript cannot be written
        open_up(d)
        (d / "out").chmod(0o777)
        (d / "noread.wav").chmod(0)
        (d / "locked").chmod(0)
        files = ["a.wav", "noread.wav", "locked/x.wav", "b.wav", "c.wav"]
        res = run_fedw2v(["transcribe", *files, "--model", "model", "--out", "out"], d)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, res.stderr
        assert lines[0].startswith("model: ") and "a.wav -> out/a.txt" in lines
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert errors == ["error: noread.wav: cannot read (Permission denied)",
                          "error: locked/x.wav: cannot read (Permission denied)",
                          "error: out/b.txt: is a directory; the transcript of b.wav was not written",
                          "error: c.wav: no such file"]  # fmt: skip
        assert lines[-1] == "4 of 5 files failed" and len(lines) == 7, res.stderr
        assert (d / "out" / "a.txt").read_text().strip() and res.stdout == ""
        res = run_fedw2v(["transcribe", *files[:4], "--model", "model"], d)  # printing instead of --out
        assert res.returncode == 1 and res.stdout.count("==> ") == 2 and "2 of 4 files failed" in res.stderr
        assert "internal error" not in res.stderr and "Usage" not in res.stderr and "Traceback" not in res.stderr
    finally:
        (d / "locked").chmod(0o755)
        shutil.rmtree(d, ignore_errors=True)


def test_nan_or_infinite_samples_are_one_line_for_that_file(tmp_path, tiny_model_dir):
    good, bad, worse = _noise(2), _noise(2), _noise(2)
    bad[8000] = np.nan
    worse[24000:24010] = np.inf
    for name, audio in (("good.wav", good), ("nan.wav", bad), ("inf.wav", worse)):
        sf.write(tmp_path / name, audio, 16000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warnings either
        res = runner.invoke(app, ["transcribe", *(str(tmp_path / n) for n in ("nan.wav", "good.wav", "inf.wav")),
                                  "--model", str(tiny_model_dir)])
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'nan.wav'}: 1 audio samples are NaN or infinite (the first at 0.50 s)",
        f"error: {tmp_path / 'inf.wav'}: 10 audio samples are NaN or infinite (the first at 1.50 s)",
    ]
    assert res.stdout.count("==> ") == 1
    with pytest.raises(InputError, match="NaN or infinite .the first at 0.50 s"):
        read_segment(tmp_path / "nan.wav", 0.0, 1.0)
    with pytest.raises(InputError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("args, needle", [
    (["--chunk-seconds", "nan"], "must be finite numbers"), (["--chunk-seconds", "inf"], "must be finite numbers"),
    (["--chunk-seconds", "0"], "longer than twice"), (["--overlap-seconds", "nan"], "must be finite numbers"),
])  # fmt: skip
def test_chunk_options_that_cannot_work_are_one_line(tmp_path, args, needle):
    res = runner.invoke(app, ["transcribe", str(tmp_path / "a.wav"), "--model", "tiny", *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_evaluate_max_batch_seconds_nan_is_one_line(tmp_path):
    res = runner.invoke(app, ["evaluate", "tiny", "--manifest", str(tmp_path / "m.parquet"),
                              "--max-batch-seconds", "nan"])  # fmt: skip
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "max_batch_seconds must be positive" in lines[0], res.output


def test_stream_audio_reads_and_resamples_in_blocks_in_bounded_memory(tmp_path):
    """10 minutes at 8 kHz: the whole file is 38 MB at 16 kHz float32; the stream holds one 10 s block."""
    audio = _noise(600, 8000)
    sf.write(tmp_path / "long.wav", audio, 8000, subtype="PCM_16")
    tracemalloc.start()
    try:
        blocks = 0
        total = 0
        for block in stream_audio(tmp_path / "long.wav"):
            blocks += 1
            total += len(block)
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = load_audio(tmp_path / "long.wav")
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(whole) == 600 * 16000 and blocks >= 60
    assert stream_peak < 4e6 < whole_peak, (stream_peak, whole_peak)
    np.testing.assert_allclose(np.concatenate(list(stream_audio(tmp_path / "long.wav"))), whole, atol=1e-6)


def test_chunks_cut_from_blocks_follow_the_plan_and_hold_little():
    rng = np.random.default_rng(0)
    hop = 320
    for n, chunk_s, overlap_s in [(16000 * 95 + 123, 30.0, 1.0), (16000 * 7, 2.0, 0.5), (16000 * 3, 30.0, 1.0),
                                  (400, 1.0, 0.1), (16000 * 33, 5.0, 0.0)]:  # fmt: skip
        audio = rng.standard_normal(n).astype(np.float32)
        cuts = np.sort(rng.integers(0, n, size=int(rng.integers(1, 40))))
        blocks = np.split(audio, cuts)
        chunks = Chunks(blocks, hop, chunk_s, overlap_s)
        got = [(s, s + len(x), a, b) for s, x, a, b in chunks]
        assert got == chunk_plan(n, hop, chunk_s, overlap_s) and chunks.samples == n and chunks.chunks == len(got)
        for s, x, _, _ in Chunks(blocks, hop, chunk_s, overlap_s):
            np.testing.assert_array_equal(x, audio[s : s + len(x)])
    tracemalloc.start()
    try:
        for _ in Chunks((np.zeros(16000, np.float32) for _ in range(600)), hop, 30.0, 1.0):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 30 * 16000 * 4, peak  # ten minutes (38 MB) streamed; about two 30 s chunks held at a time


def test_decoding_starts_before_a_long_stream_is_read(tiny_model_dir):
    from fedw2v.decode import Decoder
    from fedw2v.model import load_model

    loaded = load_model(str(tiny_model_dir))
    dec = Decoder(loaded.model, loaded.processor, "cpu")
    events: list[str] = []
    forward = dec.frame_ids

    def spy(audios):
        events.append(f"forward {len(audios)}")
        return forward(audios)

    dec.frame_ids = spy

    def blocks():
        for _ in range(30):
            events.append("block")
            yield np.zeros(160000, np.float32)  # 10 s

    t = dec.transcribe(blocks(), 30.0, 1.0)
    assert t.duration == 300 and t.chunks == 11
    first = events.index("forward 1")
    # the first 30 s chunk read (and one block past it, to know it is not the last), then decoded: one chunk per
    # forward pass on a CPU
    assert events[:first].count("block") == 4, events
    assert events.count("block") == 30 and max(int(e.split()[1]) for e in events if e != "block") == 1


def test_a_long_silence_never_makes_a_cue_longer_than_10_s():
    def ids(frames: str):
        return np.array([0 if c == "_" else VOCAB.index("|" if c == " " else c) for c in frames])

    v = Vocab(tuple(VOCAB), blank=0, delimiter=2)
    # "s" at 0 s, then 60 s of blanks, then "s" again, in one word; then a 300 s run of one character
    text, words = text_and_words(ids("s" + "_" * 3000 + "s" + " " + "t" * 15000), v, 0.02)
    assert text == "ss t" and words[0].pieces == (("s", 0.0, 0.02), ("s", 60.02, 60.04))
    assert json.dumps([w.to_dict() for w in words])  # the pieces are not part of the JSON
    cues = srt_cues(words)
    assert [(c[0], c[2]) for c in cues] == [(0.0, "s"), (60.02, "s"), (60.06, "t")]
    assert all(end - start <= SRT_MAX_CUE_S for start, end, _ in cues)
