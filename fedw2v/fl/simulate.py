"""Run the ServerApp and ClientApp on Flower's simulation engine with the Ray backend.

fedw2v starts the Ray runtime (through Flower) and shuts it down when the run ends, also when it fails, so no
Ray process outlives the command. Clients get `cpus_per_client` cores and `gpus_per_client` of a GPU each (Ray
pins them: 0.5 puts two clients on one GPU); without a GPU every client runs on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

from fedw2v.errors import EnvironmentProblem, InputError
from fedw2v.config.simulate import SimulateConfig


@dataclass(frozen=True)
class Resources:
    gpus_per_client: float  # what clients get (0 without a GPU)
    cpus_per_client: float
    total_gpus: int
    total_cpus: int
    parallel_clients: int  # clients that can train at the same time


def plan_resources(config: SimulateConfig, cuda_devices: int | None = None, cpus: int | None = None) -> Resources:
    """Resolve the client resources against this machine (no GPU: clients use the CPU)."""
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = cpus or os.cpu_count() or 1
    gpus = config.gpus_per_client if cuda_devices else 0.0
    if gpus > cuda_devices:
        raise InputError(f"--gpus-per-client {gpus} but this machine has {cuda_devices} GPU(s)")
    cpu_share = min(config.cpus_per_client, cpus)
    parallel = int(cpus // cpu_share)
    if gpus:
        parallel = min(parallel, int(cuda_devices / gpus))
    return Resources(gpus, cpu_share, cuda_devices, cpus, max(1, parallel))


def backend_config(res: Resources, verbose: bool) -> dict[str, Any]:
    """Flower's Ray backend settings: each ClientApp's share of CPUs/GPUs (Ray resources), and Ray's totals."""
    return {
        "client_resources": {"num_cpus": res.cpus_per_client, "num_gpus": res.gpus_per_client},
        "init_args": {"num_cpus": res.total_cpus, "num_gpus": res.total_gpus, "include_dashboard": False,
                      "logging_level": "ERROR", "log_to_driver": verbose},
    }


def simulate(config: SimulateConfig, reporter: Any = None, verbose: bool = False) -> Any:
    """Run the federated training of `config`; returns the final `RunState`. Domain errors propagate."""
    from flwr.app import Context, RecordDict
    from flwr.common import EventType
    from flwr.simulation.run_simulation import _run_simulation

    from fedw2v.fl.client_app import app as client_app
    from fedw2v.fl.server_app import Outcome, check_run_dir, make_server_app

    res = plan_resources(config)
    if not res.total_gpus:  # clients train on the CPU: refuse bf16 there before anything starts, not in each client
        from fedw2v.device import resolve_precision

        resolve_precision(config.train_config().precision, "cpu")
    check_run_dir(config)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # keep CUDA_VISIBLE_DEVICES as Ray pins it
    outcome = Outcome()
    context = Context(run_id=int(time.time()), node_id=0, node_config={}, state=RecordDict(),
                      run_config=config.to_run_config())
    supernodes = max(1, min(config.clients_per_round, res.parallel_clients))
    with _quiet_flower(verbose), _ray_shut_down_after():
        _run_simulation(
            num_supernodes=supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app, server_app=make_server_app(reporter, outcome), backend_name="ray",
            backend_config=backend_config(res, verbose), server_app_context=context, verbose_logging=verbose,
        )
    if outcome.error is not None:
        raise outcome.error
    if outcome.state is None:
        raise EnvironmentProblem("the Flower simulation stopped before the server finished (see the log above)",
                                 hint="rerun with --verbose; continue with --resume")
    return outcome.state


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _ray_shut_down_after() -> Iterator[None]:
    """Flower starts Ray; stop it whatever happens and wait until every process started under this one has
    exited (Ray's workers outlive `ray.shutdown()` by a moment, and Flower may shut Ray down itself, orphaning
    them: so they are recorded while the run lasts, and stragglers are killed), so none outlives the command."""
    import threading

    seen: dict[int, str] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            seen.update(_descendants(os.getpid()))

    watcher = threading.Thread(target=watch, name="fedw2v-process-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        seen.update(_descendants(os.getpid()))
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 -- shutting down is best effort; the processes are reaped below
            pass
        _reap(seen)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process below `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[tuple[int, str]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and len(fields) > 19:
                children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def _reap(processes: dict[int, str], grace: float = 15.0) -> None:
    """Wait for the given processes to exit; SIGKILL those still running after `grace` seconds. A pid is only
    touched while its start time matches (never a new process that reused the number)."""
    import signal

    def alive(pid: int) -> bool:
        fields = _stat(pid)
        return bool(fields) and fields[0] != "Z" and len(fields) > 19 and fields[19] == processes[pid]

    deadline = time.monotonic() + grace
    pending = {p for p in processes if alive(p)}
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = {p for p in pending if alive(p)}
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pending) and time.monotonic() < deadline:
        time.sleep(0.05)
