"""`fedw2v simulate` on Flower's Ray-backed simulation engine (real Ray, real processes, CPU, tiny preset).

Each run is a `fedw2v` subprocess in its own session, so a test can SIGKILL it with everything it started,
and check that a finished run leaves no Ray process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedw2v import runs
from fedw2v.fl.server_app import TIMING_KEYS

pytestmark = pytest.mark.slow

RAY_PROCESS_MARKS = ("raylet", "gcs_server", "ray::", "ray/dashboard", "log_monitor.py")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=str(tmp_path / "flwr-home"),
               FEDW2V_RUNS=str(tmp_path / "runs"), COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


def _args(clients: Path, run_dir: Path, *extra: str) -> list[str]:
    exe = str(Path(sys.executable).with_name("fedw2v"))
    return [exe, "simulate", str(clients), "--run-dir", str(run_dir), "--model", "tiny", "--recipe", "tiny",
            "--rounds", "4", "--clients-per-round", "2", "--local-epochs", "1", "--local-steps", "2",
            "--batch-size", "8", "--no-newbob", "--cpus-per-client", "1", "--seed", "5", *extra]


def _ray_processes(session: int | None = None) -> list[str]:
    """Ray processes alive now (of one session id, if given)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            sid = os.getsid(int(pid))
        except (OSError, ProcessLookupError):
            continue
        if any(m in cmd for m in RAY_PROCESS_MARKS) and (session is None or sid == session):
            found.append(f"{pid} {cmd[:120]}")
    return found


def _run(args: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"simulate timed out:\n{out[-3000:]}")
    finally:
        leftovers = _ray_processes(proc.pid)
        if leftovers:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not leftovers, f"Ray processes left behind: {leftovers}"
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def _round_events(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings and Ray node ids (facts of one run's machines, not of its training)."""
    drop = (*TIMING_KEYS, "ray_node")
    return [{k: v for k, v in e.items() if k not in drop} for e in runs.read_metrics(run_dir) if "round" in e]


def test_sigkill_after_round_2_then_resume_equals_an_uninterrupted_run(fl_clients, tmp_path):
    env = _env(tmp_path)
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"

    done = _run(_args(fl_clients, a), env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "best" in done.stdout and "round 4/4" in done.stdout  # summary table and the live status line
    assert (tmp_path / "runs" / "latest").resolve() == a.resolve()  # evaluate/transcribe find it by default

    proc = subprocess.Popen(_args(fl_clients, b), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = b / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == "round-0002":
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, Ray and its workers, mid-round 3
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed after round 2"
    time.sleep(1)
    assert not _ray_processes(proc.pid)
    assert latest.read_text().strip() == "round-0002"

    resumed = _run(_args(fl_clients, b, "--resume"), env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming after round 2" in resumed.stdout
    wa = load_file(str(a / "checkpoints" / "round-0004" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "round-0004" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)  # bit-identical
    ea, eb = _round_events(a), _round_events(b)
    assert ea == eb
    assert [e["round"] for e in eb if e["event"] == "round_end"] == [0, 1, 2, 3, 4]  # each round once
    fits = [e for e in eb if e["event"] == "fit"]
    assert fits and all(e["error"] is None for e in fits)
    assert max(e["worker_builds"] for e in fits) == 1  # each worker built its model once
    assert {e["worker_threads"] for e in fits} == {1}  # --cpus-per-client 1
    assert (b / "plots" / "wer.png").is_file()


def test_a_client_in_a_ray_worker_trains_with_exactly_cpus_per_client_torch_threads(fl_clients, tmp_path):
    """Ray sets OMP_NUM_THREADS to an actor's cores only when the process has none: here the command inherits
    OMP_NUM_THREADS=1, and the clients still train with --cpus-per-client 2 threads (capped at the cores)."""
    env = _env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    run = tmp_path / "runs" / "threads"
    out = _run(_args(fl_clients, run, "--rounds", "1", "--clients-per-round", "2", "--local-steps", "1",
                     "--cpus-per-client", "2", "--eval-every", "2"), env)
    assert out.returncode == 0, out.stdout[-3000:]
    fits = [e for e in runs.read_metrics(run) if e.get("event") == "fit"]
    assert len(fits) == 2 and all(e["error"] is None for e in fits)
    assert {e["worker_threads"] for e in fits} == {min(2, os.cpu_count() or 1)}


def test_resume_with_other_options_is_refused_naming_them(fl_clients, tmp_path):
    env = _env(tmp_path)
    run = tmp_path / "runs" / "c"
    run.mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "LATEST").write_text("round-0001\n")
    # config.json of a run made with --local-epochs 1 and --seed 5 ...
    from fedw2v.config.simulate import SimulateConfig

    recorded = SimulateConfig(clients_manifest=str(fl_clients.resolve()), run_dir=str(run.resolve()), model="tiny",
                              recipe="tiny", rounds=4, clients_per_round=2, local_epochs=1, local_steps=2,
                              batch_size=8, newbob=False, cpus_per_client=1, seed=5, lr_encoder=2e-3, lr_head=2e-3)
    runs.write_json_atomic(run / "config.json", recorded.to_dict())
    before = (run / "config.json").read_bytes()
    # ... resumed with --seed 6 and --local-epochs 2 (more rounds are allowed)
    args = _args(fl_clients, run, "--resume", "--seed", "6", "--local-epochs", "2", "--rounds", "6")
    out = _run(args, env, timeout=120)
    assert out.returncode == 2, out.stdout
    assert "cannot resume with a different configuration: local_epochs, seed differ from config.json" in out.stdout
    assert "Traceback" not in out.stdout
    assert (run / "config.json").read_bytes() == before  # the refused resume changed nothing
    assert not (run / "metrics.jsonl").exists() and runs.checkpoint_rounds(run) == []


def test_too_few_successes_is_a_one_line_failure_with_exit_code_1(fl_clients, tmp_path):
    import shutil

    from fedw2v import manifest as mf

    env = _env(tmp_path)
    m = mf.read(fl_clients)
    root = tmp_path / "corpus"
    shutil.copytree(m.info.corpus_root, root, symlinks=True)
    for row in m.table.to_pylist():
        if row["client_id"] is not None:  # every client's audio is unreadable; dev/test stay fine
            target = (root / row["audio_path"]).resolve()
            target.unlink(missing_ok=True)
            target.write_bytes(b"not audio")
    run = tmp_path / "runs" / "e"
    out = _run(_args(fl_clients, run, "--rounds", "2", "--corpus-root", str(root)), env)
    assert out.returncode == 1, out.stdout[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("error: round 1: 0 of 2 clients succeeded, 1 needed"), last
    assert "cannot read audio" in last and "Traceback" not in out.stdout
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0000"


def test_a_dp_run_killed_and_resumed_ends_with_the_same_weights_and_epsilon(fl_clients, tmp_path):
    """--dp central on real Ray workers (Flower's fixedclipping_mod runs in the ClientApp): SIGKILL after round 1,
    --resume, and the weights and every ε equal an uninterrupted run's (the server's noise generator and the
    accountant come back from state.json; --dp-noise-seed makes the uninterrupted run's noise repeatable)."""
    import json

    env = _env(tmp_path)
    dp = ["--rounds", "2", "--dp", "central", "--dp-noise-multiplier", "0.8", "--dp-clip", "0.01",
          "--dp-noise-seed", "4"]
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    done = _run(_args(fl_clients, a, *dp), env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "ε" in done.stdout and "(--dp central, z 0.8, C 0.01)" in " ".join(done.stdout.split())

    proc = subprocess.Popen(_args(fl_clients, b, *dp), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    latest = b / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == "round-0001":
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed after round 1"
    resumed = _run(_args(fl_clients, b, *dp, "--resume"), env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    wa = load_file(str(a / "checkpoints" / "round-0002" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "round-0002" / "model.safetensors"))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    ea, eb = _round_events(a), _round_events(b)
    assert ea == eb
    eps = [e["epsilon"] for e in eb if e["event"] == "privacy"]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
    assert json.loads((b / "config.json").read_text())["extra"]["privacy"]["epsilon"] == eps[1]
