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
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SAMPLE_RATE = 16000
SYNTHESISERS = ("flite", "espeak-ng")
MIN_SPEAKERS = 3
MAX_MINUTES = 600.0
# Utterances are redrawn until their speech lasts this long (the training code keeps 0.1-10 s).
UTTERANCE_SECONDS = (2.0, 8.0)
WORDS_PER_SENTENCE = (6, 15)
NO_SYNTHESISER = (
    "no speech synthesiser found: install flite or espeak-ng (apt-get install flite espeak-ng, or make install)"
)


@dataclass(frozen=True)
class Voice:
    speaker: str  # speaker id (CamelCase, no underscore: it is the talk id without `_<year><letter>`)
    synthesiser: str  # flite | espeak-ng
    name: str  # the voice as the synthesiser names it (`slt`, `en-us+f3`)
    gender: str  # male | female


# Every voice the corpus may use, in the order speakers are taken (flite and espeak-ng interleaved, so a
# small corpus mixes both; kal is left out: it is 8 kHz, kal16 is the same voice at 16 kHz).
VOICES: tuple[Voice, ...] = (
    Voice("FliteSlt", "flite", "slt", "female"),
    Voice("EspeakUsF3", "espeak-ng", "en-us+f3", "female"),
    Voice("FliteRms", "flite", "rms", "male"),
    Voice("EspeakScotland", "espeak-ng", "en-gb-scotland", "male"),
    Voice("FliteAwb", "flite", "awb", "male"),
    Voice("EspeakUsM3", "espeak-ng", "en-us+m3", "male"),
    Voice("FliteKal", "flite", "kal16", "male"),
    Voice("EspeakGbF4", "espeak-ng", "en-gb+f4", "female"),
    Voice("EspeakCaribbean", "espeak-ng", "en-029", "male"),
    Voice("EspeakUsM7", "espeak-ng", "en-us+m7", "male"),
    Voice("EspeakRpF2", "espeak-ng", "en-gb-x-rp+f2", "female"),
    Voice("EspeakNewYork", "espeak-ng", "en-us-nyc", "male"),
    Voice("EspeakLancasterF5", "espeak-ng", "en-gb-x-gbclan+f5", "female"),
    Voice("EspeakMidlandsM2", "espeak-ng", "en-gb-x-gbcwmd+m2", "male"),
    Voice("EspeakUsF4", "espeak-ng", "en-us+f4", "female"),
    Voice("EspeakGbM4", "espeak-ng", "en-gb+m4", "male"),
    # Appended later (the voices above keep their order, so existing corpora keep their speakers). They give
    # `fedw2v synth --voices` more voices to choose from, e.g. for `make pretrained` (scripts/pretrain_tiny.py),
    # whose voices must differ from the default 10-speaker demo corpus. Only bases whose variants change the
    # sound are used: espeak-ng 1.51 ignores a variant on `en-gb` (so EspeakGbF4 and EspeakGbM4 above both
    # speak as plain `en-gb`, a male voice).
    Voice("EspeakUsM1", "espeak-ng", "en-us+m1", "male"),
    Voice("EspeakUsF2", "espeak-ng", "en-us+f2", "female"),
    Voice("EspeakUsM5", "espeak-ng", "en-us+m5", "male"),
    Voice("EspeakUsKlatt", "espeak-ng", "en-us+klatt", "male"),
    Voice("EspeakUsAndy", "espeak-ng", "en-us+Andy", "male"),
    Voice("EspeakRpM5", "espeak-ng", "en-gb-x-rp+m5", "male"),
    Voice("EspeakRpF5", "espeak-ng", "en-gb-x-rp+f5", "female"),
    Voice("EspeakScotlandF2", "espeak-ng", "en-gb-scotland+f2", "female"),
    Voice("EspeakCaribbeanF3", "espeak-ng", "en-029+f3", "female"),
    Voice("EspeakNewYorkF4", "espeak-ng", "en-us-nyc+f4", "female"),
    Voice("EspeakLancasterM3", "espeak-ng", "en-gb-x-gbclan+m3", "male"),
    Voice("EspeakMidlandsF1", "espeak-ng", "en-gb-x-gbcwmd+f1", "female"),
    Voice("EspeakScotlandM6", "espeak-ng", "en-gb-scotland+m6", "male"),
    Voice("EspeakUsM2", "espeak-ng", "en-us+m2", "male"),
    Voice("EspeakUsF5", "espeak-ng", "en-us+f5", "female"),
    Voice("EspeakUsM4", "espeak-ng", "en-us+m4", "male"),
    Voice("EspeakUsF1", "espeak-ng", "en-us+f1", "female"),
)


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
    # `en-us+f3`, see VOICES); the split takes the last ones for dev and test as it does for the default list.
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


# --------------------------------------------------------------------------------------------- voices


def installed_synthesisers() -> dict[str, str]:
    """Synthesiser name -> executable path, for those on PATH."""
    found = {}
    for name in SYNTHESISERS:
        path = shutil.which(name)
        if path:
            found[name] = path
    return found


def available_voices(synthesisers: dict[str, str] | None = None) -> list[Voice]:
    """The voices of VOICES that the installed synthesisers have, in VOICES order.

    EnvironmentProblem when no synthesiser is installed.
    """
    synthesisers = installed_synthesisers() if synthesisers is None else synthesisers
    if not synthesisers:
        raise EnvironmentProblem(NO_SYNTHESISER)
    have: set[tuple[str, str]] = set()
    if "flite" in synthesisers:
        out = _run_text([synthesisers["flite"], "-lv"])
        names = set(out.split(":", 1)[-1].split())
        have.update(("flite", v.name) for v in VOICES if v.synthesiser == "flite" and v.name in names)
    if "espeak-ng" in synthesisers:
        exe = synthesisers["espeak-ng"]
        # `espeak-ng --voices=...` prints a table: Pty Language Age/Gender VoiceName File Other-languages
        rows = [line.split() for line in _run_text([exe, "--voices=en"]).splitlines()[1:]]
        languages = {r[1] for r in rows if len(r) > 1}
        rows = [line.split() for line in _run_text([exe, "--voices=variant"]).splitlines()[1:]]
        variants = {r[4].removeprefix("!v/") for r in rows if len(r) > 4}
        for v in VOICES:
            if v.synthesiser == "espeak-ng":
                base, _, variant = v.name.partition("+")
                if base in languages and (not variant or variant in variants):
                    have.add(("espeak-ng", v.name))
    return [v for v in VOICES if (v.synthesiser, v.name) in have]


def find_voice(name: str) -> Voice | None:
    """The voice of VOICES with this speaker id (`FliteSlt`) or synthesiser voice name (`slt`, `en-us+f3`)."""
    for v in VOICES:
        if name in (v.speaker, v.name):
            return v
    return None


def select_voices(names: tuple[str, ...] | list[str], available: list[Voice], exes: dict[str, str]) -> list[Voice]:
    """The voices named (speaker ids or voice names), in the order given. UsageError for a name that is not in
    VOICES, for one whose synthesiser is not installed or lacks it, and for two names of the same voice."""
    chosen: list[Voice] = []
    unknown = [n for n in names if find_voice(n) is None]
    if unknown:
        raise UsageError(
            f"--voices: unknown voice{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            hint="name voices by speaker id or voice name; known: "
            + ", ".join(f"{v.speaker} ({v.name})" for v in VOICES),
        )
    have = {(v.synthesiser, v.name) for v in available}
    for n in names:
        v = find_voice(n)
        assert v is not None
        if v in chosen:
            raise UsageError(f"--voices: {n} names {v.speaker} ({v.name}) a second time")
        if (v.synthesiser, v.name) not in have:
            why = "is not installed" if v.synthesiser not in exes else f"has no voice {v.name}"
            raise UsageError(f"--voices: {v.speaker} needs {v.synthesiser} voice {v.name}, but {v.synthesiser} {why}",
                             hint="install flite and espeak-ng (make install), or choose other voices")
        chosen.append(v)
    return chosen


def _run_text(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"{' '.join(cmd)} failed: {exc}") from None
    return proc.stdout + proc.stderr


def _version(exe: str) -> str:
    out = _run_text([exe, "--version"]).strip().splitlines()
    line = next((line for line in out if "version" in line.lower() or "espeak" in line.lower()), out[0] if out else "")
    return line.split("  Data at")[0].strip()


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


# -------------------------------------------------------------------------------------------- the text

_PERSONS = (
    "my grandmother", "a friend of mine", "the teacher", "our neighbour", "the doctor", "my brother", "my sister",
    "a young engineer", "the farmer", "the old captain", "my father", "a taxi driver", "the mayor", "my colleague",
    "a student of mine", "the gardener", "the pilot", "my uncle",
)
_NOUNS = (
    "city", "river", "garden", "machine", "question", "story", "village", "problem", "library", "mountain",
    "computer", "bicycle", "hospital", "market", "ocean", "forest", "school", "kitchen", "window", "camera",
    "language", "island", "bridge", "museum", "company", "planet", "song", "picture", "robot", "telescope",
    "desert", "map", "engine", "painting", "letter", "garden path", "train station", "water pump", "seed",
)
_PLURALS = (
    "people", "students", "trees", "cars", "books", "doctors", "farmers", "children", "families", "scientists",
    "animals", "cities", "ideas", "stories", "questions", "machines", "birds", "teachers", "engineers",
    "musicians", "neighbours", "fishermen", "villages", "rivers", "bees", "computers",
)
_ADJECTIVES = (
    "small", "beautiful", "strange", "simple", "important", "difficult", "quiet", "bright", "ancient", "modern",
    "curious", "enormous", "careful", "happy", "remarkable", "ordinary", "different", "warm", "cold", "fragile",
    "expensive", "cheap", "wonderful", "dangerous", "useful", "gentle", "noisy", "empty", "crowded", "green",
)
_VERBS = (
    "build", "change", "understand", "measure", "protect", "design", "share", "learn", "imagine", "explore",
    "repair", "discover", "teach", "remember", "grow", "study", "visit", "explain", "clean", "count", "follow",
)
_PAST = (
    "built", "changed", "found", "measured", "designed", "shared", "explored", "repaired", "discovered",
    "visited", "studied", "noticed", "painted", "described", "opened", "counted", "followed", "cleaned", "sold",
)
_PLACES = (
    "in africa", "in the city", "at the university", "in our village", "near the river", "in the lab", "at home",
    "in new york", "in the desert", "on the island", "in the mountains", "in a small town", "by the sea",
    "in india", "in brazil", "under the bridge", "in the north", "at the market",
)
_TIMES = (
    "last year", "every morning", "ten years ago", "in the nineteen nineties", "this week", "every summer",
    "a long time ago", "yesterday", "one day", "last winter", "every single day", "after the storm",
)

# Templates: {slot} is filled from the lists above; contractions are spoken whole and written split in the STM.
_OPENINGS = (
    "i'd like to tell you about {a_noun} {place}.",
    "today i'm going to talk about {plurals} and {plurals}.",
    "i'm going to show you {a_adj_noun} {time}.",
    "it's a story about {a_noun} and {number} {plurals}.",
    "let's start with {a_adj_noun} {place}.",
    "i've been thinking about {plurals} for {number} years.",
    "so here's the thing about {plurals} {place}.",
)
_TEMPLATES = _OPENINGS + (
    "it's {a_adj_noun} and it's very {adj}.",
    "we don't really know how to {verb} the {noun}.",
    "they've {past} {number} {plurals} {time}.",
    "that's why {person} couldn't {verb} the {noun}.",
    "you'll see that the {noun} isn't as {adj} as it looks.",
    "i didn't expect {person} to {verb} the {noun}.",
    "here's the {adj} part of the {noun}.",
    "she's been working on this {noun} for {number} years.",
    "he'd never seen {a_adj_noun} like that before.",
    "we're trying to {verb} the {plurals} {place}.",
    "what's interesting is that {plurals} can't {verb} it.",
    "it wasn't {adj}, but it was {adj}.",
    "i'm sure you've all {past} {a_noun} {place}.",
    "they're {adj} and they don't need {a_noun}.",
    "{person} {past} {a_noun} {place} {time}.",
    "the {noun} was {adj} and very {adj}.",
    "{number} {plurals} {past} the {adj} {noun}.",
    "so we decided to {verb} the {noun} {time}.",
    "imagine {a_noun} with {number} {plurals} in it.",
    "{time} {person} {past} {a_adj_noun}.",
    "this is the story of {a_noun} and {number} {plurals}.",
    "and the answer turned out to be surprisingly {adj}.",
    "we measured the {noun} {number} times {time}.",
    "the {plurals} {place} need {a_adj_noun}.",
    "how do you {verb} {a_noun} when nobody is watching?",
    "in {year} {person} {past} the first {noun}.",
    "about {pct} percent of the {plurals} live {place}.",
    "there were {number} {plurals} waiting {place}.",
    "nobody could {verb} the {noun}, not even {person}.",
    "you can {verb} {a_adj_noun} with very little money.",
)
# Words that may be written with a pronunciation variant marker, `the(2)`.
_VARIANT_WORDS = ("the", "a", "to", "and", "of", "for", "that", "with", "was", "read", "live", "either", "were")

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0..999999 spelled out the way TED-LIUM writes them: `one hundred and twenty three`."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    head = number_words(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + number_words(rest)


def year_words(year: int) -> str:
    """1995 -> `nineteen ninety five`, 2008 -> `two thousand and eight`, 2015 -> `twenty fifteen`."""
    if 2000 <= year < 2010:
        return number_words(year)
    hi, lo = divmod(year, 100)
    tail = "hundred" if lo == 0 else number_words(lo) if lo >= 10 else "oh " + number_words(lo)
    return number_words(hi) + " " + tail


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeio" else "a ") + phrase


def make_sentence(rng: random.Random, opening: bool = False) -> str:
    """One spoken English sentence (lowercase, contractions whole, numbers spelled out), 6-15 words."""
    templates = _OPENINGS if opening else _TEMPLATES
    while True:
        template = rng.choice(templates)
        fills = {
            "person": lambda: rng.choice(_PERSONS),
            "noun": lambda: rng.choice(_NOUNS),
            "a_noun": lambda: _article(rng.choice(_NOUNS)),
            "a_adj_noun": lambda: _article(f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"),
            "plurals": lambda: rng.choice(_PLURALS),
            "adj": lambda: rng.choice(_ADJECTIVES),
            "verb": lambda: rng.choice(_VERBS),
            "past": lambda: rng.choice(_PAST),
            "place": lambda: rng.choice(_PLACES),
            "time": lambda: rng.choice(_TIMES),
            "number": lambda: number_words(rng.choice((rng.randint(2, 20), rng.randint(21, 99), rng.randint(100, 999),
                                                       rng.randrange(1000, 20000, 500)))),
            "pct": lambda: number_words(rng.randint(2, 99)),
            "year": lambda: year_words(rng.randint(1950, 2019)),
        }
        sentence = re.sub(r"\{(\w+)\}", lambda m: fills[m.group(1)](), template)
        n_words = len(sentence.split())
        if WORDS_PER_SENTENCE[0] <= n_words <= WORDS_PER_SENTENCE[1]:
            return sentence


def stm_words(sentence: str) -> list[str]:
    """The sentence as TED-LIUM writes it: no punctuation, clitics split off (`it's` -> `it 's`)."""
    words = []
    for token in re.sub(r"[^a-z' ]", " ", sentence.lower()).split():
        i = token.find("'")
        if 0 < i < len(token) - 1:
            words.extend((token[:i], token[i:]))
        else:
            words.append(token.strip("'"))
    return [w for w in words if w]


def _quirky_words(words: list[str], rng: random.Random, force: str | None) -> tuple[list[str], bool]:
    """Add `<unk>`, a pronunciation variant and/or a `{NOISE}` to a transcript. Returns (words, noise)."""
    words = list(words)
    plain = [i for i, w in enumerate(words) if not w.startswith("'") and len(w) > 3]
    if plain and (force == "unk" or rng.random() < 0.08):
        words[rng.choice(plain)] = "<unk>"
    variants = [i for i, w in enumerate(words) if w in _VARIANT_WORDS]
    if variants and (force == "variant" or rng.random() < 0.1):
        i = rng.choice(variants)
        words[i] = f"{words[i]}(2)"
    noise = force == "noise" or rng.random() < 0.06
    return words, noise


# ------------------------------------------------------------------------------------------- the audio


def _synthesise(voice: Voice, exe: str, text: str, wav: Path) -> np.ndarray:
    """Speak `text` with `voice` into `wav`; return float32 samples at 16 kHz, leading/trailing silence trimmed."""
    import numpy as np
    import soundfile as sf
    import soxr

    if voice.synthesiser == "flite":
        cmd = [exe, "-voice", voice.name, "-t", text, "-o", str(wav)]
    else:
        cmd = [exe, "-v", voice.name, "-w", str(wav), "--", text]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"{voice.synthesiser} failed for voice {voice.name}: {exc}") from None
    if proc.returncode != 0 or not wav.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise EnvironmentProblem(
            f"{voice.synthesiser} failed for voice {voice.name} (exit {proc.returncode})"
            + (f": {detail[-1]}" if detail else "")
        )
    audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    wav.unlink()
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * (np.abs(audio).max() or 1.0))
    if loud.size == 0:
        raise EnvironmentProblem(f"{voice.synthesiser} produced silence for voice {voice.name}")
    pad = int(0.08 * SAMPLE_RATE)
    return audio[max(0, loud[0] - pad): loud[-1] + pad + 1]


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
            audio = _synthesise(plan.voice, exe, sentence, work_dir / f"{plan.talk_id}-{k}.wav")
            if UTTERANCE_SECONDS[0] <= len(audio) / SAMPLE_RATE <= UTTERANCE_SECONDS[1]:
                break
        words, noise = _quirky_words(stm_words(sentence), rng, forced if k == 0 else None)
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
    versions = {name: _version(exe) for name, exe in exes.items() if name in used}
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
