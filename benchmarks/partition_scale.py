"""Partition a full-scale manifest: 270k train utterances of 2,000 speakers (TED-LIUM 3 legacy train size).

The manifest table is built in memory with realistic, skewed sizes: speech per speaker is log-normal (median
~10 min, a long tail past an hour, a few speakers with a handful of utterances), utterance durations are
gamma-distributed (mean ~6 s, 0.3-30 s). Times `fedw2v.partition.partition` with the paper's scheme (one client
per speaker, 80/10/10, 5-minute holdout above 10 minutes) and reports peak RSS. With --cli it also writes the
manifest and times `fedw2v partition` end to end in a fresh process (imports, read, table, atomic write).

    .venv/bin/python benchmarks/partition_scale.py [--utterances 270000] [--speakers 2000] [--repeat 3] [--cli]

Target (issue 3): <= 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_table(n_utts: int, n_speakers: int, seed: int = 0):
    import numpy as np

    from fedw2v import manifest

    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=0.9, size=n_speakers)
    tiny = np.array([1, 2, 2, 3, 4])  # a few tiny speakers, as in the corpus (no local dev for them)
    exact = weights[: -len(tiny)] / weights[: -len(tiny)].sum() * (n_utts - tiny.sum())
    counts = np.maximum(1, np.floor(exact).astype(np.int64))
    short = n_utts - tiny.sum() - counts.sum()
    if short > 0:  # largest remainders get the rounding leftovers
        counts[np.argsort(-(exact - np.floor(exact)))[:short]] += 1
    counts = np.concatenate((counts, tiny))
    counts[np.argmax(counts)] += n_utts - counts.sum()  # whatever is left (<= 0 only with absurd arguments)
    speaker_idx = np.repeat(np.arange(n_speakers), counts)
    durations = np.round(np.clip(rng.gamma(shape=2.5, scale=2.4, size=n_utts), 0.3, 30.0), 2)
    # start times: cumulative within each speaker's (single) talk, with gaps
    gaps = np.round(rng.uniform(0.1, 2.0, size=n_utts), 2)
    step = durations + gaps
    csum = np.cumsum(step)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    offset = np.repeat(csum[first] - step[first], counts)
    start = np.round(csum - step - offset, 2)
    end = np.round(start + durations, 2)
    speakers = np.array([f"Speaker{i:04d}" for i in range(n_speakers)], dtype=object)
    talks = np.array([f"Speaker{i:04d}_{2000 + i % 20}X" for i in range(n_speakers)], dtype=object)
    talk = talks[speaker_idx]
    utt_ids = [f"{t}_{s:.2f}_{e:.2f}" for t, s, e in zip(talk, start, end)]
    rows = {
        "utt_id": utt_ids,
        "talk_id": talk,
        "speaker": speakers[speaker_idx],
        "gender": np.where(speaker_idx % 2 == 0, "male", "female").astype(object),
        "split": np.full(n_utts, "train", dtype=object),
        "audio_path": np.array([f"data/sph/{t}.sph" for t in talks], dtype=object)[speaker_idx],
        "start": start,
        "end": end,
        "duration": np.round(end - start, 2),
        "sample_rate": np.full(n_utts, 16000, dtype=np.int32),
        "num_channels": np.full(n_utts, 1, dtype=np.int32),
        "text": np.full(n_utts, "so i 'd like to share", dtype=object),
        "text_raw": np.full(n_utts, "so i 'd like to share", dtype=object),
    }
    return manifest.from_rows({k: (v if isinstance(v, list) else v.tolist()) for k, v in rows.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=270_000)
    ap.add_argument("--speakers", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3, help="time partition this many times; report the best and worst")
    ap.add_argument("--cli", action="store_true", help="also time `fedw2v partition` end to end in a fresh process")
    args = ap.parse_args()

    from fedw2v.partition import PartitionConfig, partition

    t0 = time.perf_counter()
    table = build_table(args.utterances, args.speakers)
    print(f"table: {table.num_rows} utterances, {args.speakers} speakers, "
          f"{sum(table.column('duration').to_pylist()) / 3600:.0f} h, built in {time.perf_counter() - t0:.1f} s")
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = PartitionConfig()  # the paper: speaker scheme, 80/10/10, 5 min holdout above 10 min
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = partition(table, config)
        times.append(time.perf_counter() - t0)
    st = result.stats
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"clients {st.clients}, with holdout {st.clients_with_holdout}, without dev {len(st.clients_without_dev)}, "
          f"minutes per client min/median/max {st.minutes.min:.1f}/{st.minutes.median:.1f}/{st.minutes.max:.1f}, "
          f"holdout minutes min/median/max {st.holdout_minutes.min:.2f}/{st.holdout_minutes.median:.2f}/"
          f"{st.holdout_minutes.max:.2f}")
    print(f"partition: best {min(times):.2f} s, worst {max(times):.2f} s of {args.repeat} (target <= 10 s, ratio "
          f"{max(times) / 10:.2f}); peak RSS {peak_mb:.0f} MB ({base_mb:.0f} MB before partitioning: "
          f"interpreter + the table built in Python)")
    if args.cli:
        from fedw2v import manifest

        work = Path(tempfile.mkdtemp(prefix="fedw2v-partition-scale-"))
        try:
            src = work / "manifest.parquet"
            info = manifest.ManifestInfo(corpus_root=str(work), normalization="paper", command="benchmark")
            manifest.write(manifest.Manifest(table, info), src)
            exe = Path(sys.executable).with_name("fedw2v")
            cmd = [str(exe), "partition", str(src), "-o", str(work / "clients.parquet")]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"partition failed:\n{proc.stdout}\n{proc.stderr}")
            child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"fedw2v partition (CLI, fresh process): {seconds:.2f} s wall, peak RSS {child_mb:.0f} MB")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
