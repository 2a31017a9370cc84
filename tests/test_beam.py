"""fedw2v.beam: lexicon + n-gram beam search on hand-made CTC outputs (words fixed, times from frames, a long
input streamed with pruning = one pass), lexicon-free, and every bad LM or lexicon one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedw2v import beam
from fedw2v.cli import app
from fedw2v.config.decode import DecodeConfig
from fedw2v.decode import Vocab, text_and_words
from fedw2v.errors import InputError
from fedw2v.text import character_vocabulary

pytest.importorskip("flashlight.lib.text.decoder.kenlm")

TOKENS = character_vocabulary()
V = Vocab(tuple(TOKENS), blank=0, delimiter=2)
FRAME_S = 0.02
TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog sat", "the mat is on the cat"]
runner = CliRunner()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "text.txt").write_text("\n".join(TEXT * 3) + "\n")
    res = runner.invoke(app, ["lm", "build", str(d / "text.txt"), "-o", str(d / "lm"), "--order", "3"])
    assert res.exit_code == 0, res.output
    return d / "lm"


def emissions(text: str, confusions: dict[int, str] | None = None) -> np.ndarray:
    """Log-probabilities for ``text``: per character 2 frames and a blank, '|' between words and at the end, with
    a little probability everywhere else; ``confusions`` = {character index: the character greedy prefers there}."""
    frames: list[tuple[int, int | None]] = [(0, None)]
    for i, ch in enumerate(text + " "):
        tok = 2 if ch == " " else TOKENS.index(ch)
        rival = TOKENS.index(confusions[i]) if confusions and i in confusions else None
        frames += [(tok, rival), (tok, rival), (0, None)]
    p = np.full((len(frames), len(TOKENS)), 0.01, np.float32)
    for t, (tok, rival) in enumerate(frames):
        p[t, tok] = 0.4 if rival is not None else 0.9
        if rival is not None:
            p[t, rival] = 0.5
    return np.log(p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def search_for(lm_dir, **kw) -> beam.BeamSearch:
    config = DecodeConfig(decoder="beam", lm=str(lm_dir), **kw)
    return beam.BeamSearch.load(beam.resolve_files(config), config, V, FRAME_S)


def test_lexicon_and_lm_fix_what_greedy_misspells_and_time_the_words(lm_dir, tmp_path):
    e = emissions("the cat sat", confusions={6: "d"})  # greedy hears "cad"
    assert text_and_words(e.argmax(axis=1), V, FRAME_S)[0] == "the cad sat"
    text, words = search_for(lm_dir).decode(e)
    assert text == "the cat sat"
    # character k of the text has frames 1 + 3k and 2 + 3k: "the" = characters 0-2, "cat" 4-6, "sat" 8-10
    expected = [("the", 0.02, round(9 * FRAME_S, 3)), ("cat", round(13 * FRAME_S, 3), round(21 * FRAME_S, 3)),
                ("sat", round(25 * FRAME_S, 3), round(33 * FRAME_S, 3))]
    assert [(w.word, w.start, w.end) for w in words] == expected
    # spellings without the separator: a word is complete on the first frame of its last character, and the
    # search, back at the lexicon root, may not repeat that character: a word may end one frame earlier
    bare = tmp_path / "bare.txt"
    bare.write_text("".join(line.replace(" |", "") + "\n" for line in (lm_dir / "lexicon.txt").read_text().splitlines()))
    text, words = search_for(lm_dir, lexicon=str(bare)).decode(e)
    assert text == "the cat sat" and [(w.word, w.start) for w in words] == [(w, a) for w, a, _ in expected]
    assert all(b - FRAME_S - 1e-9 <= w.end <= b for w, (_, _, b) in zip(words, expected)), words


def test_a_long_input_streamed_with_pruning_equals_one_pass(lm_dir, monkeypatch):
    monkeypatch.setattr(beam, "LOOKBACK_S", 0.4)  # 20 frames: prune very often
    rng = np.random.default_rng(0)
    text = " ".join(TEXT[i] for i in rng.integers(0, len(TEXT), 40))
    e = emissions(text, confusions={i: "d" for i in range(5, len(text), 37) if text[i] != " "})
    search = search_for(lm_dir)
    whole = search.decode(e)
    stream = search.stream()
    held = []
    for i in range(0, len(e), 97):
        stream.feed(e[i : i + 97])
        held.append(stream.buffered)
    streamed = stream.finish()
    assert streamed[0] == whole[0] and streamed[1] == whole[1]
    assert len(streamed[1]) == len(text.split()) and whole[0] == text
    assert max(held) <= 2 * search.lookback + 97 < len(e) / 10, "the search's history is pruned as it goes"


def test_lexicon_free_with_the_character_lm(lm_dir):
    search = search_for(lm_dir, lexicon_free=True)
    assert search.describe()["lm"].endswith("chars.arpa") and search.describe()["lexicon_free"]
    text, words = search.decode(emissions("the cat sat on the mat"))
    assert text == "the cat sat on the mat" and [w.word for w in words] == text.split()
    no_lm = beam.BeamSearch.load(beam.resolve_files(DecodeConfig(decoder="beam")), DecodeConfig(decoder="beam"),
                                 V, FRAME_S)
    assert no_lm.decode(emissions("a dog"))[0] == "a dog"


def test_lm_file_without_a_lexicon_takes_the_arpa_words(tmp_path):
    from fedw2v.lm import ngram

    arpa = tmp_path / "lm.arpa"
    ngram.write_arpa(ngram.estimate([t.split() for t in [*TEXT, "a caté"]], 3), arpa)  # caté: unspellable
    config = DecodeConfig(decoder="beam", lm=str(arpa))
    search = beam.BeamSearch.load(beam.resolve_files(config), config, V, FRAME_S)
    assert search.notes and "1 skipped" in search.notes[0] and "'caté'" in search.notes[0]
    assert search.decode(emissions("the dog sat"))[0] == "the dog sat"


def _error(config: DecodeConfig) -> str:
    with pytest.raises(InputError) as exc:
        beam.BeamSearch.load(beam.resolve_files(config), config, V, FRAME_S)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_bad_lms_and_lexicons_are_one_line_naming_the_file_and_line(lm_dir, tmp_path):
    assert "no such file or directory" in _error(DecodeConfig(decoder="beam", lm=str(tmp_path / "nope")))
    assert "--lexicon" in _error(DecodeConfig(decoder="beam", lm=str(lm_dir), lexicon=str(tmp_path / "x.txt")))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert "without lm.bin or lm.arpa" in _error(DecodeConfig(decoder="beam", lm=str(empty)))
    garbage = tmp_path / "garbage.arpa"
    garbage.write_text("hello\nworld\n")
    message = _error(DecodeConfig(decoder="beam", lm=str(garbage), lexicon=str(lm_dir / "lexicon.txt")))
    assert str(garbage) in message and "KenLM cannot load it" in message and "(line 1)" in message
    unigram = tmp_path / "unigram.arpa"
    unigram.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<unk>\n-99\t<s>\n-0.3\t</s>\n\n\\end\\\n")
    message = _error(DecodeConfig(decoder="beam", lm=str(unigram), lexicon=str(lm_dir / "lexicon.txt")))
    assert str(unigram) in message and "bigram" in message
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("cat\tc a t |\nnaïve\tn a ï v e |\n")
    message = _error(DecodeConfig(decoder="beam", lm=str(lm_dir), lexicon=str(lexicon)))
    assert f"{lexicon} line 2" in message and "'ï'" in message and "lacks" in message
    message = _error(DecodeConfig(decoder="beam", lm=str(lm_dir / "lm.arpa"), lexicon_free=True))
    assert "lm.arpa line" in message and "character n-gram" in message
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0")
    assert "give --lexicon" in _error(DecodeConfig(decoder="beam", lm=str(binary)))


def test_decode_options_are_checked():
    for kwargs, needle in (({"lm": "x"}, "--lm apply to --decoder beam only"),
                           ({"decoder": "beam", "beam_size": 0}, "--beam-size must be 1"),
                           ({"decoder": "beam", "lm_weight": float("nan")}, "--lm-weight must be a finite"),
                           ({"decoder": "beam", "lexicon_free": True, "lexicon": "x"}, "--lexicon-free"),
                           ({"decoder": "beam", "lexicon_free": True, "word_score": 1.0}, "--word-score"),
                           ({"decoder": "beam", "word_score": 1.0}, "--word-score applies to lexicon decoding"),
                           ({"decoder": "beam", "lexicon": "x", "lm_weight": 1.0}, "--lm-weight needs a language"),
                           ({"decoder": "sideways"}, "--decoder must be one of")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            DecodeConfig(**kwargs)
