"""How CTC output becomes words: greedy (the default, the paper's figures) or a beam search with a lexicon and an
n-gram language model. Declared once here; `evaluate` and `transcribe` both take these options.

The weights the beam search gives the language model (``--lm-weight``) and each word (``--word-score``) have no
good universal value: `evaluate` picks them on the dev split from `LM_WEIGHT_GRID` x `WORD_SCORE_GRID` unless
both are given, and `transcribe` uses `DEFAULT_LM_WEIGHT` / `DEFAULT_WORD_SCORE` unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedw2v.config.options import finite, option

DECODERS = ("greedy", "beam")
DEFAULT_BEAM_SIZE = 50
DEFAULT_LM_WEIGHT = 2.0
DEFAULT_WORD_SCORE = 0.0
LM_WEIGHT_GRID = (0.5, 1.0, 2.0, 3.0)
WORD_SCORE_GRID = (-1.0, 0.0, 1.0)
MAX_BEAM_SIZE = 10_000


@dataclass(frozen=True)
class DecodeConfig:
    decoder: str = option("greedy", "CTC decoding: greedy (no language model; the paper's figures) | beam "
                          "(flashlight beam search with --lm and a lexicon).", choices=DECODERS)
    lm: str | None = option(None, "Language model for --decoder beam: a directory made by `fedw2v lm build` "
                            "(its lm.arpa and lexicon.txt) or an ARPA / KenLM binary file.", path=True,
                            absolute=True, metavar="DIR|FILE")
    lexicon: str | None = option(None, "Lexicon for --decoder beam (one word a line, then its spelling in the "
                                 "model's characters): default the --lm directory's lexicon.txt, or the words "
                                 "of an --lm ARPA file.", path=True, absolute=True, metavar="FILE")
    beam_size: int | None = option(None, "Hypotheses the beam search keeps per frame.",
                                   shown_default=str(DEFAULT_BEAM_SIZE))
    lm_weight: float | None = option(None, "Weight of the language model's log-probability in the beam search.",
                                     shown_default=f"evaluate: tuned on dev; transcribe: {DEFAULT_LM_WEIGHT:g}")
    word_score: float | None = option(None, "Score added for each word the beam search emits.",
                                      shown_default=f"evaluate: tuned on dev; transcribe: {DEFAULT_WORD_SCORE:g}")
    lexicon_free: bool = option(False, "Beam search without a lexicon (any spelling), scored by a character "
                                "n-gram: the --lm directory's chars.arpa or a character ARPA file.")

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        if self.decoder == "greedy":
            given = [flag for flag, value in (("--lm", self.lm), ("--lexicon", self.lexicon),
                                              ("--beam-size", self.beam_size), ("--lm-weight", self.lm_weight),
                                              ("--word-score", self.word_score),
                                              ("--lexicon-free", self.lexicon_free or None)) if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to --decoder beam only")
        if self.beam_size is not None and not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"--beam-size must be 1 to {MAX_BEAM_SIZE}, not {self.beam_size}")
        for flag, value in (("--lm-weight", self.lm_weight), ("--word-score", self.word_score)):
            if value is not None and not finite(value):
                raise ValueError(f"{flag} must be a finite number, not {value}")
        if self.lexicon_free and self.lexicon is not None:
            raise ValueError("--lexicon-free decodes without a lexicon; drop --lexicon or --lexicon-free")
        if self.word_score is not None and (self.lexicon_free or (self.lm is None and self.lexicon is None)):
            raise ValueError("--word-score applies to lexicon decoding (--lm DIR or --lexicon); without a lexicon "
                             "there are no words to score")
        if self.lm_weight is not None and self.lm is None:
            raise ValueError("--lm-weight needs a language model (--lm)")

    @property
    def beam(self) -> bool:
        return self.decoder == "beam"

    @property
    def size(self) -> int:
        return self.beam_size if self.beam_size is not None else DEFAULT_BEAM_SIZE

    def to_dict(self) -> dict:
        return {"decoder": self.decoder, "lm": self.lm, "lexicon": self.lexicon, "beam_size": self.size,
                "lm_weight": self.lm_weight, "word_score": self.word_score, "lexicon_free": self.lexicon_free}
