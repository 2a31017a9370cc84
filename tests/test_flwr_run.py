"""The same ServerApp/ClientApp under `flwr run` (pyproject.toml declares the Flower app), on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedw2v import runs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live(marks: tuple[str, ...], also: str = "") -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(m in cmd for m in marks) and also in cmd:
            found.append(f"{pid} {cmd[:100]}")
    return found


def test_flwr_run_on_a_local_simulation_superlink(fl_clients, tmp_path):
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()))
    run = tmp_path / "flwr-run"
    out = subprocess.run([str(ROOT / "examples" / "flwr_run.sh"), str(fl_clients), str(run), "rounds=1"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "deprecated" not in out.stdout + out.stderr  # Flower's current way to shape a local simulation
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0001"
    events = runs.read_metrics(run)
    assert [e["round"] for e in events if e["event"] == "round_end"] == [0, 1]
    assert all(e["error"] is None for e in events if e["event"] == "fit")
    config = runs.read_json(run / "config.json")
    assert config["model"] == "tiny" and config["rounds"] == 1  # pyproject defaults + --run-config overrides
    assert not _live(("flower-superlink",), str(home)), "the SuperLink was left running"
    # the simulation process shuts Ray down when the run ends; its workers take a moment to exit
    deadline = time.monotonic() + 30
    while _live(("raylet", "gcs_server", "ray::", "flwr-simulation")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _live(("raylet", "gcs_server", "ray::", "flwr-simulation"))
