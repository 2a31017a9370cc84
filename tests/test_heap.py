"""fedw2v.heap.keep_freed_memory: within it a freed large block is reused without page faults, after it the
memory goes back to the kernel; `local_train` keeps freed memory on the CPU unless told not to, with the same
numbers either way."""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import subprocess
import sys

import pytest
import torch

from fedw2v import heap, train
from fedw2v.batching import utterances_from_manifest
from fedw2v.config.train import recipe
from fedw2v.model import load_model

glibc_only = pytest.mark.skipif(heap.glibc() is None, reason="mallopt is glibc's")

# In a fresh process (an allocator setting is process-wide): minor page faults of allocating, filling and freeing
# 64 MiB twice outside the block and twice inside it, and the resident size inside and after it.
_PROBE = """
import json, re, resource
import numpy as np
from fedw2v.heap import keep_freed_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mb():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

def cycle():
    before = faults()
    block = np.ones(64 * 2**20 // 8)
    del block
    return faults() - before

out = {"outside": [cycle(), cycle()]}
with keep_freed_memory() as on:
    out.update(on=on, inside=[cycle(), cycle()], rss_inside=rss_mb())
out.update(after=[cycle()], rss_after=rss_mb())
print(json.dumps(out))
"""


@glibc_only
def test_a_freed_block_is_reused_without_page_faults_and_given_back_at_the_end():
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    out = json.loads(res.stdout)
    assert out["on"] is True
    first = out["outside"][0]
    assert first >= 30 and out["outside"][1] >= first // 2  # glibc's default: every block faults in afresh
    assert out["inside"][1] <= first // 10  # kept: the second 64 MiB reuses the first one's pages
    assert out["after"][0] >= first // 2  # glibc's limits are back
    assert out["rss_after"] <= out["rss_inside"] - 48  # malloc_trim gave the kept 64 MiB back


def test_off_or_another_c_library_changes_nothing(monkeypatch):
    with heap.keep_freed_memory(False) as on:
        assert on is False
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert heap.glibc() is None
    with heap.keep_freed_memory() as on:
        assert on is False


@pytest.fixture(scope="module")
def train_utts(asr_corpus):
    return utterances_from_manifest(asr_corpus[0], split="train")[:8]


def test_local_train_keeps_freed_memory_on_the_cpu_unless_told_not_to_with_the_same_numbers(train_utts, monkeypatch):
    asked: list[bool] = []
    real = heap.keep_freed_memory

    @contextlib.contextmanager
    def recording(on: bool = True):
        asked.append(on)
        with real(on) as active:
            yield active

    monkeypatch.setattr(train, "keep_freed_memory", recording)
    base = load_model("tiny", [u.text for u in train_utts], seed=0)
    weights = {}
    for keep in (True, False):
        model = copy.deepcopy(base.model)
        config = recipe("tiny", device="cpu", seed=3, epochs=1, max_batch_size=4, keep_freed_memory=keep)
        assert train.local_train(model, base.processor, train_utts, config).steps > 0
        weights[keep] = model.state_dict()
    assert asked == [True, False]
    assert recipe("tiny").keep_freed_memory and recipe("paper").keep_freed_memory  # on by default
    for key, value in weights[True].items():
        assert torch.equal(value, weights[False][key]), key
