"""The synthetic voices of `fedw2v synth`: one voice of flite or espeak-ng is one speaker of the corpus.

`VOICES` is every voice a corpus may use, in the order speakers take them; `available_voices` finds which of
them the installed synthesisers have, `select_voices` resolves the voices a user names (``--voices``), and
`synthesise` speaks one sentence with one voice. flite and espeak-ng are deterministic for the same text and
voice (and version: `synthesiser_version` reads it).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedw2v.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SYNTHESISERS = ("flite", "espeak-ng")
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


def synthesise(voice: Voice, exe: str, text: str, wav: Path, rate: int) -> np.ndarray:
    """Speak `text` with `voice` (the synthesiser `exe`) into the scratch file `wav` (deleted); return float32
    samples at `rate` Hz, leading/trailing silence trimmed. EnvironmentProblem when the synthesiser fails."""
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
    audio, spoken_rate = sf.read(str(wav), dtype="float32", always_2d=True)
    wav.unlink()
    audio = audio.mean(axis=1)
    if spoken_rate != rate:
        audio = soxr.resample(audio, spoken_rate, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * (np.abs(audio).max() or 1.0))
    if loud.size == 0:
        raise EnvironmentProblem(f"{voice.synthesiser} produced silence for voice {voice.name}")
    pad = int(0.08 * rate)
    return audio[max(0, loud[0] - pad): loud[-1] + pad + 1]


def synthesiser_version(exe: str) -> str:
    """The version line `exe --version` prints (recorded in doc/synth.json)."""
    out = _run_text([exe, "--version"]).strip().splitlines()
    line = next((line for line in out if "version" in line.lower() or "espeak" in line.lower()), out[0] if out else "")
    return line.split("  Data at")[0].strip()


def _run_text(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"{' '.join(cmd)} failed: {exc}") from None
    return proc.stdout + proc.stderr
