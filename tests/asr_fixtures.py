"""Synthetic speech and manifests for the ASR tests (model, audio, train, decode, evaluate, transcribe).

Utterances are spoken by flite (16 kHz); each speaker's utterances are joined, with short silences, into one
"talk" file written as NIST SPHERE like TED-LIUM 3, and the manifest rows point into it by (start, end).
Everything is cached per test session (see the fixtures in conftest.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000
GAP_S = 0.3

# Short sentences made of common words: a handful is enough for the tiny model to learn them.
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "she has two red books",
    "we like to sing songs",
    "it 's a big blue sky",
    "my friend eats green apples",
]
TEST_SENTENCES = [
    "one two three four five",
    "the sun is very hot today",
    "open the door and come in",
]
DEV_SENTENCES = ["the dog sat on the red mat", "we like green books"]
# Longer than the 10 s training filter (voice rms: ~11 s): evaluate must still score it.
LONG_SENTENCE = (
    "this is a much longer sentence that keeps going for quite a while so that it lasts more than ten seconds "
    "when it is spoken slowly and clearly by the voice of the test speaker"
)


def have_flite() -> bool:
    return shutil.which("flite") is not None


def speak(text: str, voice: str = "slt", rate: int = SR) -> np.ndarray:
    """flite's rendering of ``text`` as float32 mono at ``rate`` (flite voices speak at 16 kHz; kal at 8)."""
    import tempfile

    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "u.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text.replace(" '", "'"), "-o", str(out)], check=True)
        audio, sr = sf.read(out, dtype="float32")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sr != rate:
        audio = soxr.resample(audio, sr, rate).astype(np.float32)
    return audio


def make_corpus(root: Path, talks: dict[str, list[str]], voice_of: dict[str, str] | None = None,
                split_of: dict[str, str] | None = None, normalization: str = "paper"):
    """Write one SPHERE file per talk and return a `Manifest` with one row per sentence.

    ``talks`` maps a talk id to its sentences; ``voice_of`` a talk id to a flite voice (default slt);
    ``split_of`` a talk id to its corpus split (default train).
    """
    from fedw2v import manifest
    from fedw2v.text import normalize

    root.mkdir(parents=True, exist_ok=True)
    cols: dict[str, list] = {k: [] for k in ("utt_id", "talk_id", "speaker", "gender", "split", "audio_path", "start",
                                             "end", "duration", "sample_rate", "num_channels", "text", "text_raw")}
    for talk, sentences in talks.items():
        voice = (voice_of or {}).get(talk, "slt")
        pieces, t = [np.zeros(int(GAP_S * SR), np.float32)], GAP_S
        times = []
        for s in sentences:
            a = speak(s, voice)
            times.append((round(t, 2), round(t + len(a) / SR, 2)))
            pieces += [a, np.zeros(int(GAP_S * SR), np.float32)]
            t += len(a) / SR + GAP_S
        rel = f"sph/{talk}.sph"
        (root / "sph").mkdir(exist_ok=True)
        sf.write(root / rel, np.concatenate(pieces), SR, format="NIST", subtype="PCM_16")
        for s, (start, end) in zip(sentences, times):
            cols["utt_id"].append(f"{talk}_{start:.2f}_{end:.2f}")
            cols["talk_id"].append(talk)
            cols["speaker"].append(talk.split("_")[0])
            cols["gender"].append("female" if voice == "slt" else "male")
            cols["split"].append((split_of or {}).get(talk, "train"))
            cols["audio_path"].append(rel)
            cols["start"].append(start)
            cols["end"].append(end)
            cols["duration"].append(end - start)
            cols["sample_rate"].append(SR)
            cols["num_channels"].append(1)
            cols["text"].append(normalize(s, normalization))
            cols["text_raw"].append(s)
    info = manifest.ManifestInfo(corpus_root=str(root.resolve()), normalization=normalization, command="tests")
    return manifest.Manifest(manifest.from_rows(cols), info)


def learn_config():
    """The recipe of the learning test: the `tiny` recipe (AdamW, warm-up) with a higher rate, batches of 3,
    120 epochs over the 6 train sentences = 240 optimizer steps."""
    from fedw2v.config.train import recipe

    return recipe("tiny", epochs=120, max_batch_size=3, lr_encoder=3e-3, lr_head=3e-3, warmup_steps=50, seed=0)


def train_tiny(m, out_dir: Path):
    """Train the `tiny` preset on the manifest's train split and save it; (dir, metrics, cer before, cer after).

    One torch thread: on 2 CPU cores shared with other jobs, 2 threads took 253 s where 1 took 37 s.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny(m, out_dir)
    finally:
        torch.set_num_threads(threads)


def _train_tiny(m, out_dir: Path):
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.model import load_model, save_model
    from fedw2v.train import greedy_cer, local_train

    utts = utterances_from_manifest(m, split="train")
    loaded = load_model("tiny", [u.text for u in utts], seed=0)
    before = greedy_cer(loaded.model, loaded.processor, utts)
    metrics = local_train(loaded.model, loaded.processor, utts, learn_config())
    after = greedy_cer(loaded.model, loaded.processor, utts)
    loaded.model.to("cpu")
    return save_model(loaded.model, loaded.processor, out_dir), metrics, before, after


def synth_clients(root: Path, synth_args: list[str], partition_args: list[str] = ()) -> Path:
    """`fedw2v synth ROOT/corpus SYNTH_ARGS`, `prepare`, then `partition PARTITION_ARGS` through the CLI, as a user
    runs them; returns ROOT/clients.parquet (ROOT/manifest.parquet beside it)."""
    from typer.testing import CliRunner

    from fedw2v.cli import app

    runner = CliRunner()
    for args in (
        ["synth", str(root / "corpus"), *synth_args],
        ["prepare", str(root / "corpus"), "-o", str(root / "manifest.parquet")],
        ["partition", str(root / "manifest.parquet"), "-o", str(root / "clients.parquet"), *partition_args],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return root / "clients.parquet"
