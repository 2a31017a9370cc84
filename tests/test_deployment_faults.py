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


def _kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group and every descendant (a machine that dies)."""
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        _kill_tree(int(child))
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


def _stop(procs: list[subprocess.Popen]) -> None:
    """Every process started here and everything it started (each has its own process group)."""
    for p in procs:
        _kill_tree(p.pid)  # a child that made its own session (flower-superexec) is still a descendant
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


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _wait_for(run: Path, what, script: subprocess.Popen, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not any(what(e) for e in _events(run)):
        assert script.poll() is None, "the deployment ended early"
        assert time.monotonic() < deadline, f"waited {timeout} s"
        time.sleep(0.5)
    return _events(run)


def _stop_leftovers(tmp_path: Path) -> None:
    """After a failed run: every Flower process this test started (their command lines name its tmp_path),
    and their children, by pid."""
    for line in _live(FLOWER + ("bin/flwr ",), str(tmp_path)):
        _kill_tree(int(line.split()[0]))


@pytest.mark.timeout(1800)
def test_a_killed_supernode_and_a_bad_manifest_leave_the_run_going(fl_clients, tmp_path):
    """examples/deployment.sh with node 2 given a manifest that does not exist; node 0 SIGKILLed in the middle of
    round 1 and restarted after it: round 1 completes with node 1 once the round timeout passes, node 2's
    replies carry a one-line error in metrics.jsonl, and the restarted node 0 is sampled and trains again."""
    from tests.test_deployment import _env

    work = tmp_path / "work"
    env = dict(_env(tmp_path / "flwr-home"), NODE_CONFIG_2=f"manifest='{tmp_path}/missing/client.parquet'")
    run, logs = work / "run", work / "logs"
    script = subprocess.Popen([str(ROOT / "examples" / "deployment.sh"), str(fl_clients.parent / "manifest.parquet"),
                               str(work), "rounds=3 round-timeout=240.0 eval-every=10 min-fit-clients=1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    restarted = []
    try:
        _wait_for(run, lambda e: e["event"] == "round_start" and e["round"] == 1, script, 900)
        time.sleep(3)  # the nodes are training
        killed = int((logs / "supernode-0.pid").read_text())
        cmd = Path(f"/proc/{killed}/cmdline").read_bytes().decode().split("\0")[:-1]
        os.killpg(killed, signal.SIGKILL)
        _wait_for(run, lambda e: e["event"] == "round_end" and e["round"] == 1, script, 600)
        restarted.append(_start(cmd, logs / "supernode-0-again.log", env))
        out, _ = script.communicate(timeout=1200)
        assert script.returncode == 0, out[-3000:]
    finally:
        _stop(restarted)
        if script.poll() is None:  # it failed: its own clean-up will not run
            script.kill()
            _stop_leftovers(tmp_path)
    events = _events(run)
    assert [e["round"] for e in events if e["event"] == "round_end"] == [0, 1, 2, 3]
    fits = {(e["round"], e["client"]): e for e in events if e["event"] == "fit"}
    assert fits[(1, 1)]["error"] is None
    bad = [e for e in events if e["event"] in ("fit", "node_evaluate") and "missing" in str(e["error"])]
    assert bad and all("\n" not in e["error"] and f"{tmp_path}/missing/client.parquet" in e["error"] for e in bad)
    killed_node = next(e["node"] for e in events if e["event"] == "fit" and e["client"] == 0)
    round1 = [e for e in events if e["event"] == "fit" and e["round"] == 1 and e["node"] == killed_node]
    assert round1 and round1[0]["error"], round1  # it went away (missed heartbeats, or the round timeout)
    later = [e for e in events if e["event"] == "fit" and e["round"] > 1 and e["node"] == killed_node]
    assert any(e["error"] is None for e in later), later  # restarted: sampled again and trains
    assert not _live(FLOWER, str(tmp_path))



@pytest.mark.timeout(2400)
def test_a_run_resumes_after_the_superlink_and_the_serverapp_die(fl_clients, tmp_path):
    """The README's resume promise for a deployment: the SuperLink (and with it the ServerApp it runs) is
    SIGKILLed after round 1's checkpoint; `flwr run` with resume=true against a new SuperLink (the nodes
    re-register) continues from LATEST and metrics.jsonl holds every round exactly once."""
    from tests.test_deployment import _env

    work = tmp_path / "work"
    run, logs = work / "run", work / "logs"
    script = [str(ROOT / "examples" / "deployment.sh"), str(fl_clients.parent / "manifest.parquet"), str(work)]
    first = subprocess.Popen([*script, "rounds=3"], env=_env(tmp_path / "flwr-home"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(run, lambda e: e["event"] == "round_start" and e["round"] == 2, first, 900)
        assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0001"
        _kill_tree(int((logs / "superlink.pid").read_text()))
        out, _ = first.communicate(timeout=300)  # `flwr run` loses its SuperLink; the script stops its nodes
        assert first.returncode != 0, out[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
        _stop_leftovers(tmp_path)
    deadline = time.monotonic() + 60
    while _live(FLOWER, str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _live(FLOWER, str(tmp_path)), "the first half left a Flower process running"
    before = [e["round"] for e in _events(run) if e["event"] == "round_end"]
    assert before[:2] == [0, 1] and before[-1] < 3
    try:  # a new SuperLink on another port: its state (and the registered keys) were in memory
        second = subprocess.run([*script, "rounds=3 resume=true"], env=_env(tmp_path / "flwr-home"),
                                capture_output=True, text=True, timeout=1500)
    finally:
        _stop_leftovers(tmp_path)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    events = _events(run)
    for kind in ("round_start", "round_end"):  # each round exactly once: what followed LATEST was dropped
        assert [e["round"] for e in events if e["event"] == kind] == [0, 1, 2, 3], kind
    log = (logs / "flwr-run.log").read_text()  # the second `flwr run --stream`, as the operator reads it
    assert f"fedw2v: resumed from checkpoint round {before[-1]}" in log and "fedw2v: round 3 done" in log
    assert "fedw2v: round 1 done" not in log
    fits = [(e["round"], e["client"]) for e in events if e["event"] == "fit"]
    assert len(fits) == len(set(fits)) == 9 and {r for r, _ in fits} == {1, 2, 3}
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0003"
    assert not _live(FLOWER, str(tmp_path))
