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

Audio arrives as consecutive blocks (`fedw2v.audio.stream_audio`) or as one array; `Chunks` cuts the
chunks of `chunk_plan` out of the blocks as they come, and `stitch_stream` yields each chunk's kept frames in
order, so a long file is decoded in memory bounded by a few chunks. The frames may be greedy ids, collapsed as
they arrive (`GreedyStream`: only the words are kept), or, for beam search (`fedw2v.beam`), log-probabilities:
either search runs over the stitched frames of the whole file, never over one chunk alone.

Text is what the model's tokenizer would decode (``tokenizer.decode(ids)``, as the Hugging Face pipeline does),
with runs of spaces collapsed to one. A word whose characters are separated by a long pause (a model that
emits stray characters in a silence) keeps its text, and records the parts between the pauses
(`Word.pieces`), so that subtitles do not stretch over the silence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedw2v.audio import SAMPLE_RATE
from fedw2v.model import eval_mode

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.batching import Utterance

DEFAULT_CHUNK_S = 30.0
DEFAULT_OVERLAP_S = 1.0
WORD_GAP_S = 1.0  # a pause this long inside a word splits its times into pieces (see Word.pieces)
MAX_BATCH_CHUNKS = 8  # chunks of one file decoded in one forward pass at most
# ... and at most this much audio: a forward pass's activations are most of transcribe's memory (tiny model,
# 8 x 30 s: +750 MB; 2 x 30 s: +290 MB). On a CPU, one chunk per pass: two are no faster there (base size,
# 32 s chunks: 3.4-4.0 s each either way) and the pass's activations are the peak of a long file's memory.
MAX_BATCH_AUDIO_S = 60.0


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio (first frame of its first character)
    end: float  # seconds (end of the last frame of its last character)
    # (text, start, end) of the parts of a word whose characters lie more than WORD_GAP_S apart; empty for a
    # word spoken in one stretch (nearly all). Not part of the JSON output.
    pieces: tuple[tuple[str, float, float], ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"word": self.word, "start": self.start, "end": self.end}


def make_word(text: str, runs: Sequence[tuple[str, int, int]], frame_s: float, gap_s: float = WORD_GAP_S) -> Word:
    """A word from its character runs (character, first frame, end frame): its times, and its pieces when a
    pause longer than ``gap_s`` separates two of its characters."""
    pieces: list[list[tuple[str, int, int]]] = [[runs[0]]]
    for run in runs[1:]:
        if (run[1] - pieces[-1][-1][2]) * frame_s > gap_s:
            pieces.append([run])
        else:
            pieces[-1].append(run)
    split = tuple(("".join(c for c, _, _ in p), round(p[0][1] * frame_s, 3), round(p[-1][2] * frame_s, 3))
                  for p in pieces) if len(pieces) > 1 else ()  # fmt: skip
    return Word(text, round(runs[0][1] * frame_s, 3), round(runs[-1][2] * frame_s, 3), split)


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


def _runs(ids: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """(values, first frames, end frames) of the runs of equal ids, blank included, in order."""
    import numpy as np

    ids = np.asarray(ids)
    if ids.size == 0:
        return [], [], []
    change = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [ids.size]))
    return ids[starts].tolist(), starts.tolist(), ends.tolist()


def ctc_runs(ids: np.ndarray, blank: int) -> list[tuple[int, int, int]]:
    """(token id, first frame, end frame) of each run of equal ids that is not blank, in order."""
    return [run for run in zip(*_runs(ids)) if run[0] != blank]


class GreedyStream:
    """Greedy CTC text and words of one file whose frame ids arrive in pieces (`stitch_stream`), with the
    interface of `fedw2v.beam.BeamStream`. Each piece is collapsed by the CTC rule as it arrives (a run of one
    id across two pieces is one run) and then dropped: only the characters of the word being read are held.
    Memory grows with the words found, not with the frames (hours of silence hold nothing), and no frame
    array outlives its forward pass: kept, the small arrays of hours of audio are scattered through the heap
    that the next passes allocate their activations from, and the peak grows with the file (issue 11)."""

    def __init__(self, vocab: Vocab, frame_s: float):
        self.vocab, self.frame_s = vocab, frame_s
        self.frames = 0  # frames fed so far
        self.open: tuple[int, int] | None = None  # (id, first frame) of the run that reaches the last frame
        self.chars: list[tuple[str, int, int]] = []  # (character, first frame, end frame) of the current word
        self.words: list[Word] = []

    def feed(self, piece: np.ndarray) -> None:
        values, starts, ends = _runs(piece)
        if not values:
            return
        offset = self.frames
        self.frames += ends[-1]
        if self.open is not None:
            if self.open[0] == values[0]:
                starts[0] = self.open[1] - offset
            else:
                self._close(self.open[0], self.open[1], offset)
        for value, first, end in zip(values[:-1], starts[:-1], ends[:-1]):
            self._close(value, first + offset, end + offset)
        self.open = (values[-1], starts[-1] + offset)

    def _close(self, tok: int, first: int, end: int) -> None:
        if tok == self.vocab.blank:
            return
        if tok == self.vocab.delimiter:
            self._word()
            return
        self.chars.append((self.vocab.tokens[tok] if 0 <= tok < len(self.vocab.tokens) else "", first, end))

    def _word(self) -> None:
        if self.chars:
            self.words.append(make_word("".join(c for c, _, _ in self.chars), self.chars, self.frame_s))
            self.chars = []

    def finish(self) -> tuple[str, list[Word]]:
        if self.open is not None:
            self._close(self.open[0], self.open[1], self.frames)
            self.open = None
        self._word()
        return " ".join(w.word for w in self.words), self.words


def text_and_words(ids: np.ndarray, vocab: Vocab, frame_s: float) -> tuple[str, list[Word]]:
    """Greedy CTC text of one frame-id sequence and its words with times."""
    stream = GreedyStream(vocab, frame_s)
    stream.feed(ids)
    return stream.finish()


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


class Chunks:
    """The chunks of `chunk_plan` cut from consecutive audio blocks as they arrive: iterating yields
    ``(start, samples, own_start, own_end)``; only about one chunk of audio is held at a time. ``chunks`` and
    ``samples`` count what was read (the file's length is known once iteration ends)."""

    def __init__(self, blocks: Iterable[np.ndarray], hop: int, chunk_s: float, overlap_s: float,
                 sr: int = SAMPLE_RATE):
        self.blocks, self.hop, self.sr = blocks, hop, sr
        self.chunk_s, self.overlap_s = chunk_s, overlap_s
        self.chunk = max(hop, int(round(chunk_s * sr / hop)) * hop)
        self.ctx = int(round(overlap_s * sr / hop)) * hop
        self.chunks = 0
        self.samples = 0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int, int]]:
        import numpy as np

        source = iter(self.blocks)
        held: list[np.ndarray] = []  # samples from ``base`` on
        base, have, exhausted, start = 0, 0, False, 0
        while True:
            while not exhausted and base + have <= start + self.chunk:  # one sample past the chunk: is it last?
                block = next(source, None)
                if block is None:
                    exhausted = True
                else:
                    held.append(np.asarray(block, dtype=np.float32))
                    have += len(block)
                    self.samples += len(block)
            total = base + have
            last = exhausted and start + self.chunk >= total
            if total <= start:
                return
            step = self.chunk - 2 * self.ctx
            if not last and step < self.hop:
                raise ValueError(f"chunk of {self.chunk_s} s is too short for {self.overlap_s} s of context on each side")
            buf = held[0] if len(held) == 1 else np.concatenate(held)
            end = total if last else start + self.chunk
            self.chunks += 1
            yield start, buf[start - base : end - base], 0 if start == 0 else start + self.ctx, total if last else end - self.ctx
            if last:
                return
            start += step
            held, base, have = [buf[start - base :]], start, total - start


def stitch_stream(
    forward: Callable[[list[np.ndarray]], list[np.ndarray]],
    chunks: Iterable[tuple[int, np.ndarray, int, int]],
    hop: int,
    max_batch_chunks: int = MAX_BATCH_CHUNKS,
) -> Iterator[np.ndarray]:
    """Each chunk's kept frames, in order: ``forward(list of equal-length chunks) -> per-frame arrays`` (ids,
    or log-probabilities with one row per frame) runs the model on up to ``max_batch_chunks`` chunks at once;
    frame ``j`` of a chunk starting at sample ``s`` is global frame ``s // hop + j``, kept if it lies in the
    chunk's owned part."""
    import numpy as np

    pending: list[tuple[int, np.ndarray, int, int]] = []

    def flush() -> Iterator[np.ndarray]:
        outputs = forward([samples for _, samples, _, _ in pending])
        for (start, _, own_start, own_end), out in zip(pending, outputs):
            first = start // hop
            lo = max(0, -(-own_start // hop) - first)  # frames whose first sample is in the owned part
            hi = -(-own_end // hop) - first
            yield np.asarray(out)[lo:hi]
        pending.clear()

    for item in chunks:
        if pending and len(item[1]) != len(pending[0][1]):
            yield from flush()
        pending.append(item)
        if len(pending) >= max_batch_chunks:  # full: decode now, before reading on
            yield from flush()
    if pending:
        yield from flush()


def stitch(
    forward: Callable[[list[np.ndarray]], list[np.ndarray]],
    audio: np.ndarray,
    hop: int,
    chunk_s: float,
    overlap_s: float,
    sr: int = SAMPLE_RATE,
    max_batch_chunks: int = MAX_BATCH_CHUNKS,
) -> tuple[np.ndarray, int]:
    """Frame ids of a whole file (one array) from overlapping chunks, and the number of chunks
    (`stitch_stream` over `Chunks` of the one block)."""
    import numpy as np

    chunks = Chunks([audio], hop, chunk_s, overlap_s, sr)
    pieces = list(stitch_stream(forward, chunks, hop, max_batch_chunks))
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), chunks.chunks


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

    def _logits(self, audios: Sequence[np.ndarray]) -> tuple[Any, list[int]]:
        """Logits of one padded batch (on the model's device) and each item's own number of frames."""
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
        return logits, [max(0, int(n)) for n in lengths.tolist()]

    def frame_ids(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Greedy (argmax) CTC frame ids of each item of one padded batch, cut to the item's own frames."""
        logits, lengths = self._logits(audios)
        ids = logits.argmax(dim=-1).cpu().numpy()
        return [ids[i, :n] for i, n in enumerate(lengths)]

    def emissions(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame log-probabilities (frames x tokens, float32) of each item, cut to its own frames: what
        beam search reads."""
        return [e for _, e in self.frame_outputs(audios)]

    def frame_outputs(self, audios: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(greedy ids, log-probabilities) of each item from one forward pass; the ids are the argmax of the
        logits, exactly those of `frame_ids`."""
        import torch

        logits, lengths = self._logits(audios)
        ids = logits.argmax(dim=-1).cpu().numpy()
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return [(ids[i, :n], logp[i, :n]) for i, n in enumerate(lengths)]

    def decode_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        return [text_and_words(ids, self.vocab, self.frame_s)[0] for ids in self.frame_ids(audios)]

    def transcribe(
        self,
        audio: np.ndarray | Iterable[np.ndarray],
        chunk_s: float = DEFAULT_CHUNK_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
        beam: Any = None,
    ) -> Transcript:
        """Text and word times of one file (16 kHz mono: one array, or its consecutive blocks as
        `fedw2v.audio.stream_audio` yields them), decoded in overlapping chunks when long. With ``beam`` (a
        `fedw2v.beam.BeamSearch`), the stitched log-probabilities of the whole file go through its beam
        search as they arrive; otherwise greedy."""
        import numpy as np

        blocks = [audio] if isinstance(audio, np.ndarray) else audio
        chunks = Chunks(blocks, self.hop, chunk_s, overlap_s, self.sampling_rate)
        per_batch = 1 if self.device.type == "cpu" else max(1, min(MAX_BATCH_CHUNKS, int(MAX_BATCH_AUDIO_S // chunk_s)))
        stream = beam.stream() if beam is not None else GreedyStream(self.vocab, self.frame_s)
        for piece in stitch_stream(self.frame_ids if beam is None else self.emissions, chunks, self.hop, per_batch):
            stream.feed(piece)
        text, words = stream.finish()
        return Transcript(text, words, chunks.samples / self.sampling_rate, chunks.chunks)

    def utterance_batches(
        self,
        utterances: Sequence[Utterance],
        max_batch_seconds: float = 120.0,
        max_batch_size: int | None = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """(indices, audios) of length-bucketed batches of manifest utterances (read from their source files);
        ``progress(done, total)`` after each batch is used."""
        from fedw2v.audio import read_segment
        from fedw2v.batching import bucket_batches

        batches = bucket_batches(
            [u.duration for u in utterances], max_batch_seconds, max_batch_size, shuffle=False
        )
        done = 0
        for batch in batches:
            yield batch, [read_segment(utterances[i].path, utterances[i].start, utterances[i].end) for i in batch]
            done += len(batch)
            if progress:
                progress(done, len(utterances))

    def decode_utterances(
        self,
        utterances: Sequence[Utterance],
        max_batch_seconds: float = 120.0,
        max_batch_size: int | None = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Hypotheses for manifest utterances (read from their source files), in input order, none skipped."""
        hyps: list[str] = [""] * len(utterances)
        for batch, audios in self.utterance_batches(utterances, max_batch_seconds, max_batch_size, progress):
            for i, text in zip(batch, self.decode_batch(audios)):
                hyps[i] = text
        return hyps
