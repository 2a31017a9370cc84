"""A writer killed during an atomic write leaves its temporary file; the next write to the same target removes it
(issue 11), and never a running writer's temporary or another target's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedw2v.atomic import LEGACY_STALE_SECONDS, atomic_file, remove_stale_temporaries

WRITER = """
import sys, time
from fedw2v.atomic import atomic_file
with atomic_file(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of it")
    print("writing", flush=True)
    time.sleep(600)
"""


def _writer(target: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "writing"  # inside the write, its temporary on disk
    return proc


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def test_the_temporary_of_a_killed_writer_goes_with_the_next_write(tmp_path):
    target = tmp_path / "config.json"
    killed = _writer(target)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stale = _temporaries(target)
    assert len(stale) == 1 and stale[0].read_bytes() == b"half of it" and not target.exists()

    running = _writer(target)  # a writer still at work: its temporary must survive the next write
    try:
        live = [p for p in _temporaries(target) if p not in stale]
        other = tmp_path / f".{target.name}.x.{killed.pid}@host-abcdefgh.tmp"  # the target "config.json.x"
        other.write_bytes(b"not ours")
        with atomic_file(target) as tmp:
            tmp.write_text("{}")
        assert target.read_text() == "{}"
        assert not stale[0].exists()  # the killed writer's, removed
        assert live and all(p.exists() for p in live)  # the running writer's, kept
        assert other.exists()
    finally:
        running.kill()
        running.wait()


def test_another_hosts_temporary_is_kept_and_an_old_pidless_one_removed(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("")
    elsewhere = tmp_path / f".{target.name}.1@another-host-abcdefgh.tmp"  # a shared run dir: not our process
    old = tmp_path / f".{target.name}.abcd1234.tmp"  # the name older versions used, no pid
    fresh = tmp_path / f".{target.name}.efgh5678.tmp"
    for p in (elsewhere, old, fresh):
        p.write_text("x")
    past = time.time() - LEGACY_STALE_SECONDS - 60
    os.utime(old, (past, past))
    assert remove_stale_temporaries(target) == [old]
    assert elsewhere.exists() and fresh.exists()
