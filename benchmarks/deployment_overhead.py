"""Deployment overhead: a round's wall time over the clients' own time, 3 SuperNodes on loopback (issue 12).

Runs `examples/deployment.sh` (TLS, node authentication, 3 SuperNodes with their exported manifests, the
`tiny-pretrained` model) for ``--rounds`` rounds, the server evaluating only at rounds 0 and the last
(``eval-every`` > rounds), then reads metrics.jsonl. The SuperNodes train in parallel, so for each round r
strictly between 0 and the last:

    overhead = round wall time (round_start .. round_end) / the slowest client's own time (its "seconds":
               building the model from the message on a node's first call of the process + training + dev WER)

Everything else is Flower's and fedw2v's: the SuperLink relaying the messages (TLS), each SuperNode starting a
`flwr-clientapp` process for the message, serialising and checking the weights, aggregating, the checkpoint.
Also reported: the slowest client's training time alone (``train_seconds``).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/deployment_overhead.py [--rounds 4] [--keep DIR] [--json F]

Needs a prepared corpus manifest (default: a 6-voice synthetic one made here with `fedw2v synth`/`prepare`).
Goal (issue 12): overhead <= 1.15, as for simulate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(work: Path) -> Path:
    exe = str(Path(sys.executable).with_name("fedw2v"))
    manifest = work / "manifest.parquet"
    if not manifest.is_file():
        subprocess.run([exe, "synth", str(work / "corpus"), "--speakers", "6", "--minutes", "2", "--seed", "3"],
                       check=True, capture_output=True)
        subprocess.run([exe, "prepare", str(work / "corpus"), "-o", str(manifest)], check=True, capture_output=True)
    return manifest


def overheads(events: list[dict], rounds: int) -> list[dict]:
    """Per round 1..rounds-1 (the last one evaluates): wall, slowest client, ratio."""
    start = {e["round"]: e["time"] for e in events if e["event"] == "round_start"}
    end = {e["round"]: e["time"] for e in events if e["event"] == "round_end"}
    rows = []
    for r in range(1, rounds):
        fits = [e for e in events if e["event"] == "fit" and e["round"] == r and e["error"] is None]
        if not fits or r not in end:
            continue
        wall, own = end[r] - start[r], max(e["seconds"] for e in fits)
        rows.append({"round": r, "wall": wall, "clients_own": own, "overhead": wall / own,
                     "train_seconds": max(e.get("train_seconds", 0.0) for e in fits), "clients": len(fits)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--manifest", type=Path, help="a prepared corpus manifest (default: a synthetic one)")
    ap.add_argument("--keep", type=Path, help="work here and keep the files")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedw2v-deployment-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = args.manifest or corpus(work)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               FLWR_HOME=str(work / "flwr-home"), PYTHONPATH=str(ROOT))
    out = subprocess.run([str(ROOT / "examples" / "deployment.sh"), str(manifest), str(work / "deploy"),
                          f"rounds={args.rounds} eval-every={args.rounds + 10}"], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(out.stdout + out.stderr)
    events = [json.loads(line) for line in (work / "deploy" / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = overheads(events, args.rounds)
    print("| round | round wall | slowest client's own time | overhead | its training alone |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['round']} | {row['wall']:.2f} s | {row['clients_own']:.2f} s | {row['overhead']:.3f} | "
              f"{row['train_seconds']:.2f} s |")
    median = statistics.median(r["overhead"] for r in rows)
    print(f"median overhead {median:.3f} (goal <= 1.15); work dir {work}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "median_overhead": median}, indent=1))


if __name__ == "__main__":
    main()
