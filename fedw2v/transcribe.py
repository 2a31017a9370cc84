"""The transcribe stage: audio files -> text, JSON (with word times) or SRT subtitles.

Each file is read whole (`fedw2v.audio.load_audio`: any format soundfile or librosa reads, any rate, channels
mixed down) and decoded in overlapping chunks (`fedw2v.decode.Decoder.transcribe`). A file that cannot be read
gives a `FileFailure` with a one-line reason; the other files are still transcribed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedw2v.config.options import option
from fedw2v.decode import DEFAULT_CHUNK_S, DEFAULT_OVERLAP_S, Decoder, Transcript, Word
from fedw2v.device import DEVICE_HELP, DEVICES, check_device
from fedw2v.errors import InputError

FORMATS = ("text", "json", "srt")
SUFFIX = {"text": ".txt", "json": ".json", "srt": ".srt"}
# Subtitle cues: a new cue after a pause this long, or when a cue would get longer / wordier than this.
SRT_PAUSE_S = 0.8
SRT_MAX_S = 7.0
SRT_MAX_WORDS = 12


@dataclass(frozen=True)
class TranscribeConfig:
    format: str = option("text", "text | json (word times) | srt.", flags=("--format", "-f"), choices=FORMATS)
    chunk_seconds: float = option(DEFAULT_CHUNK_S, "Longer audio is decoded in overlapping chunks of this length.")
    overlap_seconds: float = option(DEFAULT_OVERLAP_S, "Context kept on each side of a chunk border.")
    device: str = option("auto", DEVICE_HELP, choices=DEVICES)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.overlap_seconds < 0:
            raise ValueError("overlap_seconds must be non-negative")
        check_device(self.device)
        if self.chunk_seconds <= 2 * self.overlap_seconds:
            raise ValueError(
                f"chunk_seconds ({self.chunk_seconds}) must be longer than twice "
                f"overlap_seconds ({self.overlap_seconds})"
            )


@dataclass
class FileResult:
    file: str
    transcript: Transcript
    seconds: float  # wall time to read and decode

    def to_dict(self) -> dict[str, Any]:
        t = self.transcript
        return {"file": self.file, "text": t.text, "duration": round(t.duration, 3), "chunks": t.chunks,
                "words": [asdict(w) for w in t.words]}


@dataclass
class FileFailure:
    file: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "error": self.error}


def transcribe_files(
    paths: Sequence[str | os.PathLike],
    decoder: Decoder,
    config: TranscribeConfig = TranscribeConfig(),
    on_result: Callable[[FileResult | FileFailure], None] | None = None,
) -> list[FileResult | FileFailure]:
    """Transcribe every file; unreadable ones become FileFailure (reported through ``on_result`` too)."""
    from fedw2v.audio import load_audio

    results: list[FileResult | FileFailure] = []
    for path in paths:
        t0 = time.perf_counter()
        try:
            audio = load_audio(path)
            item: FileResult | FileFailure = FileResult(
                str(path), decoder.transcribe(audio, config.chunk_seconds, config.overlap_seconds),
                time.perf_counter() - t0,
            )
        except InputError as exc:
            item = FileFailure(str(path), exc.message)
        results.append(item)
        if on_result:
            on_result(item)
    return results


def srt_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_cues(words: Sequence[Word]) -> list[tuple[float, float, str]]:
    cues: list[list[Word]] = []
    for w in words:
        cur = cues[-1] if cues else None
        if (
            cur is None
            or w.start - cur[-1].end > SRT_PAUSE_S
            or w.end - cur[0].start > SRT_MAX_S
            or len(cur) >= SRT_MAX_WORDS
        ):
            cues.append([w])
        else:
            cur.append(w)
    return [(c[0].start, c[-1].end, " ".join(w.word for w in c)) for c in cues]


def format_srt(transcript: Transcript) -> str:
    blocks = [
        f"{i}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(srt_cues(transcript.words), start=1)
    ]
    return "\n".join(blocks)


def render(result: FileResult, fmt: str, model: str = "") -> str:
    """One file's output in ``fmt`` (text ends with a newline; json is one object with the model)."""
    import json

    if fmt == "json":
        return json.dumps({"model": model, **result.to_dict()}, ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        return format_srt(result.transcript)
    return result.transcript.text + "\n"


def output_path(out_dir: Path, source: str, fmt: str) -> Path:
    return Path(out_dir) / (Path(source).stem + SUFFIX[fmt])


class OutputDir:
    """``--out DIR``: one file per input, named after it; inputs with the same stem get -2, -3, … ."""

    def __init__(self, out_dir: Path, fmt: str):
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.used: set[str] = set()

    def write(self, source: str, text: str) -> Path:
        target = output_path(self.out_dir, source, self.fmt)
        n = 2
        while str(target) in self.used:
            target = target.with_name(f"{Path(source).stem}-{n}{target.suffix}")
            n += 1
        self.used.add(str(target))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target
