"""Prepare a full-scale TED-LIUM 3 layout: 2351 train talks (+8 dev, 11 test), ~270k STM rows.

SPH files are real NIST SPHERE headers followed by a sparse (unwritten) sample area of the talk's full length,
so the layout takes little disk while every segment lies inside its audio, as in the real corpus.
Times `fedw2v prepare` end to end (a fresh process: imports included) and reports its peak memory.

    .venv/bin/python benchmarks/prepare_scale.py [--talks 2351] [--rows 270000] [--keep DIR]

Targets (issue 2): <= 60 s and <= 2 GB RAM on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the we it 's a and to of that in is you this so they what was for but on are with can be have "
         "one like not about there people do at just all at an or know world think more how see very").split()


def sph_header(frames: int, rate: int = 16000) -> bytes:
    text = (f"NIST_1A\n   1024\nchannel_count -i 1\nsample_rate -i {rate}\nsample_n_bytes -i 2\n"
            f"sample_sig_bits -i 16\nsample_coding -s3 pcm\nsample_byte_format -s2 01\nsample_count -i {frames}\n"
            "end_head\n")
    return text.encode().ljust(1024, b" ")


def write_layout(root: Path, talks: int, rows: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    for split in ("train", "dev", "test"):
        for kind in ("sph", "stm"):
            (root / "legacy" / split / kind).mkdir(parents=True, exist_ok=True)
    for kind in ("sph", "stm"):
        (root / "data" / kind).mkdir(parents=True, exist_ok=True)
    plan = [("train", talks), ("dev", 8), ("test", 11)]
    total_talks = sum(n for _, n in plan)
    per_talk = rows // total_talks
    written = 0
    for split, n in plan:
        for i in range(n):
            talk = f"Speaker{i // 2 if split == 'train' else i + 100000 * len(split)}_{2000 + i % 20}{chr(65 + i % 26)}"
            lines, t = [], 0.0
            for _ in range(per_talk):
                gap = round(rng.uniform(0.1, 2.0), 2)
                lines.append(f"{talk} 1 inter_segment_gap {t:.2f} {t + gap:.2f} <o,,unknown> ignore_time_segment_in_scoring")
                t += gap
                dur = round(rng.uniform(1.0, 12.0), 2)
                words = " ".join(rng.choice(WORDS) for _ in range(int(dur * 2.5)))
                lines.append(f"{talk} 1 {talk} {t:.2f} {t + dur:.2f} <o,f0,{rng.choice(['male', 'female'])}> {words} <unk>")
                t += dur
            written += len(lines)
            frames = int((t + 1.0) * 16000)
            base = root / ("data" if split == "train" else f"legacy/{split}")
            stm, sph = base / "stm" / f"{talk}.stm", base / "sph" / f"{talk}.sph"
            stm.write_text("\n".join(lines) + "\n")
            with open(sph, "wb") as fh:
                fh.write(sph_header(frames))
                fh.truncate(1024 + 2 * frames)  # sparse: the samples are never read by prepare
            if split == "train":
                for kind, src in (("stm", stm), ("sph", sph)):
                    os.symlink(os.path.relpath(src, root / "legacy/train" / kind), root / "legacy/train" / kind / src.name)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talks", type=int, default=2351)
    ap.add_argument("--rows", type=int, default=270_000, help="scored segments (each also preceded by a gap row)")
    ap.add_argument("--keep", type=Path, help="build the layout here and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedw2v-prepare-scale-"))
    try:
        corpus = work / "TEDLIUM_release-3"
        t0 = time.perf_counter()
        stm_rows = write_layout(corpus, args.talks, args.rows)
        print(f"layout: {args.talks + 19} talks, {stm_rows} STM rows, built in {time.perf_counter() - t0:.1f} s")
        exe = Path(sys.executable).with_name("fedw2v")
        cmd = [str(exe), "prepare", str(corpus), "-o", str(work / "manifest.parquet")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"prepare failed:\n{proc.stdout}\n{proc.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(proc.stdout.strip().splitlines()[-1])
        print(f"prepare: {seconds:.1f} s wall (target <= 60 s, ratio {seconds / 60:.2f}), "
              f"peak RSS {peak_mb:.0f} MB (target <= 2048 MB, ratio {peak_mb / 2048:.2f})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
