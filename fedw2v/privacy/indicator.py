"""The indicator set: the fixed utterances, of speakers who are no analysed client, that every model is run on
(so footprints of different models compare, and the analyst needs no client speech)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedw2v.audio import SAMPLE_RATE
from fedw2v.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.batching import Utterance
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.manifest import Manifest


@dataclass
class Indicator:
    """The fixed indicator set (the same for every model): utterances and their audio, read once."""

    utterances: list[Utterance]
    audio: list[np.ndarray]  # 16 kHz float32, one array per utterance
    source: str = ""  # the manifest it came from
    split: str = ""  # its corpus split
    excluded_speakers: tuple[str, ...] = ()  # speakers of the split left out (they are analysed clients)
    excluded_utterances: int = 0  # utterances of the split left out with them
    available: int = 0  # utterances of the split left after the exclusion (the first n are used)

    @property
    def utt_ids(self) -> list[str]:
        return [u.utt_id for u in self.utterances]

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    @property
    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.source, "split": self.split, "utterances": len(self.utterances),
            "seconds": round(self.seconds, 2), "speakers": self.speakers,
            "excluded_speakers": list(self.excluded_speakers), "excluded_utterances": self.excluded_utterances,
            "available": self.available,
        }


def _manifest_and_name(manifest: Manifest | str | os.PathLike, name: str | None) -> tuple[Manifest, str]:
    from fedw2v import manifest as mf

    if isinstance(manifest, (str, os.PathLike)):
        return mf.read(manifest), name or str(manifest)
    return manifest, name or f"manifest of {manifest.info.corpus_root}"


def load_indicator(
    manifest: Manifest | str | os.PathLike,
    split: str = "dev",
    n: int = 64,
    corpus_root: str | None = None,
    exclude_speakers: Iterable[str] = (),
    *,
    name: str | None = None,
) -> Indicator:
    """The rows of corpus split ``split``, speakers in ``exclude_speakers`` removed (and counted), sorted by
    utt_id, the first ``n``; their audio is read once. InputError (naming the manifest and split) when the split
    is empty or nothing is left. ``name`` names the manifest in messages (default: its path or corpus root)."""
    import pyarrow.compute as pc

    from fedw2v.audio import read_segment
    from fedw2v.batching import utterances_from_manifest

    if n < 1:
        raise ValueError("indicator utterances must be at least 1")
    m, label = _manifest_and_name(manifest, name)
    splits = sorted(set(m.table.column("split").to_pylist()))
    rows = m.table.filter(pc.equal(m.table.column("split"), split))
    if rows.num_rows == 0:
        raise InputError(
            f"{label}: no utterances in split {split!r} for the indicator set (splits: {', '.join(splits) or 'none'})",
            hint="choose another --indicator-split or --indicator manifest",
        )
    utts = utterances_from_manifest(m, split=split, corpus_root=corpus_root)
    excluded = set(exclude_speakers)
    kept = [u for u in utts if u.speaker not in excluded]
    dropped = sorted({u.speaker for u in utts if u.speaker in excluded})
    if not kept:
        raise InputError(
            f"{label}: all {len(utts)} utterances of split {split!r} belong to analysed clients' speakers "
            f"({', '.join(dropped[:5])}); the indicator set must come from other speakers",
            hint="name another --indicator manifest or --indicator-split",
        )
    kept.sort(key=lambda u: u.utt_id)
    chosen = kept[:n]
    audio = [read_segment(u.path, u.start, u.end) for u in chosen]
    return Indicator(chosen, audio, label, split, tuple(dropped), len(utts) - len(kept), len(kept))


def indicator_from_ids(
    manifest: Manifest | str | os.PathLike,
    utt_ids: Sequence[str],
    corpus_root: str | None = None,
    *,
    split: str = "",
    name: str | None = None,
) -> Indicator:
    """The indicator set of stored footprints, rebuilt from its utterance ids (in that order)."""
    from fedw2v.audio import read_segment
    from fedw2v.batching import utterances_from_manifest

    m, label = _manifest_and_name(manifest, name)
    by_id = {u.utt_id: u for u in utterances_from_manifest(m, corpus_root=corpus_root)}
    missing = [u for u in utt_ids if u not in by_id]
    if missing:
        raise InputError(
            f"{label}: lacks {len(missing)} of the {len(utt_ids)} indicator utterances the stored footprints were "
            f"computed on (e.g. {missing[0]})",
            hint="pass the manifest the run used with --indicator",
        )
    chosen = [by_id[u] for u in utt_ids]
    audio = [read_segment(u.path, u.start, u.end) for u in chosen]
    return Indicator(chosen, audio, label, split, (), 0, len(chosen))


def client_speakers(manifest: Manifest) -> dict[int, set[str]]:
    """{client id: its speakers} from a partitioned manifest."""
    ids = manifest.table.column("client_id").to_pylist()
    spk = manifest.table.column("speaker").to_pylist()
    out: dict[int, set[str]] = {}
    for cid, s in zip(ids, spk):
        if cid is not None:
            out.setdefault(int(cid), set()).add(s)
    return out


def run_indicator(config: SimulateConfig, clients: Manifest | None = None) -> Indicator:
    """The indicator set of a federated run (a `SimulateConfig`): ``indicator_manifest`` (default: the clients
    manifest), ``indicator_split``, the first ``indicator_utterances`` by utt_id, every client's speakers
    excluded. The server and `analyse` both use this, so test and enrollment footprints share the set."""
    from fedw2v import manifest as mf

    outside = config.allow_outside_audio
    clients = clients if clients is not None else mf.read(config.clients_manifest, allow_outside_audio=outside)
    path = config.indicator_manifest or config.clients_manifest
    source = clients if path == config.clients_manifest else mf.read(path, allow_outside_audio=outside)
    exclude = {s for speakers in client_speakers(clients).values() for s in speakers}
    return load_indicator(source, config.indicator_split, config.indicator_utterances,
                          config.corpus_root or None, exclude, name=str(path))


__all__ = ["Indicator", "client_speakers", "indicator_from_ids", "load_indicator", "run_indicator"]
