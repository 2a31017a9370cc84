"""`fedw2v synth`: a TED-LIUM 3 style corpus spoken by flite / espeak-ng voices, read back by `prepare`."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedw2v.cli import app
from fedw2v.corpus import sentences, synth, voices
from fedw2v.corpus.synth import SynthConfig, synthesize
from fedw2v.corpus.tedlium import PrepareConfig, parse_stm_line, prepare, speaker_from_talk
from fedw2v.errors import EnvironmentProblem, UsageError

needs_synth = pytest.mark.skipif(not voices.installed_synthesisers(), reason="needs flite or espeak-ng")
SPLITS = ("train", "dev", "test")
runner = CliRunner()


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The small corpus twice with seed 0 (determinism) and once with seed 1."""
    if not voices.installed_synthesisers():
        pytest.skip("needs flite or espeak-ng")
    base = tmp_path_factory.mktemp("synth")
    a = synthesize(SynthConfig(base / "a", speakers=4, minutes=1.0, seed=0))
    b = synthesize(SynthConfig(base / "b", speakers=4, minutes=1.0, seed=0))
    c = synthesize(SynthConfig(base / "c", speakers=4, minutes=1.0, seed=1))
    return a, b, c


@pytest.fixture(scope="module")
def corpus(corpora):
    return corpora[0]


def _stm_lines(root: Path) -> list[str]:
    return [line for p in sorted((root / "data" / "stm").glob("*.stm")) for line in p.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"speakers": 2}, "speakers must be an integer of at least 3"),
        ({"minutes": 0}, "minutes must be a number above 0"),
        ({"minutes": float("nan")}, "minutes must be a number above 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"workers": 0}, "workers must be a positive integer"),
    ],
)
def test_config_rules(tmp_path, kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        SynthConfig(tmp_path / "out", **kwargs)


def test_config_defaults(tmp_path):
    config = SynthConfig(tmp_path)
    assert (config.speakers, config.minutes, config.seed) == (10, 15.0, 0)
    assert synth.split_counts(10) == (6, 2, 2)
    assert synth.split_counts(3) == (1, 1, 1)
    assert all(d >= 1 and t >= 1 and tr >= 1 for tr, d, t in map(synth.split_counts, range(3, 40)))


def test_text_helpers():
    assert sentences.number_words(123) == "one hundred and twenty three"
    assert sentences.number_words(15500) == "fifteen thousand five hundred"
    assert sentences.year_words(1998) == "nineteen ninety eight"
    assert sentences.year_words(2008) == "two thousand and eight"
    assert sentences.stm_words("It's what we don't know, i'd say.") == [
        "it", "'s", "what", "we", "don", "'t", "know", "i", "'d", "say"
    ]
    import random

    rng = random.Random(0)
    said = [sentences.make_sentence(rng) for _ in range(200)]
    assert all(5 <= len(s.split()) <= 15 and not re.search(r"\d", s) for s in said)
    assert len(set(said)) > 150  # varied
    assert sum("'" in s for s in said) > 20  # contractions


# The words and the talk plan a seed draws, pinned: the same seed makes the same corpus in every fedw2v version
# (the synthesisers aside, whose versions doc/synth.json records). A change that moves them (a word list, the
# order of the draws) changes every corpus: update these only on purpose, and say so in the CHANGELOG.
def test_the_words_of_a_seed_are_pinned():
    import hashlib
    import random

    rng = random.Random("fedw2v-synth:1:FliteSlt_2009K")
    lines = []
    for k in range(2000):  # 40 talks' worth: an opening, then 49 sentences, the first three with a forced quirk
        said = sentences.make_sentence(rng, opening=(k % 50 == 0))
        forced = ("unk", "noise", "variant")[k % 3] if k % 50 < 3 else None
        words, noise = sentences.quirky_words(sentences.stm_words(said), rng, forced)
        lines.append(f"{said}|{' '.join(words)}|{noise}")
    assert lines[:2] == [
        "so here's the thing about scientists in the lab.|so here 's the thing <unk> scientists in the lab|False",
        "what's interesting is that stories can't clean it."
        "|what 's interesting is that(2) stories can 't clean it|True",
    ]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert digest == "70bf4621e541b78bc2c00b8b2242bfa97222b45d8ded87524782a77fa07c887c"


def test_the_talk_plan_of_a_seed_is_pinned(tmp_path):
    import hashlib

    plans = synth._plan(list(voices.VOICES[:5]), SynthConfig(tmp_path, speakers=5, minutes=2.0, seed=1))
    assert [(p.talk_id, p.split, p.sa_split, p.label_style) for p in plans] == [
        ("FliteSlt_2016G", "train", "train", "ofg"),
        ("FliteSlt_2017L", "train", "dev", "na"),
        ("FliteSlt_2018V", "train", "test", "f0"),
        ("EspeakUsF3_2008U", "train", "train", "ofg"),
        ("FliteRms_2011Q", "train", "train", "na"),
        ("FliteRms_2012B", "train", "dev", "f0"),
        ("EspeakScotland_2020D", "dev", "train", "ofg"),
        ("FliteAwb_2014I", "test", "train", "ofg"),
    ]
    assert all(p.target_seconds == 15.0 for p in plans)
    rows = [
        f"{seed} {n} {p.index} {p.talk_id} {p.voice.speaker} {p.split} {p.sa_split} {p.label_style} {p.target_seconds!r}"
        for seed in range(10)
        for n in (3, 7, 10, 16)
        for p in synth._plan(list(voices.VOICES[:n]), SynthConfig(tmp_path, speakers=n, minutes=3.0, seed=seed))
    ]
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    assert (len(rows), digest) == (520, "04e91f14b9df4c38cb89d78187a2ff1c161f6b39b4854caddec889d8a2f2795f")


def test_voices_are_distinct_speakers():
    n = len(voices.VOICES)
    assert len({v.speaker for v in voices.VOICES}) == len({(v.synthesiser, v.name) for v in voices.VOICES}) == n
    assert all(v.gender in ("male", "female") and "_" not in v.speaker for v in voices.VOICES)
    assert "kal" not in {v.name for v in voices.VOICES}  # 8 kHz


def test_voice_order_is_kept():
    """Speakers take voices in VOICES order: new voices are appended, so existing corpora keep their voices."""
    assert [v.speaker for v in voices.VOICES[:16]] == [
        "FliteSlt", "EspeakUsF3", "FliteRms", "EspeakScotland", "FliteAwb", "EspeakUsM3", "FliteKal", "EspeakGbF4",
        "EspeakCaribbean", "EspeakUsM7", "EspeakRpF2", "EspeakNewYork", "EspeakLancasterF5", "EspeakMidlandsM2",
        "EspeakUsF4", "EspeakGbM4",
    ]
    # espeak-ng ignores a variant on `en-gb` (EspeakGbF4 and EspeakGbM4 speak alike): appended voices avoid it
    assert not [v for v in voices.VOICES[16:] if v.name.startswith(("en-gb+", "en+"))]


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"voices": ("slt", "rms")}, "voices: at least 3 are needed"),
        ({"voices": ("slt", "rms", "slt")}, "voices must not repeat: slt"),
        ({"voices": ("slt", "rms", "awb"), "speakers": 4}, r"speakers \(4\) must equal the number of voices given \(3\)"),
        ({"voices": ["slt", "rms", "awb"]}, "voices must be a tuple"),
        ({"voices": ("slt", "", "awb")}, "voices must be a tuple"),
    ],
)
def test_config_voice_rules(tmp_path, kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        SynthConfig(tmp_path / "out", **kwargs)


def test_config_speakers_follow_voices(tmp_path):
    assert SynthConfig(tmp_path).speakers == 10 and SynthConfig(tmp_path).voices == ()
    assert SynthConfig(tmp_path, voices=("slt", "EspeakUsF3", "rms", "awb")).speakers == 4
    assert SynthConfig(tmp_path, speakers=3, voices=("slt", "rms", "awb")).speakers == 3


def test_select_voices_by_speaker_or_voice_name():
    exes = {"flite": "/bin/flite", "espeak-ng": "/bin/espeak-ng"}
    every = list(voices.VOICES)
    chosen = voices.select_voices(("EspeakUsM1", "slt", "en-gb-x-rp+f5", "FliteRms"), every, exes)
    assert [v.speaker for v in chosen] == ["EspeakUsM1", "FliteSlt", "EspeakRpF5", "FliteRms"]  # order kept
    assert voices.find_voice("en-us+f3") is voices.find_voice("EspeakUsF3") and voices.find_voice("nope") is None
    with pytest.raises(UsageError, match="unknown voices nope, neither") as exc:
        voices.select_voices(("slt", "nope", "neither"), every, exes)
    assert "FliteSlt (slt)" in exc.value.hint
    with pytest.raises(UsageError, match="FliteSlt names FliteSlt \\(slt\\) a second time"):
        voices.select_voices(("slt", "rms", "FliteSlt"), every, exes)
    flite_only = [v for v in every if v.synthesiser == "flite"]
    with pytest.raises(UsageError, match="EspeakUsF3 needs espeak-ng voice en-us\\+f3, but espeak-ng is not installed"):
        voices.select_voices(("slt", "EspeakUsF3", "rms"), flite_only, {"flite": "/bin/flite"})
    with pytest.raises(UsageError, match="needs flite voice awb, but flite has no voice awb"):
        voices.select_voices(("slt", "awb", "rms"), [v for v in every if v.name != "awb"], exes)


# --------------------------------------------------------------------------------------- the corpus


@pytest.mark.slow
def test_layout_and_symlinks(corpus):
    root = corpus.out_dir
    talks = {t.talk_id: t for t in corpus.talks}
    assert sorted(p.stem for p in (root / "data" / "sph").glob("*.sph")) == sorted(talks)
    assert sorted(p.stem for p in (root / "data" / "stm").glob("*.stm")) == sorted(talks)
    for dist in ("legacy", "speaker-adaptation"):
        for split in SPLITS:
            for sub in ("sph", "stm"):
                assert (root / dist / split / sub).is_dir()
    for split in SPLITS:
        for sub in ("sph", "stm"):
            entries = sorted((root / "legacy" / split / sub).iterdir())
            assert sorted(p.stem for p in entries) == sorted(t for t, i in talks.items() if i.split == split)
            for p in entries:
                if split == "train":
                    target = os.readlink(p)
                    assert p.is_symlink() and not os.path.isabs(target)
                    assert p.resolve() == (root / "data" / sub / p.name).resolve()
                else:
                    assert not p.is_symlink() and p.is_file()
                    assert p.read_bytes() == (root / "data" / sub / p.name).read_bytes()
    sa = [p for split in SPLITS for p in (root / "speaker-adaptation" / split / "sph").iterdir()]
    assert sorted(p.stem for p in sa) == sorted(talks)
    assert all(p.is_symlink() and not os.path.isabs(os.readlink(p)) and p.resolve().is_file() for p in sa)
    assert (root / "doc" / "synth.json").is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.slow
def test_sph_headers(corpus):
    import soundfile as sf

    for path in (corpus.out_dir / "data" / "sph").glob("*.sph"):
        info = sf.info(str(path))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("NIST", "PCM_16", 16000, 1)
        assert path.read_bytes()[:7] == b"NIST_1A"


@pytest.mark.slow
def test_stm_has_every_quirk(corpus):
    lines = _stm_lines(corpus.out_dir)
    text = "\n".join(lines)
    gap = r" 1 inter_segment_gap \d+\.\d\d \d+\.\d\d <o,,unknown> ignore_time_segment_in_scoring$"
    assert re.search(gap, text, re.M)
    assert "<unk>" in text
    assert "{NOISE}" in text
    assert re.search(r" \w+ '(s|t|d|m|ve|re|ll)\b", text)  # split clitics
    assert re.search(r" [a-z]+\(2\)( |$)", text, re.M)  # pronunciation variant
    for label in ("<o,f0,female>", "<o,f0,male>", "<NA>"):
        assert label in text
    assert "<F0_M>" in text or "<F0_F>" in text
    for line in lines:
        fields = line.split()
        assert re.fullmatch(r"\d+\.\d\d", fields[3]) and re.fullmatch(r"\d+\.\d\d", fields[4])
        assert fields[1] == "1" and fields[2] in (fields[0], "inter_segment_gap")
        assert not re.search(r"\d", " ".join(fields[6:]).replace("(2)", ""))  # numbers spelled out
        seg = parse_stm_line(line)
        if seg is not None:
            assert 2.0 <= seg.end - seg.start <= 9.0


@pytest.mark.slow
def test_noise_burst_in_audio(corpus):
    import numpy as np
    import soundfile as sf

    found = 0
    for line in _stm_lines(corpus.out_dir):
        seg = parse_stm_line(line)
        if seg is None or "{NOISE}" not in seg.text_raw:
            continue
        audio, rate = sf.read(str(corpus.out_dir / "data" / "sph" / f"{seg.talk_id}.sph"), dtype="float32")
        part = audio[int(seg.start * rate): int(seg.start * rate) + int(0.15 * rate)]
        if seg.text_raw.split()[-1] == "{NOISE}":
            part = audio[int(seg.end * rate) - int(0.15 * rate): int(seg.end * rate)]
        floor = float(np.sqrt(np.mean(audio[: int(0.3 * rate)] ** 2)))  # leading silence: noise floor only
        assert float(np.sqrt(np.mean(part**2))) > 5 * floor
        found += 1
    assert found


@pytest.mark.slow
def test_talk_ids_and_speakers(corpus):
    by_speaker = {v.speaker: v for v in voices.VOICES}
    by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for t in corpus.talks:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*_\d{4}[A-Z]", t.talk_id)
        assert speaker_from_talk(t.talk_id) == t.speaker
        by_split[t.split].add(t.speaker)
    assert by_split["train"].isdisjoint(by_split["dev"] | by_split["test"])
    assert by_split["dev"].isdisjoint(by_split["test"])
    assert all(by_split[s] for s in SPLITS)
    assert max(Counter(t.speaker for t in corpus.talks if t.split == "train").values()) > 1
    assert len({by_speaker[s.speaker].name for s in corpus.speakers}) == len(corpus.speakers) == 4
    assert 0.7 * 60 <= corpus.speech_seconds <= 1.6 * 60


@pytest.mark.slow
def test_deterministic(corpora):
    a, b, c = corpora
    files_a = sorted(p.relative_to(a.out_dir) for p in (a.out_dir / "data").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b.out_dir) for p in (b.out_dir / "data").rglob("*") if p.is_file())
    for rel in files_a:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes(), rel

    def words(r):
        return [" ".join(line.split()[6:]) for line in _stm_lines(r.out_dir) if "inter_segment_gap" not in line]

    assert words(a) != words(c)
    assert [t.talk_id for t in a.talks] != [t.talk_id for t in c.talks]
    assert "voices" not in __import__("json").loads((a.out_dir / "doc" / "synth.json").read_text())["config"]


@pytest.mark.slow
def test_voices_pick_the_speakers(corpora, tmp_path):
    """--voices naming the default voices gives the default corpus byte for byte; other voices speak in the
    order given, the last ones held out for dev and test."""
    import json

    a = corpora[0]
    same = synthesize(SynthConfig(tmp_path / "same", minutes=1.0, seed=0, voices=tuple(s.speaker for s in a.speakers)))
    files = sorted(p.relative_to(a.out_dir) for p in (a.out_dir / "data").rglob("*") if p.is_file())
    assert files and all((a.out_dir / f).read_bytes() == (same.out_dir / f).read_bytes() for f in files)
    default_doc = json.loads((a.out_dir / "doc" / "synth.json").read_text())
    same_doc = json.loads((same.out_dir / "doc" / "synth.json").read_text())
    assert same_doc["config"] == {**default_doc["config"], "voices": [s.speaker for s in a.speakers]}

    names = [v.speaker for v in voices.available_voices()[-4:]][::-1]  # the last voices of VOICES, reversed
    other = synthesize(SynthConfig(tmp_path / "other", minutes=0.4, seed=0, voices=tuple(names)))
    assert [s.speaker for s in other.speakers] == names
    assert [s.split for s in other.speakers] == ["train", "train", "dev", "test"]
    assert {speaker_from_talk(t.talk_id) for t in other.talks} == set(names)
    assert json.loads((other.out_dir / "doc" / "synth.json").read_text())["config"]["voices"] == names


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["legacy", "speaker-adaptation"])
def test_prepare_reads_it(corpus, distribution):
    result = prepare(PrepareConfig(corpus_dir=corpus.out_dir, distribution=distribution))
    assert result.problems == []
    assert sum(result.skipped.values()) == 0
    rows = result.table.to_pydict()
    split_key = "split" if distribution == "legacy" else "sa_split"
    expected = Counter()
    for t in corpus.talks:
        expected[getattr(t, split_key)] += t.utterances
    assert Counter(rows["split"]) == expected
    assert result.table.num_rows == corpus.utterances
    assert all(st.empty_text == 0 for st in result.stats.values())
    assert all(st.gaps > 0 for st in result.stats.values())
    assert all("<unk>" not in t and "{" not in t and "(" not in t for t in rows["text"])
    assert {"male", "female", "unknown"} <= set(rows["gender"])
    assert all(0.1 <= d <= 10 for d in rows["duration"])
    if distribution == "legacy":  # legacy/train is read through its symlinks: audio paths point into data/
        assert all(p.startswith("data/sph/") for p, s in zip(rows["audio_path"], rows["split"]) if s == "train")


# ---------------------------------------------------------------------------------- output directory


@pytest.mark.slow
@needs_synth
def test_out_dir_rules_and_no_partial_output(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        synthesize(SynthConfig(out, speakers=3, minutes=0.1))
    # a failure half-way leaves neither the corpus nor a staging directory, and the old content stays
    def boom(*args, **kwargs):
        raise EnvironmentProblem("synthesiser broke")

    monkeypatch.setattr(synth, "synthesise", boom)
    with pytest.raises(EnvironmentProblem):
        synthesize(SynthConfig(out, speakers=3, minutes=0.1, force=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    assert (out / "keep.txt").read_text() == "x"
    monkeypatch.undo()
    result = synthesize(SynthConfig(out, speakers=3, minutes=0.1, force=True))
    assert not (out / "keep.txt").exists() and (out / "data" / "sph").is_dir()
    assert len(result.talks) == 5 and all(t.utterances >= 1 for t in result.talks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_no_synthesiser(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(EnvironmentProblem, match="no speech synthesiser found: install flite or espeak-ng"):
        synthesize(SynthConfig(tmp_path / "out", speakers=3))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
@needs_synth
def test_cli_happy_path(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["synth", str(out), "--speakers", "3", "--minutes", "0.3", "--seed", "7"])
    assert result.exit_code == 0, result.output
    for word in ("speaker", "voice", "synthesiser", "gender", "split", "talks", "minutes", "train", "dev", "test"):
        assert word in result.stdout
    spoken = voices.available_voices()[:3]
    assert all(v.speaker in result.stdout and v.name in result.stdout for v in spoken)
    assert str(out) in result.stdout
    assert prepare(PrepareConfig(corpus_dir=out)).problems == []


def test_cli_too_few_speakers(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--speakers", "2"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: speakers must be an integer of at least 3")


@needs_synth
def test_cli_voice_errors_are_one_line(tmp_path):
    for args, message in (
        (["--voices", "slt,rms,awb", "--speakers", "4"], "error: speakers (4) must equal the number of voices given (3)"),
        (["--voices", "slt,nobody,awb"], "error: --voices: unknown voice nobody ("),
        (["--voices", "slt,rms"], "error: voices: at least 3 are needed"),
    ):
        result = runner.invoke(app, ["synth", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(message) and result.stderr.strip().count("\n") == 0
        assert not (tmp_path / "x").exists()


def test_cli_missing_synthesisers(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    result = runner.invoke(app, ["synth", str(tmp_path / "x")])
    assert result.exit_code == 3
    assert "no speech synthesiser found: install flite or espeak-ng (apt-get install flite espeak-ng" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_cli_more_speakers_than_voices(tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "espeak-ng" else real_which(name))
    n = len(voices.available_voices())
    assert n == 4  # flite alone: slt, rms, awb, kal16
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--speakers", "5"])
    assert result.exit_code == 2
    assert "--speakers 5 but only 4 voices are available (flite 4)" in result.stderr
    assert "install espeak-ng" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_out_dir_not_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    result = runner.invoke(app, ["synth", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and "--force" in result.stderr
