"""The evaluate stage: a manifest split + a model -> one hypothesis per utterance, WER and CER.

Every utterance of the split is decoded (no duration filter: the official TED-LIUM 3 test set is 1,155
utterances, and all of them are scored). Reference and hypothesis go through the manifest's normalisation
(`fedw2v.text.normalize`, name stored in the manifest) identically before jiwer counts the edits; the rates
are summed edits over summed reference lengths, overall and per speaker.

Decoding is greedy by default. With ``--decoder beam`` (`fedw2v.evaluate_beam`) the same forward pass gives
both: the beam search's hypotheses and, beside them, the greedy ones, scored in the same run; the beam's
weights are picked on the dev split unless given.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.config.options import finite, option
from fedw2v.device import DEVICE_HELP, DEVICES, check_device
from fedw2v.errors import InputError
from fedw2v.manifest import SPLITS, allow_outside_audio_option
from fedw2v.metrics import ErrorCounts, by_group, normalize_pair, total, utterance_counts

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from fedw2v.manifest import Manifest

HYPS_METADATA_KEY = b"fedw2v_hypotheses"


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = option("test", "Corpus split to score: test | dev (| train).", choices=SPLITS)
    max_batch_seconds: float = option(120.0, "Padded audio seconds per decoding batch at most.")
    max_batch_size: int = 32  # utterances per decoding batch at most
    device: str = option("auto", DEVICE_HELP, choices=DEVICES)
    corpus_root: str | None = None  # where the audio is now, when the corpus moved since `prepare`
    allow_outside_audio: bool = allow_outside_audio_option()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if not finite(self.max_batch_seconds) or self.max_batch_seconds <= 0 or self.max_batch_size < 1:
            raise ValueError("max_batch_seconds must be positive and max_batch_size at least 1")
        check_device(self.device)


@dataclass
class EvaluateResult:
    hypotheses: pa.Table  # one row per utterance (see HYPS_COLUMNS)
    overall: ErrorCounts
    by_speaker: dict[str, ErrorCounts]
    split: str
    normalization: str
    model: str
    seconds: float = 0.0  # decoding wall time
    audio_seconds: float = 0.0
    decoder: str = "greedy"
    greedy: EvaluateResult | None = None  # with --decoder beam: the greedy figures of the same forward pass
    beam: dict[str, Any] | None = None  # with --decoder beam: its settings, and the dev-split weight grid

    def to_dict(self, speakers: bool = True) -> dict[str, Any]:
        out = {
            "model": self.model, "split": self.split, "normalization": self.normalization, "decoder": self.decoder,
            **self.overall.to_dict(), "seconds": round(self.seconds, 3), "audio_seconds": round(self.audio_seconds, 3),
            "real_time_factor": round(self.seconds / self.audio_seconds, 5) if self.audio_seconds else None,
        }
        if speakers:
            out["by_speaker"] = {spk: c.to_dict() for spk, c in self.by_speaker.items()}
        if self.beam is not None:
            out["beam"] = self.beam
        if self.greedy is not None:
            out["greedy"] = self.greedy.to_dict(speakers)
        return out

    def all_hypotheses(self) -> pa.Table:
        """The hypotheses of every decoder of the run (beam rows, then the greedy rows)."""
        import pyarrow as pa

        if self.greedy is None:
            return self.hypotheses
        return pa.concat_tables([self.hypotheses, self.greedy.hypotheses])


HYPS_COLUMNS = (
    "utt_id", "speaker", "split", "duration", "decoder", "reference", "hypothesis", "reference_normalized",
    "hypothesis_normalized", "ref_words", "word_errors", "substitutions", "deletions", "insertions", "ref_chars",
    "char_errors",
)


def split_rows(manifest: Manifest, split: str) -> pa.Table:
    import pyarrow.compute as pc

    table = manifest.table.filter(pc.equal(manifest.table.column("split"), split))
    if table.num_rows == 0:
        have = sorted(set(manifest.table.column("split").to_pylist()))
        raise InputError(f"the manifest has no {split} utterances", hint=f"it has: {', '.join(have) or 'nothing'}")
    return table


def score_hypotheses(
    rows: pa.Table, hypotheses: Sequence[str], normalization: str, decoder: str = "greedy"
) -> tuple[pa.Table, ErrorCounts, dict[str, ErrorCounts]]:
    """Score one hypothesis per manifest row: (hypotheses table, overall counts, counts per speaker);
    ``decoder`` names what made the hypotheses (a column of the table)."""
    import pyarrow as pa

    if rows.num_rows != len(hypotheses):
        raise ValueError(f"{rows.num_rows} utterances but {len(hypotheses)} hypotheses")
    refs = rows.column("text").to_pylist()
    speakers = rows.column("speaker").to_pylist()
    pairs = [normalize_pair(r, h, normalization) for r, h in zip(refs, hypotheses)]
    counts = [utterance_counts(r, h) for r, h in pairs]
    cols = {
        "utt_id": rows.column("utt_id"),
        "speaker": rows.column("speaker"),
        "split": rows.column("split"),
        "duration": rows.column("duration"),
        "decoder": pa.array([decoder] * rows.num_rows, pa.string()),
        "reference": rows.column("text"),
        "hypothesis": pa.array(list(hypotheses), pa.string()),
        "reference_normalized": pa.array([r for r, _ in pairs], pa.string()),
        "hypothesis_normalized": pa.array([h for _, h in pairs], pa.string()),
    }
    for name in ("ref_words", "word_errors", "substitutions", "deletions", "insertions", "ref_chars", "char_errors"):
        cols[name] = pa.array([getattr(c, name) for c in counts], pa.int32())
    table = pa.table(cols)
    return table, total(counts), by_group(speakers, counts)


def read_hypotheses(path: str | os.PathLike) -> dict[str, str]:
    """utt_id -> hypothesis from a Parquet file with those two columns (e.g. one `evaluate --out` wrote; from a
    file with the hypotheses of several decoders, those of the run's own decoder, its metadata says which)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        columns = ["utt_id", "hypothesis"] + (["decoder"] if "decoder" in schema.names else [])
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise InputError(f"{path}: not a hypotheses file with utt_id and hypothesis columns ({exc})") from None
    if "decoder" in table.column_names:
        meta = json.loads((schema.metadata or {}).get(HYPS_METADATA_KEY, b"{}") or b"{}")
        wanted = meta.get("decoder") if isinstance(meta, dict) else None
        if wanted in set(table.column("decoder").to_pylist()):
            table = table.filter(pc.equal(table.column("decoder"), wanted))
    return dict(zip(table.column("utt_id").to_pylist(), table.column("hypothesis").to_pylist()))


def score_file(manifest: Manifest, hyps_path: str | os.PathLike, split: str = "test") -> EvaluateResult:
    """Score a hypotheses file against a manifest split; an utterance without a hypothesis scores as empty."""
    rows = split_rows(manifest, split)
    hyps = read_hypotheses(hyps_path)
    ordered = [hyps.get(u, "") or "" for u in rows.column("utt_id").to_pylist()]
    table, overall, speakers = score_hypotheses(rows, ordered, manifest.info.normalization)
    return EvaluateResult(table, overall, speakers, split, manifest.info.normalization, str(hyps_path))


def evaluate(
    manifest: Manifest,
    model: Any,
    processor: Any,
    config: EvaluateConfig = EvaluateConfig(),
    model_name: str = "",
    progress: Callable[[int, int], None] | None = None,
    search: Any = None,
    decode: Any = None,
    say: Callable[[str], None] | None = None,
) -> EvaluateResult:
    """Decode every utterance of ``config.split`` (greedy CTC, batched by length) and score it. With
    ``search`` (a `fedw2v.beam.BeamSearch`; ``decode`` its `DecodeConfig`), beam search beside greedy
    (`fedw2v.evaluate_beam.evaluate_beam`)."""
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.decode import Decoder
    from fedw2v.device import resolve_device

    rows = split_rows(manifest, config.split)
    utts = utterances_from_manifest(manifest, split=config.split, corpus_root=config.corpus_root)
    decoder = Decoder(model, processor, resolve_device(config.device))
    if search is not None:
        from fedw2v.evaluate_beam import evaluate_beam

        return evaluate_beam(manifest, rows, utts, decoder, search, config, decode, model_name, progress, say)
    t0 = time.perf_counter()
    hyps = decoder.decode_utterances(utts, config.max_batch_seconds, config.max_batch_size, progress)
    seconds = time.perf_counter() - t0
    table, overall, speakers = score_hypotheses(rows, hyps, manifest.info.normalization)
    return EvaluateResult(
        table, overall, speakers, config.split, manifest.info.normalization, model_name, seconds,
        sum(u.duration for u in utts),
    )


def write_hypotheses(result: EvaluateResult, path: str | os.PathLike) -> Path:
    """Write the hypotheses table as Parquet (atomically; with --decoder beam, the greedy rows too, the
    ``decoder`` column tells them apart), with the model, split, normalisation and decoder in its metadata."""
    import pyarrow.parquet as pq

    from fedw2v.atomic import atomic_file

    path = Path(path)
    meta = {"model": result.model, "split": result.split, "normalization": result.normalization,
            "decoder": result.decoder, "wer": result.overall.wer, "cer": result.overall.cer}
    if result.beam is not None:
        meta["beam"] = result.beam
    if result.greedy is not None:
        meta["greedy"] = {"wer": result.greedy.overall.wer, "cer": result.greedy.overall.cer}
    table = result.all_hypotheses().replace_schema_metadata({HYPS_METADATA_KEY: json.dumps(meta).encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path
