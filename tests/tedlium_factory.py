"""Writes small corpora in the TED-LIUM 3 layout for tests (no synthesiser needed: silent PCM audio)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf


def write_sph(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * sample_rate))
    data = np.zeros((frames, channels), dtype=np.int16)
    sf.write(path, data, sample_rate, format="NIST", subtype="PCM_16")
    return path


def add_talk(
    root: Path,
    split: str,
    talk_id: str,
    stm_lines: list[str] | bytes,
    seconds: float | None,
    distribution: str = "legacy",
) -> None:
    """Add one talk: data/{sph,stm} holds the files; legacy/train links to them, dev/test hold copies.

    `seconds=None` writes no SPH file (a missing-audio case). `stm_lines` may be raw bytes (encoding cases).
    """
    stm_bytes = stm_lines if isinstance(stm_lines, bytes) else ("\n".join(stm_lines) + "\n").encode()
    data_stm = root / "data" / "stm" / f"{talk_id}.stm"
    data_sph = root / "data" / "sph" / f"{talk_id}.sph"
    data_stm.parent.mkdir(parents=True, exist_ok=True)
    data_stm.write_bytes(stm_bytes)
    if seconds is not None:
        write_sph(data_sph, seconds)
    for kind, src in (("stm", data_stm), ("sph", data_sph)):
        dst = root / distribution / split / kind / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if split == "train":
            os.symlink(os.path.relpath(src, dst.parent), dst)
        elif src.exists():
            dst.write_bytes(src.read_bytes())
    for s in ("train", "dev", "test"):
        for kind in ("stm", "sph"):
            (root / distribution / s / kind).mkdir(parents=True, exist_ok=True)
