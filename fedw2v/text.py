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
