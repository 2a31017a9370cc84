"""Transcript normalisation, the same for training targets and for scoring.

Two named normalisations (the name is stored in the manifest metadata):

- ``paper`` (default; what the paper's authors did): lowercase; ``<unk>``, ``<sil>`` and any other ``<tag>``,
  bracketed fillers (``{NOISE}``, ``[laughter]``) and a trailing ``(utterance_key)`` removed; pronunciation
  variants ``word(2)`` -> ``word``; clitics kept split as in the STM (``it 's``); whitespace collapsed.
- ``joined`` (lhotse's "kaldi" style): as ``paper``, then clitics joined to their word (``it's``).
"""

from __future__ import annotations

import re

NORMALIZATIONS = ("paper", "joined")

_TAG = re.compile(r"^(<[^<>]*>|\{[^{}]*\}|\[[^\[\]]*\])$")
_KEY = re.compile(r"^\([^()]*\)$")
_VARIANT = re.compile(r"\(\d+\)$")
_CLITIC_GAP = re.compile(r"(?<=\S) +(?='\S)")


def normalize(text: str, normalization: str = "paper") -> str:
    """Normalise one transcript. Raises ValueError for an unknown normalisation name."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    tokens = text.split()
    if tokens and _KEY.match(tokens[-1]):
        tokens.pop()
    out = []
    for tok in tokens:
        if _TAG.match(tok):
            continue
        tok = _VARIANT.sub("", tok).lower()
        if tok:
            out.append(tok)
    result = " ".join(out)
    if normalization == "joined":
        result = _CLITIC_GAP.sub("", result)
    return result


# --- Character vocabulary (the CTC output units) -------------------------------------------------------------

BLANK = "<pad>"  # the CTC blank, also the padding token of the tokenizer (id 0)
UNK = "<unk>"  # characters the vocabulary lacks (never a training target of a vocabulary built from its texts)
WORD_DELIMITER = "|"  # stands for the space between words
BASE_CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz'0123456789")


def character_vocabulary(texts=()) -> list[str]:
    """The CTC output units, in id order: blank/pad, unk, word delimiter, a-z, apostrophe, digits, then every
    other character present in ``texts`` (normalised transcripts), sorted by code point.

    The same texts always give the same vocabulary; the base units are always present, so a vocabulary built
    from any corpus can transcribe plain lowercase English.
    """
    extra: set[str] = set()
    base = set(BASE_CHARACTERS)
    for text in texts:
        extra.update(ch for ch in set(text) if ch not in base and not ch.isspace())
    extra.discard(WORD_DELIMITER)
    return [BLANK, UNK, WORD_DELIMITER, *BASE_CHARACTERS, *sorted(extra)]


def vocabulary_covers(vocab, texts) -> set[str]:
    """Characters of ``texts`` (spaces aside) that ``vocab`` (tokens) lacks: empty when it covers them all."""
    have = set(vocab)
    missing: set[str] = set()
    for text in texts:
        missing.update(ch for ch in set(text) if not ch.isspace() and ch not in have)
    return missing
