"""Training steps with and without `--keep-freed-memory` (fedw2v/heap.py), each in a fresh process.

A random-init wav2vec2 CTC model (``--model base``: wav2vec2-base's architecture, 95M parameters; ``tiny``: the
tiny preset) takes ``--steps`` AdamW steps on a batch of random audio (``--batch`` x ``--seconds``) on the CPU,
once with glibc's default malloc and once inside `fedw2v.heap.keep_freed_memory`, in that order, each in a
process of its own (an allocator setting is process-wide). Reported for each: the time of the steps after the
first, the process's minor page faults and system time (`resource.getrusage`), and its peak RSS.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cpu_heap.py [--model base] [--steps 5] [--threads 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> dict:
    import resource
    import time

    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from fedw2v.heap import keep_freed_memory
    from fedw2v.model import tiny_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=40) if args.model == "base" else tiny_config(vocab_size=40)
    model = Wav2Vec2ForCTC(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    audio, labels = torch.randn(args.batch, int(16000 * args.seconds)), torch.randint(1, 40, (args.batch, 40))
    times = []
    with keep_freed_memory(args.keep) as active:
        for _ in range(args.steps):
            t = time.perf_counter()
            model(audio, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"keep_freed_memory": active, "steps_after_first_s": round(sum(times[1:]), 3),
            "minor_faults": usage.ru_minflt, "system_s": round(usage.ru_stime, 2),
            "peak_rss_mb": usage.ru_maxrss // 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("base", "tiny"), default="base")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=int, choices=(0, 1), help=argparse.SUPPRESS)  # set in the child processes
    args = ap.parse_args()
    if args.keep is not None:
        print(json.dumps(child(args)))
        return
    rows = []
    for keep in (0, 1):
        command = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch",
                   str(args.batch), "--seconds", str(args.seconds), "--threads", str(args.threads), "--keep", str(keep)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| | steps after the first | minor page faults | system time | peak RSS |")
    print("|---|---|---|---|---|")
    for r, name in zip(rows, ("glibc defaults", "freed memory kept")):
        print(f"| {name} | {r['steps_after_first_s']:.1f} s | {r['minor_faults'] / 1e6:.2f} M | {r['system_s']:.1f} s "
              f"| {r['peak_rss_mb']:,} MB |")
    off, on = rows
    print(f"ratio kept / defaults: time {on['steps_after_first_s'] / off['steps_after_first_s']:.2f}, "
          f"page faults {on['minor_faults'] / off['minor_faults']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
