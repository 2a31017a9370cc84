#!/usr/bin/env python3
"""Rebuild the packaged ``tiny-pretrained`` model (fedw2v/data/tiny-pretrained/): `make pretrained`.

The offline demo starts federated fine-tuning from a pretrained model, as the paper starts from a pretrained
wav2vec2 (../shared/REFERENCE.md §5: a random-init tiny model learns several times slower federated than
centrally). This script makes that model, reproducibly, from nothing but the synthesisers:

1. ``fedw2v synth`` a pretraining corpus spoken by PRETRAIN_VOICES: espeak-ng voices that are none of the
   demo corpus's voices (``--demo-voices``, which `make pretrained` passes from the Makefile's DEMO_VOICES:
   clients and dev/test speakers alike), so the demo's test CER is measured on voices the model never heard;
2. ``fedw2v prepare`` it;
3. ``fedw2v train --model tiny`` centrally on its train split (STAGES: the tiny recipe, AdamW 2e-3 after 100
   warm-up steps, for 3 epochs), fixed seed, one CPU thread (OMP/MKL), so the same machine gives the same bytes;
4. ``fedw2v evaluate`` on the pretraining corpus's held-out speakers (test and dev splits) and on the demo
   corpus's test speakers (``fedw2v synth --voices DEMO_VOICES``, seed 0, as `make demo` builds it);
5. copy the model files (safetensors, config, tokenizer, feature extractor) into the output directory with
   ``pretrain.json`` (how it was made: voices, minutes, steps, seed, CERs, versions) and a README.md, replacing
   the old directory only when everything succeeded.

Nothing in the output depends on the clock: two builds on the same machine (CPU type, library versions) give
identical files; another CPU or another torch/transformers/espeak-ng version may give slightly different
weights. ``--verify`` rebuilds into the work directory and compares with the committed files instead of
replacing them; ``--determinism-steps N`` only trains N steps twice and compares the weights (a quick check).

    python scripts/pretrain_tiny.py                      # rebuild fedw2v/data/tiny-pretrained (tens of minutes)
    python scripts/pretrain_tiny.py --verify             # rebuild in build/pretrain and compare bytes
    python scripts/pretrain_tiny.py --determinism-steps 20
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "fedw2v" / "data" / "tiny-pretrained"
DEFAULT_WORK = ROOT / "build" / "pretrain"

# Pretraining voices, in `fedw2v synth --voices` order: the first 10 train, then (split_counts(18) = 10, 4, 4)
# the last 8 are held out, alternately test and dev from the end. None is a voice of the demo corpus (DEMO_VOICES);
# EspeakGbM4 (VOICES[15]) is left out too: espeak-ng ignores the variant of `en-gb`, so it speaks exactly as the
# demo's test speaker EspeakGbF4. No flite voice either: flite speaks so differently that a few federated rounds
# cannot adapt to it (the demo corpus is espeak-ng only as well).
PRETRAIN_VOICES = (
    "EspeakUsF4", "EspeakRpF2", "EspeakUsM1", "EspeakNewYork", "EspeakLancasterF5", "EspeakMidlandsM2",
    "EspeakUsF2", "EspeakRpM5", "EspeakUsKlatt", "EspeakScotlandF2",
    "EspeakCaribbeanF3", "EspeakUsM5", "EspeakUsAndy", "EspeakRpF5", "EspeakNewYorkF4", "EspeakLancasterM3",
    "EspeakMidlandsF1", "EspeakScotlandM6",
)
SAME_SOUND_AS_DEMO = ("EspeakGbM4",)  # never used: sounds exactly like a demo voice
# The demo corpus's voices (`make demo`; the Makefile's DEMO_VOICES, passed by `make pretrained`): 6 clients, then
# dev EspeakUsF1 and EspeakUsM4, test EspeakGbF4 and EspeakUsM7.
DEMO_VOICES = (
    "EspeakUsF3", "EspeakScotland", "EspeakUsM3", "EspeakCaribbean", "EspeakUsM2", "EspeakUsF5",
    "EspeakUsF1", "EspeakGbF4", "EspeakUsM4", "EspeakUsM7",
)
MINUTES = 150.0  # pretraining corpus: ~100 min train, ~25 min dev, ~25 min test
SYNTH_SEED = 1  # the demo corpus uses seed 0: other sentences
SEED = 0  # model initialisation, batch order, dropout, masking
# Central training stages: each is one `fedw2v train` call continuing from the previous one's checkpoint. Three
# epochs (405 steps) take the model just past CTC's all-blank plateau (CER ~0.48 on held-out voices): the demo then
# shows federated fine-tuning improve it round after round, as the paper's rounds improve a pretrained wav2vec2.
STAGES = (
    {"epochs": 3, "lr": 2e-3, "warmup_steps": 100},
)
MODEL_FILES_SKIPPED = ("state.json", "train_state.json", "train_state.safetensors")  # run checkpoint state, not model
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def log(message: str) -> None:
    print(f"[pretrain_tiny {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fedw2v(*args: str, capture: bool = False) -> str:
    """Run one `fedw2v` command in a single-threaded subprocess; its output goes to ours unless captured."""
    env = {**os.environ, **THREAD_ENV, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "COLUMNS": os.environ.get("COLUMNS", "120")}
    cmd = [sys.executable, "-m", "fedw2v.cli", *args]
    log("$ fedw2v " + " ".join(args))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"pretrain_tiny: `fedw2v {' '.join(args)}` failed with exit code {proc.returncode}")
    return proc.stdout if capture else ""


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def check_voices(demo_voices: tuple[str, ...]) -> tuple[str, ...]:
    """The demo voices as speaker ids; exits when a voice is unknown or the two sets share a voice."""
    from fedw2v.corpus.voices import find_voice

    chosen = [find_voice(n) for n in PRETRAIN_VOICES]
    demo = [find_voice(n) for n in demo_voices]
    if any(v is None for v in chosen + demo):
        sys.exit(f"pretrain_tiny: unknown voice in {PRETRAIN_VOICES} or --demo-voices {','.join(demo_voices)}")
    demo_ids = {v.speaker for v in demo} | set(SAME_SOUND_AS_DEMO)
    clash = sorted({v.speaker for v in chosen} & demo_ids)
    if clash:
        sys.exit(f"pretrain_tiny: pretraining voices overlap the demo corpus's voices: {', '.join(clash)}")
    return tuple(v.speaker for v in demo)


def build_corpus(work: Path, prefix: str, voices: tuple[str, ...], seed: int, minutes: float | None = None,
                 ) -> tuple[Path, dict]:
    """`fedw2v synth` WORK/{prefix}corpus, `prepare` it to WORK/{prefix}manifest.parquet; returns the manifest and
    the corpus's doc/synth.json. The pretraining corpus, or (prefix "demo-") the one `make demo` synthesises."""
    corpus, manifest = work / f"{prefix}corpus", work / f"{prefix}manifest.parquet"
    length = ["--minutes", f"{minutes:g}"] if minutes is not None else []
    fedw2v("synth", str(corpus), "--voices", ",".join(voices), *length, "--seed", str(seed), "--force")
    fedw2v("prepare", str(corpus), "-o", str(manifest))
    return manifest, json.loads((corpus / "doc" / "synth.json").read_text())


def train(manifest: Path, work: Path, stages=STAGES, max_steps: int | None = None, tag: str = "stage") -> list[dict]:
    """The training stages; returns each stage's metrics (fedw2v train --json)."""
    results = []
    model = "tiny"
    for i, stage in enumerate(stages, start=1):
        run = work / f"{tag}{i}"
        shutil.rmtree(run, ignore_errors=True)
        args = ["train", str(manifest), "--out", str(run), "--model", model, "--recipe", "tiny", "--device", "cpu",
                "--seed", str(SEED), "--epochs", str(stage["epochs"]), "--lr-encoder", f"{stage['lr']:g}",
                "--lr-head", f"{stage['lr']:g}", "--warmup-steps", str(stage["warmup_steps"]), "--json",
                # the committed model's bytes came from transformers' convolutions and torch's unfused AdamW
                "--no-gemm-feature-encoder", "--no-fast-pos-conv", "--no-fused-optimizer"]
        if max_steps is not None:
            args += ["--max-steps", str(max_steps)]
        metrics = last_json(fedw2v(*args, capture=True))
        log(f"stage {i}: {metrics['steps']} steps, loss {metrics['epoch_loss'][-1]:.3f}, {metrics['seconds']:.0f} s")
        results.append({**stage, "run": run, "metrics": metrics})
        model = str(run)
    return results


def evaluate(model: Path, manifest: Path, split: str) -> dict:
    out = last_json(fedw2v("evaluate", str(model), "--manifest", str(manifest), "--split", split, "--device", "cpu",
                           "--by", "speaker", "--json", capture=True))
    return {"utterances": out["utterances"], "ref_words": out["ref_words"], "ref_chars": out["ref_chars"],
            "wer": round(out["wer"], 4), "cer": round(out["cer"], 4),
            "cer_by_speaker": {s: round(c["cer"], 4) for s, c in sorted(out["by_speaker"].items())}}


def model_dir(run: Path) -> Path:
    from fedw2v.runs import latest_checkpoint

    return latest_checkpoint(run)


def describe(doc: dict, demo_doc: dict, stages: list[dict], evals: dict, parameters: int) -> dict:
    import torch
    import transformers

    from fedw2v import __version__

    speakers = doc["speakers"]
    by_split: dict[str, list[dict]] = {}
    for s in speakers:
        by_split.setdefault(s["split"], []).append(s)
    return {
        "name": "tiny-pretrained",
        "made_by": "scripts/pretrain_tiny.py (make pretrained)",
        "fedw2v_version": __version__,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0], **doc.get("synthesisers", {})},
        "architecture": "wav2vec2 CTC, the `tiny` preset (fedw2v.model.TINY_ENCODER)",
        "parameters": parameters,
        "corpus": {
            "command": f"fedw2v synth --voices {','.join(PRETRAIN_VOICES)} --minutes {MINUTES:g} --seed {SYNTH_SEED}",
            "seed": SYNTH_SEED,
            "minutes": {split: round(sum(s["speech_seconds"] for s in group) / 60, 1) for split, group in by_split.items()},
            "utterances": {split: sum(s["utterances"] for s in group) for split, group in by_split.items()},
            "voices": {split: [f"{s['speaker']} ({s['voice']})" for s in group] for split, group in by_split.items()},
            "not_used": "the demo corpus's voices (demo_corpus below) and EspeakGbM4 (sounds as the demo's "
                        "EspeakGbF4)",
        },
        "demo_corpus": {
            "command": f"fedw2v synth --voices {','.join(s['speaker'] for s in demo_doc['speakers'])} --seed 0",
            "voices": {split: [s["speaker"] for s in demo_doc["speakers"] if s["split"] == split]
                       for split in ("train", "dev", "test")},
        },
        "training": {
            "command": "fedw2v train --model tiny --recipe tiny --device cpu, one stage per call, each from the "
                       "previous stage's checkpoint (fresh AdamW), OMP/MKL threads 1",
            "seed": SEED,
            "threads": 1,
            "batch": "16 utterances, at most 120 s padded (tiny recipe), utterances of 0.1-10 s",
            "stages": [{"epochs": s["epochs"], "lr": s["lr"], "warmup_steps": s["warmup_steps"],
                        "steps": s["metrics"]["steps"], "final_loss": round(s["metrics"]["epoch_loss"][-1], 4)}
                       for s in stages],
            "steps": sum(s["metrics"]["steps"] for s in stages),
            "audio_hours_seen": round(sum(s["metrics"]["audio_seconds"] for s in stages) / 3600, 2),
        },
        "evaluation": evals,
    }


def readme(info: dict) -> str:
    ev = info["evaluation"]
    c = info["corpus"]
    t = info["training"]
    lines = [
        "# tiny-pretrained",
        "",
        "The `tiny` wav2vec2 CTC model (~1.6M parameters) trained centrally on synthetic speech: the starting point",
        "of `make demo` (`fedw2v simulate --model tiny-pretrained`). Made by `make pretrained`",
        "(scripts/pretrain_tiny.py); `pretrain.json` holds the same facts as data.",
        "",
        f"- fedw2v {info['fedw2v_version']}, torch {info['versions']['torch']}, "
        f"transformers {info['versions']['transformers']}",
        f"- corpus: `{c['command']}` ({', '.join(f'{k} {v} min' for k, v in c['minutes'].items())})",
        f"  - train voices: {', '.join(c['voices']['train'])}",
        f"  - held-out voices (dev): {', '.join(c['voices'].get('dev', []))}",
        f"  - held-out voices (test): {', '.join(c['voices'].get('test', []))}",
        f"  - not used: {c['not_used']}",
        f"- training: `fedw2v train --model tiny --recipe tiny`, seed {t['seed']}, one thread, {t['steps']} steps "
        f"({t['audio_hours_seen']} h of audio seen): "
        + "; then ".join(f"{s['epochs']} epochs at lr {s['lr']:g} (warm-up {s['warmup_steps']} steps), final loss "
                         f"{s['final_loss']}" for s in t["stages"]),
        f"- CER on held-out pretraining voices (test split, {ev['pretrain_test']['utterances']} utterances): "
        f"{ev['pretrain_test']['cer']:.3f} (WER {ev['pretrain_test']['wer']:.3f})",
        f"- CER on the demo corpus's test speakers ({', '.join(info['demo_corpus']['voices']['test'])}), before "
        f"any federated training "
        f"({ev['demo_test']['utterances']} utterances): {ev['demo_test']['cer']:.3f} "
        f"(WER {ev['demo_test']['wer']:.3f})",
        "",
        "Two builds on the same machine give identical files (`python scripts/pretrain_tiny.py --verify`).",
        "",
    ]
    return "\n".join(lines)


def assemble(src: Path, info: dict, dest: Path) -> None:
    """Copy the model files of checkpoint `src` and the description into a fresh directory `dest`."""
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in MODEL_FILES_SKIPPED:
            shutil.copyfile(f, dest / f.name)
    (dest / "pretrain.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (dest / "README.md").write_text(readme(info))


def compare(a: Path, b: Path) -> list[str]:
    """Names of files that differ or exist on one side only."""
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    return [n for n in names if not ((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, False))]


def determinism(manifest: Path, work: Path, steps: int) -> int:
    stage = ({**STAGES[0]},)
    a = train(manifest, work, stage, max_steps=steps, tag="det-a")
    b = train(manifest, work, stage, max_steps=steps, tag="det-b")
    diff = compare(model_dir(a[0]["run"]), model_dir(b[0]["run"]))
    diff = [d for d in diff if d not in MODEL_FILES_SKIPPED]
    if diff:
        log(f"NOT deterministic: {steps} steps twice gave different {', '.join(diff)}")
        return 1
    log(f"deterministic: {steps} steps twice gave identical model files")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to write (%(default)s)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory (%(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="rebuild into WORK/model and compare its bytes with OUT instead of replacing OUT")
    parser.add_argument("--determinism-steps", type=int, default=0, metavar="N",
                        help="only train N steps twice and check that the weights are identical")
    parser.add_argument("--demo-voices", default=",".join(DEMO_VOICES),
                        help="the demo corpus's voices (kept out of pretraining; its test speakers are scored)")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    demo_voices = check_voices(tuple(v for v in args.demo_voices.split(",") if v))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifest, doc = build_corpus(work, "", PRETRAIN_VOICES, SYNTH_SEED, MINUTES)
    if args.determinism_steps:
        return determinism(manifest, work, args.determinism_steps)
    demo_manifest, demo_doc = build_corpus(work, "demo-", demo_voices, 0)
    stages = train(manifest, work)
    final = stages[-1]["run"]
    evals = {
        "pretrain_test": evaluate(final, manifest, "test"),
        "pretrain_dev": evaluate(final, manifest, "dev"),
        "demo_test": evaluate(final, demo_manifest, "test"),
    }
    from fedw2v.model import load_model, num_parameters

    src = model_dir(final)
    info = describe(doc, demo_doc, stages, evals, num_parameters(load_model(str(src)).model))
    built = work / "model"
    shutil.rmtree(built, ignore_errors=True)
    assemble(src, info, built)
    minutes = (time.monotonic() - t0) / 60
    log(f"CER: held-out pretraining voices {evals['pretrain_test']['cer']:.3f}, "
        f"demo test speakers {evals['demo_test']['cer']:.3f}; built in {minutes:.1f} min")
    if args.verify:
        diff = compare(built, args.out)
        if diff:
            log(f"DIFFERENT from {args.out}: {', '.join(diff)}")
            return 1
        log(f"identical to {args.out}: every file has the same bytes")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", suffix=".new", dir=args.out.parent))
    staged.rmdir()
    shutil.copytree(built, staged)
    from fedw2v.atomic import replace_directory

    replace_directory(staged, args.out)
    log(f"wrote {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
