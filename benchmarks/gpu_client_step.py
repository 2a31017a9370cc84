"""One federated client's training step on wav2vec2-large (random init, no download): memory and speed.

Runs fedw2v's own `local_train` (the code every client runs) on a batch of 4 × 10 s utterances (written as
WAV files, random transcripts over the character vocabulary) for each setting — fp32 / bf16 autocast ×
gradient checkpointing off / on — and reports the peak GPU memory (torch.cuda.max_memory_allocated) and
seconds per optimizer step (median after warm-up steps), side by side in one run.

    .venv/bin/python benchmarks/gpu_client_step.py [--steps 6] [--warmup 2] [--size large|base|tiny] [--device cuda]

Goal (issue 5): <= 8 GB per client in the best setting. `--size tiny --device cpu` checks the script on a
machine without a GPU (no figures to record then).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

SIZES = {
    # wav2vec2-large-lv60's architecture (317M parameters): conv layer norm, stable layer norm
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(conv_dim=(64, 128, 128, 128, 128), conv_kernel=(10, 8, 4, 4, 4), conv_stride=(5, 4, 4, 2, 2),
                 hidden_size=192, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
                 feat_extract_norm="layer", do_stable_layer_norm=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="large")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from fedw2v.batching import Utterance
    from fedw2v.model import build_processor, num_parameters, with_ctc_head
    from fedw2v.text import character_vocabulary
    from fedw2v.config.train import TrainConfig
    from fedw2v.train import local_train

    rng = np.random.default_rng(0)
    vocab = character_vocabulary()
    letters = "abcdefghijklmnopqrstuvwxyz"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        utts = []
        for i in range(args.batch):
            path = Path(tmp) / f"u{i}.wav"
            sf.write(path, (rng.standard_normal(int(args.seconds * 16000)) * 0.1).astype(np.float32), 16000)
            words = " ".join("".join(rng.choice(list(letters), size=5)) for _ in range(int(args.seconds * 2.5)))
            utts.append(Utterance(f"u{i}", str(path), 0.0, args.seconds, words))
        config = with_ctc_head(Wav2Vec2Config(**SIZES[args.size]), len(vocab))
        processor = build_processor(vocab, config)
        settings = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
        for precision, ckpt in settings:
            torch.manual_seed(0)
            model = Wav2Vec2ForCTC(config)
            params = num_parameters(model)
            cuda = args.device.startswith("cuda")
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step_times: list[float] = []
            last = [time.perf_counter()]

            def on_progress(p, last=last, step_times=step_times):
                if cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                step_times.append(now - last[0])
                last[0] = now

            tc = TrainConfig(epochs=args.steps + args.warmup, max_batch_size=args.batch,
                             max_batch_seconds=args.batch * args.seconds + 1, max_seconds=args.seconds + 1,
                             precision=precision, gradient_checkpointing=ckpt, device=args.device, newbob=False,
                             max_steps=args.steps + args.warmup, cache_audio_seconds=3600)
            last[0] = time.perf_counter()
            metrics = local_train(model, processor, utts, tc, progress=on_progress)
            timed = step_times[args.warmup:] or step_times
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            row = {"size": args.size, "parameters": params, "precision": metrics.precision,
                   "gradient_checkpointing": ckpt and cuda, "batch": f"{args.batch} x {args.seconds:g} s",
                   "seconds_per_step": statistics.median(timed), "peak_gib": peak, "steps": metrics.steps,
                   "device": torch.cuda.get_device_name() if cuda else "cpu"}
            results.append(row)
            print(json.dumps(row))
            del model
    best = min((r for r in results if r["peak_gib"] == r["peak_gib"]), key=lambda r: r["peak_gib"], default=None)
    if best:
        print(f"best setting: {best['precision']}, checkpointing {best['gradient_checkpointing']}: "
              f"{best['peak_gib']:.1f} GiB, {best['seconds_per_step']:.2f} s/step (goal <= 8 GB per client)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
