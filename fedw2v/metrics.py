"""Word and character error rates (jiwer), per utterance and summed over groups (speakers, splits, …).

References and hypotheses are compared after the same normalisation (`fedw2v.text.normalize` with the
manifest's normalisation name): the caller passes normalised strings, `normalize_pair` does it for one pair.
Rates are summed edit counts over summed reference lengths (not means of per-utterance rates). An empty
reference counts every hypothesis word as an insertion. No Flower or Ray imports here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ErrorCounts:
    utterances: int = 0
    ref_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_chars: int = 0
    char_errors: int = 0  # character substitutions + deletions + insertions (spaces count as characters)

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.word_errors / self.ref_words if self.ref_words else float(self.word_errors > 0)

    @property
    def cer(self) -> float:
        return self.char_errors / self.ref_chars if self.ref_chars else float(self.char_errors > 0)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict:
        return {**asdict(self), "word_errors": self.word_errors, "wer": self.wer, "cer": self.cer}


def normalize_pair(reference: str, hypothesis: str, normalization: str) -> tuple[str, str]:
    """The one normalisation, applied identically to both sides."""
    from fedw2v.text import normalize

    return normalize(reference, normalization), normalize(hypothesis, normalization)


def utterance_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Edit counts of one (normalised) pair."""
    import jiwer

    ref, hyp = reference.strip(), hypothesis.strip()
    if not ref and not hyp:
        return ErrorCounts(utterances=1)
    w = jiwer.process_words(ref, hyp)
    c = jiwer.process_characters(ref, hyp)
    return ErrorCounts(
        utterances=1,
        ref_words=len(ref.split()),
        substitutions=w.substitutions,
        deletions=w.deletions,
        insertions=w.insertions,
        ref_chars=len(ref),
        char_errors=c.substitutions + c.deletions + c.insertions,
    )


def total(counts: Iterable[ErrorCounts]) -> ErrorCounts:
    out = ErrorCounts()
    for c in counts:
        out = out + c
    return out


def score(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Summed counts over pairs of (normalised) strings."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return total(utterance_counts(r, h) for r, h in zip(references, hypotheses))


def by_group(groups: Sequence[str], counts: Sequence[ErrorCounts]) -> dict[str, ErrorCounts]:
    """Counts summed per group key (e.g. speaker), keys sorted."""
    out: dict[str, ErrorCounts] = {}
    for g, c in zip(groups, counts):
        out[g] = out.get(g, ErrorCounts()) + c
    return dict(sorted(out.items()))
