"""Audio input: a segment (file, start, end) or a whole file, as 16 kHz mono float32.

Segments are read straight from their source file (NIST SPHERE, WAV, FLAC, …) with libsndfile seeking to the
first frame: nothing is converted or cached. Several channels are averaged to one; other sample rates are
resampled with soxr. A whole file can also be read as a stream of blocks (`stream_audio`: libsndfile reads a
block, soxr's streaming resampler converts it), so that a long recording never sits in memory whole. Samples
that are NaN or infinite are an error naming the file and the time of the first one. Every failure is an
`InputError` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SAMPLE_RATE = 16_000  # what wav2vec 2.0 models take
STREAM_BLOCK_S = 10.0  # seconds of audio read at a time by `stream_audio`


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32, channels averaged."""
    import numpy as np

    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality); a no-op when the rates agree."""
    import numpy as np

    if rate == target or samples.size == 0:
        return samples
    import soxr

    return np.ascontiguousarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)


def read_segment(path: str | os.PathLike, start: float, end: float, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of ``path`` between ``start`` and ``end`` seconds, 16 kHz mono float32.

    libsndfile seeks to the first frame and reads only the segment. A segment that runs past the end of the
    file is cut at the end (TED-LIUM times are rounded to 10 ms); one that starts past it is an error.
    """
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as fh:
            rate = fh.samplerate
            first = max(0, int(round(start * rate)))
            last = min(fh.frames, int(round(end * rate)))
            if first >= fh.frames or last <= first:
                raise InputError(
                    f"{path}: segment {start:.2f}-{end:.2f} s is outside the audio ({fh.frames / rate:.2f} s)"
                )
            fh.seek(first)
            samples = fh.read(last - first, dtype="float32", always_2d=True)
    except InputError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: cannot read audio ({_reason(exc)})") from None
    check_finite(samples, path, rate, start)
    return resample(to_mono(samples), rate, target_rate)


def check_finite(samples: np.ndarray, path: str | os.PathLike, rate: int, offset_s: float = 0.0) -> None:
    """InputError naming the file and the time of the first NaN or infinite sample, if there is one."""
    import numpy as np

    bad = ~np.isfinite(samples)
    if bad.any():
        frame = int(np.flatnonzero(bad.any(axis=1) if bad.ndim == 2 else bad)[0])
        raise InputError(
            f"{path}: {int(bad.sum())} audio samples are NaN or infinite (the first at "
            f"{offset_s + frame / rate:.2f} s)",
            hint="repair or re-export the file",
        )


def _check_file(p: Path) -> None:
    """InputError for a path that is missing, a directory, unreadable or empty."""
    try:
        if p.is_dir():
            raise InputError(f"{p}: is a directory, not an audio file")
        size = p.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({_reason(exc)})") from None
    if size == 0:
        raise InputError(f"{p}: empty file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({_reason(exc)})") from None


def stream_audio(
    path: str | os.PathLike, target_rate: int = SAMPLE_RATE, block_s: float = STREAM_BLOCK_S
) -> Iterator[np.ndarray]:
    """A whole file as consecutive blocks of 16 kHz mono float32 whose concatenation is what `load_audio`
    returns. Files libsndfile reads are read ``block_s`` seconds at a time and resampled as a stream, so
    memory does not grow with the file's length; other formats (through librosa) are read whole. The checks
    of `load_audio` apply (raised when the stream is started or reaches the problem)."""
    import numpy as np
    import soundfile as sf

    p = Path(path)
    _check_file(p)
    try:
        fh = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        fh = None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({_reason(exc)})") from None
    if fh is None:  # not a format libsndfile reads: librosa, whole
        samples, rate = _read_librosa(p)
        if samples.shape[0] == 0:
            raise InputError(f"{p}: no audio samples in the file")
        check_finite(samples, p, rate)
        yield resample(to_mono(samples), rate, target_rate)
        return
    with fh:
        rate = fh.samplerate
        resampler = None
        if rate != target_rate:
            import soxr

            resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
        block, done = max(1, int(block_s * rate)), 0
        while True:
            try:
                samples = fh.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise InputError(f"{p}: cannot read audio at {done / rate:.2f} s ({_reason(exc)})") from None
            last = samples.shape[0] < block
            check_finite(samples, p, rate, done / rate)
            if done == 0 and samples.shape[0] == 0:
                raise InputError(f"{p}: no audio samples in the file")
            done += samples.shape[0]
            mono = to_mono(samples)
            out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
            if out.size:
                yield np.ascontiguousarray(out, dtype=np.float32)
            if last:
                return


def load_audio(path: str | os.PathLike, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A whole file as 16 kHz mono float32: anything libsndfile reads (wav, flac, ogg, mp3, sph, …), else
    whatever librosa reads. InputError for a missing, empty or unreadable file, one without samples or with
    NaN or infinite samples."""
    p = Path(path)
    _check_file(p)
    samples, rate = _read_soundfile(p)
    if samples is None:
        samples, rate = _read_librosa(p)
    if samples.shape[0] == 0:
        raise InputError(f"{p}: no audio samples in the file")
    check_finite(samples, p, rate)
    return resample(to_mono(samples), rate, target_rate)


def _read_soundfile(path: Path):
    import soundfile as sf

    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None, None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None
    return samples, rate


def _read_librosa(path: Path):
    import warnings

    try:
        import librosa
    except ImportError:  # pragma: no cover - librosa is a dependency
        raise InputError(f"{path}: not an audio format libsndfile reads (and librosa is not installed)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples, rate = librosa.load(str(path), sr=None, mono=False, dtype="float32")
    except Exception as exc:  # noqa: BLE001 -- librosa/audioread raise many unrelated types
        raise InputError(
            f"{path}: not a readable audio file ({_reason(exc)})",
            hint="use wav, flac, ogg, mp3 or sph",
        ) from None
    samples = samples.T if samples.ndim == 2 else samples  # librosa: (channels, frames)
    return samples, int(rate)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "Permission denied", without the errno and the path said already
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__) or type(exc).__name__
