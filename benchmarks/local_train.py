"""Local training speed: fedw2v's `local_train` against `transformers.Trainer`, same model, data and recipe.

Both sides train the same wav2vec2 CTC model from the same initial weights on the same utterances (a manifest's
split, e.g. the demo's 238 train utterances) with the same batch size, optimizer (AdamW, one learning rate, no
weight decay, gradient-norm clip 5, no warm-up or decay), number of epochs and torch threads, on the CPU. Each
timed run has a fresh process of its own (the sides alternate: fedw2v first in odd repeats, Trainer first in even
ones), so nothing one side leaves in the process (the C allocator's settings and heap, oneDNN's caches) reaches
the next; ``--in-process`` runs them all in this one instead, as before 2026-12-02:

- fedw2v: ``local_train`` as every client calls it (the audio read from the corpus files and cached, length
  buckets re-drawn every epoch, `Collator` padding and normalising), timed end to end, audio reading included;
  its batch cap (``max_batch_seconds``) is set out of reach so every batch has ``--batch`` utterances;
- Trainer: ``transformers.Trainer`` with the audio already decoded and normalised in memory (as the HF CTC
  fine-tuning example prepares it), ``train_sampling_strategy="group_by_length"``, a collator that pads with the
  feature extractor and labels with -100, its default optimizer ``adamw_torch_fused`` (torch's AdamW, fused;
  fedw2v uses torch's AdamW too; ``--trainer-optim adamw_torch`` for the unfused one), timed from building the
  Trainer to the end of ``train()``.

Before each timed run, one untimed step of the same side warms up the allocator and oneDNN (in-process: one
step of each side before the timed runs of each model and thread count).

Models: ``tiny-pretrained`` (the demo's packaged model), ``base`` (wav2vec2-base's architecture, 95M
parameters, random init, CTC head over the texts' characters; trained on the first ``--base-utterances``
utterances for ``--base-epochs``: it is ~25x slower) and ``base-lv60`` (the same size in the layout of
wav2vec2-large-lv60, the paper's model: layer-norm feature encoder, pre-LN transformer). Precisions: fp32 (and
bf16 autocast with ``--precisions fp32,bf16``: fedw2v's ``--precision bf16``, Trainer's ``bf16=True``). Reported
per run: utterances per second, audio seconds per second, the fraction of padded input samples, and the throughput
ratio against Trainer fp32 in the same repeat (median over repeats). More sides, each fedw2v with one thing
turned off: ``fedw2v-convs`` (transformers' convolutional feature encoder, ``--no-gemm-feature-encoder``) and
``fedw2v-malloc`` (glibc's default allocator behaviour, ``--no-keep-freed-memory``).

    .venv/bin/python benchmarks/local_train.py [--manifest demo/clients.parquet] [--threads 1,2] [--repeat 2]
        [--models tiny-pretrained,base] [--precisions fp32,bf16] [--json out.json]

``--profile`` instead breaks one epoch of fedw2v's training into its phases (audio read, collation, forward,
backward, clip + optimizer step; CPU seconds, through `fedw2v.train`'s own pieces) and lists the operators that
took the most time in its first batches (torch.profiler).

Goal (issue 6): fedw2v >= 1.2x Trainer's fp32 throughput.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SR = 16_000


@dataclass
class Setup:
    name: str
    model: object  # the initial weights every run copies
    processor: object
    utterances: list  # fedw2v.batching.Utterance
    audio: list  # decoded audio of each utterance (float32 numpy)
    epochs: int


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("demo/clients.parquet"),
                    help="a manifest (make demo writes demo/clients.parquet)")
    ap.add_argument("--split", default="train", help="its corpus split to train on (%(default)s)")
    ap.add_argument("--models", default="tiny-pretrained,base")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-utterances", type=int, default=0, help="use only the first N utterances (0: all)")
    ap.add_argument("--base-utterances", type=int, default=48)
    ap.add_argument("--base-epochs", type=int, default=1)
    ap.add_argument("--sides", default="fedw2v,trainer",
                    help="what to run (%(default)s; fedw2v-convs: fedw2v with --no-gemm-feature-encoder, "
                         "fedw2v-malloc: with --no-keep-freed-memory)")
    ap.add_argument("--trainer-optim", default="adamw_torch_fused")
    ap.add_argument("--profile", action="store_true", help="phases of one fedw2v epoch instead (see above)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--in-process", action="store_true", help="every run in this process (default: a fresh one each)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one timed run, for the parent
    args = ap.parse_args()

    import torch

    from fedw2v import manifest as mf
    from fedw2v.batching import filter_by_duration, utterances_from_manifest

    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest}: no such manifest (run `make demo`, or pass --manifest)")
    sides = args.sides.split(",")
    if "trainer" in sides and not args.profile:
        try:
            import accelerate  # noqa: F401 -- transformers.Trainer needs it
        except ImportError:
            raise SystemExit("transformers.Trainer needs the accelerate package: pip install 'accelerate>=1.1' "
                             "(or run --sides fedw2v)") from None
    utts = utterances_from_manifest(mf.read(args.manifest), split=args.split)
    utts = filter_by_duration(utts, 0.1, 10.0)[0]  # fedw2v's default filter: both sides get the same utterances
    if args.max_utterances:
        utts = utts[: args.max_utterances]
    results = []
    here = args.in_process or args.child  # the timed runs happen in this process (else: each in a fresh one)
    for name in args.models.split(","):
        setup = make_setup(name, utts, args) if here or args.profile else None
        if args.profile:
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                for precision in args.precisions.split(","):
                    print(f"== {name}, {threads} thread(s), {precision}: one epoch of fedw2v, by phase")
                    print(profile(setup, precision, args))
            continue
        if args.in_process:
            print(f"== {name}: {len(setup.utterances)} utterances, {sum(len(a) for a in setup.audio) / SR:.0f} s of "
                  f"audio, {setup.epochs} epochs, batch {args.batch}")
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for side in sides if here else []:  # warm-up: one step each, untimed
                run_one(side, "fp32" if args.in_process else args.precisions, setup, args, max_steps=1)
            for r in range(args.repeat):
                runs = [(side, p) for side in sides for p in args.precisions.split(",")]
                for side, precision in (runs if r % 2 == 0 else runs[::-1]):
                    row = (run_one(side, precision, setup, args) if here
                           else in_child(name, threads, side, precision))
                    row.update(model=name, threads=threads, repeat=r)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    if args.child or args.profile:
        return
    table = summarise(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "table": table}, indent=2))


def in_child(model: str, threads: int, side: str, precision: str) -> dict:
    """One timed run (after its warm-up step) of ``side`` in a fresh Python process: this script with
    ``--child`` and this run's arguments; its result row."""
    import subprocess
    import sys

    argv = [a for a in sys.argv[1:] if a != "--in-process"]
    for flag in ("--models", "--threads", "--sides", "--precisions", "--repeat", "--json"):
        while flag in argv:
            i = argv.index(flag)
            del argv[i: i + 2]
    command = [sys.executable, __file__, *argv, "--child", "--models", model, "--threads", str(threads), "--sides",
               side, "--precisions", precision, "--repeat", "1"]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{side} ({model}, {threads} threads) failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: v for k, v in row.items() if k not in ("model", "threads", "repeat")}


def make_setup(name: str, utts: list, args) -> Setup:
    import torch

    from fedw2v.audio import read_segment
    from fedw2v.model import build_processor, load_model, with_ctc_head
    from fedw2v.text import character_vocabulary

    if name in ("base", "base-lv60"):
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

        utts = utts[: args.base_utterances]
        vocab = character_vocabulary(u.text for u in utts)
        # wav2vec2-base's architecture; base-lv60: at the same size, the layout of wav2vec2-large-lv60 (the paper's
        # model): a layer-norm feature encoder with conv biases and a pre-LN transformer
        lv60 = dict(feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True) if "lv60" in name else {}
        config = with_ctc_head(Wav2Vec2Config(**lv60), len(vocab))
        torch.manual_seed(0)
        model, processor, epochs = Wav2Vec2ForCTC(config), build_processor(vocab, config), args.base_epochs
    else:
        loaded = load_model(name, [u.text for u in utts])
        model, processor, epochs = loaded.model, loaded.processor, args.epochs
    audio = [read_segment(u.path, u.start, u.end) for u in utts]
    return Setup(name, model, processor, utts, audio, epochs)


def run_one(side: str, precision: str, setup: Setup, args, max_steps: int | None = None) -> dict:
    model = copy.deepcopy(setup.model)
    cpu = time.process_time()
    if side.startswith("fedw2v"):  # fedw2v, or fedw2v-convs / fedw2v-malloc: with one thing turned off
        seconds, padded = run_fedw2v(model, precision, setup, args, max_steps, gemm=side != "fedw2v-convs",
                                     keep=side != "fedw2v-malloc")
    else:
        seconds, padded = run_trainer(model, precision, setup, args, max_steps)
    cpu = time.process_time() - cpu
    n = len(setup.utterances) * setup.epochs
    audio_s = sum(len(a) for a in setup.audio) / SR * setup.epochs
    return {"side": side, "precision": precision, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "utterances_per_second": round(n / seconds, 3), "audio_seconds_per_second": round(audio_s / seconds, 3),
            "padded_fraction": round(padded, 4)}


def fedw2v_config(precision: str, setup: Setup, args, max_steps: int | None = None, gemm: bool = True,
                  keep: bool = True):
    from fedw2v.config.train import TrainConfig

    longest = max(u.duration for u in setup.utterances)
    return TrainConfig(epochs=setup.epochs, max_batch_size=args.batch, max_batch_seconds=args.batch * longest + 1,
                       optimizer="adamw", lr_encoder=args.lr, lr_head=args.lr, newbob=False, clip_norm=5.0,
                       precision=precision, device="cpu", seed=0, max_steps=max_steps, gemm_feature_encoder=gemm,
                       keep_freed_memory=keep)


def run_fedw2v(model, precision: str, setup: Setup, args, max_steps: int | None = None,
               gemm: bool = True, keep: bool = True) -> tuple[float, float]:
    from fedw2v.batching import bucket_batches
    from fedw2v.train import local_train

    config = fedw2v_config(precision, setup, args, max_steps, gemm, keep)
    t = time.perf_counter()
    metrics = local_train(model, setup.processor, setup.utterances, config)
    seconds = time.perf_counter() - t
    assert metrics.precision == precision
    if max_steps is not None:
        return seconds, 0.0
    assert metrics.samples_seen == len(setup.utterances) * setup.epochs
    lengths = [len(a) for a in setup.audio]
    batches = [b for e in range(setup.epochs) for b in bucket_batches(
        [u.duration for u in setup.utterances], config.max_batch_seconds, config.max_batch_size, True, config.seed, e)]
    return seconds, padded_fraction([[lengths[i] for i in b] for b in batches])


def run_trainer(model, precision: str, setup: Setup, args, max_steps: int | None = None) -> tuple[float, float]:
    import numpy as np
    from transformers import PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    fe, tok = setup.processor.feature_extractor, setup.processor.tokenizer
    data = [{"input_values": fe(a, sampling_rate=SR).input_values[0].astype(np.float32),
             "labels": tok(u.text)["input_ids"]} for a, u in zip(setup.audio, setup.utterances)]
    seen: list[list[int]] = []
    use_mask = bool(getattr(fe, "return_attention_mask", False))

    def collate(items):
        seen.append([len(x["input_values"]) for x in items])
        batch = fe.pad([{"input_values": x["input_values"]} for x in items], padding=True, return_tensors="pt",
                       return_attention_mask=use_mask)
        labels = tok.pad([{"input_ids": x["labels"]} for x in items], padding=True, return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        return batch

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch, num_train_epochs=setup.epochs,
            learning_rate=args.lr, weight_decay=0.0, optim=args.trainer_optim, max_grad_norm=5.0,
            max_steps=max_steps if max_steps is not None else -1,
            lr_scheduler_type="constant", warmup_steps=0, train_sampling_strategy="group_by_length",
            bf16=precision == "bf16", use_cpu=True, dataloader_num_workers=0, save_strategy="no",
            report_to=[], logging_strategy="no", disable_tqdm=True, seed=0, remove_unused_columns=False,
        )
        t = time.perf_counter()
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate,
                          processing_class=fe)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        seconds = time.perf_counter() - t
    assert max_steps is not None or sum(len(b) for b in seen) == len(data) * setup.epochs
    return seconds, padded_fraction(seen)


def profile(setup: Setup, precision: str, args, op_batches: int = 6) -> str:
    """CPU seconds per phase of one epoch (`train_loader`, `Stepper`: what `local_train` runs), then the top
    operators of the first ``op_batches`` batches."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from fedw2v.train import Stepper, train_loader, use_gemm_feature_encoder

    model = copy.deepcopy(setup.model)
    config = fedw2v_config(precision, setup, args)
    use_gemm_feature_encoder(model, config.gemm_feature_encoder)
    torch.set_flush_denormal(True)
    phases = dict.fromkeys(("audio read + labels", "collation", "forward", "backward", "clip + optimizer"), 0.0)
    t = time.process_time()
    loader, sampler = train_loader(model, setup.processor, setup.utterances, config)
    phases["audio read + labels"] = time.process_time() - t
    stepper = Stepper(model, config, "cpu", precision)
    np.random.seed(0)
    torch.manual_seed(0)
    model.train()
    batches = iter(loader)
    for b in range(len(sampler)):
        marks = [time.process_time()]
        batch = next(batches)
        batch.pop("audio_seconds")
        marks.append(time.process_time())
        loss = stepper.loss(model, batch)
        marks.append(time.process_time())
        stepper.accumulate(loss)
        marks.append(time.process_time())
        stepper.step(b)
        marks.append(time.process_time())
        for name, a, z in zip(list(phases)[1:], marks, marks[1:]):
            phases[name] += z - a
    total = sum(phases.values())
    lines = ["| phase | CPU s | share |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.2f} | {sec / total:.1%} |" for name, sec in phases.items()]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for b, batch in zip(range(op_batches), loader):
            batch.pop("audio_seconds")
            stepper.accumulate(stepper.loss(model, batch))
            stepper.step(b)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops_total = sum(e.self_cpu_time_total for e in ops)
    lines += ["", f"| operator (first {op_batches} batches) | self CPU share | calls |", "|---|---|---|"]
    lines += [f"| {e.key} | {e.self_cpu_time_total / ops_total:.1%} | {e.count} |" for e in ops[:10]]
    return "\n".join(lines)


def padded_fraction(batches: list[list[int]]) -> float:
    """Padded input samples over all input samples (real + padding) of these batches (lengths per item)."""
    total = sum(max(b) * len(b) for b in batches)
    return 1 - sum(sum(b) for b in batches) / total if total else 0.0


def summarise(results: list[dict]) -> str:
    """A Markdown table: per model, threads, side and precision, the medians over repeats, and the throughput
    ratio against Trainer fp32 in the same repeat, by wall time and by the process's CPU time (the steadier of
    the two on shared cores; with one thread it is the wall time an idle machine would show)."""
    lines = ["| model | threads | side | precision | wall s | CPU s | utt/s | audio s/s | padded | "
             "ratio to Trainer fp32 (wall) | ratio (CPU time) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = ("model", "threads", "side", "precision")
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    for k in sorted(groups, key=lambda k: (k[0], k[1], k[2] != "fedw2v", k[3])):
        rows = groups[k]
        refs = {r["repeat"]: r for r in groups.get((k[0], k[1], "trainer", "fp32"), [])}
        wall = [refs[r["repeat"]]["seconds"] / r["seconds"] for r in rows if r["repeat"] in refs]
        cpu = [refs[r["repeat"]]["cpu_seconds"] / r["cpu_seconds"] for r in rows if r["repeat"] in refs]
        med = {m: statistics.median(r[m] for r in rows) for m in ("seconds", "cpu_seconds", "utterances_per_second",
                                                                   "audio_seconds_per_second", "padded_fraction")}
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {med['seconds']:.1f} | {med['cpu_seconds']:.1f} | "
                     f"{med['utterances_per_second']:.2f} | {med['audio_seconds_per_second']:.1f} | "
                     f"{med['padded_fraction']:.1%} | {_ratios(wall)} | {_ratios(cpu)} |")
    return "\n".join(lines)


def _ratios(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({', '.join(f'{x:.2f}' for x in values)})" if values else "-"


if __name__ == "__main__":
    main()
