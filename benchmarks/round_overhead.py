"""Round overhead of fedw2v's federated loop: round wall time over the clients' own time (tiny model, CPU).

Runs `fedw2v simulate` on a small synthetic corpus with one client at a time (`--cpus-per-client` = all cores,
so clients train one after another and their times add up), the server evaluating only at the start and the
end (`--eval-every` > rounds), then reads metrics.jsonl. For rounds 2..N-1 (round 1 includes the workers'
one-time model build; the last round includes the final evaluation):

    overhead = round wall time / sum of the round's client times (each client's load + train + dev-WER)

Everything else in a round is fedw2v's and Flower's: sampling, serialising and sending the weights, receiving
and checking the updates, aggregating, writing the checkpoint and the plot, logging.

    .venv/bin/python benchmarks/round_overhead.py [--rounds 6] [--local-epochs 3] [--keep DIR]

Goal (issue 5): overhead <= 1.15 once Ray is up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-epochs", type=int, default=3)
    ap.add_argument("--clients-per-round", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work here and keep the files")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("fedw2v"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedw2v-round-overhead-"))
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_HOME=str(work / "flwr-home"), FEDW2V_RUNS=str(work / "runs"))
    try:
        steps = [
            ["synth", str(work / "corpus"), "--speakers", "6", "--minutes", "4", "--seed", "1", "--force"],
            ["prepare", str(work / "corpus"), "-o", str(work / "manifest.parquet")],
            ["partition", str(work / "manifest.parquet"), "-o", str(work / "clients.parquet")],
        ]
        for step in steps:
            subprocess.run([exe, *step], env=env, check=True, capture_output=True)
        run = work / "runs" / "overhead"
        shutil.rmtree(run, ignore_errors=True)
        cores = os.cpu_count() or 1
        t0 = time.perf_counter()
        subprocess.run(
            [exe, "simulate", str(work / "clients.parquet"), "--run-dir", str(run), "--model", "tiny", "--recipe",
             "tiny", "--rounds", str(args.rounds), "--clients-per-round", str(args.clients_per_round),
             "--local-epochs", str(args.local_epochs), "--eval-every", str(args.rounds + 1),
             "--cpus-per-client", str(cores), "--gpus-per-client", "0"],
            env=env, check=True, capture_output=True,
        )
        total = time.perf_counter() - t0
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ratios = []
        print(f"{'round':>5} {'wall s':>8} {'clients s':>10} {'overhead':>9}")
        for r in range(2, args.rounds):
            wall = next(e["seconds"] for e in events if e["event"] == "round_end" and e["round"] == r)
            clients = sum(e["seconds"] for e in events if e["event"] == "fit" and e["round"] == r)
            ratios.append(wall / clients)
            print(f"{r:5d} {wall:8.2f} {clients:10.2f} {wall / clients:9.3f}")
        print(f"median overhead {statistics.median(ratios):.3f} (goal <= 1.15) over rounds 2..{args.rounds - 1}; "
              f"whole command {total:.0f} s including Ray start, round 0 evaluation and round 1 model builds")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
