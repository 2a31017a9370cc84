"""Lexicons: each word spelled in a CTC model's characters, ending with its word separator.

A line is the word, a tab, then its spelling as space-separated tokens, as flashlight reads it:
``cat<TAB>c a t |``. A word with a character the model lacks cannot be spelled: building a lexicon skips and
counts such words; a lexicon file that uses such characters is an error naming its file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from fedw2v.errors import InputError

SPECIAL_WORDS = ("<s>", "</s>", "<unk>")
KENLM_BINARY_MAGIC = b"mmap lm "


def spell(word: str, characters: set[str], delimiter: str) -> list[str] | None:
    """The spelling of ``word`` (its characters, then the delimiter), or None when the model lacks one of them."""
    if not word or any(c not in characters or c.isspace() or c == delimiter for c in word):
        return None
    return [*word, delimiter]


def lexicon_lines(words: Iterable[str], characters: set[str], delimiter: str) -> tuple[list[str], list[str]]:
    """(lexicon lines, words that cannot be spelled), both in the order of ``words`` (specials left out)."""
    lines, skipped = [], []
    for word in words:
        if word in SPECIAL_WORDS:
            continue
        spelling = spell(word, characters, delimiter)
        if spelling is None:
            skipped.append(word)
        else:
            lines.append(f"{word}\t{' '.join(spelling)}")
    return lines, skipped


def check_lexicon(path: str | os.PathLike, tokens: Sequence[str]) -> int:
    """Check that every spelling of a lexicon file uses only ``tokens`` (the model's); the number of entries.
    InputError naming the file and line otherwise."""
    have = set(tokens)
    entries = 0
    for number, line in _lines(path, "lexicon"):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise InputError(f"{path} line {number}: {fields[0]!r} has no spelling",
                             hint="each line is a word, then its spelling in the model's characters")
        missing = [t for t in fields[1:] if t not in have]
        if missing:
            raise InputError(
                f"{path} line {number}: {fields[0]!r} is spelled with {', '.join(map(repr, missing))}, which the "
                "model's vocabulary lacks",
                hint="rebuild the lexicon for this model (fedw2v lm build --model ...)",
            )
        entries += 1
    if entries == 0:
        raise InputError(f"{path}: the lexicon has no entries")
    return entries


def is_binary_lm(path: str | os.PathLike) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def arpa_words(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, word) of each unigram of a text ARPA file. InputError if it has no 1-gram section."""
    section = False
    for number, line in _lines(path, "ARPA"):
        text = line.strip()
        if text == "\\1-grams:":
            section = True
            continue
        if not section:
            continue
        if not text or text.startswith("\\"):
            return
        fields = text.split("\t") if "\t" in text else text.split()
        if len(fields) < 2:
            raise InputError(f"{path} line {number}: not an ARPA n-gram line ({text[:40]!r})")
        yield number, fields[1]
    if not section:
        raise InputError(f"{path}: not an ARPA file (no \\1-grams: section)")


def _lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise InputError(f"{path} line {number}: not UTF-8 text (a {what} file is text)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def write_lines(lines: Iterable[str], path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
    return path
