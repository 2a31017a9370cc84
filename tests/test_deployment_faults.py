"""Issue 12's security faults with real processes on loopback: a SuperLink with TLS and SuperNode
authentication refuses a SuperNode whose key is not registered, and a SuperNode that trusts another CA cannot
connect; a registered node with the right CA joins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_flwr_run import _free_port, _live

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp")


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, FLWR_HOME=str(home), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONPATH=str(ROOT))


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Every process started here and everything it started (each has its own process group)."""
    for p in procs:
        members = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
        for pid in members:  # a child that made its own session (flower-superexec) is still a child
            for child in subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(child), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)


def test_an_unregistered_key_and_another_ca_are_refused(tmp_path):
    env = _env(tmp_path / "flwr-home")
    pki, other = tmp_path / "pki", tmp_path / "other-ca"
    for d, n in ((pki, 2), (other, 1)):
        subprocess.run([str(ROOT / "examples" / "deployment_pki.sh"), str(d), str(n)], check=True, env=env)
    port = _free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "d"\n\n[superlink.d]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{pki / "ca.crt"}"\n')
    procs = []
    try:
        procs.append(_start(["flower-superlink", "--host", "127.0.0.1", "--port", str(port), "--ssl-ca-certfile",
                             str(pki / "ca.crt"), "--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile",
                             str(pki / "server.key"), "--enable-supernode-auth"], tmp_path / "superlink.log", env))
        deadline = time.monotonic() + 120
        while subprocess.run(["flwr", "supernode", "ls", "d"], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "superlink.log").read_text()
            time.sleep(1)
        reg = subprocess.run(["flwr", "supernode", "register", str(pki / "node-0.key.pub"), "d", "--format", "json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert reg.returncode == 0, reg.stdout + reg.stderr

        def node(name: str, key: str, ca: Path, p: int) -> subprocess.Popen:
            return _start(["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(ca),
                           "--auth-supernode-private-key", str(pki / key), "--port", str(p),
                           "--node-config", "manifest='/nowhere.parquet'"], tmp_path / f"{name}.log", env)

        procs += [node("good", "node-0.key", pki / "ca.crt", _free_port()),
                  node("unregistered", "node-1.key", pki / "ca.crt", _free_port()),
                  node("other-ca", "node-0.key", other / "ca.crt", _free_port())]
        for p, name in ((procs[2], "unregistered"), (procs[3], "other-ca")):
            assert p.wait(timeout=180) != 0, f"{name} was let in"
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "other-ca.log").read_text()
        assert "No SuperNode found with the given public key" in (tmp_path / "superlink.log").read_text()
        deadline = time.monotonic() + 120
        while True:  # the registered node with the right CA is online (and it alone)
            ls = subprocess.run(["flwr", "supernode", "ls", "d", "--format", "json"], env=env, capture_output=True,
                                text=True, timeout=120)
            nodes = json.loads(ls.stdout).get("nodes", []) if ls.returncode == 0 else []
            if [n.get("status") for n in nodes] == ["online"]:
                break
            assert time.monotonic() < deadline, ls.stdout + ls.stderr
            time.sleep(1)
        assert procs[1].poll() is None, (tmp_path / "good.log").read_text()
    finally:
        _stop(procs)
    assert not _live(FLOWER, str(tmp_path))
