"""`fedw2v evaluate RUN --participation`: WER on every client's local test split by rounds of participation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedw2v import participation as part
from fedw2v import runs
from fedw2v.cli import app
from fedw2v.fl.server_app import Server
from tests.test_server import FakeGrid, _config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n, b", [(0, "0"), (1, "1"), (2, "2-3"), (3, "2-3"), (4, "4+"), (17, "4+")])
def test_buckets(n, b):
    assert part.bucket(n) == b


def test_participation_counts_only_aggregated_updates():
    events = [
        {"event": "fit", "round": 1, "client": 3, "error": None},
        {"event": "fit", "round": 1, "client": 4, "error": "boom"},
        {"event": "fit", "round": 2, "client": 3, "error": None},
        {"event": "fit", "round": 3, "client": 4, "error": None},
    ]
    assert part.participation(events, 2) == {3: 2}
    assert part.participation(events, 3) == {3: 2, 4: 1}


@pytest.fixture(scope="module")
def fl_run(fl_clients, tmp_path_factory):
    run = tmp_path_factory.mktemp("part") / "run"
    Server(FakeGrid(), _config(fl_clients, run, rounds=3, clients_per_round=2)).run()
    return run


def test_every_client_is_scored_at_every_kept_checkpoint(fl_run):
    report = part.analyse(fl_run)
    assert report.rounds == runs.checkpoint_rounds(fl_run) == [0, 1, 2, 3]
    events = runs.read_metrics(fl_run)
    for r in report.rounds:
        taken = part.participation(events, r)
        clients = report.per_client[r]
        assert sum(s.clients for s in report.scores[r].values()) == len(clients) == 4 - len(report.clients_without_test)
        assert set(report.clients_without_test).isdisjoint(clients)  # the clients without test are the unscored
        for c, detail in clients.items():
            assert detail["rounds_taken_part"] == taken.get(c, 0)
            assert detail["bucket"] == part.bucket(taken.get(c, 0))
    assert report.scores[0]["0"].clients == len(report.per_client[0])  # before round 1 nobody took part
    assert all(s.wer is None or s.wer >= 0 for by in report.scores.values() for s in by.values())


def test_cli_table_json_and_plot(fl_run, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(fl_run), "--participation", "--rounds", "0,3", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["rounds"] == [0, 3] and set(data["scores"]["3"]) == {"0", "1", "2-3", "4+"}
    assert (fl_run / "plots" / "participation.png").stat().st_size > 1000
    r = runner.invoke(app, ["evaluate", str(fl_run), "--participation", "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert "after round" in r.output and "4+ rounds" in r.output and (tmp_path / "p.png").is_file()
    r = runner.invoke(app, ["evaluate", str(fl_run), "--participation", "--rounds", "7"])
    assert r.exit_code == 2 and "no checkpoint for rounds 7" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path), "--participation"])
    assert r.exit_code == 2 and "not a federated run" in r.output
