"""Issue 12's Deployment Engine pieces without a SuperLink: what a participant gets (`partition --export-clients`),
how a SuperNode finds its own data (`fl.node_data`), how the server samples connected nodes and what its
messages carry (`fl.nodes`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedw2v.errors import InputError, RunFailed


def _export(fl_clients: Path, out: Path, *extra: str) -> Path:
    from typer.testing import CliRunner

    from fedw2v.cli import app

    corpus = fl_clients.parent / "manifest.parquet"
    result = CliRunner().invoke(app, ["partition", str(corpus), "-o", str(out / "clients.parquet"),
                                      "--holdout-minutes", "0.2", "--holdout-min-minutes", "0.3",
                                      "--export-clients", str(out / "participants"), *extra])
    assert result.exit_code == 0, result.output
    assert "one folder per client" in result.output
    return out


def _rows(manifest, cid=None) -> dict[str, tuple]:
    t = manifest.table.to_pylist()
    return {r["utt_id"]: (r["text"], r["local_split"]) for r in t
            if r["split"] == "train" and (cid is None or r["client_id"] == cid)}


def _row(manifest, utt_id: str) -> dict:
    import pyarrow.compute as pc

    return manifest.table.filter(pc.equal(manifest.table.column("utt_id"), utt_id)).to_pylist()[0]


def test_export_writes_one_manifest_per_client_with_only_its_rows_and_its_own_speech(fl_clients, tmp_path):
    from fedw2v import manifest as mf
    from fedw2v.audio import read_segment
    from fedw2v.fl.node_data import NodeData

    out = _export(fl_clients, tmp_path, "--export-audio", "copy")
    clients = mf.read(out / "clients.parquet")
    folders = sorted((out / "participants").iterdir())
    assert len(folders) == len(clients.client_ids) == 4
    corpus_rows = _rows(clients)
    for cid, folder in zip(clients.client_ids, folders):
        own = mf.read(folder / "client.parquet")
        assert own.client_ids == [cid]
        assert _rows(own) == _rows(clients, cid)  # exactly its rows: none of another client, none missing
        # its audio: one WAV per utterance and nothing else; the node finds it beside the manifest
        assert sorted(p.stem for p in (folder / "audio").iterdir()) == sorted(_rows(clients, cid))
        node = NodeData.from_node_config({"manifest": str(folder / "client.parquet")})
        assert node.client_id == cid and Path(node.corpus_root) == (folder / "audio").resolve()
        utts = node.utterances("train")
        assert utts and {u.utt_id for u in utts} <= set(corpus_rows)
        original, copied = (_row(m, utts[0].utt_id) for m in (clients, own))
        want = read_segment(clients.audio_file(original["audio_path"]), original["start"], original["end"])
        got = read_segment(Path(node.corpus_root) / copied["audio_path"], 0.0, copied["end"])
        assert abs(got.size - want.size) <= 1 and np.abs(got - want).max() < 1e-3  # PCM16 rounding only


def test_export_links_and_none_keep_the_corpus_audio(fl_clients, tmp_path):
    from fedw2v import manifest as mf
    from fedw2v.fl.node_data import NodeData

    out = _export(fl_clients, tmp_path / "link", "--export-audio", "link")
    folder = sorted((out / "participants").iterdir())[0]
    links = [p for p in (folder / "audio").rglob("*") if p.is_symlink()]
    assert links and all(p.resolve().is_file() for p in links)
    assert NodeData.from_node_config({"manifest": str(folder / "client.parquet")}).utterances("train")
    out = _export(fl_clients, tmp_path / "none")
    folder = sorted((out / "participants").iterdir())[0]
    assert not (folder / "audio").exists()
    own = mf.read(folder / "client.parquet")
    assert own.info.corpus_root == mf.read(fl_clients).info.corpus_root


def test_a_node_without_a_usable_manifest_says_so_in_one_line(fl_clients, tmp_path):
    from flwr.app import ConfigRecord, RecordDict

    from fedw2v import __version__
    from fedw2v.fl.client_app import Worker
    from fedw2v.fl.node_data import VERSION_KEY, NodeData, run_evaluate

    with pytest.raises(InputError, match="no manifest in its --node-config"):
        NodeData.from_node_config({})
    with pytest.raises(InputError, match="holds 4 clients; a SuperNode serves exactly one"):
        NodeData.from_node_config({"manifest": str(fl_clients)})  # the server's whole clients manifest
    bad = tmp_path / "client.parquet"
    bad.write_bytes(b"not parquet")
    content = RecordDict({"node": ConfigRecord({VERSION_KEY: __version__})})
    for config in ({"manifest": str(bad)}, {"manifest": str(tmp_path / "missing.parquet")}):
        reply = run_evaluate(content, config, Worker())
        error = str(reply["status"]["error"])
        assert error and "\n" not in error and str(tmp_path) in error
    other = RecordDict({"node": ConfigRecord({VERSION_KEY: "0.0.1"})})
    assert "the server runs fedw2v 0.0.1" in str(run_evaluate(other, {}, Worker())["status"]["error"])


def test_a_simulation_job_ignores_the_node_config():
    from fedw2v.fl.client_app import TrainJob
    from fedw2v.fl.node_data import node_job

    job = TrainJob(3, 1, "/srv/clients.parquet", "", "/runs/x/checkpoints/round-0000", {}, 0)
    assert node_job(job, None, {"manifest": "/elsewhere.parquet"}, None) is job


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = set(nodes)
        self.asked = 0

    def get_node_ids(self):
        self.asked += 1
        return set(self.nodes)


def test_node_sampler_draws_connected_nodes_seeded_and_resumable():
    from fedw2v.fl.nodes import NodeSampler

    grid = FakeGrid([50, 10, 40, 20, 30])
    a, b = (NodeSampler(grid, 3, seed=7, needed=1, report=lambda e: None) for _ in range(2))
    draws = [a.sample() for _ in range(6)]
    assert draws == [b.sample() for _ in range(6)]  # seeded
    assert all(len(d) == 3 == len(set(d)) and set(d) <= grid.nodes for d in draws)
    assert len({tuple(d) for d in draws}) > 1
    saved = a.state
    after = [a.sample() for _ in range(3)]
    c = NodeSampler(grid, 3, seed=99, needed=1, report=lambda e: None)
    c.state = saved
    assert [c.sample() for _ in range(3)] == after  # resumed: the same generator goes on
    grid.nodes = {10, 20}  # two went away: only connected nodes are drawn
    assert a.sample() == [10, 20]
    events = []
    lonely = NodeSampler(FakeGrid([10]), 2, seed=0, needed=2, report=events.append, wait_s=0.2)
    with pytest.raises(RunFailed, match="1 SuperNodes connected after 0.2 s, 2 needed"):
        lonely.sample()
    assert events == [{"event": "waiting_for_nodes", "connected": 1, "needed": 2}]


def test_the_model_a_node_builds_from_the_messages_is_the_servers(tmp_path):
    """The node's model = the server's, before (round-0 evaluation: nothing frozen yet) and after the feature
    encoder is frozen (training: the frozen parameters travel in the payload, which must then be rebuilt)."""
    import torch
    from flwr.app import RecordDict

    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.fl.client_app import Worker
    from fedw2v.fl.node_data import adopt_model
    from fedw2v.fl.nodes import NodeFederation
    from fedw2v.fl.records import record_from_arrays
    from fedw2v.model import load_model
    from fedw2v.train import set_feature_encoder_frozen
    from fedw2v.weights import load_arrays, trainable_arrays

    lm = load_model("tiny", seed=0)
    fed = NodeFederation(None, SimulateConfig(clients_manifest="", eval_manifest="e.parquet", run_dir=str(tmp_path)),
                         "", lambda e: None, lambda e: None)
    worker = Worker()
    for frozen in (False, True):
        set_feature_encoder_frozen(lm.model, frozen)
        content = RecordDict({"arrays": record_from_arrays(trainable_arrays(lm.model), packed=frozen),
                              **fed.payload(lm)})
        for w in (worker, Worker()):  # a node that has served before, and one that joins now
            node = w.model(adopt_model(content, w))
            load_arrays(node.model, trainable_arrays_from(content))
            mine, theirs = lm.model.state_dict(), node.model.state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"frozen={frozen}"
            assert node.processor.tokenizer.get_vocab() == lm.processor.tokenizer.get_vocab()
    assert worker.builds == 2  # one model per frozen set, not one per message


def trainable_arrays_from(content):
    from fedw2v.fl.records import arrays_from_record

    return arrays_from_record(content["arrays"])


def test_packed_weights_come_back_by_name_as_views_and_cost_flower_a_few_objects_not_one_per_array():
    """What goes to and comes back from a SuperNode is packed (`fl.records`): the same {key: array} back, zero-copy,
    and a handful of objects for Flower to move through the SuperLink instead of two per array."""
    from flwr.app import ArrayRecord, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from fedw2v.fl.records import arrays_from_record, is_packed, record_from_arrays
    from fedw2v.model import load_model
    from fedw2v.weights import trainable_arrays

    arrays = {k: np.array(v) for k, v in trainable_arrays(load_model("tiny", seed=0).model).items()}
    arrays["counts"] = np.arange(5, dtype=np.int64)  # a second dtype: a second packed array
    objects = {}
    for packed in (False, True):
        record = record_from_arrays(arrays, packed=packed)
        assert is_packed(record) is packed and len(record) == (2 if packed else len(arrays))
        back = arrays_from_record(record)
        assert list(back) == list(arrays)  # every key, in order
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
            assert not back[k].flags.writeable  # views of the received bytes
        objects[packed] = len(get_all_nested_objects(RecordDict({"arrays": record})))  # what a message carries
    # one object per array and one per distinct chunk of it (equal chunks, e.g. zero biases, are stored once)
    assert objects[False] > len(arrays) >= 30 and objects[True] <= 8, (objects, len(arrays))
    # a layout that does not tile its array is refused, not read past
    key, value = next(iter(record_from_arrays({"w": np.zeros(6, np.float32)}, packed=True).items()))
    with pytest.raises(ValueError, match="holds 6 values where its layout names 8"):
        arrays_from_record(ArrayRecord({key.replace("[6]", "[2,4]"): value}))


def test_every_message_to_a_supernode_carries_packed_weights(fl_clients, tmp_path):
    """Training and federated-evaluation messages to SuperNodes: the trainable weights and the frozen ones packed."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedw2v.fl.records import is_packed
    from fedw2v.fl.server_app import Server
    from fedw2v.model import load_model
    from fedw2v.train import set_feature_encoder_frozen
    from tests.test_server import _config

    class Capture:  # a grid with two SuperNodes that never answer
        def __init__(self):
            self.messages = []

        def get_node_ids(self):
            return [5, 6]

        def push_messages(self, messages):
            for i, m in enumerate(messages):
                m.metadata.__dict__["_message_id"] = f"m{len(self.messages) + i}"
            self.messages += messages
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            return []

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    grid = Capture()
    server = Server(grid, _config("", tmp_path / "run", eval_manifest=str(fl_clients), round_timeout=0.2))
    assert server.nodes is not None  # no clients manifest: the data is on the nodes
    lm = load_model("tiny", seed=0)
    set_feature_encoder_frozen(lm.model, True)  # (as after round 0) something frozen to ship
    results = server._fit(1, [5, 6], lm)
    assert all("--round-timeout" in res["error"] for res in results.values())
    server.nodes.ask_evaluate(1, lm)
    assert len(grid.messages) == 4
    for m in grid.messages:
        assert is_packed(m.content["arrays"]) and is_packed(m.content["frozen"]), m.metadata.message_type


def test_a_node_replies_in_the_form_the_server_sent(tmp_path, monkeypatch):
    """The ClientApp packs its reply's weights when the message's were packed (a SuperNode), and names them one
    array each when they were not (the simulation), whatever else it does."""
    from flwr.app import ConfigRecord, RecordDict

    from fedw2v.fl import client_app
    from fedw2v.fl.records import arrays_from_record, is_packed, record_from_arrays

    trained = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    monkeypatch.setattr(client_app, "_train", lambda job, arrays, worker, shipped=None: ({"samples": 1}, trained))
    monkeypatch.setattr(client_app.Worker, "set_threads", staticmethod(lambda: 1))
    job = client_app.TrainJob(0, 1, "m.parquet", "", "base", {}, 0)
    for packed in (False, True):
        content = RecordDict({"arrays": record_from_arrays(trained, packed=packed), "config": job.to_record()})
        reply = client_app.run_train(content, client_app.Worker())
        assert reply["status"]["error"] == "" and is_packed(reply["arrays"]) is packed
        assert {k: v.tolist() for k, v in arrays_from_record(reply["arrays"]).items()} == \
            {k: v.tolist() for k, v in trained.items()}


def test_participation_of_a_deployment_run_comes_from_the_nodes_own_evaluations(tmp_path):
    """`fedw2v evaluate RUN --participation` for a run whose data stayed on the nodes: no manifest to read, the
    nodes' federated evaluations (node_evaluate events) are the scores, by how often each client took part."""
    import json

    from typer.testing import CliRunner

    from fedw2v.cli import app
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.participation import analyse

    run = tmp_path / "run"
    run.mkdir()
    config = SimulateConfig(clients_manifest="", eval_manifest=str(tmp_path / "server.parquet"), run_dir=str(run),
                            rounds=2)
    (run / "config.json").write_text(json.dumps(config.to_dict()))

    def node_eval(r, client, utts, words, errors):
        return {"event": "node_evaluate", "round": r, "client": client, "node": 100 + client, "error": None,
                "utterances": utts, "ref_words": words, "substitutions": errors, "deletions": 0, "insertions": 0,
                "ref_chars": 5 * words, "char_errors": errors, "word_errors": errors}

    events = [node_eval(0, 0, 2, 10, 8), node_eval(0, 1, 1, 10, 9), node_eval(0, 2, 0, 0, 0),
              {"event": "fit", "round": 1, "client": 0, "node": 100, "error": None},
              {"event": "fit", "round": 1, "client": 1, "node": 101, "error": "no reply within 5 s"},
              node_eval(1, 0, 2, 10, 4), node_eval(1, 1, 1, 10, 7),
              {"event": "node_evaluate", "round": 1, "client": None, "node": 102, "error": "gone"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    report = analyse(run)
    assert report.rounds == [0, 1] and report.clients_without_test == [2]
    assert report.scores[0]["0"].wer == pytest.approx(17 / 20)  # nobody had taken part yet
    assert report.scores[1]["1"].wer == pytest.approx(0.4) and report.scores[1]["0"].wer == pytest.approx(0.7)
    assert report.per_client[1][0] == {"rounds_taken_part": 1, "bucket": "1", "utterances": 2, "wer": 0.4}
    with pytest.raises(InputError, match="no federated evaluation by the SuperNodes for round.s. 2"):
        analyse(run, rounds=[2])
    result = CliRunner().invoke(app, ["evaluate", str(run), "--participation", "--rounds", "1"])
    assert result.exit_code == 0, result.output


def test_a_node_refuses_model_files_from_the_server_that_name_custom_code():
    """The configuration files a node receives are data: one naming code (`auto_map`) is refused in one line
    before transformers reads it, so a compromised server cannot make a SuperNode run code."""
    import json

    import pytest

    from fedw2v.errors import InputError
    from fedw2v.fl.node_data import build_model

    config = {"model_type": "wav2vec2", "auto_map": {"AutoConfig": "evil.EvilConfig"}}
    with pytest.raises(InputError, match="auto_map"):
        build_model({"config.json": json.dumps(config), "evil.py": "open('/tmp/pwned', 'w')"}, None)


def test_a_flwr_run_logs_resume_rounds_and_warnings_for_the_operator():
    """`flwr run --stream` shows what the ServerApp reports (the module-level app's reporter)."""
    import logging

    from fedw2v.fl import server_app

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        server_app.log_event({"event": "resume", "from_round": 4, "dropped_events": 7})
        server_app.log_event({"event": "round_end", "round": 5, "checkpoint": "round-0005", "best_wer": 0.25,
                              "best_round": 3})
        server_app.log_event({"event": "warning", "message": "careful"})
        server_app.log_event({"event": "fit", "round": 5})
    finally:
        logger.removeHandler(handler)
    assert lines == ["fedw2v: resumed from checkpoint round 4 (7 events logged after it dropped)",
                     "fedw2v: round 5 done, checkpoint round-0005; best WER so far 25.00% (round 3)",
                     "fedw2v: careful"]
