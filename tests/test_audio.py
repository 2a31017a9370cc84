"""fedw2v.audio: segments read by seeking in the source file, mono mix, resampling, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fedw2v.audio import load_audio, read_segment, resample
from fedw2v.errors import InputError


def _tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.argmax(spec) * rate / len(x))


def test_read_segment_seeks_in_sphere_file(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-20000, 20000, size=16000 * 5, dtype=np.int16)
    sf.write(tmp_path / "talk.sph", pcm, 16000, format="NIST", subtype="PCM_16")
    seg = read_segment(tmp_path / "talk.sph", 1.25, 2.5)
    assert seg.dtype == np.float32 and seg.shape == (20000,)
    np.testing.assert_allclose(seg, pcm[20000:40000] / 32768.0, atol=1e-7)  # exactly those frames, no conversion
    # A segment that runs a little past the end (rounded STM times) is cut at the end.
    assert read_segment(tmp_path / "talk.sph", 4.9, 5.01).shape == (1600,)
    with pytest.raises(InputError, match="outside the audio"):
        read_segment(tmp_path / "talk.sph", 6.0, 7.0)


def test_read_segment_mixes_stereo_and_resamples(tmp_path):
    sf.write(tmp_path / "s.wav", _tone(3.0, 44100, 1000.0, channels=2), 44100)
    seg = read_segment(tmp_path / "s.wav", 0.5, 2.5)
    assert seg.ndim == 1 and abs(len(seg) - 32000) <= 1
    assert _peak_hz(seg, 16000) == pytest.approx(1000.0, abs=1.0)
    assert float(np.abs(seg).max()) == pytest.approx(0.3 * 0.75, rel=0.02)  # mean of the two channels


def test_read_segment_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.sph"):
        read_segment(tmp_path / "missing.sph", 0, 1)
    (tmp_path / "junk.sph").write_bytes(b"NIST_1A\n garbage")
    with pytest.raises(InputError, match="junk.sph: cannot read audio"):
        read_segment(tmp_path / "junk.sph", 0, 1)


@pytest.mark.parametrize(
    "ext,fmt,subtype,rate,channels",
    [
        ("wav", "WAV", "PCM_16", 16000, 1),
        ("wav", "WAV", "FLOAT", 8000, 1),
        ("flac", "FLAC", "PCM_24", 48000, 2),
        ("ogg", "OGG", "VORBIS", 44100, 2),
        ("mp3", "MP3", "MPEG_LAYER_III", 22050, 1),
        ("sph", "NIST", "PCM_16", 16000, 1),
    ],
)
def test_load_audio_formats_rates_channels(tmp_path, ext, fmt, subtype, rate, channels):
    path = tmp_path / f"a.{ext}"
    sf.write(path, _tone(2.0, rate, 440.0, channels), rate, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 32000) < 16000 * 0.1  # mp3/ogg encoders pad a little
    assert _peak_hz(x, 16000) == pytest.approx(440.0, abs=2.0)


def test_load_audio_bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage garbage")
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 20)
    (tmp_path / "dir.wav").mkdir()
    sf.write(tmp_path / "zero.wav", np.zeros((0,), np.float32), 16000)
    cases = {
        "missing.wav": "no such file",
        "empty.wav": "empty file",
        "corrupt.wav": "not a readable audio file",
        "notes.txt": "not a readable audio file",
        "dir.wav": "is a directory",
        "zero.wav": "no audio samples",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value) and reason in str(info.value)
        assert "\n" not in str(info.value)


def test_resample_keeps_frequency_and_noop_at_16k():
    x = _tone(1.0, 44100, 3000.0)
    y = resample(x, 44100)
    assert abs(len(y) - 16000) <= 1 and _peak_hz(y, 16000) == pytest.approx(3000.0, abs=1.0)
    z = _tone(1.0, 16000)
    assert resample(z, 16000) is z
