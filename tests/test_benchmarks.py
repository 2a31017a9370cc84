"""The benchmark scripts stay runnable (tiny sizes here; BENCHMARKS.md has the real figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_transcribe_benchmark_measures_peak_memory_of_fresh_processes():
    """The memory part of benchmarks/transcribe.py at a small size (the speed part needs the base model)."""
    import json
    import os

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transcribe.py"), "--no-speed", "--memory",
                          "--memory-hours", "0.02"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout)["peak_rss"]
    assert list(rss) == ["1 s", "1 min", "0.02 h"] and rss["0.02 h"]["audio_seconds"] == 72
    assert all(100 < r["peak_rss_mb"] < 10_000 for r in rss.values())
