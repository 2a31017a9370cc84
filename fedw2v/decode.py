"""Greedy CTC decoding: batches of utterances, long audio in overlapping chunks, word times from CTC frames.

Batches are padded to their longest item; each item keeps only its own frames (the conv output length of its
unpadded audio) and, for models trained with attention masks (layer-norm feature encoders), the padding is
masked. Group-norm models (wav2vec2-base) take no mask, so padding changes their output slightly; batches
are therefore grouped by length, and the chunks of one long file are batched only with chunks of the same length.

Long audio is cut into chunks of ``chunk_s`` seconds that overlap by ``2 * overlap_s``: every chunk starts on a
frame boundary, and each output frame is taken from the one chunk that *owns* it, the owned regions tiling
the file with the border in the middle of each overlap (so every kept frame has at least ``overlap_s`` of
context on both sides). The kept frames form one frame sequence for the whole file, which is collapsed by the
CTC rule once: a word across a chunk border is neither lost nor doubled.

Text is what the model's tokenizer would decode (``tokenizer.decode(ids)``, as the Hugging Face pipeline does),
with runs of spaces collapsed to one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedw2v.audio import SAMPLE_RATE
from fedw2v.model import eval_mode

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.batching import Utterance

DEFAULT_CHUNK_S = 30.0
DEFAULT_OVERLAP_S = 1.0


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio (first frame of its first character)
    end: float  # seconds (end of the last frame of its last character)


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0  # seconds of audio
    chunks: int = 1  # model passes (chunks) it took


@dataclass(frozen=True)
class Vocab:
    """Token strings by id, and the ids of the CTC blank and the word delimiter."""

    tokens: tuple[str, ...]
    blank: int
    delimiter: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Vocab:
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        tokens = [tokenizer.unk_token or ""] * size
        for tok, i in vocab.items():
            tokens[i] = tok
        delim = getattr(tokenizer, "word_delimiter_token", None)
        return cls(tuple(tokens), int(tokenizer.pad_token_id), vocab.get(delim) if delim else None)


def ctc_runs(ids: np.ndarray, blank: int) -> list[tuple[int, int, int]]:
    """(token id, first frame, end frame) of each run of equal ids that is not blank, in order."""
    import numpy as np

    ids = np.asarray(ids)
    if ids.size == 0:
        return []
    change = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [ids.size]))
    values = ids[starts]
    keep = values != blank
    return list(zip(values[keep].tolist(), starts[keep].tolist(), ends[keep].tolist()))


def text_and_words(ids: np.ndarray, vocab: Vocab, frame_s: float) -> tuple[str, list[Word]]:
    """Greedy CTC text of one frame-id sequence and its words with times."""
    words: list[Word] = []
    chars: list[str] = []
    start = end = 0
    for tok, first, last in ctc_runs(ids, vocab.blank):
        if tok == vocab.delimiter:
            if chars:
                words.append(Word("".join(chars), round(start * frame_s, 3), round(end * frame_s, 3)))
                chars = []
            continue
        if not chars:
            start = first
        chars.append(vocab.tokens[tok] if 0 <= tok < len(vocab.tokens) else "")
        end = last
    if chars:
        words.append(Word("".join(chars), round(start * frame_s, 3), round(end * frame_s, 3)))
    return " ".join(w.word for w in words), words


def chunk_plan(num_samples: int, hop: int, chunk_s: float, overlap_s: float, sr: int = SAMPLE_RATE):
    """[(start, end, own_start, own_end)] in samples: the chunks of a file and the part each one owns.

    Starts are multiples of ``hop`` (frame boundaries); owned parts tile [0, num_samples).
    """
    chunk = max(hop, int(round(chunk_s * sr / hop)) * hop)
    ctx = int(round(overlap_s * sr / hop)) * hop
    if num_samples <= chunk:
        return [(0, num_samples, 0, num_samples)]
    step = chunk - 2 * ctx
    if step < hop:
        raise ValueError(f"chunk of {chunk_s} s is too short for {overlap_s} s of context on each side")
    plan = []
    start = 0
    while True:
        end = min(start + chunk, num_samples)
        last = end >= num_samples
        plan.append((start, end, 0 if start == 0 else start + ctx, num_samples if last else end - ctx))
        if last:
            return plan
        start += step


def stitch(
    forward: Callable[[list[np.ndarray]], list[np.ndarray]],
    audio: np.ndarray,
    hop: int,
    chunk_s: float,
    overlap_s: float,
    sr: int = SAMPLE_RATE,
    max_batch_chunks: int = 8,
) -> tuple[np.ndarray, int]:
    """Frame ids of a whole file from overlapping chunks, and the number of chunks.

    ``forward(list of equal-length chunks) -> list of per-frame id arrays`` runs the model; frame ``j`` of a
    chunk starting at sample ``s`` is global frame ``s // hop + j``, kept if it lies in the chunk's owned part.
    """
    import numpy as np

    plan = chunk_plan(len(audio), hop, chunk_s, overlap_s, sr)
    outputs: dict[int, np.ndarray] = {}
    by_length: dict[int, list[int]] = {}
    for k, (start, end, _, _) in enumerate(plan):
        by_length.setdefault(end - start, []).append(k)
    for _, ks in sorted(by_length.items(), reverse=True):
        for i in range(0, len(ks), max_batch_chunks):
            group = ks[i : i + max_batch_chunks]
            for k, ids in zip(group, forward([audio[plan[k][0] : plan[k][1]] for k in group])):
                outputs[k] = np.asarray(ids)
    pieces = []
    for k, (start, _, own_start, own_end) in enumerate(plan):
        first = start // hop
        lo = max(0, -(-own_start // hop) - first)  # frames whose first sample is in the owned part
        hi = -(-own_end // hop) - first
        pieces.append(outputs[k][lo:hi])
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), len(plan)


class Decoder:
    """A model + processor ready to decode on one device (inference mode, no gradients)."""

    def __init__(self, model: Any, processor: Any, device: str | None = None):
        import torch

        from fedw2v.model import hop_samples, receptive_field

        self.model = model
        self.processor = processor
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.vocab = Vocab.from_tokenizer(processor.tokenizer)
        self.hop = hop_samples(model.config)
        fe = processor.feature_extractor
        self.sampling_rate = int(fe.sampling_rate)
        self.frame_s = self.hop / self.sampling_rate
        self.use_mask = bool(getattr(fe, "return_attention_mask", False))
        self.min_samples = receptive_field(model.config)  # shorter audio is zero-padded to give one frame

    def frame_ids(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Greedy (argmax) CTC frame ids of each item of one padded batch, cut to the item's own frames."""
        import numpy as np
        import torch

        fe = self.processor.feature_extractor
        audios = [a if len(a) >= self.min_samples else np.pad(a, (0, self.min_samples - len(a))) for a in audios]
        feats = fe(
            audios,
            sampling_rate=self.sampling_rate,
            padding=True,
            return_tensors="pt",
            return_attention_mask=self.use_mask,
        )
        inputs = {"input_values": feats["input_values"].to(self.device)}
        if self.use_mask:
            inputs["attention_mask"] = feats["attention_mask"].to(self.device)
        with eval_mode(self.model):
            logits = self.model(**inputs).logits
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(a) for a in audios]))
        ids = logits.argmax(dim=-1).cpu().numpy()
        return [ids[i, : max(0, int(n))] for i, n in enumerate(lengths.tolist())]

    def decode_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        return [text_and_words(ids, self.vocab, self.frame_s)[0] for ids in self.frame_ids(audios)]

    def transcribe(
        self, audio: np.ndarray, chunk_s: float = DEFAULT_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S
    ) -> Transcript:
        """Text and word times of one file (16 kHz mono), decoded in overlapping chunks when long."""
        ids, n = stitch(self.frame_ids, audio, self.hop, chunk_s, overlap_s, self.sampling_rate)
        text, words = text_and_words(ids, self.vocab, self.frame_s)
        return Transcript(text, words, len(audio) / self.sampling_rate, n)

    def decode_utterances(
        self,
        utterances: Sequence[Utterance],
        max_batch_seconds: float = 120.0,
        max_batch_size: int | None = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Hypotheses for manifest utterances (read from their source files), in input order, none skipped."""
        from fedw2v.audio import read_segment
        from fedw2v.batching import bucket_batches

        batches = bucket_batches(
            [u.duration for u in utterances], max_batch_seconds, max_batch_size, shuffle=False
        )
        hyps: list[str] = [""] * len(utterances)
        done = 0
        for batch in batches:
            audios = [read_segment(utterances[i].path, utterances[i].start, utterances[i].end) for i in batch]
            for i, text in zip(batch, self.decode_batch(audios)):
                hyps[i] = text
            done += len(batch)
            if progress:
                progress(done, len(utterances))
        return hyps
