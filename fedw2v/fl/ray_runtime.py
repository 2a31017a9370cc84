"""The Ray runtime of `fedw2v simulate`: which Ray to use, starting or joining it, watching that it lives, leaving it.

Without ``--ray-address`` simulate starts a local Ray of its own (``ray.init(address="local")``) and never joins
a cluster by accident: a ``RAY_ADDRESS`` left in the environment is ignored (with a warning), and so is the
``ray_current_cluster`` file that a ``ray start --head`` leaves behind (it still names the head after its
processes were killed). ``--ray-address HOST:PORT`` joins that cluster; ``--ray-address auto`` joins the one
``RAY_ADDRESS`` names, or else the one the last ``ray start --head`` on this machine recorded. A cluster that does
not answer is a one-line error before anything is written. fedw2v calls ``ray.init`` itself, before Flower's
engine starts (Flower's Ray backend then uses that Ray as it is); on exit it disconnects from a cluster (the
actors it started end with it) and the cluster keeps running.

While the run lasts, `RayRuntime.dead()` says whether the cluster's GCS or this node's raylet has stopped
answering (dead after `DEAD_AFTER` seconds without an answer). Each check asks both their gRPC health service
(``grpc.health.v1.Health/Check``, the one Ray's GCS itself uses to watch raylets), at once, with `PROBE_TIMEOUT`:
a TCP connect is not enough, because the kernel completes it for a process that is stopped or hung, and such a
raylet stalled the run until Ray marked the node dead ~50 s later and then ended it without a word. Ray itself
only notices a dead GCS after 60 s and then ends the process with a fatal log line, leaving Flower's threads
blocked in ``ray.get``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedw2v.errors import EnvironmentProblem, InputError

ENV = "RAY_ADDRESS"
AUTO = "auto"
DEAD_AFTER = 10.0  # seconds without an answer from the GCS or the raylet before Ray counts as dead
PROBE_TIMEOUT = 2.0  # seconds a health check (or a TCP connect) may take


def ray_temp_dir(environ: Mapping[str, str]) -> Path:
    """Where Ray keeps its sessions and the ``ray_current_cluster`` file (Ray's own rule)."""
    base = environ.get("RAY_TMPDIR") or (environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def parse_address(text: str, flag: str = "--ray-address") -> tuple[str, int]:
    """``HOST:PORT`` of a Ray head (the GCS); UsageError-style InputError otherwise."""
    if text.startswith("ray://"):
        raise InputError(f"{flag} {text}: Ray Client addresses (ray://) are not supported",
                         hint="give the head's GCS address, HOST:6379, from a machine that runs a Ray node")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{flag} {text}: not HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), nor auto")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Target:
    """The Ray a run uses: ``address`` "" = a local Ray of its own; ``source`` says where the address came from."""

    address: str = ""
    source: str = ""
    warning: str = ""

    @property
    def local(self) -> bool:
        return not self.address


def choose(ray_address: str, environ: Mapping[str, str] | None = None) -> Target:
    """Which Ray the run uses (see the module docstring); InputError for an address that cannot be used."""
    environ = os.environ if environ is None else environ
    given = ray_address.strip()
    env = environ.get(ENV, "").strip()
    if given in ("", "local"):
        warning = (f"{ENV}={env} is set but ignored: simulate starts its own local Ray (pass --ray-address auto to "
                   f"run on that cluster)") if env and not given else ""
        return Target(warning=warning)
    if given != AUTO:
        parse_address(given)
        return Target(given, "--ray-address")
    if env:
        parse_address(env, ENV)
        return Target(env, ENV)
    recorded = ray_temp_dir(environ) / "ray_current_cluster"
    try:
        address = recorded.read_text().strip()
    except OSError:
        raise InputError(f"--ray-address auto: {ENV} is not set and no cluster was started here ({recorded} "
                         "is missing)", hint="start one with `ray start --head`, or give its HOST:PORT") from None
    parse_address(address, str(recorded))
    return Target(address, str(recorded))


def answers(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def not_serving(endpoints: Mapping[str, tuple[str, int]], timeout: float = PROBE_TIMEOUT) -> list[str]:
    """The names of `endpoints` whose gRPC health service does not answer SERVING within `timeout` seconds (all
    asked at once, each on a channel of its own that is closed afterwards)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channels: list[Any] = []
    calls = {}
    try:
        for name, (host, port) in endpoints.items():
            channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            channels.append(channel)
            calls[name] = health_pb2_grpc.HealthStub(channel).Check.future(health_pb2.HealthCheckRequest(),
                                                                           timeout=timeout)
        silent = []
        for name, call in calls.items():
            try:
                serving = call.result().status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
            if not serving:
                silent.append(name)
        return silent
    finally:
        for channel in channels:
            channel.close()


@dataclass
class RayRuntime:
    """One run's Ray: `start()` it (local or joined), ask `dead()` while the run lasts, `stop()` at the end."""

    target: Target
    endpoints: dict[str, tuple[str, int]] = field(default_factory=dict)  # what `dead()` probes
    fate_shared: list[int] = field(default_factory=list)  # a local Ray's processes that end with this one
    _silent_since: float | None = None

    def check_reachable(self) -> None:
        """A cluster to join must answer now (a stale address is one line, not a hang)."""
        if self.target.local:
            return
        host, port = parse_address(self.target.address)
        if not answers(host, port):
            via = f" (from {self.target.source})" if self.target.source != "--ray-address" else ""
            raise InputError(f"no Ray cluster answers at {self.target.address}{via}",
                             hint="start it (`ray start --head`), fix the address, or run without --ray-address "
                                  "for a local Ray")

    def start(self, num_cpus: int, num_gpus: int, verbose: bool) -> None:
        """``ray.init`` in this (the main) thread, so Ray's SIGTERM handler is installed and Flower finds Ray
        running. The ClientApp's workers get this process's ``sys.path`` as PYTHONPATH, as Flower's backend
        gives them."""
        os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # no Ray call may start a new Ray once this one is gone
        import ray

        _no_auto_connect()
        pythonpath = os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)
        os.environ["PYTHONPATH"] = pythonpath
        common: dict[str, Any] = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
                                  "logging_level": "ERROR", "log_to_driver": verbose}
        try:
            if self.target.local:
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **common)
            else:
                ray.init(address=self.target.address, **common)
        except Exception as exc:  # noqa: BLE001 -- Ray's own failure, said in one line
            detail = " ".join(str(exc).split())[:300]
            what = "start a local Ray" if self.target.local else f"join the Ray cluster at {self.target.address}"
            hint = ("Ray's socket paths must stay under 108 bytes: set RAY_TMPDIR to a short directory"
                    if "path length" in detail else "rerun with --verbose for Ray's own log")
            raise EnvironmentProblem(f"could not {what}: {detail}", hint=hint) from None
        self.endpoints = _endpoints(ray)
        self.fate_shared = _fate_shared() if self.target.local else []

    def resources(self) -> tuple[int, int]:
        """(CPUs, GPUs) of the whole cluster (a local Ray: what `start` gave it)."""
        import ray

        total = ray.cluster_resources()
        return int(total.get("CPU", 0)), int(total.get("GPU", 0))

    def silent(self) -> str:
        """'' when the GCS and this node's raylet answer now; else which do not, as a one-line reason."""
        silent = [f"{name} at {self.endpoints[name][0]}:{self.endpoints[name][1]}"
                  for name in not_serving(self.endpoints)]
        return f"Ray stopped: its {' and '.join(silent)} stopped answering" if silent else ""

    def dead(self, now: float | None = None) -> str:
        """'' while Ray answers, or has been silent for less than DEAD_AFTER s; else why Ray counts as dead."""
        now = time.monotonic() if now is None else now
        reason = self.silent()
        if not reason:
            self._silent_since = None
            return ""
        if self._silent_since is None:
            self._silent_since = now
        return reason if now - self._silent_since >= DEAD_AFTER else ""

    def stop(self, timeout: float = 15.0) -> None:
        """Disconnect (a cluster keeps running) or shut the local Ray down; never blocks longer than `timeout`."""
        if "ray" not in sys.modules:
            return

        def shutdown() -> None:
            try:
                import ray

                ray.shutdown()
            except Exception:  # noqa: BLE001 -- best effort: a local Ray's processes are reaped anyway
                pass

        worker = threading.Thread(target=shutdown, name="fedw2v-ray-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)


def _no_auto_connect() -> None:
    """Ray reads RAY_ENABLE_AUTO_CONNECT when it is first imported; if that was before `start`, say it again.
    Without this, Flower's threads calling ``ray.get`` after the shutdown would quietly start a fresh local Ray."""
    try:
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False
    except (ImportError, AttributeError):
        pass


def _fate_shared() -> list[int]:
    """The pids of the processes a local ``ray.init`` started (GCS, raylet, monitors) when Ray started them to be
    killed by the kernel once this process exits (``PR_SET_PDEATHSIG``, Linux); else none."""
    try:
        from ray._private import worker

        node = worker._global_node
        if node is None or not node.kernel_fate_share:
            return []
        return [info.process.pid for infos in node.all_processes.values() for info in infos]
    except (ImportError, AttributeError):  # another Ray: the processes are then reaped as any other
        return []


def _endpoints(ray: Any) -> dict[str, tuple[str, int]]:
    """The GCS and this node's raylet, as (host, port)."""
    out: dict[str, tuple[str, int]] = {}
    context = ray.get_runtime_context()
    host, port = parse_address(context.gcs_address, "GCS")
    out["GCS"] = (host, port)
    node_id = context.get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerPort"):
            out["raylet"] = (node["NodeManagerAddress"], int(node["NodeManagerPort"]))
    return out
