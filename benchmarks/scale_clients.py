"""The paper's scale (TED-LIUM 3: 1,943 clients): does a round cost more when there are 2,000 clients to sample
from than when there are 20, with the same work per round?

Builds a small synthetic corpus, then two clients manifests over its train utterances: 2,000 clients and 20
clients, each client with 1 or 2 utterances (alternating), the corpus dev/test splits unchanged. Both runs: the
tiny model, 10 clients per round, `--local-steps 1`, the server evaluating only at round 0 and the last round.
So each round does the same work; only the number of clients differs. Runs `fedw2v simulate` for each size,
interleaved and repeated (the machine is shared: one run's noise should not land on one size only), and
reports per size:

    startup    seconds from the command's start to round 1's start (checks, manifest, Ray, model, round 0)
    round      median wall time of rounds 2..N-1 (round 1 includes the workers' one-time model build)
    client     median seconds of one client call in those rounds (the work itself: equal by construction)
    server RSS peak resident memory of the fedw2v process (the driver: server + Flower; Ray's workers apart)

and the ratios 2,000 / 20 from the same run. Goals (issue 12): round ratio <= 1.1, startup <= 60 s, server
RSS growth <= 200 MB.

With --flower-nodes it also times what Flower's simulation engine does per registered SuperNode: its message
poller asks the LinkState about every node every 0.1 s. fedw2v registers min(clients per round, parallel
clients) nodes, never one per client, so this cost does not grow with the number of clients.

    .venv/bin/python benchmarks/scale_clients.py [--sizes 20,2000] [--repeat 2] [--rounds 6] [--per-round 10]
        [--flower-nodes] [--json FILE]
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


POOL = 30  # the train utterances every client's 1 or 2 are drawn from, whatever the number of clients


def clients_manifest(source: Path, out: Path, n_clients: int) -> Path:
    """`n_clients` clients of 1 or 2 train utterances each, round-robin over the same `POOL` train rows for any
    number of clients (so a client's work has the same distribution; a row used again gets a new utterance id),
    the dev and test rows as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fedw2v import manifest as mf

    m = mf.read(source)
    train = m.table.filter(pc.equal(m.table.column("split"), "train")).to_pylist()[:POOL]
    rest = m.table.filter(pc.not_equal(m.table.column("split"), "train")).to_pylist()
    rows, k = [], 0
    for client in range(n_clients):
        for j in range(1 + client % 2):
            row = dict(train[k % len(train)])
            row.update(utt_id=f"{row['utt_id']}-c{client}-{j}", client_id=client, local_split="train")
            rows.append(row)
            k += 1
    rows += [{**row, "client_id": None, "local_split": None} for row in rest]
    table = pa.Table.from_pylist(rows, schema=m.table.schema)
    info = m.info.with_command(f"benchmarks/scale_clients.py {n_clients} clients", seed=0)
    return mf.write(mf.Manifest(table, info), out)


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes (0, 0 once it is gone)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def run_once(exe: str, clients: Path, run: Path, args: argparse.Namespace, env: dict) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    cmd = [exe, "simulate", str(clients), "--run-dir", str(run), "--model", "tiny", "--recipe", "tiny",
           "--rounds", str(args.rounds), "--clients-per-round", str(args.per_round), "--local-epochs", "1",
           "--local-steps", "1", "--eval-every", str(args.rounds + 1), "--cpus-per-client", "1", "--gpus-per-client", "0",
           "--seed", "0"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _rss(proc.pid)[1])
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed ({proc.returncode}): {err[-2000:]}")
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    round1 = next(e["time"] for e in events if e["event"] == "round_start" and e["round"] == 1)
    rounds = [e["seconds"] for e in events if e["event"] == "round_end" and 2 <= e["round"] < args.rounds]
    fits = [e for e in events if e["event"] == "fit"]
    assert all(e["error"] is None for e in fits), [e["error"] for e in fits if e["error"]][:3]
    client = statistics.median(e["seconds"] for e in fits if 2 <= e["round"] < args.rounds)
    return {"startup": round1 - t0, "round": statistics.median(rounds), "client": client, "rss": peak}


def flower_poll_cost(nodes: int, polls: int = 20) -> float:
    """Seconds one pass of Flower's message poller (`vce_api.add_messages_to_queue`: `get_message_ins` per
    registered node) takes with `nodes` nodes registered in an in-memory LinkState."""
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    mapping = _register_nodes(nodes, factory)
    state = factory.state()
    t0 = time.perf_counter()
    for _ in range(polls):
        for node_id in mapping:
            state.get_message_ins(node_id=node_id, limit=1)
    return (time.perf_counter() - t0) / polls


def report(results: dict[int, list[dict]], sizes: list[int], repeat: int) -> dict[int, dict]:
    """Print the medians per size and their ratios to the first size; return the medians."""
    ref, keys = sizes[0], ("startup", "round", "client", "rss")
    med = {n: {k: statistics.median(r[k] for r in results[n]) for k in keys} for n in sizes}
    print(f"\n{'clients':>7} {'startup s':>10} {'round s':>8} {'client s':>9} {'server RSS MiB':>15} "
          f"{'round ratio':>12} {'RSS growth MiB':>15}")
    for n in sizes:
        m = med[n]
        m["round_ratio"] = m["round"] / med[ref]["round"]
        m["rss_growth"] = m["rss"] - med[ref]["rss"]
        print(f"{n:7d} {m['startup']:10.1f} {m['round']:8.2f} {m['client']:9.2f} {m['rss'] / 2**20:15.0f} "
              f"{m['round_ratio']:12.3f} {m['rss_growth'] / 2**20:15.0f}")
    print(f"(medians of {repeat} runs per size; goals: round ratio <= 1.1, startup <= 60 s, RSS growth <= 200 MiB)")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20,2000", help="client counts, the first is the reference")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run (at least 3: rounds 2..N-1 are timed)")
    ap.add_argument("--per-round", type=int, default=10, help="clients per round (the issue's: 10)")
    ap.add_argument("--minutes", type=float, default=2.0, help="minutes of synthetic speech in the corpus")
    ap.add_argument("--flower-nodes", action="store_true", help="also time Flower's per-node polling")
    ap.add_argument("--json", type=Path, help="also write the runs and medians here")
    ap.add_argument("--manifest", type=Path, help="a prepared manifest to draw from (default: synthesise a corpus)")
    ap.add_argument("--keep", type=Path, help="work here and keep the files")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.rounds < 3 or args.per_round > min(sizes):
        ap.error("--rounds must be at least 3 and --per-round at most the smallest size")
    exe = str(Path(sys.executable).with_name("fedw2v"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedw2v-scale-"))
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FEDW2V_RUNS=str(work / "runs"))
    env.pop("RAY_ADDRESS", None)
    try:
        source = args.manifest or work / "manifest.parquet"
        synth = ["synth", str(work / "corpus"), "--speakers", "6", "--minutes", str(args.minutes), "--seed", "1",
                 "--force"]
        for step in ([] if args.manifest else (synth, ["prepare", str(work / "corpus"), "-o", str(source)])):
            subprocess.run([exe, *step], env=env, check=True, capture_output=True)
        manifests = {n: clients_manifest(source, work / f"clients-{n}.parquet", n) for n in sizes}
        results: dict[int, list[dict]] = {n: [] for n in sizes}
        for rep in range(args.repeat):
            for n in (sizes if rep % 2 == 0 else sizes[::-1]):  # interleaved, alternating order
                r = run_once(exe, manifests[n], work / "runs" / f"{n}-{rep}", args, env)
                results[n].append(r)
                print(f"repeat {rep + 1}: {n:5d} clients  startup {r['startup']:5.1f} s  round {r['round']:5.2f} s  "
                      f"client call {r['client']:5.2f} s  server RSS {r['rss'] / 2**20:6.0f} MiB", flush=True)
        med = report(results, sizes, args.repeat)
        poll = {}
        if args.flower_nodes:
            for n in (10, 2000):
                poll[n] = flower_poll_cost(n)
                print(f"Flower's poller, {n:5d} registered nodes: {1000 * poll[n]:8.2f} ms per pass "
                      "(one pass every 0.1 s)")
        if args.json:
            args.json.write_text(json.dumps({"runs": results, "medians": med, "flower_poll_seconds": poll,
                                             "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
