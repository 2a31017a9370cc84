"""TED-LIUM 3 parsing and `prepare`: every quirk of REFERENCE.md §3, bad input, and the manifest it makes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedw2v.corpus import tedlium
from fedw2v.corpus.tedlium import (
    REASONS,
    PrepareConfig,
    SphError,
    StmLineError,
    gender_from_label,
    parse_stm_line,
    prepare,
    read_sph_header,
    speaker_from_talk,
)
from fedw2v.errors import CorpusError
from fedw2v.text import normalize
from tests.tedlium_factory import add_talk, write_sph

# ---------------------------------------------------------------- STM lines


def test_parses_a_scored_line_with_times_as_written():
    seg = parse_stm_line("AimeeMullins_2009P 1 AimeeMullins 17.82 28.81 <o,f0,female> i 'd like to share")
    assert seg.talk_id == "AimeeMullins_2009P"
    assert (seg.start, seg.end) == (17.82, 28.81)
    assert seg.utt_id == "AimeeMullins_2009P_17.82_28.81"
    assert seg.label == "<o,f0,female>"
    assert seg.text_raw == "i 'd like to share"


def test_utt_id_keeps_the_times_exactly_as_written():
    seg = parse_stm_line("HansRosling_2006 1 HansRosling 951.330 954.2 <NA> hello")
    assert seg.utt_id == "HansRosling_2006_951.330_954.2"


@pytest.mark.parametrize(
    "line",
    [
        "AimeeMullins_2009P 1 inter_segment_gap 0 17.82 <o,,unknown> ignore_time_segment_in_scoring",
        "AimeeMullins_2009P 1 AimeeMullins 0 17.82 <o,,unknown> ignore_time_segment_in_scoring",
        "",
        "   ",
        ";; comment line",
    ],
)
def test_gap_blank_and_comment_lines_are_not_utterances(line):
    assert parse_stm_line(line) is None


@pytest.mark.parametrize(
    "line, reason",
    [
        ("talk 1 spk 1.0", "too-few-fields"),
        ("talk", "too-few-fields"),
        ("talk 1 spk abc 2.0 <NA> hi", "bad-time"),
        ("talk 1 spk 1.0 nan <NA> hi", "bad-time"),
        ("talk 1 spk -1.0 2.0 <NA> hi", "bad-time"),
        ("talk 1 spk 1.0 inf <NA> hi", "bad-time"),
        ("talk 1 spk 3.0 2.0 <NA> hi", "reversed-time"),
        ("talk 1 spk 2.0 2.0 <NA> hi", "reversed-time"),
    ],
)
def test_malformed_lines_raise_with_a_reason(line, reason):
    with pytest.raises(StmLineError) as err:
        parse_stm_line(line)
    assert err.value.reason == reason
    assert reason in REASONS


def test_a_line_without_label_keeps_all_words_and_unknown_gender():
    seg = parse_stm_line("talk_2010 1 talk 1 2 <unk> hello there")
    assert seg.label is None
    assert seg.text_raw == "<unk> hello there"
    assert gender_from_label(seg.label) == "unknown"


@pytest.mark.parametrize(
    "label, gender",
    [
        ("<o,f0,female>", "female"),
        ("<o,f0,male>", "male"),
        ("<o,,unknown>", "unknown"),
        ("<NA>", "unknown"),
        ("<F0_M>", "male"),
        ("<F0_F>", "female"),
        (None, "unknown"),
    ],
)
def test_gender_is_the_last_field_of_the_label(label, gender):
    assert gender_from_label(label) == gender


@pytest.mark.parametrize(
    "talk, speaker",
    [
        ("JoelLevine_2009X", "JoelLevine"),
        ("HansRosling_2006", "HansRosling"),
        ("AimeeMullins_2009P", "AimeeMullins"),
        ("NoYearHere", "NoYearHere"),
        ("_2009P", "_2009P"),
    ],
)
def test_speaker_is_the_talk_id_without_its_year_part(talk, speaker):
    assert speaker_from_talk(talk) == speaker


# A property: any line is either parsed into a sane segment, recognised as not-an-utterance, or reported.
_token = st.one_of(
    st.text(min_size=1, max_size=8).filter(lambda s: not any(c.isspace() for c in s)),
    st.sampled_from(["<NA>", "<o,f0,male>", "<unk>", "{NOISE}", "1.5", "-2", "nan", "0", "10.25", "it", "'s"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_token, min_size=0, max_size=12))
def test_random_stm_lines_are_parsed_or_reported_never_crash(tokens):
    line = " ".join(tokens)
    try:
        seg = parse_stm_line(line)
    except StmLineError as exc:
        assert exc.reason in REASONS
        return
    if seg is not None:
        assert 0 <= seg.start < seg.end
        assert seg.utt_id.startswith(seg.talk_id + "_")
        normalize(seg.text_raw)  # normalisation never fails either


# ---------------------------------------------------------------- SPH headers


def test_sph_header_is_read_without_decoding(tmp_path):
    path = write_sph(tmp_path / "a.sph", 2.5)
    h = read_sph_header(path)
    assert (h.sample_rate, h.channels, h.frames, h.sample_bytes) == (16000, 1, 40000, 2)
    assert h.duration == pytest.approx(2.5)


def test_truncated_sph_reports_the_frames_actually_present(tmp_path):
    path = write_sph(tmp_path / "a.sph", 2.0)
    data = path.read_bytes()
    path.write_bytes(data[: 1024 + 16000])  # half a second of samples left
    assert read_sph_header(path).duration == pytest.approx(0.5)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"RIFF....WAVEfmt ", "not a NIST SPHERE"),
        (b"NIST_1A\n   1024\nsample_rate -i 16000\n", "end_head"),
        (b"NIST_1A\n   1024\nchannel_count -i 1\nend_head\n".ljust(1024, b" "), "sample_rate"),
        (b"NIST_1A\n   1024\nsample_rate -i 16000\nsample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n".ljust(1024, b" "), "shorten"),
    ],
)
def test_bad_sph_headers_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.sph"
    path.write_bytes(content)
    with pytest.raises(SphError, match=message):
        read_sph_header(path)


# ---------------------------------------------------------------- prepare on a corpus


def _line(talk, start, end, text, label="<o,f0,female>"):
    return f"{talk} 1 {talk} {start} {end} {label} {text}"


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "TEDLIUM_release-3"
    add_talk(root, "train", "AliceSmith_2010A", [
        "AliceSmith_2010A 1 inter_segment_gap 0 1.00 <o,,unknown> ignore_time_segment_in_scoring",
        _line("AliceSmith_2010A", "1.00", "3.50", "it 's a <unk> day {NOISE} today"),
        _line("AliceSmith_2010A", "3.50", "6.25", "we read(2) books (AliceSmith_2010A-3.50-6.25)"),
        _line("AliceSmith_2010A", "6.25", "7.00", "<unk> {COUGH} <sil>"),  # empty after normalisation
    ], seconds=8.0)
    add_talk(root, "train", "AliceSmith_2012B", [_line("AliceSmith_2012B", "0.50", "2.00", "don 't stop")], 3.0)
    add_talk(root, "train", "BobJones_2011", [_line("BobJones_2011", "0.00", "1.50", "HELLO world", "<NA>")], 2.0)
    add_talk(root, "dev", "CarlDev_2013C", [_line("CarlDev_2013C", "0.10", "1.10", "i 'd go", "<F0_M>")], 2.0)
    add_talk(root, "test", "DanaTest_2014D", [_line("DanaTest_2014D", "0.10", "1.90", "we 're here", "<F0_F>")], 2.0)
    return root


def test_prepare_reads_every_split_into_one_table(corpus):
    result = prepare(PrepareConfig(corpus_dir=corpus))
    rows = {r["utt_id"]: r for r in result.table.to_pylist()}
    assert result.problems == []
    assert set(rows) == {
        "AliceSmith_2010A_1.00_3.50", "AliceSmith_2010A_3.50_6.25", "AliceSmith_2012B_0.50_2.00",
        "BobJones_2011_0.00_1.50", "CarlDev_2013C_0.10_1.10", "DanaTest_2014D_0.10_1.90",
    }
    first = rows["AliceSmith_2010A_1.00_3.50"]
    assert first["text"] == "it 's a day today"
    assert first["text_raw"] == "it 's a <unk> day {NOISE} today"
    assert first["speaker"] == "AliceSmith" and first["gender"] == "female" and first["split"] == "train"
    assert first["duration"] == pytest.approx(2.5)
    assert (first["sample_rate"], first["num_channels"]) == (16000, 1)
    # legacy/train is a symlink into data/: the manifest stores the real file, relative to the root
    assert first["audio_path"] == "data/sph/AliceSmith_2010A.sph"
    assert rows["AliceSmith_2010A_3.50_6.25"]["text"] == "we read books"
    assert rows["AliceSmith_2012B_0.50_2.00"]["speaker"] == "AliceSmith"  # two talks, one speaker
    assert rows["BobJones_2011_0.00_1.50"]["text"] == "hello world"
    assert rows["BobJones_2011_0.00_1.50"]["gender"] == "unknown"
    assert rows["CarlDev_2013C_0.10_1.10"]["split"] == "dev"
    assert rows["CarlDev_2013C_0.10_1.10"]["audio_path"] == "legacy/dev/sph/CarlDev_2013C.sph"
    assert rows["DanaTest_2014D_0.10_1.90"]["gender"] == "female"
    train = result.stats["train"]
    assert (len(train.talks), len(train.speakers), train.utterances) == (3, 2, 4)
    assert train.empty_text == 1 and train.gaps == 1
    assert train.seconds == pytest.approx(2.5 + 2.75 + 1.5 + 1.5)


def test_joined_normalisation_joins_clitics(corpus):
    result = prepare(PrepareConfig(corpus_dir=corpus, normalization="joined", splits=("train",)))
    texts = set(result.table.column("text").to_pylist())
    assert "it's a day today" in texts and "don't stop" in texts
    assert set(result.table.column("split").to_pylist()) == {"train"}


def test_speaker_adaptation_distribution(tmp_path):
    root = tmp_path / "c"
    add_talk(root, "train", "Eve_2015E", [_line("Eve_2015E", "0", "1", "one")], 2.0, distribution="speaker-adaptation")
    result = prepare(PrepareConfig(corpus_dir=root, distribution="speaker-adaptation"))
    assert result.table.column("utt_id").to_pylist() == ["Eve_2015E_0_1"]
    with pytest.raises(CorpusError, match="distribution 'legacy' not found.*speaker-adaptation"):
        prepare(PrepareConfig(corpus_dir=root))


def test_missing_corpus_or_split_is_a_one_line_error(tmp_path):
    with pytest.raises(CorpusError, match="corpus directory not found"):
        prepare(PrepareConfig(corpus_dir=tmp_path / "nope"))
    (tmp_path / "c" / "legacy" / "train" / "stm").mkdir(parents=True)
    with pytest.raises(CorpusError, match="legacy/train/sph: directory not found"):
        prepare(PrepareConfig(corpus_dir=tmp_path / "c"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distribution": "nope"}, "distribution must be"),
        ({"splits": ("train", "eval")}, "splits must be"),
        ({"splits": ()}, "splits must be"),
        ({"normalization": "kaldi"}, "normalization must be"),
    ],
)
def test_config_rules(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(corpus_dir=tmp_path, **kwargs)


def test_corrupted_corpus_reports_each_bad_item_and_keeps_the_valid_ones(corpus):
    add_talk(corpus, "train", "Frank_2016F", [
        _line("Frank_2016F", "0.00", "1.00", "good one"),
        "Frank_2016F 1 Frank 1.0",  # too few fields
        _line("Frank_2016F", "x", "2.00", "bad time"),
        _line("Frank_2016F", "3.00", "2.00", "reversed"),
        _line("Frank_2016F", "1.00", "9.00", "past the end"),
        _line("Frank_2016F", "0.00", "1.00", "duplicate id"),
    ], seconds=4.0)
    add_talk(corpus, "train", "Gina_2017G", b"Gina_2017G 1 Gina_2017G 0 1 <NA> caf\xe9 ok\n" +
             _line("Gina_2017G", "1", "2", "fine").encode() + b"\n", seconds=3.0)
    add_talk(corpus, "train", "Hugo_2018H", [_line("Hugo_2018H", "0", "1", "a"), _line("Hugo_2018H", "1", "2", "b")], None)
    (corpus / "data" / "sph" / "Ivan_2019I.sph").write_bytes(b"garbage")
    add_talk(corpus, "train", "Ivan_2019I", [_line("Ivan_2019I", "0", "1", "unreadable")], None)
    result = prepare(PrepareConfig(corpus_dir=corpus))
    by_reason = {}
    for p in result.problems:
        by_reason.setdefault(p.reason, []).append(p)
    assert result.skipped == {
        "too-few-fields": 1, "bad-time": 1, "reversed-time": 1, "past-audio-end": 1, "duplicate-id": 1,
        "non-utf8": 1, "missing-audio": 2, "unreadable-audio": 1,
    }
    # every problem names its file and line
    assert str(by_reason["too-few-fields"][0]).startswith("legacy/train/stm/Frank_2016F.stm:2: too-few-fields")
    assert by_reason["bad-time"][0].line == 3
    assert by_reason["non-utf8"][0].file == "legacy/train/stm/Gina_2017G.stm" and by_reason["non-utf8"][0].line == 1
    assert by_reason["missing-audio"][0].segments == 2  # one report for the talk, both segments counted
    assert "Hugo_2018H.sph" in str(by_reason["missing-audio"][0])
    assert "not a NIST SPHERE" in str(by_reason["unreadable-audio"][0])
    ids = set(result.table.column("utt_id").to_pylist())
    assert {"Frank_2016F_0.00_1.00", "Gina_2017G_1_2", "AliceSmith_2010A_1.00_3.50"} <= ids
    assert not any(i.startswith(("Hugo", "Ivan")) for i in ids)
    assert result.stats["train"].skipped["missing-audio"] == 2


def test_progress_is_reported_per_stm_file(corpus):
    calls = []
    prepare(PrepareConfig(corpus_dir=corpus), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_audio_path_outside_the_root_is_kept_as_found(tmp_path):
    outside = write_sph(tmp_path / "elsewhere" / "Out_2020O.sph", 2.0)
    root = tmp_path / "c"
    add_talk(root, "dev", "Out_2020O", [_line("Out_2020O", "0", "1", "x")], None)
    os.symlink(outside, root / "legacy" / "dev" / "sph" / "Out_2020O.sph")
    result = prepare(PrepareConfig(corpus_dir=root))
    assert result.table.column("audio_path").to_pylist() == ["legacy/dev/sph/Out_2020O.sph"]


def test_tolerance_for_times_rounded_past_the_end(tmp_path):
    root = tmp_path / "c"
    add_talk(root, "dev", "Tol_2020T", [_line("Tol_2020T", "0", "2.005", "ok"), _line("Tol_2020T", "0", "2.02", "no")], 2.0)
    result = prepare(PrepareConfig(corpus_dir=root))
    assert result.table.column("utt_id").to_pylist() == ["Tol_2020T_0_2.005"]
    assert result.skipped == {"past-audio-end": 1}
    assert tedlium.PAST_END_TOLERANCE_S == 0.01
