"""Issue 11/12 without a Ray run: which Ray `simulate` uses, how it notices a dead one, Ctrl-C that Ray's forks
swallow, and everything checked before Ray starts (the real CLI, in a subprocess: Ray must not start at all)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedw2v.errors import InputError
from fedw2v.fl import ray_runtime as rr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ which Ray


def test_without_ray_address_the_run_always_gets_a_local_ray_of_its_own(tmp_path):
    stale = tmp_path / "ray"
    stale.mkdir()
    (stale / "ray_current_cluster").write_text("127.0.0.1:9\n")  # a head whose processes were killed
    assert rr.choose("", {"RAY_TMPDIR": str(tmp_path)}) == rr.Target()  # the file is never read
    target = rr.choose("", {"RAY_ADDRESS": "10.1.2.3:6379"})
    assert target.local and "RAY_ADDRESS=10.1.2.3:6379 is set but ignored" in target.warning
    assert "--ray-address auto" in target.warning
    assert rr.choose("local", {"RAY_ADDRESS": "10.1.2.3:6379"}) == rr.Target()  # explicitly local: no warning


def test_an_address_or_auto_joins_a_cluster(tmp_path):
    assert rr.choose("10.0.0.5:6379", {"RAY_ADDRESS": "10.9.9.9:1"}) == rr.Target("10.0.0.5:6379", "--ray-address")
    assert rr.choose("auto", {"RAY_ADDRESS": "10.0.0.7:6379"}) == rr.Target("10.0.0.7:6379", "RAY_ADDRESS")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.8:6380\n")
    env = {"RAY_TMPDIR": str(tmp_path)}
    assert rr.choose("auto", env) == rr.Target("10.0.0.8:6380", str(tmp_path / "ray" / "ray_current_cluster"))
    with pytest.raises(InputError, match="RAY_ADDRESS is not set and no cluster was started here"):
        rr.choose("auto", {"RAY_TMPDIR": str(tmp_path / "none")})
    for bad in ("nonsense", "host:", ":6379", "host:99999", "ray://head:10001"):
        with pytest.raises(InputError, match="--ray-address"):
            rr.choose(bad, {})


def test_a_cluster_that_does_not_answer_is_one_line_before_anything_starts():
    runtime = rr.RayRuntime(rr.Target(f"127.0.0.1:{_free_port()}", "RAY_ADDRESS"))
    with pytest.raises(InputError, match=r"no Ray cluster answers at 127\.0\.0\.1:\d+ \(from RAY_ADDRESS\)"):
        runtime.check_reachable()
    rr.RayRuntime(rr.Target()).check_reachable()  # a local Ray: nothing to reach


def _health_server(status: str = "SERVING"):
    """A gRPC server with the standard health service (as Ray's GCS and raylets have); returns (server, port)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", getattr(health_pb2.HealthCheckResponse, status))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_ray_counts_as_dead_only_after_its_endpoints_stay_silent():
    server, port = _health_server()
    runtime = rr.RayRuntime(rr.Target(), endpoints={"GCS": ("127.0.0.1", port)})
    assert runtime.dead(now=0.0) == ""
    server.stop(None).wait()  # the GCS dies
    assert runtime.dead(now=100.0) == ""  # silent since 100 s
    assert runtime.dead(now=100.0 + rr.DEAD_AFTER - 1) == ""
    assert runtime.dead(now=100.0 + rr.DEAD_AFTER) == f"Ray stopped: its GCS at 127.0.0.1:{port} stopped answering"


def test_a_raylet_that_accepts_connections_but_does_not_answer_counts_as_silent():
    """A stopped or hung process: the kernel still completes TCP connects to its port (a TCP probe says it
    lives), but its health service never answers; one that answers NOT_SERVING is not serving either."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    hung_port = hung.getsockname()[1]
    server, port = _health_server()
    sick, sick_port = _health_server("NOT_SERVING")
    try:
        assert rr.answers("127.0.0.1", hung_port)  # what the old probe saw
        endpoints = {"GCS": ("127.0.0.1", port), "raylet": ("127.0.0.1", hung_port)}
        assert rr.not_serving(endpoints, timeout=0.5) == ["raylet"]
        assert rr.not_serving({"raylet": ("127.0.0.1", sick_port)}, timeout=0.5) == ["raylet"]
        runtime = rr.RayRuntime(rr.Target(), endpoints=endpoints)
        assert runtime.silent() == f"Ray stopped: its raylet at 127.0.0.1:{hung_port} stopped answering"
    finally:
        hung.close()
        server.stop(None)
        sick.stop(None)


def test_frozen_processes_are_stopped_and_never_reaped_the_others_are_killed():
    """`Spawned.freeze`: what Ray's raylet gets after an abrupt end (it ends with the command, by the kernel)."""
    from fedw2v.fl.processes import Spawned, _stat

    keep = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        with Spawned(grace=0.0) as spawned:
            spawned.freeze([keep.pid, 1])  # pid 1: not a descendant, never touched
            assert spawned.frozen == {keep.pid}
            spawned.kill_now()
            assert other.wait(5) == -signal.SIGKILL
            assert _stat(keep.pid)[0] == "T"  # stopped, not killed
        assert keep.poll() is None and _stat(keep.pid)[0] == "T"  # the exit reaps the others, not it
    finally:
        keep.kill()
        keep.wait()
        other.kill()
        other.wait()


def test_a_ctrl_c_that_a_fork_hook_swallows_is_raised_again():
    """Python swallows an exception raised in an at-fork callback ("Exception ignored in …"): a Ctrl-C that lands
    there while Ray forks its processes was lost, and the command went on. `Interrupts` raises it again."""
    script = textwrap.dedent("""
        import os, signal, subprocess, sys, time
        from fedw2v.fl.processes import Interrupts

        def hook():  # a Ctrl-C arriving while the child is forked
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside the hook
        os.register_at_fork(after_in_parent=hook)
        use = sys.argv[1] == "interrupts"
        t0 = time.monotonic()
        try:
            if use:
                with Interrupts():
                    subprocess.run(["true"], preexec_fn=lambda: None)  # preexec_fn: a real fork
                    time.sleep(5)
            else:
                subprocess.run(["true"], preexec_fn=lambda: None)
                time.sleep(5)
            print("went on", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - t0:.1f} s", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    plain = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True, env=env, timeout=60)
    assert plain.stdout.strip() == "went on" and "Exception ignored" in plain.stderr  # the loss, reproduced
    fixed = subprocess.run([sys.executable, "-c", script, "interrupts"], capture_output=True, text=True, env=env,
                           timeout=60)
    assert fixed.stdout.startswith("interrupted after"), fixed.stdout + fixed.stderr
    assert float(fixed.stdout.split()[2]) < 3.0


def test_the_supervisor_returns_when_ray_counts_as_dead_while_the_engine_hangs():
    import threading

    from fedw2v.fl.processes import Interrupts
    from fedw2v.fl.simulate import _supervise

    class Runtime:
        calls = 0

        def dead(self):
            self.calls += 1
            return "Ray stopped: its GCS at h:1 stopped answering" if self.calls >= 3 else ""

    stuck = threading.Event()
    engine = threading.Thread(target=stuck.wait, daemon=True)  # Flower's engine, blocked in ray.get for ever
    engine.start()
    returned = []
    supervisor = threading.Thread(target=lambda: returned.append(_supervise(engine, Runtime(), Interrupts(), 0.05)),
                                  daemon=True)
    supervisor.start()
    supervisor.join(5.0)
    stuck.set()
    assert returned == ["Ray stopped: its GCS at h:1 stopped answering"]


def test_threads_stuck_in_ray_get_cannot_hold_the_exit():
    """Python joins executor threads at exit; Flower's stay blocked in ray.get once Ray is gone. After an abrupt
    end the process ends with the command's exit status anyway."""
    script = textwrap.dedent("""
        import sys, threading
        from concurrent.futures import ThreadPoolExecutor
        from fedw2v.fl.simulate import _exit_when_stuck

        forever = threading.Event()
        pool = ThreadPoolExecutor(1)
        pool.submit(forever.wait)  # a worker thread that never returns, joined at exit
        engine = threading.Thread(target=forever.wait, daemon=True)
        engine.start()
        if sys.argv[1] == "guarded":
            _exit_when_stuck(engine, 7, abrupt=True)
        print("done", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script, "guarded"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert (out.returncode, out.stdout) == (7, "done\n")
    with pytest.raises(subprocess.TimeoutExpired):  # the hang it prevents
        subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, env=env, timeout=10)


# ------------------------------------------------------------------------------------------ checked before Ray


def _simulate(clients: Path, tmp: Path, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("fedw2v"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200",
                "RAY_TMPDIR": str(tmp / "raytmp"), **(env_extra or {})})
    args = [exe, "simulate", str(clients), "--run-dir", str(tmp / "run"), "--model", "tiny", "--recipe", "tiny",
            "--rounds", "1", "--clients-per-round", "2", "--cpus-per-client", "1", *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra, env_extra, message", [
    (["--model", "/nonexistent"], {}, "error: /nonexistent: no such model directory"),
    (["--clients-per-round", "9"], {}, "error: --clients-per-round 9: {clients} has only 4 clients"),
    (["--batch-size", "0"], {}, "error: batch size must be at least 1"),
    (["--corpus-root", "/nonexistent-corpus"], {}, "error: /nonexistent-corpus: no such directory (--corpus-root)"),
    (["--ray-address", "nonsense"], {}, "error: --ray-address nonsense: not HOST:PORT of a Ray head"),
    (["--ray-address", "127.0.0.1:{port}"], {}, "error: no Ray cluster answers at 127.0.0.1:{port}"),
    (["--ray-address", "auto"], {"RAY_ADDRESS": "127.0.0.1:{port}"},
     "error: no Ray cluster answers at 127.0.0.1:{port} (from RAY_ADDRESS)"),
])
def test_mistakes_are_one_line_before_ray_starts_or_anything_is_written(fl_clients, tmp_path, extra, env_extra,
                                                                        message):
    port = str(_free_port())
    tmp = tmp_path
    fill = {"port": port, "clients": str(fl_clients)}
    out = _simulate(fl_clients, tmp, *[e.format(**fill) for e in extra],
                    env_extra={k: v.format(**fill) for k, v in env_extra.items()})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(message.format(**fill))
    assert not (tmp / "raytmp").exists()  # Ray never started (it makes its session directory first)
    assert not (tmp / "run").exists()  # nothing written


def test_clients_per_round_equal_to_the_clients_passes_the_checks(fl_clients):
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.fl import preflight

    preflight.check(SimulateConfig(clients_manifest=str(fl_clients), run_dir="unused", model="tiny",
                                   clients_per_round=4))


def test_a_ray_that_cannot_start_is_one_line(fl_clients, tmp_path):
    long = tmp_path / ("x" * 60)  # Ray's socket paths under it exceed the 107 bytes AF_UNIX allows
    long.mkdir()
    out = _simulate(fl_clients, tmp_path, env_extra={"RAY_TMPDIR": str(long)})
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.startswith("error: could not start a local Ray: validate_socket_filename failed")
    assert "set RAY_TMPDIR to a short directory" in out.stderr and len(out.stderr.strip().splitlines()) == 1
