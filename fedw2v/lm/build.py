"""`fedw2v lm build`: text -> an n-gram LM directory for beam decoding.

SOURCE is a fedw2v manifest (its **train** split's normalised text; dev and test never enter an LM) or a text
file with one sentence per line (plain or gzipped, e.g. TED-LIUM 3's ``LM/*.en.gz``), normalised with the
named normalisation (`fedw2v.text.normalize`). The directory gets:

- ``lm.arpa``: interpolated modified Kneser-Ney of ``--order`` over words (`fedw2v.lm.ngram`); words the
  model cannot spell are replaced by ``<unk>`` in the text (skipped from the lexicon), counted, never silently;
- ``lexicon.txt``: every other word spelled in the model's characters with the word separator;
- ``chars.arpa``: a character n-gram of ``--char-order`` (the tokens, ``|`` between words) for
  ``--lexicon-free`` decoding;
- ``lm.bin``: KenLM's binary form, only where KenLM's ``build_binary`` is on PATH (it is not installable from
  PyPI or Debian here; the provenance says which);
- ``lm.json``: provenance: sources, order, counts, discounts, text normalisation, skipped words.

The directory is written whole to a temporary directory and then moved into place; an existing ``-o`` that is
not an LM directory fedw2v made is refused.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedw2v.config.options import option
from fedw2v.errors import InputError
from fedw2v.lm import ngram
from fedw2v.text import NORMALIZATIONS, WORD_DELIMITER, normalize

PROVENANCE = "lm.json"
ARPA, CHARS, LEXICON, BINARY = "lm.arpa", "chars.arpa", "lexicon.txt", "lm.bin"
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class LmBuildConfig:
    order: int = option(4, f"N-gram order of the word LM ({ngram.MIN_ORDER} to {ngram.MAX_ORDER}).")
    char_order: int = option(6, f"Order of the character n-gram for --lexicon-free decoding ({ngram.MIN_ORDER} to "
                             f"{ngram.MAX_ORDER}; 0: none).")
    model: str | None = option(None, "Model whose characters spell the lexicon (any --model form).",
                               shown_default="the base characters a-z ' 0-9", flags=("--model", "-m"))
    normalization: str | None = option(None, "Normalisation of a text SOURCE: paper | joined.",
                                       shown_default="a manifest's own; text: paper", choices=NORMALIZATIONS)

    def __post_init__(self) -> None:
        for flag, value, zero in (("--order", self.order, False), ("--char-order", self.char_order, True)):
            if not (ngram.MIN_ORDER <= value <= ngram.MAX_ORDER or (zero and value == 0)):
                raise ValueError(f"{flag} must be {ngram.MIN_ORDER} to {ngram.MAX_ORDER}"
                                 + (" or 0" if zero else "") + f" (KenLM needs a bigram model at least), not {value}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}")


@dataclass
class SourceText:
    path: str
    kind: str  # "manifest (train split)" | "text" | "gzipped text"
    normalization: str
    sentences: list[list[str]] = field(default_factory=list)


@dataclass
class BuildResult:
    out_dir: Path
    provenance: dict[str, Any]


def model_characters(model: str | None) -> tuple[list[str], str]:
    """(the model's tokens in id order, where they came from): a model directory's vocab.json, a loaded model's
    tokenizer, or the base character vocabulary."""
    from fedw2v.text import character_vocabulary

    if model is None:
        return character_vocabulary(), "base characters"
    from fedw2v.model import load_model, resolve

    source = resolve(model)
    vocab_file = Path(source.location) / "vocab.json"
    if source.kind != "hub" and vocab_file.is_file():
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            return sorted(vocab, key=vocab.get), str(source)
        except (ValueError, OSError, AttributeError, TypeError):
            raise InputError(f"{vocab_file}: not a vocabulary (JSON object of token ids)") from None
    return load_model(source).vocabulary, str(source)


def read_source(path: str | os.PathLike, normalization: str | None) -> SourceText:
    """The sentences of one SOURCE (see the module text); InputError naming the file (and line) if unusable."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if magic == PARQUET_MAGIC:
        return _manifest_text(p, normalization)
    norm = normalization or "paper"
    kind = "gzipped text" if magic[:2] == GZIP_MAGIC else "text"
    source = SourceText(str(p.resolve()), kind, norm)
    for line in _text_lines(p, kind == "gzipped text"):
        words = normalize(line, norm).split()
        if words:
            source.sentences.append(words)
    return source


def _manifest_text(path: Path, normalization: str | None) -> SourceText:
    import pyarrow.compute as pc

    from fedw2v import manifest

    m = manifest.read(path)
    if normalization is not None and normalization != m.info.normalization:
        raise InputError(f"{path}: a manifest normalised with {m.info.normalization!r}; --normalization "
                         f"{normalization} cannot change it", hint="drop --normalization")
    train = m.table.filter(pc.equal(m.table.column("split"), "train"))
    if train.num_rows == 0:
        raise InputError(f"{path}: the manifest has no train utterances (an LM is built from train text only)")
    sentences = [t.split() for t in train.column("text").to_pylist() if t and t.split()]
    return SourceText(str(path.resolve()), "manifest (train split)", m.info.normalization, sentences)


def _text_lines(path: Path, gzipped: bool) -> Iterator[str]:
    opener = gzip.open if gzipped else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                yield raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} line {number}: not UTF-8 text") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read{' after line ' + str(number) if number else ''} ({exc})") from None


def build(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: LmBuildConfig) -> BuildResult:
    """Read the sources, estimate the LMs, write the directory (see the module text)."""
    out = Path(out_dir)
    _check_out(out)
    tokens, vocabulary_source = model_characters(config.model)
    texts = [read_source(s, config.normalization) for s in sources]
    norms = sorted({t.normalization for t in texts})
    if len(norms) > 1:
        raise InputError(f"the sources use different normalisations ({', '.join(norms)}); build one LM per "
                         "normalisation")
    sentences = [s for t in texts for s in t.sentences]
    if not sentences:
        raise InputError(f"{', '.join(map(str, sources))}: no text to build a language model from")
    delimiter = WORD_DELIMITER if WORD_DELIMITER in tokens else None
    if delimiter is None:
        raise InputError(f"{vocabulary_source}: the model has no word delimiter ({WORD_DELIMITER!r})")
    characters = set(tokens) - {tokens[0], delimiter}
    sentences, skipped = _replace_unspellable(sentences, characters, delimiter)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the LM directory is an ordinary one
        provenance = _write_dir(tmp, sentences, skipped, texts, tokens, vocabulary_source, delimiter, config)
        from fedw2v.atomic import replace_directory

        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(out, provenance)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise InputError(f"-o {out}: a non-empty directory that is not an LM directory fedw2v made; not replaced",
                         hint="choose another -o, or empty it")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)


def _replace_unspellable(sentences: list[list[str]], characters: set[str], delimiter: str):
    """Sentences with each word the model cannot spell replaced by <unk>, and those words' counts."""
    from fedw2v.lm.lexicon import spell

    cache: dict[str, bool] = {}
    skipped: Counter[str] = Counter()
    out = []
    for sentence in sentences:
        row = []
        for w in sentence:
            ok = cache.get(w)
            if ok is None:
                ok = cache[w] = w in (ngram.UNK,) or spell(w, characters, delimiter) is not None
            if not ok:
                skipped[w] += 1
            row.append(w if ok else ngram.UNK)
        out.append(row)
    return out, skipped


def _write_dir(tmp: Path, sentences, skipped: Counter, texts: list[SourceText], tokens: list[str],
               vocabulary_source: str, delimiter: str, config: LmBuildConfig) -> dict[str, Any]:
    from fedw2v import __version__
    from fedw2v.lm.lexicon import lexicon_lines, write_lines

    model = ngram.estimate(sentences, config.order)
    ngram.write_arpa(model, tmp / ARPA)
    lines, _ = lexicon_lines(model.vocab, set(tokens) - {tokens[0], delimiter}, delimiter)
    write_lines(lines, tmp / LEXICON)
    provenance: dict[str, Any] = {
        "fedw2v": __version__,
        "sources": [{"path": t.path, "kind": t.kind, "sentences": len(t.sentences)} for t in texts],
        "normalization": texts[0].normalization,
        "estimator": "interpolated modified Kneser-Ney (fedw2v.lm.ngram)",
        "order": config.order,
        "counts": {"sentences": model.sentences, "words": model.tokens, "vocabulary": len(model.vocab) - 3,
                   "ngrams": model.counts},
        "discounts": [list(d) for d in model.discounts],
        "fallback_discounts_orders": [n for n, f in enumerate(model.fallback, start=1) if f],
        "lexicon": {"file": LEXICON, "words": len(lines), "characters": vocabulary_source},
        "skipped_words": {"reason": "characters outside the model's vocabulary; replaced by <unk> in the LM text",
                          "distinct": len(skipped), "occurrences": sum(skipped.values()),
                          "most_common": [[w, c] for w, c in skipped.most_common(20)]},
        "character_lm": _character_lm(tmp, sentences, config.char_order, delimiter),
        "binary": _binary(tmp),
    }
    (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return provenance


def _character_lm(tmp: Path, sentences, order: int, delimiter: str) -> dict[str, Any] | None:
    if order == 0:
        return None
    chars = []
    for sentence in sentences:
        row: list[str] = []
        for w in sentence:
            if row:
                row.append(delimiter)
            row.extend([w] if w == ngram.UNK else list(w))
        chars.append(row)
    model = ngram.estimate(chars, order)
    ngram.write_arpa(model, tmp / CHARS)
    return {"file": CHARS, "order": order, "ngrams": model.counts}


def _binary(tmp: Path) -> str:
    """KenLM's binary form where its `build_binary` is on PATH; what happened, in words."""
    tool = shutil.which("build_binary")
    if tool is None:
        return f"not made: KenLM's build_binary is not on PATH (not installable from PyPI or Debian here); {ARPA} is used"
    result = subprocess.run([tool, str(tmp / ARPA), str(tmp / BINARY)], capture_output=True, text=True)
    if result.returncode != 0 or not (tmp / BINARY).is_file():
        (tmp / BINARY).unlink(missing_ok=True)
        return f"not made: {tool} failed ({(result.stderr or result.stdout).strip().splitlines()[-1:]})"
    return f"{BINARY}, made by {tool}"
