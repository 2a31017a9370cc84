"""CTC beam search with a lexicon and an n-gram language model: torchaudio's `ctc_decoder` on flashlight-text,
whose wheels bundle KenLM.

- `resolve_files` turns ``--lm`` / ``--lexicon`` / ``--lexicon-free`` into files (an `fedw2v lm build`
  directory gives lm.arpa, lexicon.txt and chars.arpa) and fails, one line naming the file, before a model
  is loaded; `require_flashlight` is an `EnvironmentProblem` (exit 3) where flashlight-text is missing.
- `BeamSearch.load` checks the lexicon against the model's characters (file and line of the first bad
  spelling), loads the LM once (a file KenLM cannot load is one line naming the file and line) and builds
  the decoder; `with_weights` makes another one on the same LM (the dev-split grid of `evaluate`).
- Lexicon decoding emits only lexicon words, with the word's times from the frames of its characters;
  lexicon-free decoding spells freely and is scored by a character n-gram.
- Long audio: `BeamStream` takes the stitched frames of a whole file piece by piece and, every few seconds,
  commits the best path older than `LOOKBACK_S` and prunes the search's history (flashlight's
  ``get_best_hypothesis`` / ``prune``), so memory stays bounded; a short input is decoded in one step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.config.decode import DEFAULT_LM_WEIGHT, DEFAULT_WORD_SCORE, DecodeConfig
from fedw2v.decode import Vocab, Word, ctc_runs, make_word, text_and_words
from fedw2v.errors import EnvironmentProblem, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

LM_FILES = ("lm.bin", "lm.arpa")  # in an `lm build` directory, the first that exists
LEXICON_FILE = "lexicon.txt"
CHARACTER_LM_FILE = "chars.arpa"
UNK_WORD = "<unk>"
LOOKBACK_S = 10.0  # long audio: the best path older than this is committed, and the search's history pruned
FLASHLIGHT_PIN = "flashlight-text==0.0.7"


@dataclass(frozen=True)
class LmFiles:
    """What a beam search reads: the LM (None: no LM) and the lexicon (None: lexicon-free)."""

    lm: Path | None
    lexicon: Path | None

    @property
    def lexicon_free(self) -> bool:
        return self.lexicon is None


def require_flashlight() -> None:
    """EnvironmentProblem (exit 3) when torchaudio's ctc_decoder cannot be imported (no flashlight-text)."""
    try:
        from torchaudio.models.decoder import ctc_decoder  # noqa: F401
        from flashlight.lib.text.decoder.kenlm import KenLM  # noqa: F401
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        raise EnvironmentProblem(
            f"--decoder beam needs flashlight-text, which cannot be imported here ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            hint=f"pip install {FLASHLIGHT_PIN} (wheels exist for Python 3.10-3.12); --decoder greedy works without it",
        ) from None


def resolve_files(config: DecodeConfig) -> LmFiles:
    """The files of ``config`` (see the module text); InputError naming the first one missing."""
    lexicon = Path(config.lexicon) if config.lexicon else None
    if lexicon is not None and not lexicon.is_file():
        raise InputError(f"--lexicon {lexicon}: no such file")
    if config.lm is None:
        return LmFiles(None, None if config.lexicon_free else lexicon)
    lm = Path(config.lm)
    if lm.is_dir():
        if config.lexicon_free:
            chars = lm / CHARACTER_LM_FILE
            if not chars.is_file():
                raise InputError(f"--lm {lm}: no {CHARACTER_LM_FILE} for --lexicon-free",
                                 hint="rebuild it with `fedw2v lm build` (--char-order at least 2)")
            return LmFiles(chars, None)
        model = next((lm / name for name in LM_FILES if (lm / name).is_file()), None)
        if model is None:
            raise InputError(f"--lm {lm}: a directory without {' or '.join(LM_FILES)}",
                             hint="make one with `fedw2v lm build SOURCE -o DIR`")
        if lexicon is None:
            lexicon = lm / LEXICON_FILE
            if not lexicon.is_file():
                raise InputError(f"--lm {lm}: no {LEXICON_FILE} (give one with --lexicon)")
        return LmFiles(model, lexicon)
    if not lm.is_file():
        raise InputError(f"--lm {lm}: no such file or directory")
    return LmFiles(lm, None if config.lexicon_free else lexicon or _FROM_ARPA)


_FROM_ARPA = Path("<the words of the ARPA file>")  # marker: build the lexicon from the LM's unigrams


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """KenLM prints a progress bar on the C-level stderr while it reads an ARPA file: silence it."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_kenlm(path: Path, words: Any) -> Any:
    """flashlight's KenLM over the user dictionary ``words``; InputError naming the file (and line) if KenLM
    cannot load it."""
    from flashlight.lib.text.decoder.kenlm import KenLM

    try:
        with _quiet_stderr():
            return KenLM(str(path), words)
    except RuntimeError as exc:
        raise InputError(f"{path}: KenLM cannot load it: {_kenlm_reason(str(exc), path)}",
                         hint="give an ARPA file (fedw2v lm build makes one) or a KenLM binary") from None


def _kenlm_reason(message: str, path: Path) -> str:
    """KenLM's reason in one line, with the line number where it names a byte offset."""
    import re

    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    reason = lines[1] if len(lines) > 1 else (lines[0] if lines else "unknown error")
    match = re.search(r"\s*(?:at )?[Bb]yte:? (\d+)\.?", reason)
    if match:  # KenLM counts bytes up to the end of the line it read: the line is the one before that byte
        try:
            with open(path, "rb") as fh:
                line = fh.read(max(0, int(match.group(1)) - 1)).count(b"\n") + 1
            reason = reason[: match.start()] + reason[match.end():] + f" (line {line})"
        except OSError:
            pass
    return reason


class BeamSearch:
    """A beam search ready for one model's outputs (its token strings, blank and word delimiter)."""

    def __init__(self, shared: dict[str, Any], lm_weight: float, word_score: float):
        self.shared = shared
        self.lm_weight = lm_weight
        self.word_score = word_score
        self.vocab: Vocab = shared["vocab"]
        self.frame_s: float = shared["frame_s"]
        self.lookback = max(1, int(round(LOOKBACK_S / self.frame_s)))
        self._ctc = self._build()

    @classmethod
    def load(cls, files: LmFiles, config: DecodeConfig, vocab: Vocab, frame_s: float,
             lm_weight: float | None = None, word_score: float | None = None) -> BeamSearch:
        """Check the lexicon against ``vocab``, load the LM and build the decoder (see the module text)."""
        from fedw2v.lm.lexicon import check_lexicon

        require_flashlight()
        if vocab.delimiter is None:
            raise InputError("the model has no word delimiter token, which beam search needs between words")
        shared: dict[str, Any] = {"vocab": vocab, "frame_s": frame_s, "files": files, "beam_size": config.size,
                                  "notes": []}
        lexicon = files.lexicon
        if lexicon == _FROM_ARPA:
            lexicon = _lexicon_from_arpa(files.lm, vocab, shared)
        elif lexicon is not None:
            shared["lexicon_entries"] = check_lexicon(lexicon, vocab.tokens)
        if lexicon is None and files.lm is not None:
            _check_character_lm(files.lm, vocab)
        shared["lexicon"] = lexicon
        shared["lm"] = _load_lm(files.lm, lexicon, vocab) if files.lm is not None else None
        return cls(shared,
                   lm_weight if lm_weight is not None else config.lm_weight if config.lm_weight is not None
                   else DEFAULT_LM_WEIGHT,
                   word_score if word_score is not None else config.word_score if config.word_score is not None
                   else DEFAULT_WORD_SCORE)  # fmt: skip

    def with_weights(self, lm_weight: float, word_score: float) -> BeamSearch:
        return BeamSearch(self.shared, lm_weight, word_score)

    def _build(self) -> Any:
        from torchaudio.models.decoder import ctc_decoder

        lexicon = self.shared["lexicon"]
        return ctc_decoder(
            lexicon=str(lexicon) if lexicon is not None else None,
            tokens=list(self.vocab.tokens),
            lm=self.shared["lm"],
            beam_size=self.shared["beam_size"],
            lm_weight=self.lm_weight,
            word_score=self.word_score,
            blank_token=self.vocab.tokens[self.vocab.blank],
            sil_token=self.vocab.tokens[self.vocab.delimiter],
            unk_word=UNK_WORD,
        )

    @property
    def notes(self) -> list[str]:
        """What loading had to say (words of an ARPA file the model cannot spell, …)."""
        return self.shared["notes"]

    def describe(self) -> dict[str, Any]:
        files: LmFiles = self.shared["files"]
        lexicon = self.shared["lexicon"]
        return {"decoder": "beam", "lm": str(files.lm) if files.lm else None,
                "lexicon": "words of the LM" if files.lexicon == _FROM_ARPA else (str(lexicon) if lexicon else None),
                "lexicon_free": lexicon is None, "beam_size": self.shared["beam_size"],
                "lm_weight": self.lm_weight, "word_score": self.word_score}  # fmt: skip

    def stream(self) -> BeamStream:
        return BeamStream(self)

    def decode(self, emissions: np.ndarray) -> tuple[str, list[Word]]:
        """Text and words of one utterance's log-probabilities (frames x tokens)."""
        stream = BeamStream(self)
        stream.feed(emissions, commit=False)
        return stream.finish()

    def words(self, tokens: Sequence[int], words: Sequence[int]) -> tuple[str, list[Word]]:
        """Text and timed words of a best path (one token and one word id, or -1, per frame)."""
        import numpy as np

        ids = np.asarray(tokens, dtype=np.int64)
        if self.shared["lexicon"] is None:
            return text_and_words(ids, self.vocab, self.frame_s)
        return _lexicon_words(ids, words, self._ctc.word_dict, self.vocab, self.frame_s)


class BeamStream:
    """One file's beam search over frames that arrive in pieces (see the module text)."""

    def __init__(self, search: BeamSearch):
        self.search = search
        self.decoder = search._ctc.decoder
        self.decoder.decode_begin()
        self.tokens: list[int] = []
        self.words: list[int] = []
        self.buffered = 0  # frames fed and not yet committed

    def feed(self, piece: np.ndarray, commit: bool = True) -> None:
        import numpy as np

        if len(piece) == 0:
            return
        e = np.ascontiguousarray(piece, dtype=np.float32)
        self.decoder.decode_step(e.ctypes.data, e.shape[0], e.shape[1])
        self.buffered += e.shape[0]
        if commit and self.buffered > 2 * self.search.lookback:
            best = self.decoder.get_best_hypothesis(self.search.lookback)
            done = max(0, len(best.tokens) - 1)  # index 0 is the state the buffer starts from
            self.tokens += list(best.tokens)[1:]
            self.words += list(best.words)[1:]
            self.decoder.prune(self.search.lookback)
            self.buffered -= done

    def finish(self) -> tuple[str, list[Word]]:
        self.decoder.decode_end()
        hyps = self.decoder.get_all_final_hypothesis()
        if hyps:
            best = max(hyps, key=lambda h: h.score)
            self.tokens += list(best.tokens)[1 : 1 + self.buffered]
            self.words += list(best.words)[1 : 1 + self.buffered]
        return self.search.words(self.tokens, self.words)


def _lexicon_words(ids: np.ndarray, words: Sequence[int], word_dict: Any, vocab: Vocab,
                   frame_s: float) -> tuple[str, list[Word]]:
    """Lexicon decoding: each emitted word with the times of the characters since the word before it."""
    runs = [r for r in ctc_runs(ids, vocab.blank)]
    out: list[Word] = []
    pending: list[tuple[str, int, int]] = []
    r = 0
    for frame, wid in enumerate(words):
        if wid < 0:
            continue
        while r < len(runs) and runs[r][1] <= frame:
            tok, first, end = runs[r]
            if tok != vocab.delimiter:
                pending.append((vocab.tokens[tok], first, end))
            r += 1
        text = word_dict.get_entry(wid)
        out.append(make_word(text, pending, frame_s) if pending
                   else Word(text, round(frame * frame_s, 3), round((frame + 1) * frame_s, 3)))
        pending = []
    return " ".join(w.word for w in out), out


def _load_lm(path: Path, lexicon: Path | None, vocab: Vocab) -> Any:
    """KenLM over the lexicon's words (lexicon decoding) or over the model's tokens (lexicon-free)."""
    from flashlight.lib.text.dictionary import Dictionary, create_word_dict, load_words

    if lexicon is not None:
        words = create_word_dict(load_words(str(lexicon)))
    else:
        words = Dictionary(list(vocab.tokens))
    return load_kenlm(path, words)


def _lexicon_from_arpa(path: Path, vocab: Vocab, shared: dict[str, Any]) -> Path:
    """A lexicon of the ARPA file's words the model can spell (written to a temporary file kept with the
    search); the others are counted in the notes."""
    from fedw2v.lm.lexicon import arpa_words, is_binary_lm, lexicon_lines, write_lines

    if is_binary_lm(path):
        raise InputError(f"--lm {path}: a KenLM binary file has no readable word list; give --lexicon")
    characters = set(vocab.tokens) - {vocab.tokens[vocab.blank], vocab.tokens[vocab.delimiter]}
    lines, skipped = lexicon_lines((w for _, w in arpa_words(path)), characters, vocab.tokens[vocab.delimiter])
    if not lines:
        raise InputError(f"--lm {path}: none of its words can be spelled with the model's characters")
    if skipped:
        shared["notes"].append(f"lexicon from {path}: {len(lines)} words; {len(skipped)} skipped (characters the "
                               f"model lacks, e.g. {', '.join(map(repr, skipped[:3]))})")
    tmp = tempfile.TemporaryDirectory(prefix="fedw2v-lexicon-")
    shared["tmp"] = tmp  # removed with the search (when it is freed: `fedw2v transcribe` frees it before it exits)
    shared["lexicon_entries"] = len(lines)
    return write_lines(lines, Path(tmp.name) / LEXICON_FILE)


def _check_character_lm(path: Path, vocab: Vocab) -> None:
    """Lexicon-free decoding scores tokens: a word-level ARPA file is an error naming its first word."""
    from fedw2v.lm.lexicon import SPECIAL_WORDS, arpa_words, is_binary_lm

    if is_binary_lm(path):
        return
    tokens = set(vocab.tokens) | set(SPECIAL_WORDS)
    for number, word in arpa_words(path):
        if word not in tokens:
            raise InputError(
                f"{path} line {number}: {word!r} is not one of the model's characters; --lexicon-free needs a "
                "character n-gram",
                hint=f"use the {CHARACTER_LM_FILE} of an `fedw2v lm build` directory, or drop --lexicon-free",
            )


def prepare(config: DecodeConfig) -> LmFiles | None:
    """Before a model is loaded: None for greedy; for beam, flashlight-text importable (else exit 3) and the
    LM and lexicon files found (else one line naming the missing one)."""
    if not config.beam:
        return None
    require_flashlight()
    return resolve_files(config)


def summary(search: BeamSearch, weights: bool = True) -> str:
    """One line saying how the beam search decodes (``weights``: with its LM weight and word score)."""
    d = search.describe()
    what = "lexicon-free" if d["lexicon_free"] else f"lexicon {d['lexicon']}"
    lm = f"LM {d['lm']}" if d["lm"] else "no LM"
    if weights:
        lm += f", --lm-weight {d['lm_weight']:g}" + ("" if d["lexicon_free"] else f" --word-score {d['word_score']:g}")
    return f"decoder: beam search, size {d['beam_size']}, {what}, {lm}"


def for_model(files: LmFiles | None, config: DecodeConfig, loaded: Any, say: Any = None,
              weights: bool = True) -> BeamSearch | None:
    """The beam search for a loaded model (`fedw2v.model.LoadedModel`), or None when ``files`` is (greedy);
    ``say`` gets its `summary` (with the weights if ``weights``) and what loading noted."""
    if files is None:
        return None
    from fedw2v.model import frame_seconds

    vocab = Vocab.from_tokenizer(loaded.processor.tokenizer)
    rate = loaded.processor.feature_extractor.sampling_rate
    search = BeamSearch.load(files, config, vocab, frame_seconds(loaded.model.config, rate))
    for line in [summary(search, weights), *search.notes] if say is not None else []:
        say(line)
    return search
