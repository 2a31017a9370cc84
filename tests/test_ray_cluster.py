"""`fedw2v simulate --ray-address` on a real Ray cluster of two nodes on this machine (issue 12).

The fixture starts a head and a second node with `ray start` (one CPU each, a temp dir and ports of their own, each
in a process group of its own), and stops exactly those process groups afterwards: other Ray users on the machine
are never touched. The run must use both nodes (metrics.jsonl names the node of every client call), end its own
actors, and leave the cluster running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedw2v import runs
from fedw2v.fl.ray_runtime import answers, parse_address
from tests.test_simulate import _args, _env, _run

pytestmark = pytest.mark.slow


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _group(pgid: int) -> list[str]:
    """'pid cmdline' of the live processes of one process group."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) != pgid:
                    continue
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ProcessLookupError):
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(f"{entry} {cmd.strip()}")
    return found


def _ray_start(args: list[str], env: dict, groups: list[int]) -> str:
    """Run `ray start ARGS` in a new process group (recorded: its daemons stay in it); its output."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    groups.append(proc.pid)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    return out


def _stop(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _group(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture
def cluster():
    """(GCS address, [process group of the head, of the second node]); both stopped afterwards, by group."""
    temp = tempfile.mkdtemp(prefix="c", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_ENABLE_AUTO_CONNECT": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, client, dash, agent_a, agent_b = _ports(5)
    common = ["--num-cpus", "1", "--num-gpus", "0", "--temp-dir", temp, "--disable-usage-stats"]
    groups: list[int] = []
    try:
        head = _ray_start(["--head", "--port", str(gcs), "--include-dashboard", "false", "--dashboard-port", str(dash),
                           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_a),
                           *common], env, groups)
        address = re.search(r"ray start --address='([^']+)'", head).group(1)
        _ray_start(["--address", address, "--dashboard-agent-listen-port", str(agent_b), *common], env, groups)
        yield address, groups
    finally:
        for pgid in groups:
            _stop(pgid)
        shutil.rmtree(temp, ignore_errors=True)


def test_simulate_runs_on_both_nodes_of_a_cluster_and_leaves_it_running(fl_clients, tmp_path, cluster):
    address, groups = cluster
    env = _env(tmp_path)
    env.pop("RAY_ADDRESS", None)
    run = tmp_path / "runs" / "cluster"
    out = _run(_args(fl_clients, run, "--rounds", "2", "--ray-address", address), env)
    assert out.returncode == 0, out.stdout[-3000:]
    fits = [e for e in runs.read_metrics(run) if e["event"] == "fit"]
    assert len(fits) == 4 and all(e["error"] is None for e in fits)
    nodes = {e["ray_node"] for e in fits}
    assert len(nodes) == 2, nodes  # client calls ran on both nodes
    assert json.loads((run / "config.json").read_text())["ray_address"] == address

    # the cluster is still up: its GCS answers and both raylets run; fedw2v's actors are gone
    time.sleep(2.0)
    assert answers(*parse_address(address))
    for pgid in groups:
        alive = _group(pgid)
        assert any("raylet" in p for p in alive), alive
        assert not any("ClientAppActor" in p for p in alive), alive

    # RAY_ADDRESS is honoured only with the opt-in --ray-address auto
    env["RAY_ADDRESS"] = address
    again = _run(_args(fl_clients, tmp_path / "runs" / "auto", "--rounds", "1", "--ray-address", "auto"), env)
    assert again.returncode == 0, again.stdout[-3000:]
    fits = [e for e in runs.read_metrics(tmp_path / "runs" / "auto") if e["event"] == "fit"]
    assert fits and {e["ray_node"] for e in fits} <= nodes
    assert all(any("raylet" in p for p in _group(pgid)) for pgid in groups)
