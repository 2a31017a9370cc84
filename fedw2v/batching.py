"""Utterances as training/decoding items, the duration filter, and length-bucketed batches.

A batch is a group of utterances of similar length whose padded audio (longest utterance x batch size) stays
under a cap in seconds, so long and short utterances do not share a batch and memory use is bounded. The
batch order (and, through a small jitter of the sort key, the batch composition) changes every epoch from a
seed: the same seed and epoch give the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fedw2v.manifest import Manifest


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    path: str  # absolute path of the source audio file
    start: float  # seconds
    end: float  # seconds
    text: str  # normalised transcript ('' when unknown, e.g. at inference)
    speaker: str = ""

    @property
    def duration(self) -> float:
        return self.end - self.start


def utterances_from_manifest(
    manifest: Manifest,
    split: str | None = None,
    local_split: str | None = None,
    client_id: int | None = None,
    corpus_root: str | None = None,
) -> list[Utterance]:
    """The manifest's rows (optionally one corpus split, one client, one local split) as utterances."""
    import pyarrow.compute as pc

    table = manifest.table
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    if local_split is not None:
        table = table.filter(pc.equal(table.column("local_split"), local_split))
    if client_id is not None:
        table = table.filter(pc.equal(table.column("client_id"), client_id))
    names = ("utt_id", "audio_path", "start", "end", "text", "speaker")
    cols = {name: table.column(name).to_pylist() for name in names}
    return [
        Utterance(u, str(manifest.audio_file(a, corpus_root)), s, e, t, spk)
        for u, a, s, e, t, spk in zip(
            cols["utt_id"], cols["audio_path"], cols["start"], cols["end"], cols["text"], cols["speaker"]
        )
    ]


def filter_by_duration(
    utterances: Sequence[Utterance], min_seconds: float | None, max_seconds: float | None
) -> tuple[list[Utterance], int]:
    """(kept, dropped count): utterances with min_seconds <= duration <= max_seconds (None: no bound)."""
    kept = [
        u
        for u in utterances
        if (min_seconds is None or u.duration >= min_seconds) and (max_seconds is None or u.duration <= max_seconds)
    ]
    return kept, len(utterances) - len(kept)


def bucket_batches(
    durations: Sequence[float],
    max_batch_seconds: float,
    max_batch_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    jitter: float = 0.1,
) -> list[list[int]]:
    """Group indices into batches of similar duration.

    Each batch's padded audio (its longest item x its size) is at most ``max_batch_seconds`` and its size at
    most ``max_batch_size``; an item longer than the cap gets a batch of its own (nothing is dropped). With
    ``shuffle``, items are sorted by duration times a random factor in [1 - jitter, 1 + jitter] and the batches
    are shuffled, both from (seed, epoch); without, items are sorted by duration (longest first) and the
    batches kept in that order (decoding).
    """
    if max_batch_seconds <= 0:
        raise ValueError("max_batch_seconds must be positive")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    rng = random.Random(f"{seed}:{epoch}")
    if shuffle:
        keys = [d * (1.0 + rng.uniform(-jitter, jitter)) for d in durations]
        order = sorted(range(len(durations)), key=lambda i: (keys[i], i))
    else:
        order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order:
        d = max(float(durations[i]), 0.0)
        new_longest = max(longest, d)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or new_longest * (len(current) + 1) > max_batch_seconds):
            batches.append(current)
            current, new_longest = [], d
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


class BucketBatchSampler:
    """A torch ``batch_sampler``: `bucket_batches` re-drawn each epoch (call ``set_epoch``, or iterate again)."""

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.durations = list(durations)
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return bucket_batches(
            self.durations, self.max_batch_seconds, self.max_batch_size, self.shuffle, self.seed, self.epoch
        )

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
