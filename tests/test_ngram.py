"""fedw2v.lm.ngram: interpolated modified Kneser-Ney, by hand on a toy corpus, normalised and consistent on a
random one, and the same log-probabilities from KenLM (flashlight-text) reading the ARPA file it writes."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fedw2v.lm import ngram
from fedw2v.lm.ngram import BOS, EOS, UNK, estimate, modified_discounts, write_arpa

FIXED = [(0.5, 1.0, 1.5)] * 2


def test_modified_discounts_by_hand():
    # n1..n4 = 10, 4, 2, 1: Y = 10/18 = 5/9; D1 = 1 - 2Y*4/10 = 5/9; D2 = 2 - 3Y*2/4 = 7/6; D3+ = 3 - 4Y/2 = 17/9
    d, fallback = modified_discounts([10, 4, 2, 1])
    assert not fallback
    assert d == pytest.approx([float(Fraction(5, 9)), float(Fraction(7, 6)), float(Fraction(17, 9))])
    assert modified_discounts([10, 4, 0, 1]) == (ngram.FALLBACK_DISCOUNTS, True)  # n3 = 0: no D2, D3+
    assert modified_discounts([1, 5, 1, 9])[1]  # D1 < 0: out of range


def test_toy_corpus_by_hand():
    """Sentences "a b" and "b", order 2, discounts 0.5 / 1 / 1.5 (worked out in the comments)."""
    m = estimate([["a", "b"], ["b"]], 2, discounts=FIXED)
    # Unigrams use continuation counts: a follows {<s>} -> 1; b follows {a, <s>} -> 2; </s> follows {b} -> 1;
    # <unk> 0. A = 4, discounts 0.5 + 1 + 0.5 = 2, gamma = 2/4, uniform over |V| = 4 (a, b, </s>, <unk>).
    p1 = {"a": 0.5 / 4 + 0.5 / 4, "b": 1 / 4 + 0.5 / 4, EOS: 0.5 / 4 + 0.5 / 4, UNK: 0.5 / 4}
    assert sum(p1.values()) == pytest.approx(1)
    for w, p in p1.items():
        assert m.score([], w) == pytest.approx(math.log10(p))
    # After <s>: a 1, b 1 (raw counts: these bigrams start with <s>); A = 2, gamma(<s>) = (0.5 + 0.5) / 2.
    assert m.score([BOS], "a") == pytest.approx(math.log10(0.5 / 2 + 0.5 * p1["a"]))  # 0.375
    assert m.score([BOS], "b") == pytest.approx(math.log10(0.5 / 2 + 0.5 * p1["b"]))  # 0.4375
    assert m.score([BOS], EOS) == pytest.approx(math.log10(0.5 * p1[EOS]))  # unseen: backoff 0.5 x 0.25
    # After a: b once; gamma(a) = 0.5. After b: </s> twice (raw count 2, discount 1); gamma(b) = 1/2.
    assert m.score(["a"], "b") == pytest.approx(math.log10(0.5 / 1 + 0.5 * p1["b"]))  # 0.6875
    assert m.score(["b"], EOS) == pytest.approx(math.log10(1 / 2 + 0.5 * p1[EOS]))  # 0.625
    assert m.score(["b"], "a") == pytest.approx(math.log10(0.5 * p1["a"]))
    # The backoff weights written for the contexts are those gammas.
    back = dict(zip((m.vocab[r[0]] for r in m.grams[0]), m.backoff[0]))
    assert back[BOS] == back["a"] == back["b"] == pytest.approx(math.log10(0.5))
    assert m.counts == [5, 4]  # <unk> <s> </s> a b; <s> a, <s> b, a b, b </s>


def _random_corpus(seed: int, sentences: int = 120) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(25)]
    p = 1 / np.arange(1, 26)
    p /= p.sum()  # Zipf-like, so that counts of counts are not all ones
    return [list(rng.choice(words, size=int(rng.integers(1, 9)), p=p)) for _ in range(sentences)]


def _contexts(m):
    for n in range(1, m.order):
        for row in m.grams[n - 1]:
            ctx = [m.vocab[i] for i in row]
            if ctx[-1] != EOS:
                yield n, ctx


@pytest.mark.parametrize("order", [2, 3, 5])
def test_the_probabilities_of_each_context_sum_to_one(order):
    m = estimate(_random_corpus(order), order)
    vocab = [w for w in m.vocab if w != BOS]
    assert abs(sum(10 ** m.score([], w) for w in vocab) - 1) < 1e-6
    checked = 0
    for _, ctx in _contexts(m):
        assert abs(sum(10 ** m.score(ctx, w) for w in vocab) - 1) < 1e-6, ctx
        checked += 1
    assert checked > 20
    assert not all(m.fallback), "the random corpus should estimate its own discounts"


def test_the_backoff_weights_are_consistent():
    """ARPA's identity for every context h: gamma(h) = (1 - sum_seen p(w|h)) / (1 - sum_seen p(w|h')), the sums
    over the words seen after h."""
    m = estimate(_random_corpus(7), 3)
    for n, ctx in _contexts(m):
        seen = [m.vocab[r[-1]] for r in m.grams[n] if [m.vocab[i] for i in r[:-1]] == ctx]
        if not seen:
            continue
        left = 1 - sum(10 ** m.score(ctx, w) for w in seen)
        right = 1 - sum(10 ** m.score(ctx[1:], w) for w in seen)
        row = m._lookup([m.word_id(w) for w in ctx])
        assert m.backoff[n - 1][row] == pytest.approx(math.log10(left / right), abs=1e-9), ctx


def test_kenlm_reads_the_arpa_file_and_gives_the_same_log_probabilities(tmp_path):
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import Dictionary

    corpus = _random_corpus(11)
    for order in (2, 4):
        m = estimate(corpus, order)
        path = tmp_path / f"{order}.arpa"
        write_arpa(m, path)
        lines = path.read_text().splitlines()
        assert lines[1] == "\\data\\" and f"ngram {order}={m.counts[-1]}" in lines
        assert all("\t" in ln for ln in lines if ln and ln[0] in "-0123456789"), "KenLM needs tab-separated fields"
        words = [w for w in m.vocab if w not in (BOS, EOS)] + ["never-seen"]
        lm = kenlm.KenLM(str(path), Dictionary(words))
        rng = np.random.default_rng(order)
        for _ in range(30):  # seen and unseen n-grams, and an unknown word
            sentence = list(rng.choice(words, size=int(rng.integers(1, 8))))
            state, theirs = lm.start(False), []
            for w in sentence:
                state, score = lm.score(state, words.index(w))
                theirs.append(score)
            theirs.append(lm.finish(state)[1])
            assert np.allclose(theirs, m.sentence_scores(sentence), atol=1e-5), sentence


def test_orders_kenlm_cannot_use_are_refused():
    for order in (0, 1, 7):
        with pytest.raises(ValueError, match="order must be 2 to 6"):
            estimate([["a"]], order)
    with pytest.raises(ValueError, match="no sentences"):
        estimate([], 3)
