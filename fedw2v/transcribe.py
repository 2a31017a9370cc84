"""The transcribe stage: audio files -> text, JSON (with word times) or SRT subtitles.

Each file is read as a stream of blocks (`fedw2v.audio.stream_audio`: any format soundfile or librosa reads,
any rate, channels mixed down) and decoded in overlapping chunks (`fedw2v.decode.Decoder.transcribe`), greedy
or with a beam search and a language model (`fedw2v.beam`), so memory does not grow with a file's length.
Every per-file failure (a file that cannot be read, an output that cannot be written) is a `FileFailure` with
a one-line reason; the other files are still transcribed, and `run` reports how many failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedw2v.config.options import finite, option
from fedw2v.decode import DEFAULT_CHUNK_S, DEFAULT_OVERLAP_S, Decoder, Transcript, Word
from fedw2v.device import DEVICE_HELP, DEVICES, check_device
from fedw2v.errors import InputError
from fedw2v.plain_model import ENGINES

FORMATS = ("text", "json", "srt")
SUFFIX = {"text": ".txt", "json": ".json", "srt": ".srt"}
# Subtitle cues: a new cue after a pause this long, or when a cue would get longer / wordier than this.
SRT_PAUSE_S = 0.8
SRT_MAX_S = 7.0
SRT_MAX_WORDS = 12
SRT_MAX_CUE_S = 10.0  # no cue is shown longer, even for one "word" a model stretched over a long silence


@dataclass(frozen=True)
class TranscribeConfig:
    format: str = option("text", "text | json (word times) | srt.", flags=("--format", "-f"), choices=FORMATS)
    chunk_seconds: float = option(DEFAULT_CHUNK_S, "Longer audio is decoded in overlapping chunks of this length.")
    overlap_seconds: float = option(DEFAULT_OVERLAP_S, "Context kept on each side of a chunk border.")
    device: str = option("auto", DEVICE_HELP, choices=DEVICES)
    engine: str = option("auto", "Forward pass: torch (fedw2v's own, in plain torch: ~240 MB less memory, the same "
                         "logits to float rounding) | transformers | auto (torch when the model directory allows it).",
                         choices=ENGINES)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if not finite(self.chunk_seconds, self.overlap_seconds):
            raise ValueError(
                f"--chunk-seconds and --overlap-seconds must be finite numbers, not {self.chunk_seconds} and "
                f"{self.overlap_seconds}"
            )
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
                "words": [w.to_dict() for w in t.words]}


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
    beam: Any = None,
) -> list[FileResult | FileFailure]:
    """Transcribe every file (greedy, or with ``beam``, a `fedw2v.beam.BeamSearch`); a file that cannot be
    read becomes a FileFailure (reported through ``on_result`` too)."""
    from fedw2v.audio import stream_audio

    results: list[FileResult | FileFailure] = []
    for path in paths:
        t0 = time.perf_counter()
        try:
            transcript = decoder.transcribe(stream_audio(path), config.chunk_seconds, config.overlap_seconds, beam)
            item: FileResult | FileFailure = FileResult(str(path), transcript, time.perf_counter() - t0)
        except InputError as exc:
            item = FileFailure(str(path), exc.message)
        except OSError as exc:
            item = FileFailure(str(path), f"{path}: cannot read ({exc.strerror or exc})")
        results.append(item)
        if on_result:
            on_result(item)
    return results


def run(
    paths: Sequence[str | os.PathLike],
    decoder: Decoder,
    config: TranscribeConfig,
    out: Path | None,
    model: str,
    echo: Callable[[str], None],
    say: Callable[[str], None],
    beam: Any = None,
) -> list[FileFailure]:
    """`fedw2v transcribe`: transcribe ``paths``; print each result (``echo``, stdout) or write it under
    ``out``; one line per failure on ``say`` (stderr). Returns the failures (the command exits 1 if any)."""
    import json

    writer = OutputDir(out, config.format) if out is not None else None
    several = len(paths) > 1
    done: list[FileResult] = []
    failed: list[FileFailure] = []
    name = "beam" if beam is not None else "greedy"

    def emit(item: FileResult | FileFailure) -> None:
        if isinstance(item, FileResult) and writer is not None:
            try:
                say(f"{item.file} -> {writer.write(item.file, render(item, config.format, model, name))}")
            except InputError as exc:
                item = FileFailure(item.file, exc.message)
        if isinstance(item, FileFailure):
            say(f"error: {item.error}")
            failed.append(item)
            return
        done.append(item)
        if writer is None and config.format != "json":  # json without --out: one document, printed at the end
            echo((f"==> {item.file} <==\n" if several else "") + render(item, config.format, model, name)
                 + ("\n" if several else ""))

    transcribe_files(paths, decoder, config, on_result=emit, beam=beam)
    if config.format == "json" and out is None:
        echo(json.dumps({"model": model, "decoder": name, "files": [r.to_dict() for r in done],
                         "errors": [r.to_dict() for r in failed]}, ensure_ascii=False) + "\n")  # fmt: skip
    if failed:
        say(f"{len(failed)} of {len(paths)} files failed")
    return failed


def srt_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt_cues(words: Sequence[Word]) -> list[tuple[float, float, str]]:
    """Subtitle cues: a new cue after a pause, or when a cue would get too long or too wordy. A word whose
    characters lie far apart (stray characters in a long silence) is shown as its pieces, each at its own
    time, and no cue lasts longer than SRT_MAX_CUE_S."""
    units = [piece for w in words for piece in (w.pieces or ((w.word, w.start, w.end),))]
    cues: list[list[tuple[str, float, float]]] = []
    for unit in units:
        cur = cues[-1] if cues else None
        if (
            cur is None
            or unit[1] - cur[-1][2] > SRT_PAUSE_S
            or unit[2] - cur[0][1] > SRT_MAX_S
            or len(cur) >= SRT_MAX_WORDS
        ):
            cues.append([unit])
        else:
            cur.append(unit)
    return [(c[0][1], min(c[-1][2], c[0][1] + SRT_MAX_CUE_S), " ".join(text for text, _, _ in c)) for c in cues]


def format_srt(transcript: Transcript) -> str:
    blocks = [
        f"{i}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(srt_cues(transcript.words), start=1)
    ]
    return "\n".join(blocks)


def render(result: FileResult, fmt: str, model: str = "", decoder: str = "greedy") -> str:
    """One file's output in ``fmt`` (text ends with a newline; json is one object with the model and decoder)."""
    import json

    if fmt == "json":
        return json.dumps({"model": model, "decoder": decoder, **result.to_dict()}, ensure_ascii=False,
                          indent=2) + "\n"
    if fmt == "srt":
        return format_srt(result.transcript)
    return result.transcript.text + "\n"


def output_path(out_dir: Path, source: str, fmt: str) -> Path:
    return Path(out_dir) / (Path(source).stem + SUFFIX[fmt])


class OutputDir:
    """``--out DIR``: one file per input, named after it; inputs with the same stem get -2, -3, … . Each file
    is written atomically; one that cannot be written (its name is a directory, the directory is read-only)
    is an InputError naming it."""

    def __init__(self, out_dir: Path, fmt: str):
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.used: set[str] = set()

    def write(self, source: str, text: str) -> Path:
        from fedw2v.atomic import atomic_file

        target = output_path(self.out_dir, source, self.fmt)
        n = 2
        while str(target) in self.used:
            target = target.with_name(f"{Path(source).stem}-{n}{target.suffix}")
            n += 1
        self.used.add(str(target))
        if target.is_dir():
            raise InputError(f"{target}: is a directory; the transcript of {source} was not written")
        try:
            with atomic_file(target) as tmp:
                tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{target}: cannot write the transcript of {source} ({exc.strerror or exc})") from None
        return target
