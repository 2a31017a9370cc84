"""Transcript normalisation: the `paper` and `joined` rules of REFERENCE.md §3."""

import pytest

from fedw2v.text import normalize


@pytest.mark.parametrize(
    "raw, paper",
    [
        ("it 's a <unk> day", "it 's a day"),
        ("{NOISE} hello {COUGH} world {SMACK}", "hello world"),
        ("<sil> we read(2) it <sil>", "we read it"),
        ("so we went (AimeeMullins_2009P-17.82-28.81)", "so we went"),
        ("HeLLo   THERE\tfriend", "hello there friend"),
        ("[laughter] yes", "yes"),
        ("<unk> <unk>", ""),
        ("", ""),
        ("don 't stop i 'd say we 're", "don 't stop i 'd say we 're"),
        ("numbers 1990 and 3", "numbers 1990 and 3"),
        ("(not_trailing) word", "(not_trailing) word"),
    ],
)
def test_paper_normalisation(raw, paper):
    assert normalize(raw) == paper
    assert normalize(raw, "paper") == paper


@pytest.mark.parametrize(
    "raw, joined",
    [
        ("it 's a <unk> day", "it's a day"),
        ("don 't stop i 'd say we 're", "don't stop i'd say we're"),
        ("' quoted", "' quoted"),
        ("rock 'n' roll", "rock'n' roll"),
    ],
)
def test_joined_normalisation(raw, joined):
    assert normalize(raw, "joined") == joined


def test_normalisation_is_idempotent():
    raw = "It 's {NOISE} <unk> read(2) (key)"
    once = normalize(raw)
    assert normalize(once) == once
    assert normalize(normalize(raw, "joined"), "joined") == normalize(raw, "joined")


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="unknown normalization 'kaldi'"):
        normalize("x", "kaldi")
