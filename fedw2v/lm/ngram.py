"""A compact n-gram estimator: interpolated modified Kneser-Ney, written as an ARPA file KenLM loads.

No library on PyPI estimates ARPA n-gram models (KenLM's `lmplz` is not installable here; the `kenlm` package
only queries), so this module does it, following Chen & Goodman (1998) as KenLM's `lmplz` does:

- Sentences are padded as ``<s> w1 … wk </s>``; every n-gram of every order up to ``order`` is counted.
- *Adjusted counts* ``a``: the raw count for n-grams of the highest order and for n-grams that start with
  ``<s>``; otherwise the number of distinct words seen to their left (continuation counts).
- *Discounts* per order from the counts of counts n1…n4 of the adjusted counts: ``Y = n1 / (n1 + 2 n2)``,
  ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``, ``D3+ = 3 - 4Y n4/n3``. When an order's counts cannot give
  them (a tiny corpus: some n_k is 0, or a discount falls outside (0, k)), that order uses lmplz's fallback
  discounts 0.5, 1, 1.5 and the model records that it did.
- *Interpolation*: for an n-gram ``h w`` seen in training,
  ``p(w|h) = (a(hw) - D(a(hw))) / A(h) + γ(h) p(w|h')`` with ``A(h) = Σ_w a(hw)``, ``h'`` = ``h`` without its
  first word and ``γ(h) = (D1 N1(h·) + D2 N2(h·) + D3+ N3+(h·)) / A(h)`` (N_k(h·): words after ``h`` with
  adjusted count k, 3 or more for 3+). Unigrams interpolate with the uniform distribution over the
  vocabulary (every word seen, ``</s>`` and ``<unk>``; not ``<s>``, which is never predicted).
- *ARPA*: each seen n-gram's log10 p(w|h) is written as is, and ``log10 γ(h)`` as the backoff weight of every
  n-gram that is a context, so that ARPA's backoff rule ``p(w|h) = γ(h) p(w|h')`` for an unseen ``h w`` gives
  exactly the interpolated model. Fields are tab-separated (KenLM's reader needs that).

Every distinct n-gram is kept in memory as numpy rows (order × 4 bytes, plus the sort's working copies):
fine for millions of words; for a corpus of hundreds of millions, estimate with KenLM's `lmplz` elsewhere and
pass its ARPA file. KenLM needs at least a bigram model, and this build of it at most order 6.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
MIN_ORDER, MAX_ORDER = 2, 6  # KenLM refuses unigram-only models; flashlight-text's KenLM is built for <= 6
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback
NO_PROB = -99.0  # log10 p(<s>) in ARPA files: <s> is a context, never predicted


@dataclass
class NgramModel:
    """An estimated model: per order n (index n-1) the n-grams as sorted rows of word ids, their log10
    probabilities and (orders below the highest) log10 backoff weights."""

    order: int
    vocab: list[str]  # word by id: <unk>, <s>, </s>, then the words sorted
    grams: list[np.ndarray]  # (M_n, n) int32, lexicographically sorted, unique
    logprob: list[np.ndarray]  # (M_n,) float64, log10 p(w|h)
    backoff: list[np.ndarray]  # (M_n,) float64, log10 γ; 0 where the n-gram is no context (empty for the top order)
    discounts: list[tuple[float, float, float]]  # (D1, D2, D3+) per order
    fallback: list[bool] = field(default_factory=list)  # per order: the fallback discounts were used
    sentences: int = 0
    tokens: int = 0  # words in the sentences (without <s>, </s>)

    @property
    def counts(self) -> list[int]:
        """Distinct n-grams per order (what the ARPA header lists)."""
        return [len(g) for g in self.grams]

    def word_id(self, word: str) -> int:
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {w: i for i, w in enumerate(self.vocab)}
        return index.get(word, UNK_ID)

    def _lookup(self, ngram: Sequence[int]) -> int:
        """Row of ``ngram`` at its order, or -1."""
        import numpy as np

        n = len(ngram)
        cache = self.__dict__.setdefault("_key_cache", {})
        keys = cache.get(n)
        if keys is None:
            keys = cache[n] = _keys(self.grams[n - 1])
        query = _keys(np.asarray([ngram], dtype=np.int32))
        i = int(np.searchsorted(keys, query)[0])
        return i if i < len(keys) and keys[i] == query[0] else -1

    def score(self, context: Sequence[str], word: str) -> float:
        """log10 p(word | context) by the ARPA backoff rule (the query a KenLM of the written file answers)."""
        ids = [self.word_id(w) for w in context][-(self.order - 1):] if self.order > 1 else []
        w = self.word_id(word)
        total = 0.0
        for start in range(len(ids) + 1):
            row = self._lookup([*ids[start:], w])
            if row >= 0:
                return total + float(self.logprob[len(ids) - start][row])
            ctx = self._lookup(ids[start:]) if ids[start:] else -1
            if ctx >= 0 and len(ids) - start - 1 < len(self.backoff):
                total += float(self.backoff[len(ids) - start - 1][ctx])
        return total + float(self.logprob[0][self._lookup([UNK_ID])])

    def sentence_scores(self, words: Sequence[str]) -> list[float]:
        """log10 p of each word of a sentence and of its end, from ``<s>`` (what KenLM scores word by word)."""
        history = [BOS]
        out = []
        for w in [*words, EOS]:
            out.append(self.score(history, w))
            history.append(w)
        return out


def estimate(
    sentences: Iterable[Sequence[str]], order: int, discounts: Sequence[tuple[float, float, float]] | None = None
) -> NgramModel:
    """Interpolated modified Kneser-Ney estimate of ``order`` from tokenised sentences (see the module text).
    ``discounts`` (one (D1, D2, D3+) per order) replaces the estimated ones (tests)."""
    import numpy as np

    if not MIN_ORDER <= order <= MAX_ORDER:
        raise ValueError(f"order must be {MIN_ORDER} to {MAX_ORDER} (KenLM needs a bigram model at least), not {order}")
    flat, sent_of, vocab, n_sent = _encode(sentences)
    if n_sent == 0:
        raise ValueError("no sentences to estimate a language model from")
    raw = [_count(flat, sent_of, n) for n in range(1, order + 1)]  # (rows, counts) per order
    adjusted = [_adjusted(raw, n) for n in range(1, order + 1)]
    raw[0], adjusted[0] = _with_unk(raw[0][0], adjusted[0])
    grams = [rows for rows, _ in raw]
    model = NgramModel(order, vocab, grams, [], [], [], [], n_sent, int(len(flat) - 2 * n_sent))
    for n in range(1, order + 1):
        a = adjusted[n - 1]
        predicted = grams[n - 1][:, -1] != BOS_ID
        if discounts is not None:
            d, fell_back = tuple(discounts[n - 1]), False
        else:
            d, fell_back = modified_discounts(np.bincount(a[predicted], minlength=5)[1:5])
        model.discounts.append(d)
        model.fallback.append(fell_back)
        model.logprob.append(_probabilities(model, n, a, d, predicted))
    for n in range(1, order):
        model.backoff.append(_backoffs(model, n, adjusted[n], model.discounts[n]))
    return model


def modified_discounts(n: Sequence[int]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from the counts of counts n1…n4 (Chen & Goodman), and whether the fallback was needed."""
    n1, n2, n3, n4 = (int(v) for v in n)
    if min(n1, n2, n3, n4) <= 0:
        return FALLBACK_DISCOUNTS, True
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < dk < k for k, dk in enumerate(d, start=1)):
        return FALLBACK_DISCOUNTS, True
    return d, False


# ------------------------------------------------------------------------------------------------ counting


def _encode(sentences: Iterable[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Every sentence as ``<s> ids </s>`` in one int32 array, the sentence number of each position, the
    vocabulary (<unk>, <s>, </s>, then the words sorted) and the number of sentences."""
    import numpy as np

    texts = [list(s) for s in sentences if len(s)]
    words = sorted({w for s in texts for w in s} - {BOS, EOS, UNK})
    vocab = [UNK, BOS, EOS, *words]
    index = {w: i for i, w in enumerate(vocab)}
    lengths = np.fromiter((len(s) + 2 for s in texts), dtype=np.int64, count=len(texts))
    flat = np.empty(int(lengths.sum()), dtype=np.int32)
    pos = 0
    for s in texts:
        flat[pos] = BOS_ID
        flat[pos + 1 : pos + 1 + len(s)] = [index[w] for w in s]
        flat[pos + 1 + len(s)] = EOS_ID
        pos += len(s) + 2
    sent_of = np.repeat(np.arange(len(texts), dtype=np.int32), lengths)
    return flat, sent_of, vocab, len(texts)


def _keys(rows: np.ndarray) -> np.ndarray:
    """Rows of non-negative ids as one sortable key each (big-endian bytes: byte order = numeric order)."""
    import numpy as np

    rows = np.ascontiguousarray(rows, dtype=">i4")
    return rows.view(np.dtype((np.void, 4 * rows.shape[1]))).ravel()


def _rows(keys: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    return np.frombuffer(keys.tobytes(), dtype=">i4").reshape(-1, n).astype(np.int32)


def _unique(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique rows and how often each occurs."""
    import numpy as np

    keys, counts = np.unique(_keys(rows), return_counts=True)
    return _rows(keys, rows.shape[1]), counts.astype(np.int64)


def _count(flat: np.ndarray, sent_of: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct n-grams (windows inside one sentence) and their raw counts."""
    import numpy as np

    m = len(flat) - n + 1
    starts = np.flatnonzero(sent_of[:m] == sent_of[n - 1 :]) if m > 0 else np.zeros(0, np.int64)
    windows = np.stack([flat[starts + k] for k in range(n)], axis=1)
    return _unique(windows)


def _find(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index in ``rows`` (sorted unique) of each query row; -1 where absent."""
    import numpy as np

    keys, q = _keys(rows), _keys(queries)
    i = np.searchsorted(keys, q)
    i_clipped = np.minimum(i, len(keys) - 1)
    return np.where((i < len(keys)) & (keys[i_clipped] == q), i_clipped, -1)


def _adjusted(raw: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Adjusted counts of the order-n n-grams: raw at the top order and after <s>, else left extensions."""
    import numpy as np

    rows, counts = raw[n - 1]
    if n == len(raw):
        return counts.copy()
    suffixes, extensions = _unique(raw[n][0][:, 1:])
    found = _find(suffixes, rows)
    a = np.where(found >= 0, extensions[np.maximum(found, 0)], 0)
    starts_bos = rows[:, 0] == BOS_ID
    return np.where(starts_bos, counts, a).astype(np.int64)


def _with_unk(unigrams: np.ndarray, a: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Unigrams with <unk> present (adjusted count 0 when the text never had it)."""
    import numpy as np

    if len(unigrams) and unigrams[0, 0] == UNK_ID:
        return (unigrams, a), a
    rows = np.concatenate([np.array([[UNK_ID]], np.int32), unigrams])
    a = np.concatenate([[0], a]).astype(np.int64)
    return (rows, a), a


# ------------------------------------------------------------------------------------------------ probabilities


def _discount(a: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    import numpy as np

    return np.select([a == 0, a == 1, a == 2], [0.0, d[0], d[1]], d[2])


def _context_groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted rows: the group number of each row's context (all columns but the last), and group starts."""
    import numpy as np

    if rows.shape[1] == 1:
        return np.zeros(len(rows), np.int64), np.zeros(1, np.int64)
    ctx = rows[:, :-1]
    new = np.ones(len(rows), bool)
    new[1:] = np.any(ctx[1:] != ctx[:-1], axis=1)
    starts = np.flatnonzero(new)
    return np.cumsum(new) - 1, starts


def _gamma(a: np.ndarray, group: np.ndarray, groups: int, d: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A(h) and γ(h) per context group."""
    import numpy as np

    total = np.bincount(group, weights=a, minlength=groups)
    mass = np.bincount(group, weights=_discount(a, d), minlength=groups)
    return total, np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)


def _probabilities(model: NgramModel, n: int, a: np.ndarray, d: tuple[float, float, float], predicted: np.ndarray) -> np.ndarray:
    """log10 p(w|h) of every order-n n-gram (interpolated with order n-1; unigrams with the uniform)."""
    import numpy as np

    rows = model.grams[n - 1]
    a_pred = np.where(predicted, a, 0)
    group, starts = _context_groups(rows)
    total, gamma = _gamma(a_pred, group, len(starts), d)
    if n == 1:
        lower = np.full(len(rows), 1.0 / int(predicted.sum()))
    else:
        lower = 10.0 ** model.logprob[n - 2][_find(model.grams[n - 2], rows[:, 1:])]
    p = (a_pred - _discount(a_pred, d)) / total[group] + gamma[group] * lower
    with np.errstate(divide="ignore"):
        out = np.log10(p)
    return np.where(predicted, out, NO_PROB)


def _backoffs(model: NgramModel, n: int, a_next: np.ndarray, d_next: tuple[float, float, float]) -> np.ndarray:
    """log10 γ(h) for each order-n n-gram h that is a context of order n+1 (0 for the others)."""
    import numpy as np

    rows_next = model.grams[n]
    group, starts = _context_groups(rows_next)
    _, gamma = _gamma(a_next, group, len(starts), d_next)
    contexts = rows_next[starts, :-1]
    out = np.zeros(len(model.grams[n - 1]))
    with np.errstate(divide="ignore"):
        out[_find(model.grams[n - 1], contexts)] = np.log10(gamma)
    return out


# ------------------------------------------------------------------------------------------------ ARPA


def write_arpa(model: NgramModel, path: str | os.PathLike) -> None:
    """The model as an ARPA file (tab-separated fields, log10 values), written to ``path``."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n\\data\\\n")
        for n, count in enumerate(model.counts, start=1):
            fh.write(f"ngram {n}={count}\n")
        for n in range(1, model.order + 1):
            fh.write(f"\n\\{n}-grams:\n")
            rows, probs = model.grams[n - 1], model.logprob[n - 1]
            backs = model.backoff[n - 1] if n < model.order else None
            vocab = model.vocab
            for i in range(len(rows)):
                words = " ".join(vocab[j] for j in rows[i])
                line = f"{_num(probs[i])}\t{words}"
                if backs is not None:
                    line += f"\t{_num(backs[i])}"
                fh.write(line + "\n")
        fh.write("\n\\end\\\n")


def _num(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.7g}" if math.isfinite(value) else f"{NO_PROB:g}"
