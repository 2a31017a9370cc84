"""What each participant of a real federation gets: one folder per client, ``DIR/client-K/client.parquet`` holding
only client K's rows, optionally with its audio beside it in ``DIR/client-K/audio/`` (`fedw2v partition
--export-clients DIR [--export-audio copy|link]`).

- ``none``: the rows keep pointing at the corpus (the manifest records the corpus root); for a node that sees the
  corpus (a shared disk, a loopback test) or that is given ``corpus-root`` in its ``--node-config``.
- ``copy``: each of the client's utterances is cut out of its talk and written as a 16 kHz mono 16-bit WAV
  (``audio/<utt_id>.wav``, start 0): the folder holds the client's own speech and nothing else, ready to hand
  over.
- ``link``: symbolic links to the corpus audio files the client's rows use (whole talks: other speakers' turns
  in a talk come along), for a node on the same machine.

With ``copy`` and ``link`` the manifest's metadata says the audio lies in ``audio/`` beside it, so a SuperNode
finds it wherever the folder was moved to (`fedw2v.fl.node_data`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.config.options import option
from fedw2v.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from fedw2v.manifest import Manifest

EXPORT_AUDIO = ("none", "copy", "link")
CLIENT_MANIFEST = "client.parquet"
AUDIO_DIR = "audio"
BESIDE_KEY = "audio_beside_manifest"  # manifest metadata (extra): the audio folder, relative to the manifest's


@dataclass(frozen=True)
class ExportConfig:
    export_clients: str = option("", "Also write one folder per client to this directory, DIR/client-K/client.parquet "
                                     "holding only client K's rows: what that participant's SuperNode reads.",
                                 flags="--export-clients", path=True, absolute=True, metavar="DIR")
    export_audio: str = option("none", "With --export-clients: none (rows point at the corpus) | copy (each of the "
                                       "client's utterances cut out into DIR/client-K/audio/, only its own speech) | "
                                       "link (symlinks to the corpus audio files: whole talks).",
                               choices=EXPORT_AUDIO)

    def __post_init__(self) -> None:
        if self.export_audio not in EXPORT_AUDIO:
            raise ValueError(f"export audio must be one of {', '.join(EXPORT_AUDIO)}, not {self.export_audio!r}")
        if self.export_audio != "none" and not self.export_clients:
            raise ValueError("--export-audio applies with --export-clients only")


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    manifests: list[Path] = field(default_factory=list)  # one per client, by client id
    audio_files: int = 0  # written (copy) or linked (link)


def client_folder(directory: str | os.PathLike, client_id: int) -> Path:
    return Path(directory) / f"client-{client_id:04d}"


def export_clients(clients: Manifest, config: ExportConfig, command: str = "") -> ExportResult:
    """Write every client's own manifest (and audio) under ``config.export_clients``; InputError naming the
    utterance whose audio cannot be read."""
    import pyarrow.compute as pc

    out = Path(config.export_clients)
    table = clients.table.filter(pc.equal(clients.table.column("split"), "train"))
    manifests, audio = [], 0
    for cid in clients.client_ids:
        rows = table.filter(pc.equal(table.column("client_id"), cid))
        folder = client_folder(out, cid)
        rows, root, written = _with_audio(clients, rows, folder, config.export_audio)
        manifests.append(_write(clients, rows, folder, root, cid, config.export_audio, command))
        audio += written
    return ExportResult(out, manifests, audio)


def _write(clients: Manifest, rows: pa.Table, folder: Path, root: str, cid: int, mode: str, command: str) -> Path:
    from fedw2v import manifest as mf

    extra: dict[str, Any] = {"exported_client": cid, "export_audio": mode}
    if mode != "none":
        extra[BESIDE_KEY] = AUDIO_DIR
    info = replace(clients.info.with_command(command or clients.info.command, clients.info.seed, **extra),
                   corpus_root=root)
    return mf.write(mf.Manifest(rows, info), folder / CLIENT_MANIFEST)


def _with_audio(clients: Manifest, rows: pa.Table, folder: Path, mode: str) -> tuple[pa.Table, str, int]:
    """(rows, corpus root, audio files made) for one client's folder."""
    import shutil
    import tempfile

    from fedw2v.atomic import replace_directory

    if mode == "none":
        return rows, clients.info.corpus_root, 0
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".audio.", dir=folder))
    try:
        if mode == "copy":
            rows, made = _cut_segments(clients, rows, staging)
        else:
            made = _link_talks(clients, rows, staging)
        replace_directory(staging, folder / AUDIO_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows, str((folder / AUDIO_DIR).resolve()), made


def _cut_segments(clients: Manifest, rows: pa.Table, target: Path) -> tuple[pa.Table, int]:
    """Each row's segment as ``target/<utt_id>.wav`` (16 kHz mono PCM 16); the rows re-pointed at them."""
    import pyarrow as pa
    import soundfile as sf

    from fedw2v.audio import SAMPLE_RATE, read_segment

    names, ends = [], []
    cols = {c: rows.column(c).to_pylist() for c in ("utt_id", "audio_path", "start", "end")}
    for utt, path, start, end in zip(cols["utt_id"], cols["audio_path"], cols["start"], cols["end"]):
        samples = read_segment(clients.audio_file(path), start, end)
        if samples.size == 0:
            raise InputError(f"utterance {utt!r}: no samples in {path} {start:.2f}-{end:.2f} s")
        name = re.sub(r"[^\w.\-]", "_", utt) + ".wav"
        sf.write(str(target / name), samples, SAMPLE_RATE, subtype="PCM_16")
        names.append(name)
        ends.append(samples.size / SAMPLE_RATE)
    n = rows.num_rows
    changed = {
        "audio_path": pa.array(names, pa.string()), "start": pa.array([0.0] * n, pa.float64()),
        "end": pa.array(ends, pa.float64()), "duration": pa.array(ends, pa.float64()),
        "sample_rate": pa.array([SAMPLE_RATE] * n, pa.int32()), "num_channels": pa.array([1] * n, pa.int32()),
    }
    for name, values in changed.items():
        rows = rows.set_column(rows.column_names.index(name), rows.schema.field(name), values)
    return rows, n


def _link_talks(clients: Manifest, rows: pa.Table, target: Path) -> int:
    """A symlink ``target/<audio_path>`` to every corpus audio file the rows use (rows unchanged)."""
    paths = sorted(set(rows.column("audio_path").to_pylist()))
    for rel in paths:
        source = clients.audio_file(rel).resolve()
        if ".." in Path(rel).parts or not source.is_file():
            raise InputError(f"{source}: no such audio file in the corpus (client audio to link)",
                             hint="run `fedw2v prepare` again where the corpus is now")
        link = target / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return len(paths)
