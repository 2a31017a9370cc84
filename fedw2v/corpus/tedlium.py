"""TED-LIUM 3 (or any corpus in its STM/SPH layout) -> utterance manifest.

Layout (../shared/REFERENCE.md §3)::

    ROOT/{legacy,speaker-adaptation}/{train,dev,test}/{stm,sph}/   (legacy/train entries may be symlinks)

Audio is never decoded: only the NIST SPHERE header is read (sample rate, channels, frames) and every segment
is checked to lie inside its audio. Bad input is skipped and reported (file, line, reason), never fatal unless
``strict``; the caller decides what to do with the problems.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.errors import CorpusError
from fedw2v.manifest import SPLITS
from fedw2v.text import NORMALIZATIONS, normalize

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

DISTRIBUTIONS = ("legacy", "speaker-adaptation")
GAP_TEXT = "ignore_time_segment_in_scoring"
GAP_SPEAKER = "inter_segment_gap"
# A segment may end this far past the last sample (rounding of times written with 2 decimals).
PAST_END_TOLERANCE_S = 0.01

# Reasons a segment is skipped. Each one is counted in the summary; --strict fails on any of them.
REASONS = {
    "too-few-fields": "STM line has fewer than 5 fields",
    "bad-time": "start/end time is not a finite, non-negative number",
    "reversed-time": "end time is not after start time",
    "non-utf8": "STM line is not valid UTF-8",
    "unreadable-stm": "STM file cannot be read",
    "missing-audio": "SPH file not found",
    "unreadable-audio": "SPH file cannot be read",
    "past-audio-end": "segment ends after the end of its audio",
    "duplicate-id": "utterance id seen before",
}

_LABEL = re.compile(r"^<[^<>]*>$")
_SPEAKER_FROM_TALK = re.compile(r"_\d{4}[A-Za-z]*$")
_WORD_TAGS = ("<unk>", "<sil>", "<s>", "</s>")  # tags that stand for words, not the segment label


class StmLineError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StmSegment:
    talk_id: str
    speaker_field: str
    start: float
    end: float
    start_text: str  # the times exactly as written, used in utt_id
    end_text: str
    label: str | None
    text_raw: str

    @property
    def utt_id(self) -> str:
        return f"{self.talk_id}_{self.start_text}_{self.end_text}"


def parse_stm_line(line: str) -> StmSegment | None:
    """Parse one STM line. None for blank, comment and gap lines; StmLineError for malformed ones."""
    fields = line.split()
    if not fields or fields[0].startswith(";;"):
        return None
    if GAP_TEXT in fields[5:] or (len(fields) > 2 and fields[2] == GAP_SPEAKER):
        return None
    if len(fields) < 5:
        raise StmLineError("too-few-fields", f"{len(fields)} fields, need at least 5 (talk channel speaker start end)")
    start_text, end_text = fields[3], fields[4]
    try:
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise StmLineError("bad-time", f"times {start_text!r} {end_text!r} are not numbers") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise StmLineError("bad-time", f"times {start_text!r} {end_text!r} are not finite, non-negative numbers")
    if end <= start:
        raise StmLineError("reversed-time", f"end {end_text} is not after start {start_text}")
    rest = fields[5:]
    label = None
    if rest and _LABEL.match(rest[0]) and rest[0].lower() not in _WORD_TAGS:
        label = rest[0]
        rest = rest[1:]
    return StmSegment(fields[0], fields[2], start, end, start_text, end_text, label, " ".join(rest))


def gender_from_label(label: str | None) -> str:
    """`<o,f0,female>` -> female, `<F0_M>` -> male, `<NA>` / none -> unknown (the gender is the last field)."""
    if not label:
        return "unknown"
    last = re.split(r"[,_]", label[1:-1])[-1].strip().lower()
    return {"female": "female", "f": "female", "male": "male", "m": "male"}.get(last, "unknown")


def speaker_from_talk(talk_id: str) -> str:
    """`JoelLevine_2009X` -> `JoelLevine`: one speaker can own several talks."""
    return _SPEAKER_FROM_TALK.sub("", talk_id) or talk_id


@dataclass(frozen=True)
class SphHeader:
    sample_rate: int
    channels: int
    frames: int  # frames actually present in the file (a truncated file has fewer than its header says)
    sample_bytes: int
    coding: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


class SphError(ValueError):
    pass


def read_sph_header(path: str | os.PathLike) -> SphHeader:
    """Read a NIST SPHERE header without touching the samples. SphError says what is wrong."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
            if not head.startswith(b"NIST_1A"):
                raise SphError("not a NIST SPHERE file (no NIST_1A magic)")
            lines = head.split(b"\n")
            try:
                header_size = int(lines[1])
            except (IndexError, ValueError):
                raise SphError("malformed SPHERE header size") from None
            if header_size > len(head):
                head += fh.read(header_size - len(head))
                lines = head.split(b"\n")
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise SphError(exc.strerror or str(exc)) from None
    fields: dict[str, str] = {}
    for raw in lines[2:]:
        line = raw.decode("ascii", "replace").strip()
        if line == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) == 3:
            fields[parts[0]] = parts[2]
    else:
        raise SphError("SPHERE header has no end_head")
    try:
        rate = int(float(fields["sample_rate"]))
        channels = int(fields.get("channel_count", "1"))
        nbytes = int(fields.get("sample_n_bytes", "2"))
    except KeyError as exc:
        raise SphError(f"SPHERE header lacks {exc.args[0]}") from None
    except (ValueError, OverflowError) as exc:  # "abc", "nan" / "inf"
        raise SphError(f"SPHERE header field is not a number ({exc})") from None
    coding = fields.get("sample_coding", "pcm")
    if "shorten" in coding or "wavpack" in coding or "shortpack" in coding:
        raise SphError(f"compressed SPHERE ({coding}) is not supported; decompress it first (e.g. with sph2pipe)")
    if rate <= 0 or channels <= 0 or nbytes <= 0:
        raise SphError(f"SPHERE header has sample_rate={rate}, channel_count={channels}, sample_n_bytes={nbytes}")
    available = max(0, size - header_size) // (channels * nbytes)
    try:
        frames = min(int(fields["sample_count"]), available) if "sample_count" in fields else available
    except ValueError:
        raise SphError("SPHERE sample_count is not a number") from None
    return SphHeader(rate, channels, frames, nbytes, coding)


@dataclass(frozen=True)
class PrepareConfig:
    corpus_dir: Path  # the TEDLIUM_release-3 directory (or a corpus in its layout)
    distribution: str = "legacy"  # legacy | speaker-adaptation
    splits: tuple[str, ...] = SPLITS  # corpus splits to read
    normalization: str = "paper"  # paper | joined (see fedw2v.text)

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {self.distribution!r}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ValueError(f"splits must be a non-empty subset of {', '.join(SPLITS)}; got {', '.join(self.splits)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}")


@dataclass(frozen=True)
class Problem:
    reason: str  # a key of REASONS
    file: str  # the STM file (or SPH file for audio problems), relative to the corpus root
    line: int | None  # 1-based STM line number
    detail: str
    split: str
    segments: int = 1  # segments skipped because of it

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        extra = f" ({self.segments} segments skipped)" if self.segments > 1 else ""
        return f"{where}: {self.reason}: {self.detail}{extra}"


@dataclass
class SplitStats:
    talks: set[str] = field(default_factory=set)
    speakers: set[str] = field(default_factory=set)
    utterances: int = 0
    seconds: float = 0.0
    empty_text: int = 0  # utterances kept out because their normalised text is empty
    gaps: int = 0  # inter-segment gap rows (never utterances)
    skipped: Counter = field(default_factory=Counter)  # reason -> segments skipped


@dataclass
class PrepareResult:
    table: pa.Table
    problems: list[Problem]
    stats: dict[str, SplitStats]

    @property
    def skipped(self) -> Counter:
        total: Counter = Counter()
        for s in self.stats.values():
            total.update(s.skipped)
        return total


def split_dirs(config: PrepareConfig) -> dict[str, tuple[Path, Path]]:
    """The (stm_dir, sph_dir) of each requested split; CorpusError when the layout is not there."""
    root = Path(config.corpus_dir)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus directory not found", hint="pass the TEDLIUM_release-3 directory")
    dist = root / config.distribution
    if not dist.is_dir():
        found = [d for d in DISTRIBUTIONS if (root / d).is_dir()]
        hint = f"this corpus has: {', '.join(found)}" if found else "is this a TED-LIUM release 3 directory?"
        raise CorpusError(f"{dist}: distribution {config.distribution!r} not found", hint=hint)
    dirs = {}
    for split in config.splits:
        stm, sph = dist / split / "stm", dist / split / "sph"
        for d in (stm, sph):
            if not d.is_dir():
                raise CorpusError(f"{d}: directory not found", hint=f"the {split} split of {config.distribution} is incomplete")
        dirs[split] = (stm, sph)
    return dirs


def prepare(config: PrepareConfig, progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Read the corpus into a manifest table. `progress(done, total)` is called once per STM file."""
    from fedw2v import manifest

    root = Path(config.corpus_dir)
    dirs = split_dirs(config)
    root_real = root.resolve()
    stm_files = {split: sorted(stm.glob("*.stm")) for split, (stm, _) in dirs.items()}
    total = sum(len(v) for v in stm_files.values())
    cols: dict[str, list] = {name: [] for name in manifest.COLUMN_NAMES if name not in ("client_id", "local_split")}
    problems: list[Problem] = []
    stats: dict[str, SplitStats] = {}
    seen: set[str] = set()
    done = 0
    for split, files in stm_files.items():
        st = stats[split] = SplitStats()
        sph_dir = dirs[split][1]
        headers: dict[str, SphHeader | Problem] = {}
        for stm_path in files:
            rel_stm = _rel(stm_path, root)
            for lineno, seg in _segments(stm_path, rel_stm, split, problems, st):
                audio = headers.get(seg.talk_id)
                if audio is None:
                    audio = headers[seg.talk_id] = _audio_for(sph_dir / f"{seg.talk_id}.sph", root, root_real, split)
                if isinstance(audio, Problem):
                    _skip(problems, st, Problem(audio.reason, rel_stm, lineno, f"{audio.file}: {audio.detail}", split))
                    continue
                header, audio_path = audio
                if seg.end > header.duration + PAST_END_TOLERANCE_S:
                    _skip(problems, st, Problem("past-audio-end", rel_stm, lineno,
                                                f"segment {seg.start_text}-{seg.end_text} s ends after the audio "
                                                f"({header.duration:.2f} s in {audio_path})", split))
                    continue
                utt_id = seg.utt_id
                if utt_id in seen:
                    _skip(problems, st, Problem("duplicate-id", rel_stm, lineno, f"utterance {utt_id} seen before", split))
                    continue
                text = normalize(seg.text_raw, config.normalization)
                if not text:
                    st.empty_text += 1
                    continue
                seen.add(utt_id)
                speaker = speaker_from_talk(seg.talk_id)
                for key, value in (
                    ("utt_id", utt_id), ("talk_id", seg.talk_id), ("speaker", speaker),
                    ("gender", gender_from_label(seg.label)), ("split", split), ("audio_path", audio_path),
                    ("start", seg.start), ("end", seg.end), ("duration", seg.end - seg.start),
                    ("sample_rate", header.sample_rate), ("num_channels", header.channels),
                    ("text", text), ("text_raw", seg.text_raw),
                ):
                    cols[key].append(value)
                st.talks.add(seg.talk_id)
                st.speakers.add(speaker)
                st.utterances += 1
                st.seconds += seg.end - seg.start
            done += 1
            if progress:
                progress(done, total)
    return PrepareResult(manifest.from_rows(cols), _merge_audio_problems(problems), stats)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _audio_for(sph: Path, root: Path, root_real: Path, split: str) -> tuple[SphHeader, str] | Problem:
    rel = _rel(sph, root)
    if not sph.exists():
        return Problem("missing-audio", rel, None, "SPH file not found", split)
    try:
        header = read_sph_header(sph)
    except SphError as exc:
        return Problem("unreadable-audio", rel, None, str(exc), split)
    # Store the real file's path when it lies inside the corpus (legacy/train symlinks point into data/),
    # so the manifest does not depend on the links; otherwise the path as found.
    real = sph.resolve()
    audio_path = str(real.relative_to(root_real)) if real.is_relative_to(root_real) else rel
    return header, audio_path


def _segments(stm_path: Path, rel_stm: str, split: str, problems: list[Problem], st: SplitStats) -> Iterable[tuple[int, StmSegment]]:
    try:
        data = stm_path.read_bytes()
    except OSError as exc:
        _skip(problems, st, Problem("unreadable-stm", rel_stm, None, exc.strerror or str(exc), split))
        return
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _skip(problems, st, Problem("non-utf8", rel_stm, lineno, f"byte {raw[exc.start]:#04x} at column {exc.start + 1}", split))
            continue
        try:
            seg = parse_stm_line(line)
        except StmLineError as exc:
            _skip(problems, st, Problem(exc.reason, rel_stm, lineno, exc.detail, split))
            continue
        if seg is None:
            if line.strip() and not line.lstrip().startswith(";;"):
                st.gaps += 1
            continue
        yield lineno, seg


def _skip(problems: list[Problem], st: SplitStats, problem: Problem) -> None:
    problems.append(problem)
    st.skipped[problem.reason] += problem.segments


def _merge_audio_problems(problems: list[Problem]) -> list[Problem]:
    """One report per (STM file, audio problem) instead of one per segment; counts are kept."""
    merged: list[Problem] = []
    index: dict[tuple[str, str], int] = {}
    for p in problems:
        if p.reason in ("missing-audio", "unreadable-audio"):
            key = (p.file, p.reason)
            if key in index:
                old = merged[index[key]]
                merged[index[key]] = Problem(old.reason, old.file, old.line, old.detail, old.split, old.segments + 1)
                continue
            index[key] = len(merged)
        merged.append(p)
    return merged
