"""`fedw2v simulate` never hangs (issue 11), with real processes: Ctrl-C during Ray's start-up and during round 1,
Ray dying under a run (then `--resume`), and the clusters a run must not join by accident (a stale
`ray_current_cluster` file, a RAY_ADDRESS left in the environment).

Every run gets its own RAY_TMPDIR (other Ray users on the machine are not touched) and runs in its own session,
so a test can signal it as a terminal would (the whole process group) and find every process it left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fedw2v import runs
from tests.test_simulate import _args, _env, _ray_processes, _run

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    """The test's environment with a Ray temp dir of its own (short: Ray's socket paths must stay < 108 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = _env(tmp_path)
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = ray_tmp
    yield env
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)


def _start(args: list[str], env: dict, out: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "the moment the test waits for never came"
        time.sleep(0.02)


def _ended_within(proc: subprocess.Popen, seconds: float) -> float:
    t0 = time.monotonic()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running {seconds} s later")
    return time.monotonic() - t0


def _no_process_left(proc: subprocess.Popen) -> None:
    time.sleep(1.0)
    left = _ray_processes(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def _latest(run: Path) -> str | None:
    latest = run / "checkpoints" / "LATEST"
    return latest.read_text().strip() if latest.is_file() else None


def _session_started(env: dict) -> bool:
    root = Path(env["RAY_TMPDIR"]) / "ray"
    return root.is_dir() and any(p.name.startswith("session_2") for p in root.iterdir())


def _stopped_in_one_line(proc: subprocess.Popen, out: Path, run: Path, endpoint: str, within: float) -> None:
    """The run ended within `within` s, exit 1, with one line naming the silent `endpoint` and the intact
    checkpoint round-0000, no traceback, and no process left behind."""
    took = _ended_within(proc, 90)
    output = out.read_text()
    assert proc.returncode == 1, output[-3000:]
    assert took < within, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: Ray stopped: its {endpoint} at") and "stopped answering" in last, output[-4000:]
    assert "the run stopped at its checkpoint round-0000 (continue it with --resume" in last
    assert "Traceback" not in output
    assert _latest(run) == "round-0000"
    _no_process_left(proc)


def test_ctrl_c_while_ray_starts_ends_the_command_within_seconds(fl_clients, tmp_path, env):
    proc = _start(_args(fl_clients, tmp_path / "runs" / "a"), env, tmp_path / "out.txt")
    _wait_for(proc, lambda: _session_started(env))  # ray.init is forking Ray's processes now
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    took = _ended_within(proc, 20)
    assert proc.returncode == 130, (tmp_path / "out.txt").read_text()[-2000:]
    assert took < 15
    _no_process_left(proc)


def test_ctrl_c_in_round_1_ends_the_command_within_seconds_with_its_checkpoint(fl_clients, tmp_path, env):
    run = tmp_path / "runs" / "b"
    proc = _start(_args(fl_clients, run), env, tmp_path / "out.txt")
    _wait_for(proc, lambda: _latest(run) == "round-0000")
    time.sleep(2.0)  # round 1's clients are training
    os.killpg(proc.pid, signal.SIGINT)
    took = _ended_within(proc, 30)
    output = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 130, output[-2000:]
    assert took < 10, output[-2000:]
    assert "Traceback" not in output and "Exception ignored" not in output
    assert _latest(run) == "round-0000"
    _no_process_left(proc)


def test_ray_dying_mid_round_stops_the_run_in_one_line_and_resume_continues(fl_clients, tmp_path, env):
    run = tmp_path / "runs" / "c"
    args = _args(fl_clients, run, "--rounds", "2")
    proc = _start(args, env, tmp_path / "out.txt")
    _wait_for(proc, lambda: _latest(run) == "round-0000")
    time.sleep(1.0)
    ray = [int(line.split()[0]) for line in _ray_processes(proc.pid)]
    assert ray, "no Ray process found"
    for pid in ray:  # Ray dies (OOM killer, a node lost): every Ray process, not the command
        os.kill(pid, signal.SIGKILL)
    # Ray itself would only give up after 60 s, with a fatal log line and no message of ours
    _stopped_in_one_line(proc, tmp_path / "out.txt", run, "GCS", within=60)

    resumed = _run([*args, "--resume"], env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    ends = [e["round"] for e in runs.read_metrics(run) if e["event"] == "round_end"]
    assert ends == [0, 1, 2]  # each round logged once


def test_a_raylet_that_hangs_mid_round_stops_the_run_in_one_line(fl_clients, tmp_path, env):
    """A raylet that is stopped (or hung) still has its port accepted by the kernel: a TCP probe saw it alive and
    the run stalled until Ray marked the node dead (~50 s), then ended with exit 1 and no message of ours. The
    health check sees it silent: one line, exit 1, its checkpoint intact, the stopped raylet killed too."""
    run = tmp_path / "runs" / "h"
    proc = _start(_args(fl_clients, run, "--rounds", "2"), env, tmp_path / "out.txt")
    _wait_for(proc, lambda: _latest(run) == "round-0000")
    raylets = [int(line.split()[0]) for line in _ray_processes(proc.pid) if "raylet/raylet" in line]
    assert len(raylets) == 1, _ray_processes(proc.pid)
    os.kill(raylets[0], signal.SIGSTOP)
    # DEAD_AFTER (10 s) and a few probes, not Ray's own ~50 s
    _stopped_in_one_line(proc, tmp_path / "out.txt", run, "raylet", within=45)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("left_over", ["cluster file", "RAY_ADDRESS"])
def test_without_ray_address_a_left_over_cluster_is_never_joined(fl_clients, tmp_path, env, left_over):
    """After a `ray start --head` whose processes were killed, ray_current_cluster still names the dead head, and a
    plain ray.init() joins it (or fails: "When connecting to an existing cluster, num_cpus and num_gpus must not be
    provided"); a RAY_ADDRESS in the environment does the same. simulate starts its own local Ray."""
    dead = f"127.0.0.1:{_dead_port()}"
    if left_over == "cluster file":
        (Path(env["RAY_TMPDIR"]) / "ray").mkdir()
        (Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").write_text(dead)
    else:
        env["RAY_ADDRESS"] = dead
    run = tmp_path / "runs" / "d"
    out = _run(_args(fl_clients, run, "--rounds", "1"), env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    warned = f"warning: RAY_ADDRESS={dead} is set but ignored: simulate starts its own local Ray" in out.stdout
    assert warned is (left_over == "RAY_ADDRESS")
    fits = [e for e in runs.read_metrics(run) if e["event"] == "fit"]
    assert len(fits) == 2 and all(e["error"] is None and e["ray_node"] for e in fits)
    assert json.loads((run / "config.json").read_text())["ray_address"] == ""
