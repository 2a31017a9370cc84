"""A small corpus in the TED-LIUM 3 layout, spoken by synthetic voices (flite, espeak-ng): demo and tests.

Layout written (the same as the real corpus, ../shared/REFERENCE.md §3)::

    OUT/data/{sph,stm}/<talk>.{sph,stm}                         every talk (real files)
    OUT/legacy/train/{sph,stm}/                                  relative symlinks into data/
    OUT/legacy/{dev,test}/{sph,stm}/                             real files (copies), speakers not in train
    OUT/speaker-adaptation/{train,dev,test}/{sph,stm}/           relative symlinks into data/
    OUT/doc/synth.json                                           the config and the voice of each speaker

One synthetic voice is one speaker; a talk id is ``<Speaker>_<year><letter>`` so that
`fedw2v.corpus.tedlium.speaker_from_talk` finds the speaker; some train speakers own several talks. Audio is
NIST SPHERE, 16 kHz, 16-bit PCM, mono. The STM files carry the quirks of the real corpus: inter-segment gap
rows, ``<unk>``, a ``{NOISE}`` filler (with a noise burst in the audio), split clitics (``it 's``),
pronunciation variants (``the(2)``) and mixed segment labels (``<o,f0,female>``, ``<NA>``, ``<F0_M>``).

The voices (which speakers exist, how a sentence is spoken) are in `fedw2v.corpus.voices`, the sentences and
their STM transcripts in `fedw2v.corpus.sentences`; this module plans the talks and writes the corpus.

Everything is derived from the seed: the same seed gives byte-identical STM and SPH files (flite and
espeak-ng are deterministic for the same text and voice; their versions are recorded in doc/synth.json,
as another version may speak differently). The corpus is built in a temporary directory next to OUT and
renamed into place at the end, so no partial corpus is ever left behind.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.corpus.sentences import make_sentence, quirky_words, stm_words
from fedw2v.corpus.voices import (
    SYNTHESISERS,
    Voice,
    available_voices,
    installed_synthesisers,
    select_voices,
    synthesise,
    synthesiser_version,
)
from fedw2v.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SAMPLE_RATE = 16000
MIN_SPEAKERS = 3
MAX_MINUTES = 600.0
# Utterances are redrawn until their speech lasts this long (the training code keeps 0.1-10 s).
UTTERANCE_SECONDS = (2.0, 8.0)


@dataclass(frozen=True)
class SynthConfig:
    out_dir: Path  # corpus directory to create (must not exist, or be empty, unless force)
    # number of speakers = synthetic voices (at least 3: train, dev and test need one each); None: the number of
    # `voices` when they are given, else 10
    speakers: int | None = None
    minutes: float = 15.0  # total minutes of speech, roughly (the talks stop at the first sentence past it)
    seed: int = 0  # same seed, byte-identical corpus; another seed, other sentences and talk ids
    force: bool = False  # replace out_dir when it exists and is not empty
    workers: int = 2  # synthesiser processes run at the same time
    # which voices speak, in this order (a speaker id such as `FliteSlt` or a voice name such as `slt` or
    # `en-us+f3`, see voices.VOICES); the split takes the last ones for dev and test as it does for the default list.
    # Empty: the first `speakers` available voices of VOICES.
    voices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.voices, tuple) or not all(isinstance(v, str) and v for v in self.voices):
            raise ValueError(f"voices must be a tuple of voice names, not {self.voices!r}")
        if len(set(self.voices)) != len(self.voices):
            twice = sorted({v for v in self.voices if self.voices.count(v) > 1})
            raise ValueError(f"voices must not repeat: {', '.join(twice)} given more than once")
        if self.voices and len(self.voices) < MIN_SPEAKERS:
            raise ValueError(
                f"voices: at least {MIN_SPEAKERS} are needed (one train, one dev and one test speaker), "
                f"not {len(self.voices)}"
            )
        if self.speakers is None:
            object.__setattr__(self, "speakers", len(self.voices) if self.voices else 10)
        elif self.voices and self.speakers != len(self.voices):
            raise ValueError(
                f"speakers ({self.speakers}) must equal the number of voices given ({len(self.voices)}), or be left out"
            )
        if isinstance(self.speakers, bool) or not isinstance(self.speakers, int) or self.speakers < MIN_SPEAKERS:
            raise ValueError(
                f"speakers must be an integer of at least {MIN_SPEAKERS} (one train, one dev and one test "
                f"speaker), not {self.speakers!r}"
            )
        if not (isinstance(self.minutes, (int, float)) and math.isfinite(self.minutes)
                and 0 < self.minutes <= MAX_MINUTES):
            raise ValueError(f"minutes must be a number above 0 and at most {MAX_MINUTES:g}, not {self.minutes!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {self.seed!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, not {self.workers!r}")


@dataclass(frozen=True)
class TalkInfo:
    talk_id: str
    speaker: str
    split: str  # legacy split: train / dev / test
    sa_split: str  # speaker-adaptation split
    utterances: int
    speech_seconds: float  # sum of the scored segments
    audio_seconds: float  # length of the SPH file


@dataclass(frozen=True)
class SpeakerInfo:
    speaker: str
    voice: str
    synthesiser: str
    gender: str
    split: str  # legacy split
    talks: tuple[str, ...]
    utterances: int
    speech_seconds: float


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    seed: int
    speakers: tuple[SpeakerInfo, ...]
    talks: tuple[TalkInfo, ...]
    synthesisers: dict[str, str]  # name -> version line, of those used

    @property
    def utterances(self) -> int:
        return sum(t.utterances for t in self.talks)

    @property
    def speech_seconds(self) -> float:
        return sum(t.speech_seconds for t in self.talks)


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _TalkPlan:
    index: int
    talk_id: str
    voice: Voice
    split: str
    sa_split: str
    label_style: str  # ofg (<o,f0,gender>) | na (<NA>) | f0 (<F0_M>)
    target_seconds: float  # speech to synthesise, roughly


def split_counts(speakers: int) -> tuple[int, int, int]:
    """(train, dev, test) speakers: a fifth each to dev and test (at least one), the rest to train."""
    held = max(1, round(speakers * 0.2))
    return speakers - 2 * held, held, held


def _plan(voices: list[Voice], config: SynthConfig) -> list[_TalkPlan]:
    n_train, n_dev, n_test = split_counts(len(voices))
    split = {}
    # Hold out from the end of the list, alternating test and dev, so that both mix voices and genders.
    held = list(reversed(voices[n_train:]))
    for i, voice in enumerate(held):
        split[voice.speaker] = "test" if i % 2 == 0 else "dev"
    train = voices[:n_train]
    rng = random.Random(f"fedw2v-synth:{config.seed}:talk-ids")
    talks: list[tuple[Voice, str, str]] = []  # (voice, talk_id, legacy split)
    sa_cycle = 0
    sa: dict[str, str] = {}
    for i, voice in enumerate(train):
        n_talks = 3 if i == 0 else (2 if i % 2 == 0 else 1)  # a few speakers own several talks
        year = rng.randint(2001, 2020 - n_talks)
        ids = [f"{voice.speaker}_{year + k}{rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ')}" for k in range(n_talks)]
        for k, talk_id in enumerate(ids):
            talks.append((voice, talk_id, "train"))
            # speaker adaptation: a speaker's later talks are its adaptation dev/test data
            if k == 0:
                sa[talk_id] = "train"
            else:
                sa[talk_id] = ("dev", "test")[sa_cycle % 2]
                sa_cycle += 1
    for wanted in ("dev", "test"):
        for voice in voices[n_train:]:
            if split[voice.speaker] == wanted:
                talk_id = f"{voice.speaker}_{rng.randint(2001, 2020)}{rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ')}"
                talks.append((voice, talk_id, wanted))
                sa[talk_id] = "train"
    target = config.minutes * 60.0 / len(talks)
    plans = []
    n_train_talks = 0
    for index, (voice, talk_id, legacy) in enumerate(talks):
        if legacy == "train":
            style = ("ofg", "na", "f0")[n_train_talks % 3]
            n_train_talks += 1
        else:
            style = "ofg"
        plans.append(_TalkPlan(index, talk_id, voice, legacy, sa[talk_id], style, target))
    return plans


# ------------------------------------------------------------------------------------------- the audio


def _noise_burst(nrng: np.random.Generator) -> np.ndarray:
    import numpy as np

    n = int(nrng.uniform(0.15, 0.35) * SAMPLE_RATE)
    noise = nrng.standard_normal(n).astype(np.float32)
    noise = np.convolve(noise, np.ones(4, dtype=np.float32) / 4, mode="same")  # a little less hiss
    envelope = np.hanning(n).astype(np.float32)
    return noise * envelope * np.float32(nrng.uniform(0.05, 0.15) / (np.abs(noise).max() or 1.0))


def _cs(seconds: float) -> int:
    """Seconds -> whole centiseconds (the STM writes times with 2 decimals)."""
    return int(round(seconds * 100))


def _label(style: str, gender: str) -> str:
    if style == "na":
        return "<NA>"
    if style == "f0":
        return f"<F0_{gender[0].upper()}>"
    return f"<o,f0,{gender}>"


def _fmt(cs: int) -> str:
    return f"{cs // 100}.{cs % 100:02d}"


def _make_talk(plan: _TalkPlan, exe: str, seed: int, data_dir: Path, work_dir: Path) -> TalkInfo:
    """Synthesise one talk and write data/sph/<talk>.sph and data/stm/<talk>.stm."""
    import numpy as np
    import soundfile as sf

    rng = random.Random(f"fedw2v-synth:{seed}:{plan.talk_id}")
    nrng = np.random.default_rng(rng.getrandbits(64))
    gain = rng.uniform(0.3, 0.8)
    label = _label(plan.label_style, plan.voice.gender)
    pieces: list[tuple[int, np.ndarray]] = []  # (start sample, samples)
    rows: list[tuple[int, int, str]] = []  # (start cs, end cs, transcript)
    cursor = _cs(rng.uniform(0.5, 2.0))
    speech = 0.0
    k = 0
    forced = ("unk", "noise", "variant")[plan.index % 3]  # every talk shows one quirk for sure
    while speech < plan.target_seconds or not rows:
        for _attempt in range(20):
            sentence = make_sentence(rng, opening=(k == 0))
            audio = synthesise(plan.voice, exe, sentence, work_dir / f"{plan.talk_id}-{k}.wav", SAMPLE_RATE)
            if UTTERANCE_SECONDS[0] <= len(audio) / SAMPLE_RATE <= UTTERANCE_SECONDS[1]:
                break
        words, noise = quirky_words(stm_words(sentence), rng, forced if k == 0 else None)
        peak = np.abs(audio).max() or 1.0
        audio = audio * np.float32(gain / peak)
        content: list[np.ndarray] = [audio]
        if noise:
            burst = _noise_burst(nrng)
            pause = np.zeros(int(nrng.uniform(0.05, 0.15) * SAMPLE_RATE), dtype=np.float32)
            if rng.random() < 0.5:
                content = [burst, pause, audio]
                words = ["{NOISE}", *words]
            else:
                content = [audio, pause, burst]
                words = [*words, "{NOISE}"]
        segment = np.concatenate(content)
        end = cursor + math.ceil(len(segment) * 100 / SAMPLE_RATE)
        pieces.append((cursor * SAMPLE_RATE // 100, segment))
        rows.append((cursor, end, " ".join(words)))
        speech += (end - cursor) / 100
        cursor = end + _cs(rng.uniform(0.3, 1.2))
        k += 1
    total_cs = rows[-1][1] + _cs(rng.uniform(0.5, 1.0))
    n_samples = total_cs * SAMPLE_RATE // 100
    signal = (nrng.standard_normal(n_samples) * rng.uniform(0.0005, 0.002)).astype(np.float32)  # noise floor
    for start, samples in pieces:
        signal[start: start + len(samples)] += samples
    pcm = np.clip(np.round(signal * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(str(data_dir / "sph" / f"{plan.talk_id}.sph"), pcm, SAMPLE_RATE, format="NIST", subtype="PCM_16")
    lines = []
    gap = f"{plan.talk_id} 1 inter_segment_gap {{}} {{}} <o,,unknown> ignore_time_segment_in_scoring"
    previous = 0
    for start, end, text in rows:
        lines.append(gap.format(_fmt(previous), _fmt(start)))
        lines.append(f"{plan.talk_id} 1 {plan.talk_id} {_fmt(start)} {_fmt(end)} {label} {text}")
        previous = end
    lines.append(gap.format(_fmt(previous), _fmt(total_cs)))
    (data_dir / "stm" / f"{plan.talk_id}.stm").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return TalkInfo(plan.talk_id, plan.voice.speaker, plan.split, plan.sa_split, len(rows),
                    round(speech, 2), n_samples / SAMPLE_RATE)


# -------------------------------------------------------------------------------------------- the stage


def _check_out_dir(config: SynthConfig) -> Path:
    out = Path(config.out_dir).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"{out}: exists and is a symbolic link or not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not config.force:
            raise UsageError(f"{out}: directory exists and is not empty", hint="pass --force to replace it")
        real = out.resolve()
        protected = {Path("/"), Path.home().resolve(), *Path.cwd().resolve().parents, Path.cwd().resolve()}
        if real in protected:
            raise UsageError(f"{out}: refusing to replace this directory, even with --force")
    return out


def synthesize(config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write a TED-LIUM 3 style corpus spoken by `config.speakers` synthetic voices into `config.out_dir`: the
    voices named in `config.voices`, in that order, or else the first available ones of VOICES.

    `progress(done, total)` is called once per finished talk. UsageError for an out_dir that is in the way,
    more speakers than voices, or a named voice that is unknown or not installed; EnvironmentProblem when no
    synthesiser is installed or one fails.
    """
    out = _check_out_dir(config)
    exes = installed_synthesisers()
    voices = available_voices(exes)
    if config.voices:
        voices = select_voices(config.voices, voices, exes)
    elif config.speakers > len(voices):
        per = ", ".join(f"{name} {sum(v.synthesiser == name for v in voices)}" for name in exes)
        missing = [name for name in SYNTHESISERS if name not in exes]
        raise UsageError(
            f"--speakers {config.speakers} but only {len(voices)} voices are available ({per})",
            hint=f"use --speakers {len(voices)} or fewer"
            + (f", or install {' and '.join(missing)} for more voices" if missing else ""),
        )
    else:
        voices = voices[: config.speakers]
    plans = _plan(voices, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        data = staging / "data"
        for sub in ("sph", "stm"):
            (data / sub).mkdir(parents=True)
        work = staging / ".work"
        work.mkdir()
        done = 0
        talks: list[TalkInfo] = []
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            futures = [pool.submit(_make_talk, p, exes[p.voice.synthesiser], config.seed, data, work) for p in plans]
            try:
                for future in futures:
                    talks.append(future.result())
                    done += 1
                    if progress:
                        progress(done, len(plans))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        work.rmdir()
        _link_splits(staging, talks)
        result = _result(out, config, voices, talks, exes)
        _write_doc(staging, config, result)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _link_splits(root: Path, talks: list[TalkInfo]) -> None:
    for dist in ("legacy", "speaker-adaptation"):
        for split in ("train", "dev", "test"):
            for sub in ("sph", "stm"):
                (root / dist / split / sub).mkdir(parents=True)
    for t in talks:
        for sub in ("sph", "stm"):
            name = f"{t.talk_id}.{sub}"
            source = root / "data" / sub / name
            if t.split == "train":
                os.symlink(Path("..", "..", "..", "data", sub, name), root / "legacy" / t.split / sub / name)
            else:
                shutil.copyfile(source, root / "legacy" / t.split / sub / name)
            os.symlink(Path("..", "..", "..", "data", sub, name), root / "speaker-adaptation" / t.sa_split / sub / name)


def _result(
    out: Path, config: SynthConfig, voices: list[Voice], talks: list[TalkInfo], exes: dict[str, str]
) -> SynthResult:
    speakers = []
    for v in voices:
        mine = [t for t in talks if t.speaker == v.speaker]
        speakers.append(SpeakerInfo(
            v.speaker, v.name, v.synthesiser, v.gender, mine[0].split, tuple(t.talk_id for t in mine),
            sum(t.utterances for t in mine), round(sum(t.speech_seconds for t in mine), 2),
        ))
    used = {v.synthesiser for v in voices}
    versions = {name: synthesiser_version(exe) for name, exe in exes.items() if name in used}
    return SynthResult(out, config.seed, tuple(speakers), tuple(talks), versions)


def _write_doc(root: Path, config: SynthConfig, result: SynthResult) -> None:
    doc = {
        "generator": "fedw2v synth",
        "config": {"speakers": config.speakers, "minutes": config.minutes, "seed": config.seed,
                   **({"voices": [s.speaker for s in result.speakers]} if config.voices else {})},
        "synthesisers": result.synthesisers,
        "sample_rate": SAMPLE_RATE,
        "speakers": [asdict(s) for s in result.speakers],
        "talks": [asdict(t) for t in result.talks],
    }
    (root / "doc").mkdir()
    (root / "doc" / "synth.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished corpus to `out`; an existing `out` (empty, or replaced with force) is removed."""
    from fedw2v.atomic import replace_directory

    replace_directory(staging, out)
