"""Issue 12: a real federation on Flower's Deployment Engine, on loopback, with real processes
(`examples/deployment.sh`: CA, server certificate, node keys, SuperLink with TLS and SuperNode authentication,
three SuperNodes each with only its own client's exported manifest, `flwr run`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedw2v import runs
from tests.test_flwr_run import _free_port, _live

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp")


def _env(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # flower-superexec must be on PATH
    return dict(os.environ, FLWR_HOME=str(home), PATH=f"{venv_bin}:{os.environ['PATH']}",
                SUPERLINK_PORT=str(_free_port()), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONPATH=str(ROOT))


@pytest.mark.timeout(1800)
def test_deployment_example_runs_two_rounds_with_tls_node_auth_and_the_data_on_the_nodes(fl_clients, tmp_path):
    home, work = tmp_path / "flwr-home", tmp_path / "work"
    corpus = fl_clients.parent / "manifest.parquet"
    try:
        out = subprocess.run([str(ROOT / "examples" / "deployment.sh"), str(corpus), str(work)], env=_env(home),
                             capture_output=True, text=True, timeout=1500)
    finally:
        deadline = time.monotonic() + 30
        while _live(FLOWER, str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert not _live(FLOWER, str(tmp_path)), "a Flower process was left running"
    run = work / "run"
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0002"
    config = runs.read_json(run / "config.json")
    assert config["clients_manifest"] == "" and config["model"] == "tiny-pretrained"
    events = runs.read_metrics(run)
    assert [e["round"] for e in events if e["event"] == "round_end"] == [0, 1, 2]
    fits = [e for e in events if e["event"] == "fit"]
    assert len(fits) == 6 and all(e["error"] is None for e in fits)
    assert {e["client"] for e in fits} == {0, 1, 2} and len({e["node"] for e in fits}) == 3
    node_evals = [e for e in events if e["event"] == "node_evaluate"]
    assert len(node_evals) == 9 and all(e["error"] is None for e in node_evals)  # every node, rounds 0-2
    # TLS and node authentication were on: the SuperLink refused nothing it should have accepted
    log = (work / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in log and "--insecure" not in log
    assert len(list((work / "pki").glob("node-*.key.pub"))) == 3


@pytest.mark.timeout(1800)
def test_a_deployment_run_with_central_dp_clips_noises_and_reports_epsilon(fl_clients, tmp_path):
    """--dp on the Deployment Engine: the nodes clip their updates (the ClientApp's mod), the server adds the
    noise and accounts without amplification (it does not know the population: it samples the SuperNodes that
    are connected), ε per round in metrics.jsonl and config.json."""
    from fedw2v.privacy import dp

    work = tmp_path / "work"
    extra = "dp='central' weighting='uniform' dp-noise-multiplier=0.5 dp-clip=0.01"
    try:
        out = subprocess.run([str(ROOT / "examples" / "deployment.sh"), str(fl_clients.parent / "manifest.parquet"),
                              str(work), extra], env=_env(tmp_path / "flwr-home"), capture_output=True, text=True,
                             timeout=1500)  # fmt: skip
    finally:
        deadline = time.monotonic() + 30
        while _live(FLOWER, str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    events = runs.read_metrics(work / "run")
    privacy = [e for e in events if e["event"] == "privacy"]
    assert [e["round"] for e in privacy] == [1, 2] and all(e["mode"] == "central" for e in privacy)
    assert [e["epsilon"] for e in privacy] == [pytest.approx(dp.epsilon(0.5, r, 3, 3, 1e-5)) for r in (1, 2)]
    assert all(e["clipped"] == 3 and e["noise_std"] == pytest.approx(0.5 * 0.01 / 3) for e in privacy)
    config = runs.read_json(work / "run" / "config.json")
    summary = config["extra"]["privacy"]
    assert summary["population"] is None and summary["accounting"] == "none"
    assert summary["epsilon"] == pytest.approx(privacy[-1]["epsilon"])
    assert not _live(FLOWER, str(tmp_path))
