"""Transcription speed: `fedw2v transcribe`'s decoding against the Hugging Face ASR pipeline, same model, same audio;
beam search + LM beside greedy; and transcribe's peak memory on long audio.

The model is wav2vec2-base size (95M parameters: 7-layer group-norm CNN, 12 transformer blocks of 768) with a
CTC head over the fedw2v character vocabulary, random init, saved once as a Hugging Face directory that both
load. The audio is --seconds of flite speech (noise when flite is missing), 16 kHz mono WAV. In one process,
alternating, after one warm-up call each, best and median of --repeat calls:

- hf-pipeline: ``pipeline("automatic-speech-recognition", model=DIR)({"raw": audio, "sampling_rate": 16000})``,
  its default (the whole file in one pass);
- hf-pipeline-chunked: the same with ``chunk_length_s=30`` (its own long-audio mode);
- fedw2v: `fedw2v.audio.load_audio` (reads the WAV file too) + `Decoder.transcribe` with the defaults of
  ``fedw2v transcribe`` (30 s chunks, 1 s of context on each side);
- fedw2v-one-pass: the same in one pass over the whole file (its text must equal the pipeline's);
- fedw2v-beam: the same as fedw2v with ``--decoder beam`` at beam size 50: a 4-gram LM and lexicon built by
  `fedw2v lm build` from the benchmark's sentences, lexicon decoding with KenLM (flashlight-text);
- beam-search-only: that beam search alone over the file's stitched log-probabilities (computed once).

Wall and process CPU seconds are both recorded; on a shared machine the CPU ratio is the steadier one.

Memory (--memory): peak RSS of a fresh ``fedw2v transcribe FILE --model tiny --format srt`` process (the tiny
model, random init) on 8 kHz silence of 1 s (the process's baseline: imports and model), 1 minute and
--memory-hours hours (default 3), from the kernel's accounting of each child (``os.wait4``).

    .venv/bin/python benchmarks/transcribe.py [--seconds 60] [--repeat 3] [--threads N] [--memory]

Goals: fedw2v no slower than the pipeline (ratio fedw2v / hf-pipeline <= 1, issue 4); beam at size 50 at most
1.5x greedy's wall time (issue 14); peak memory that does not grow with the file's length (issue 11).
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

import numpy as np

SENTENCES = [
    "the cat sat on the mat and looked at the birds in the garden",
    "a dog ran in the park while the children played with a red ball",
    "she has two red books and a blue pen on her desk",
    "we like to sing songs when the sun goes down over the hills",
    "it 's a big blue sky today with only a few white clouds",
    "my friend eats green apples every morning before work",
]


def make_audio(seconds: float, path: Path) -> np.ndarray:
    import soundfile as sf

    if shutil.which("flite"):
        pieces, total, i = [], 0, 0
        with tempfile.TemporaryDirectory() as tmp:
            while total < seconds * 16000:
                out = Path(tmp) / f"{i}.wav"
                voice = ("slt", "rms", "awb")[i % 3]
                subprocess.run(["flite", "-voice", voice, "-t", SENTENCES[i % len(SENTENCES)], "-o", str(out)], check=True)
                a, sr = sf.read(out, dtype="float32")
                assert sr == 16000
                pieces += [a, np.zeros(4000, np.float32)]
                total += len(a) + 4000
                i += 1
        audio = np.concatenate(pieces)[: int(seconds * 16000)]
    else:
        audio = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    sf.write(path, audio, 16000, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def make_model(path: Path) -> int:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from fedw2v.model import build_processor, num_parameters, save_model, with_ctc_head
    from fedw2v.text import character_vocabulary

    vocab = character_vocabulary()
    config = with_ctc_head(Wav2Vec2Config(), len(vocab))  # the wav2vec2-base architecture
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    save_model(model, build_processor(vocab, config), path)
    return num_parameters(model)


def make_lm(directory: Path) -> Path:
    """`fedw2v lm build` over the benchmark's sentences: a 4-gram LM and lexicon in the base characters."""
    from fedw2v.lm.build import LmBuildConfig, build

    text = directory / "lm-text.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    return build([text], directory / "lm", LmBuildConfig()).out_dir


def write_silence(path: Path, seconds: float, rate: int = 8000) -> None:
    """``seconds`` of 16-bit silence at ``rate``, written 10 minutes at a time."""
    import soundfile as sf

    left = int(seconds * rate)
    with sf.SoundFile(str(path), "w", rate, 1, "PCM_16") as fh:
        while left > 0:
            n = min(left, rate * 600)
            fh.write(np.zeros(n, np.int16))
            left -= n


# Linux keeps a process's RSS high-water mark across exec, and a forked child starts with its parent's: a child
# of this (possibly large: the speed part loads a 95M model) process would report at least our own peak. So a
# fresh, small Python forks the measured command and reports the peak RSS of that grandchild alone.
_MEASURE = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(path: Path, threads: int | None, command: list[str] | None = None, engine: str = "torch",
                python: str = sys.executable) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one ``fedw2v transcribe`` process on ``path`` with the packaged tiny
    model (``tiny-pretrained``: ``tiny`` itself is random weights that only transformers builds) on ``engine``,
    run by ``python`` (or of ``command``), measured apart from this process's own memory."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = command or [python, "-m", "fedw2v.cli", "transcribe", str(path), "--model", "tiny-pretrained",
                          "--format", "srt", "--engine", engine]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} failed: {out.stderr[-500:]}")
    return int(out.stdout.split()[-1]) / 1024, time.perf_counter() - t0


def memory(hours: float, threads: int | None, engines: list[str], python: str = sys.executable) -> dict:
    """Peak RSS of transcribe for 1 s, 1 min and ``hours`` of 8 kHz silence on each engine, side by side, and
    the floor: ``import torch`` alone, measured the same way."""
    floor, _ = peak_rss_mb(Path("."), threads, [python, "-c", "import os, torch; os._exit(0)"])
    teardown, _ = peak_rss_mb(Path("."), threads, [python, "-c", "import torch"])
    # (the second exits the ordinary way: with torch's CUDA build, the interpreter's teardown pages CUDA
    # libraries back in for their static destructors, which `fedw2v transcribe` skips: cli_group.run_main)
    out: dict = {"python": python, "import_torch_mb": round(floor, 1),
                 "import_torch_and_teardown_mb": round(teardown, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in (("1 s", 1.0), ("1 min", 60.0), (f"{hours:g} h", hours * 3600)):
            path = Path(tmp) / "silence.wav"
            write_silence(path, seconds)
            for engine in engines:
                rss, wall = peak_rss_mb(path, threads, engine=engine, python=python)
                out.setdefault(engine, {})[label] = {"audio_seconds": seconds, "peak_rss_mb": round(rss, 1),
                                                     "wall_s": round(wall, 1)}
            path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--memory", action="store_true", help="also measure transcribe's peak RSS on long audio")
    ap.add_argument("--memory-hours", type=float, default=3.0)
    ap.add_argument("--no-speed", action="store_true", help="only the memory measurement")
    ap.add_argument("--engines", default="torch,transformers", help="transcribe --engine values to measure")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter whose fedw2v is measured (e.g. a venv with torch's CPU build)")
    args = ap.parse_args()
    result = {} if args.no_speed else speed(args)
    if args.memory:
        result["peak_rss"] = memory(args.memory_hours, args.threads, args.engines.split(","), args.python)
    print(json.dumps(result, indent=2))
    if "peak_rss" in result:
        m = result["peak_rss"]
        print(f"\nimport torch alone: {m['import_torch_mb']:.0f} MB ({m['import_torch_and_teardown_mb']:.0f} MB "
              "with the interpreter's teardown)", file=sys.stderr)
        for engine in args.engines.split(","):
            print(f"| {engine} | " + " | ".join(f"{v['peak_rss_mb']:,.0f} MB" for v in m[engine].values()) + " |",
                  file=sys.stderr)


def speed(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from fedw2v import beam
    from fedw2v.audio import load_audio
    from fedw2v.config.decode import DecodeConfig
    from fedw2v.decode import Chunks, Decoder, stitch_stream
    from fedw2v import plain_model
    from fedw2v.model import load_model, resolve

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        wav, model_dir = Path(tmp) / "audio.wav", Path(tmp) / "model"
        audio = make_audio(args.seconds, wav)
        params = make_model(model_dir)
        asr = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu", trust_remote_code=False)
        loaded = load_model(str(model_dir))
        dec = Decoder(loaded.model, loaded.processor, "cpu")
        plain = plain_model.load(resolve(str(model_dir)))
        dec_plain = Decoder(plain.model, plain.processor, "cpu")
        config = DecodeConfig(decoder="beam", lm=str(make_lm(Path(tmp))), beam_size=50)
        search = beam.for_model(beam.prepare(config), config, loaded)
        runs = {
            "hf-pipeline": lambda: asr({"raw": audio.copy(), "sampling_rate": 16000})["text"],
            "hf-pipeline-chunked": lambda: asr({"raw": audio.copy(), "sampling_rate": 16000}, chunk_length_s=30)["text"],
            "fedw2v": lambda: dec.transcribe(load_audio(wav)).text,
            "fedw2v-engine-torch": lambda: dec_plain.transcribe(load_audio(wav)).text,
            "fedw2v-one-pass": lambda: dec.transcribe(load_audio(wav), chunk_s=args.seconds + 1).text,
            "fedw2v-beam": lambda: dec.transcribe(load_audio(wav), beam=search).text,
        }
        # the beam search alone, over the stitched log-probabilities of the file (what beam adds to greedy)
        stitched = np.concatenate(list(stitch_stream(dec.emissions, Chunks([audio], dec.hop, 30.0, 1.0), dec.hop, 2)))
        runs["beam-search-only"] = lambda: search.decode(stitched)[0]
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        texts = {}
        for name, fn in runs.items():
            texts[name] = fn()  # warm-up
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    result = {
        "audio_seconds": args.seconds,
        "params": params,
        "threads": torch.get_num_threads(),
        "best_s": best,
        "median_s": med,
        "rtf_best": {k: v / args.seconds for k, v in best.items()},
        "ratio_fedw2v_vs_pipeline_best": best["fedw2v"] / best["hf-pipeline"],
        "ratio_fedw2v_vs_pipeline_median": med["fedw2v"] / med["hf-pipeline"],
        # --engine torch (fedw2v's plain-torch forward pass) against --engine transformers, same Decoder
        "ratio_engine_torch_vs_transformers_best": best["fedw2v-engine-torch"] / best["fedw2v"],
        "engine_torch_same_text": texts["fedw2v-engine-torch"] == texts["fedw2v"],
        "ratio_fedw2v_vs_pipeline_chunked_best": best["fedw2v"] / best["hf-pipeline-chunked"],
        # beam search + LM (size 50) against greedy, both through Decoder.transcribe, interleaved
        "ratio_beam_vs_greedy_best": best["fedw2v-beam"] / best["fedw2v"],
        "ratio_beam_vs_greedy_median": med["fedw2v-beam"] / med["fedw2v"],
        "ratio_beam_vs_greedy_per_repeat": [b / g for b, g in zip(times["fedw2v-beam"], times["fedw2v"])],
        # process CPU seconds (both threads), less sensitive than wall time to other jobs on a shared machine
        "best_cpu_s": best_cpu,
        "ratio_beam_vs_greedy_cpu_best": best_cpu["fedw2v-beam"] / best_cpu["fedw2v"],
        "beam_search_share_of_greedy": best["beam-search-only"] / best["fedw2v"],
        # One pass over the whole file, like the pipeline's default: the same frames, so the same text.
        "one_pass_same_text_as_pipeline": " ".join(texts["fedw2v-one-pass"].split())
        == " ".join(texts["hf-pipeline"].split()),
    }
    print(
        f"\n| {args.seconds:g} s audio, {params / 1e6:.0f}M params, CPU {result['threads']} threads | "
        f"hf-pipeline {best['hf-pipeline']:.2f} s (RTF {best['hf-pipeline'] / args.seconds:.3f}) | "
        f"hf-pipeline chunk 30 s {best['hf-pipeline-chunked']:.2f} s | "
        f"fedw2v {best['fedw2v']:.2f} s (RTF {best['fedw2v'] / args.seconds:.3f}) | "
        f"fedw2v one pass {best['fedw2v-one-pass']:.2f} s | fedw2v beam 50 + LM {best['fedw2v-beam']:.2f} s | "
        f"engine torch {best['fedw2v-engine-torch']:.2f} s | ratio {result['ratio_fedw2v_vs_pipeline_best']:.2f} | "
        f"beam / greedy {result['ratio_beam_vs_greedy_best']:.2f} "
        f"(CPU {result['ratio_beam_vs_greedy_cpu_best']:.2f}; the search alone {best['beam-search-only']:.2f} s) |",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
