"""The benchmark scripts stay runnable (tiny sizes here; BENCHMARKS.md has the real figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_aggregate_benchmark_builds_wav2vec2_base_and_agrees_with_flower():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import aggregate
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    shapes = aggregate.base_shapes(95e6)
    assert len([k for k in shapes if k.endswith("q_proj.weight")]) == 12  # wav2vec2-base's blocks
    assert 90e6 < sum(int(np.prod(s)) for s in shapes.values()) <= 95e6
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "aggregate.py"), "--clients", "3", "--params",
                          "8e6", "--repeat", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max |fedw2v - Flower| = 0.00e+00" in out.stdout and "ratio fedw2v / Flower Message API" in out.stdout


def _bench(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_local_train_benchmark_runs_fedw2v_and_trainer_side_by_side(asr_corpus, tmp_path):
    """Tiny settings: the packaged model and a base-size random init on 2-6 utterances, one epoch, one thread.
    transformers.Trainer needs accelerate: without it the script says so in one line and fedw2v runs alone."""
    import importlib.util

    from fedw2v.device import cpu_bf16_feature

    has_trainer = importlib.util.find_spec("accelerate") is not None
    sides = "fedw2v,trainer" if has_trainer else "fedw2v"
    precisions = "fp32,bf16" if cpu_bf16_feature() else "fp32"
    out = tmp_path / "bench.json"
    res = _bench("local_train.py", "--manifest", str(asr_corpus[1]), "--models", "tiny-pretrained,base",
                 "--base-utterances", "2", "--epochs", "1", "--batch", "4", "--repeat", "1", "--threads", "1",
                 "--precisions", precisions, "--sides", sides, "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    expected = {(m, s, p) for m in ("tiny-pretrained", "base") for s in sides.split(",") for p in precisions.split(",")}
    assert {(r["model"], r["side"], r["precision"]) for r in runs} == expected
    assert all(r["utterances_per_second"] > 0 and 0 <= r["padded_fraction"] < 1 for r in runs)
    assert "| tiny-pretrained | 1 | fedw2v | fp32 |" in res.stdout
    if not has_trainer:
        res = _bench("local_train.py", "--manifest", str(asr_corpus[1]), "--sides", "trainer")
        assert res.returncode == 1 and "needs the accelerate package" in res.stderr
    res = _bench("local_train.py", "--manifest", str(asr_corpus[1]), "--models", "tiny-pretrained", "--threads", "1",
                 "--precisions", "fp32", "--batch", "3", "--profile")
    assert res.returncode == 0, res.stderr[-3000:]
    for phase in ("audio read + labels", "collation", "forward", "backward", "clip + optimizer"):
        assert f"| {phase} |" in res.stdout
    assert "aten::" in res.stdout


def test_cpu_heap_benchmark_measures_both_allocator_settings_in_fresh_processes(tmp_path):
    from fedw2v.heap import glibc

    out = tmp_path / "heap.json"
    res = _bench("cpu_heap.py", "--model", "tiny", "--steps", "2", "--batch", "2", "--seconds", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    off, on = json.loads(out.read_text())
    assert off["keep_freed_memory"] is False and on["keep_freed_memory"] is (glibc() is not None)
    assert all(r["steps_after_first_s"] > 0 and r["minor_faults"] > 0 and r["peak_rss_mb"] > 0 for r in (off, on))
    assert "| freed memory kept |" in res.stdout and "ratio kept / defaults" in res.stdout


def test_audio_gradient_benchmark_times_both_sides_after_checking_their_gradients_are_equal(tmp_path):
    out = tmp_path / "audio.json"
    res = _bench("audio_gradient.py", "--model", "tiny", "--threads", "1", "--repeat", "1", "--batch", "2",
                 "--seconds", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]  # it stops on gradients that differ
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == {"audio gradient", "skipped"}
    assert all(m["first layer"] > 0 and m["step"] > 0 for m in medians.values())
    assert "| skipped |" in res.stdout and "step time saved" in res.stdout


def test_cpu_kernels_benchmark_times_both_kernels_after_checking_they_agree(tmp_path):
    out = tmp_path / "kernels.json"
    res = _bench("cpu_kernels.py", "--model", "small", "--threads", "1", "--repeat", "1", "--seconds", "1",
                 "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]  # it stops on outputs or gradients that differ
    got = json.loads(out.read_text())
    assert set(got["pos_conv_ms"]["1.0"]) == {"transformers", "fedw2v"} and set(got["adamw_ms"]) == {
        "per-parameter", "fused"}
    assert set(got["input_gradient_ms"]["1.0"]) == {"backward kernel", "forward kernel, flipped"}
    assert all(v > 0 for v in [*got["pos_conv_ms"]["1.0"].values(), *got["adamw_ms"].values(),
                               *got["input_gradient_ms"]["1.0"].values()])
    assert "positional convolution, 8 x 1 s" in res.stdout and "AdamW step" in res.stdout


def test_cpu_bf16_benchmark_compares_error_rates_after_the_same_steps(asr_corpus, tmp_path):
    from fedw2v.device import cpu_bf16_feature

    out = tmp_path / "bf16.json"
    res = _bench("cpu_bf16.py", "--manifest", str(asr_corpus[1]), "--seeds", "0", "--max-steps", "1", "--json",
                 str(out))
    if not cpu_bf16_feature():
        assert res.returncode == 1 and "no bf16 instructions" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["precision"] for r in runs) == ["bf16", "fp32"] and all(r["steps"] == 1 for r in runs)
    assert all(0 <= r["cer"] for r in runs) and "bf16 speed-up by CPU time" in res.stdout


def test_transcribe_benchmark_measures_peak_memory_of_fresh_processes():
    """The memory part of benchmarks/transcribe.py at a small size (the speed part needs the base model)."""
    import json
    import os

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transcribe.py"), "--no-speed", "--memory",
                          "--memory-hours", "0.02"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout)["peak_rss"]
    assert 100 < rss["import_torch_mb"] < 10_000
    for engine in ("torch", "transformers"):  # both engines, side by side
        assert list(rss[engine]) == ["1 s", "1 min", "0.02 h"] and rss[engine]["0.02 h"]["audio_seconds"] == 72
        assert all(rss["import_torch_mb"] < r["peak_rss_mb"] < 10_000 for r in rss[engine].values())


@pytest.mark.timeout(1800)
def test_scale_benchmark_builds_equal_clients_and_compares_two_sizes(asr_corpus, tmp_path):
    """benchmarks/scale_clients.py at a tiny size (2 and 4 clients, 2 per round, 3 rounds): its clients manifests
    give every client 1 or 2 train utterances of the same pool whatever the number of clients, and it reports
    startup, round and client-call seconds and the server's peak RSS per size, with the ratios."""
    from fedw2v import manifest as mf

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale_clients
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    source = asr_corpus[1]
    many = mf.read(scale_clients.clients_manifest(source, tmp_path / "c50.parquet", 50))
    train = many.table.filter(many.table.column("split").to_numpy(zero_copy_only=False) == "train").to_pylist()
    per_client = {}
    for row in train:
        per_client.setdefault(row["client_id"], []).append(row)
    assert sorted(per_client) == list(range(50)) and {len(v) for v in per_client.values()} == {1, 2}
    assert len({r["utt_id"] for r in train}) == len(train)  # a reused row gets a new utterance id
    def segment(r: dict) -> tuple:
        return r["audio_path"], r["start"], r["end"]

    pool = {segment(r) for r in asr_corpus[0].table.to_pylist() if r["split"] == "train"}
    assert {segment(r) for r in train} == pool  # 50 clients draw from all 6 train utterances, and only those
    rest = sorted(r["utt_id"] for r in many.table.to_pylist() if r["split"] != "train")
    assert rest == sorted(r["utt_id"] for r in asr_corpus[0].table.to_pylist() if r["split"] != "train")
    out = tmp_path / "scale.json"
    res = _bench("scale_clients.py", "--manifest", str(source), "--sizes", "2,4", "--per-round", "2", "--rounds", "3",
                 "--repeat", "1", "--flower-nodes", "--json", str(out), timeout=1700)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert set(got["medians"]) == {"2", "4"}
    for m in got["medians"].values():
        assert m["startup"] > 0 and m["round"] > 0 and m["client"] > 0 and m["rss"] > 100 * 2**20
    assert got["medians"]["2"]["round_ratio"] == 1.0 and "round ratio" in res.stdout
    assert set(got["flower_poll_seconds"]) == {"10", "2000"}


def test_peak_rss_of_a_child_does_not_count_the_measuring_process(tmp_path):
    """Linux carries a parent's RSS high-water mark into a forked child across exec: measured from a process
    holding 1 GB (as the speed part, with its 95M model, does), a child that allocates nothing read ~1 GB."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_transcribe", ROOT / "benchmarks" / "transcribe.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ballast = np.ones(1 << 30, dtype=np.uint8)  # 1 GiB, touched
    rss, _ = bench.peak_rss_mb(tmp_path / "unused.wav", None, [sys.executable, "-c", "pass"])
    assert ballast[-1] == 1 and 1 < rss < 200
