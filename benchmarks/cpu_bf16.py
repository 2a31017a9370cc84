"""bf16 autocast against fp32 for local training on the CPU: speed, and the error rate reached after the same steps.

Fine-tunes the demo's packaged ``tiny-pretrained`` model centrally on a manifest's train split (the demo's: 238
utterances of its 6 client voices) with the demo's local-training recipe (``--recipe paper --batch-size 8
--lr-encoder 1e-3 --lr-head 1e-3 --no-newbob``: Adam, clip 5) for ``--epochs`` epochs, once per precision and
seed, alternating fp32 / bf16, then greedy-decodes the held-out split (the demo's 2 test speakers, never
trained on) and scores CER and WER. The spread over seeds of one precision is the noise a difference between
the two has to exceed. Speed: the process's CPU time per run (steady on shared cores; with one thread it is
what an idle machine's wall time would be) and the wall time.

    .venv/bin/python benchmarks/cpu_bf16.py [--manifest demo/clients.parquet] [--epochs 4] [--seeds 0,1,2]
        [--threads 1] [--json out.json]

Needs a CPU with bf16 instructions (avx512_bf16 or amx_bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("demo/clients.parquet"))
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--model", default="tiny-pretrained")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from fedw2v import manifest as mf
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.config.train import recipe
    from fedw2v.device import cpu_bf16_feature
    from fedw2v.model import load_model

    if not cpu_bf16_feature():
        raise SystemExit("this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): nothing to compare")
    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest}: no such manifest (run `make demo`, or pass --manifest)")
    torch.set_num_threads(args.threads)
    m = mf.read(args.manifest)
    train = utterances_from_manifest(m, split=args.train_split)
    held_out = utterances_from_manifest(m, split=args.eval_split)
    before = score(load_model(args.model), held_out)
    print(f"{len(train)} train utterances, {len(held_out)} held-out ({args.eval_split}); before training: "
          f"CER {before['cer']:.4f}, WER {before['wer']:.4f}", flush=True)
    runs = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            config = recipe("paper", max_batch_size=8, lr_encoder=1e-3, lr_head=1e-3, newbob=False,
                            epochs=args.epochs, device="cpu", seed=seed, precision=precision,
                            max_steps=args.max_steps)
            runs.append(train_and_score(args.model, train, held_out, config))
            print(json.dumps(runs[-1]), flush=True)
    table = summarise(runs, before)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"before": before, "runs": runs, "table": table}, indent=2))


def train_and_score(model_spec: str, train: list, held_out: list, config) -> dict:
    from fedw2v.model import load_model
    from fedw2v.train import local_train

    loaded = load_model(model_spec)
    cpu, wall = time.process_time(), time.perf_counter()
    metrics = local_train(loaded.model, loaded.processor, train, config)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert metrics.precision == config.precision
    return {"precision": config.precision, "seed": config.seed, "steps": metrics.steps,
            "final_loss": round(metrics.loss, 4), "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
            **score(loaded, held_out)}


def score(loaded, utterances: list) -> dict:
    from fedw2v.decode import Decoder
    from fedw2v.metrics import score as wer_cer

    loaded.model.to("cpu")
    s = wer_cer([u.text for u in utterances], Decoder(loaded.model, loaded.processor).decode_utterances(utterances))
    return {"cer": round(s.cer, 4), "wer": round(s.wer, 4)}


def summarise(runs: list[dict], before: dict) -> str:
    lines = ["| precision | runs | steps | CER (mean ± sd) | WER (mean ± sd) | final loss | CPU s | wall s |",
             "|---|---|---|---|---|---|---|---|",
             f"| before training | | | {before['cer']:.4f} | {before['wer']:.4f} | | | |"]
    for precision in ("fp32", "bf16"):
        rows = [r for r in runs if r["precision"] == precision]
        if not rows:
            continue

        def ms(key: str, rows=rows) -> str:
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.4f} ± {sd:.4f}"

        lines.append(f"| {precision} | {len(rows)} | {rows[0]['steps']} | {ms('cer')} | {ms('wer')} | "
                     f"{statistics.mean(r['final_loss'] for r in rows):.3f} | "
                     f"{statistics.median(r['cpu_seconds'] for r in rows):.1f} | "
                     f"{statistics.median(r['wall_seconds'] for r in rows):.1f} |")
    pairs = [(a, b) for a in runs for b in runs if a["seed"] == b["seed"] and (a["precision"], b["precision"]) ==
             ("fp32", "bf16")]
    if pairs:
        ratios = [a["cpu_seconds"] / b["cpu_seconds"] for a, b in pairs]
        lines.append("")
        lines.append(f"bf16 speed-up by CPU time, per seed: {', '.join(f'{x:.2f}' for x in ratios)} "
                     f"(median {statistics.median(ratios):.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
