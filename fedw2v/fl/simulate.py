"""Run the ServerApp and ClientApp on Flower's simulation engine with the Ray backend.

In this order: everything that can be checked without Ray (`fl.preflight`, the Ray address, the run directory);
then Ray (`fl.ray_runtime`: a local Ray of the run's own, or an existing cluster with ``--ray-address``); then
Flower's engine in a thread of its own while this (main) thread supervises it. The supervisor watches Ray: when
its GCS or this node's raylet stops answering, the run stops within `ray_runtime.DEAD_AFTER` seconds and a few
more, with one line and its last checkpoint intact (``--resume`` continues). It takes Ctrl-C at any moment
(exit 130 within seconds). However the run ends, the server is halted (`server_app.Halt`), Ray is shut down (a
cluster is only left: it keeps running) and every process started under this one is reaped, so none outlives
the command (after an abrupt end, a local Ray's GCS and raylet are stopped and the kernel ends them with this
process: `_stop`).

Flower's engine threads wait in ``ray.get`` without a timeout, and after Ray died under them they never return.
Started from the engine's daemon thread, they are daemon threads too; if they still hold the interpreter's exit
(Python joins executor threads at exit), the process ends itself once the command has finished
(`_exit_when_stuck`). Clients get `cpus_per_client` cores and `gpus_per_client` of a GPU each (Ray pins them:
0.5 puts two clients on one GPU); without a GPU every client runs on the CPU.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedw2v.config.simulate import SimulateConfig
from fedw2v.errors import EnvironmentProblem, InputError, RunFailed
from fedw2v.fl.processes import Interrupts, Spawned


@dataclass(frozen=True)
class Resources:
    gpus_per_client: float  # what clients get (0 without a GPU)
    cpus_per_client: float
    total_gpus: int
    total_cpus: int
    parallel_clients: int  # clients that can train at the same time


def plan_resources(config: SimulateConfig, cuda_devices: int | None = None, cpus: int | None = None,
                   where: str = "this machine") -> Resources:
    """Resolve the client resources against this machine, or a cluster's totals (no GPU: clients use the CPU)."""
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = cpus or os.cpu_count() or 1
    gpus = config.gpus_per_client if cuda_devices else 0.0
    if gpus > cuda_devices:
        raise InputError(f"--gpus-per-client {gpus} but {where} has {cuda_devices} GPU(s)")
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
    from fedw2v.fl import preflight, ray_runtime
    from fedw2v.fl.server_app import check_run_dir

    _check_precision(config)
    preflight.check(config)
    runtime = ray_runtime.RayRuntime(ray_runtime.choose(config.ray_address))
    runtime.check_reachable()
    if runtime.target.warning and reporter is not None:
        reporter({"event": "warning", "message": runtime.target.warning})
    check_run_dir(config)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # keep CUDA_VISIBLE_DEVICES as Ray pins it
    engine, abrupt = None, True
    try:
        with _quiet_flower(verbose), Spawned() as spawned, Interrupts() as interrupts:
            try:
                res = _start_ray(config, runtime, verbose)
                _check(interrupts)
                engine = _Engine(config, res, reporter, verbose, probe=runtime.silent)
                engine.start()
                death = _supervise(engine, runtime, interrupts)
                abrupt = bool(death)
            finally:
                interrupts.taken()
                _stop(engine, runtime, spawned, abrupt)
        state = _result(config, engine, death)
    except BaseException as exc:
        _exit_when_stuck(engine, _exit_code(exc), abrupt)
        raise
    _exit_when_stuck(engine, 0, abrupt)
    return state


def _stop(engine: _Engine | None, runtime: Any, spawned: Spawned, abrupt: bool) -> None:
    """Halt the server, then leave Ray. After the engine ended by itself: shut Ray down (a cluster is only
    disconnected from) and give its processes `spawned.grace` to exit. Abruptly (Ctrl-C, an error, Ray died): Ray
    is not shut down (a Ray call from one of Flower's threads after ``ray.shutdown()`` makes Ray end the process).
    A local Ray's own processes (GCS, raylet) are stopped and end with this process (killed now, the raylet's
    end would make Ray end this process first, with exit status 1 and no word of why), and every other process
    (the clients, Ray's agents) is killed at once; a cluster ends this job's actors itself once this driver is
    gone. The server thread gets 3 s to stop (it stops at its next wait, within 0.05 s)."""
    if engine is not None:
        engine.halt.set("interrupted" if abrupt else "the run ended")
    if not abrupt or (engine is None and not runtime.target.local):  # no Flower thread can call Ray now
        runtime.stop()
    if not abrupt:
        return
    spawned.grace = 2.0
    if runtime.target.local:
        spawned.freeze(runtime.fate_shared)
        spawned.kill_now()
    deadline = time.monotonic() + 3.0
    while engine is not None and engine.is_alive() and time.monotonic() < deadline:
        if engine.outcome.done.wait(0.05):
            break


def _check_precision(config: SimulateConfig) -> None:
    """Clients of a local Ray train on this machine's CPU when it has no GPU: refuse bf16 there before anything
    starts, not in each client. (A cluster's workers judge their own CPUs.)"""
    if config.ray_address or plan_resources(config).total_gpus:
        return
    from fedw2v.device import resolve_precision

    resolve_precision(config.train_config().precision, "cpu")


def _start_ray(config: SimulateConfig, runtime: Any, verbose: bool) -> Resources:
    """Start a local Ray with this machine's resources, or join the cluster and plan with its totals."""
    if runtime.target.local:
        res = plan_resources(config)
        runtime.start(res.total_cpus, res.total_gpus, verbose)
        return res
    runtime.start(0, 0, verbose)
    cpus, gpus = runtime.resources()
    return plan_resources(config, cuda_devices=gpus, cpus=cpus, where=f"the Ray cluster at {runtime.target.address}")


class _Engine(threading.Thread):
    """Flower's simulation engine (`_run_simulation`) in a daemon thread, so every thread it starts is a daemon
    thread too. `outcome` is what the ServerApp left; `error` what the engine itself raised."""

    def __init__(self, config: SimulateConfig, res: Resources, reporter: Any, verbose: bool, probe: Any = None):
        from fedw2v.fl.server_app import Halt, Outcome

        super().__init__(name="fedw2v-flower-engine", daemon=True)
        self.config, self.res, self.reporter, self.verbose = config, res, reporter, verbose
        self.outcome, self.halt = Outcome(), Halt(probe)
        self.error: BaseException | None = None

    def run(self) -> None:
        from flwr.app import Context, RecordDict
        from flwr.common import EventType
        from flwr.simulation.run_simulation import _run_simulation

        from fedw2v.fl.client_app import app as client_app
        from fedw2v.fl.server_app import make_server_app

        res = self.res
        try:
            context = Context(run_id=int(time.time()), node_id=0, node_config={}, state=RecordDict(),
                              run_config=self.config.to_run_config())
            _run_simulation(
                num_supernodes=max(1, min(self.config.clients_per_round, res.parallel_clients)),
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE, client_app=client_app,
                server_app=make_server_app(self.reporter, self.outcome, self.halt), backend_name="ray",
                backend_config=backend_config(res, self.verbose), server_app_context=context,
                verbose_logging=self.verbose,
            )
        except BaseException as exc:  # noqa: BLE001 -- handed to the supervisor, which reports it in one line
            self.error = exc


def _check(interrupts: Interrupts) -> None:
    if interrupts.noted.is_set():
        raise KeyboardInterrupt


def _supervise(engine: _Engine, runtime: Any, interrupts: Interrupts, poll: float = 1.0) -> str:
    """Wait for the engine to end while Ray lives; '' when it ended, else why Ray counts as dead."""
    while engine.is_alive():
        engine.join(poll)
        _check(interrupts)
        reason = runtime.dead() if engine.is_alive() else ""
        if reason:
            return reason
    return ""


def _result(config: SimulateConfig, engine: _Engine, death: str) -> Any:
    """The final state, or the one-line error that ended the run."""
    from fedw2v import runs

    if death:
        done = (Path(config.run_dir) / "checkpoints" / runs.LATEST).is_file()
        at = f"at its checkpoint {runs.latest_checkpoint(config.run_dir).name}" if done else "before its first checkpoint"
        raise RunFailed(f"{death}; the run stopped {at}",
                        hint="continue it with --resume once Ray runs again" if done else "start it again")
    if engine.outcome.error is not None:
        raise engine.outcome.error
    if engine.outcome.state is not None:
        return engine.outcome.state
    if engine.error is not None:
        cause = engine.error.__cause__ or engine.error
        detail = " ".join(str(cause).split())[:300] or type(cause).__name__
        raise EnvironmentProblem(f"Flower's simulation engine failed: {detail}",
                                 hint="rerun with --verbose; continue with --resume")
    raise EnvironmentProblem("the Flower simulation stopped before the server finished (see the log above)",
                             hint="rerun with --verbose; continue with --resume")


def _exit_code(exc: BaseException) -> int:
    from fedw2v.errors import exit_code_for

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return exit_code_for(exc)


def _exit_when_stuck(engine: _Engine | None, code: int, abrupt: bool) -> None:
    """After an abrupt end, or while Flower's engine is still running (its threads stay blocked in ``ray.get``
    when Ray died under them, and Python joins executor threads at exit), the interpreter's exit would wait for
    them, or for Ray's own exit hook (a ``ray.shutdown()`` that waits for a dead GCS). So when the interpreter
    exits, before it joins any thread, the process ends with `code` (the command's own exit status), its output
    flushed. Nothing happens before the interpreter exits."""
    if not abrupt and (engine is None or not engine.is_alive()):
        return

    def finish() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)

    # threading's exit hooks run first at exit, in reverse order: this one before concurrent.futures' join
    getattr(threading, "_register_atexit", atexit.register)(finish)


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:  # Flower logs each failed client with a traceback; metrics.jsonl has their one-line errors
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
