"""The federated server logic on an in-process grid (no Ray): rounds, checkpoints, metrics, resume, faults.

`FakeGrid` answers each training message by calling the real ClientApp handler (`run_train`) in this process,
with one `Worker` (so the model is built once, as in a Ray worker). The Ray-backed runs are in test_simulate.py.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedw2v import runs
from fedw2v.errors import InputError, RunFailed
from fedw2v.fl.client_app import Worker, run_train
from fedw2v.config.simulate import SimulateConfig
from fedw2v.fl.server_app import TIMING_KEYS, Halt, Server

pytestmark = pytest.mark.slow


class FakeReply:
    def __init__(self, msg_id, content=None, error=None):
        self.metadata = SimpleNamespace(reply_to_message_id=msg_id)
        self.content = content
        self.error = error

    def has_error(self):
        return self.error is not None


class FakeGrid:
    """Push = run the client now; pull = hand the replies back (in reverse order, to test order independence)."""

    def __init__(self, handler=run_train, worker=None):
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        # what Flower's simulation runtime sets before a ServerApp builds messages
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.worker = worker or Worker()
        self.handler = handler
        self.replies = {}
        self.ids = itertools.count()

    def get_node_ids(self):
        return [11, 12]

    def push_messages(self, messages):
        out = []
        for m in messages:
            mid = f"m{next(self.ids)}"
            m.metadata.__dict__["_message_id"] = mid  # as Flower's grids do
            self.replies[mid] = FakeReply(mid, self.handler(m.content, self.worker))
            out.append(mid)
        return out

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in reversed(list(ids)) if i in self.replies]


def _config(clients, run_dir, **kw):
    base = dict(clients_manifest=str(clients), run_dir=str(run_dir), model="tiny", rounds=2, clients_per_round=2,
                local_epochs=1, local_steps=2, batch_size=8, recipe="tiny", lr_encoder=2e-3, lr_head=2e-3,
                newbob=False, gpus_per_client=0, cpus_per_client=1, seed=7)
    base.update(kw)
    return SimulateConfig(**base)


def _round_events(run_dir):
    """metrics.jsonl without timings, grouped as (round, event) in file order."""
    out = []
    for e in runs.read_metrics(run_dir):
        if "round" in e:
            out.append({k: v for k, v in e.items() if k not in TIMING_KEYS})
    return out


def _weights(run_dir, r):
    return load_file(str(Path(run_dir) / "checkpoints" / runs.checkpoint_name(r) / "model.safetensors"))


def test_two_rounds_write_checkpoints_metrics_plot_and_config(fl_clients, tmp_path):
    run = tmp_path / "run"
    grid = FakeGrid()
    state = Server(grid, _config(fl_clients, run)).run()
    assert state.round == 2
    assert runs.checkpoint_rounds(run) == [0, 1, 2]
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0002"
    ckpt = run / "checkpoints" / "round-0002"
    for name in ("config.json", "model.safetensors", "vocab.json", "preprocessor_config.json", "state.json"):
        assert (ckpt / name).is_file(), name
    saved = json.loads((ckpt / "state.json").read_text())
    assert saved["round"] == 2 and saved["sampler"]["bit_generator"] == "PCG64"
    assert [h["round"] for h in saved["history"]] == [0, 1, 2]
    assert (run / "plots" / "wer.png").stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert config["rounds"] == 2 and config["weighting"] == "num" and config["eval_split"] == "test"
    from dataclasses import fields

    assert set(config) == {f.name for f in fields(SimulateConfig)}  # every resolved value is recorded
    events = _round_events(run)
    kinds = [(e["round"], e["event"]) for e in events]
    assert kinds == [
        (0, "round_start"), (0, "evaluate"), (0, "round_end"),
        (1, "round_start"), (1, "fit"), (1, "fit"), (1, "aggregate"), (1, "evaluate"), (1, "round_end"),
        (2, "round_start"), (2, "fit"), (2, "fit"), (2, "aggregate"), (2, "evaluate"), (2, "round_end"),
    ]
    fits = [e for e in events if e["event"] == "fit"]
    assert all(e["error"] is None and e["samples"] > 0 and np.isfinite(e["loss"]) for e in fits)
    with_dev = [e for e in fits if e.get("dev_utterances")]  # a client with a local dev split reports its WER
    assert with_dev and all(0 <= e["dev_wer"] for e in with_dev)
    assert all("dev_wer" not in e for e in fits if not e.get("dev_utterances"))
    for r in (1, 2):
        clients = next(e["clients"] for e in events if e["round"] == r and e["event"] == "round_start")
        assert [e["client"] for e in fits if e["round"] == r] == clients  # by client id, whatever the arrival
        assert len(clients) == 2 and clients == sorted(set(clients))
    evals = [e for e in events if e["event"] == "evaluate"]
    assert all(e["utterances"] > 0 and 0 <= e["cer"] for e in evals)
    assert grid.worker.builds == 1  # one model per worker process, reused across client calls


def test_only_trainable_parameters_travel(fl_clients, tmp_path):
    sent = {}

    def spy(content, worker):
        sent["keys"] = set(content["arrays"].keys())
        return run_train(content, worker)

    Server(FakeGrid(spy), _config(fl_clients, tmp_path / "run", rounds=1, freeze_feature_encoder=True)).run()
    assert sent["keys"] and not any(k.startswith("wav2vec2.feature_extractor.") for k in sent["keys"])
    assert any(k.startswith("lm_head.") for k in sent["keys"])
    first, last = _weights(tmp_path / "run", 0), _weights(tmp_path / "run", 1)
    frozen = [k for k in first if k.startswith("wav2vec2.feature_extractor.")]
    assert frozen and all(np.array_equal(first[k], last[k]) for k in frozen)
    assert not np.array_equal(first["lm_head.weight"], last["lm_head.weight"])


def test_on_a_ray_cluster_workers_build_the_model_without_the_run_directory(fl_clients, tmp_path):
    """With --ray-address the run directory lives only on the driver: every job carries the round-0 checkpoint's
    files and the weights that are not trained, and a worker that cannot read the run directory trains exactly
    as one that can."""

    def elsewhere(content, worker):  # a worker on another machine: the run directory's path means nothing there
        content["config"]["base-model"] = "/nonexistent/run/checkpoints/round-0000"
        assert {"base-files", "base-arrays"} <= set(content.keys())
        return run_train(content, worker)

    grid = FakeGrid(elsewhere)
    cluster, local = tmp_path / "cluster", tmp_path / "local"
    Server(grid, _config(fl_clients, cluster, freeze_feature_encoder=True, ray_address="10.0.0.5:6379")).run()
    Server(FakeGrid(), _config(fl_clients, local, freeze_feature_encoder=True)).run()
    fits = [e for e in runs.read_metrics(cluster) if e["event"] == "fit"]
    assert len(fits) == 4 and all(e["error"] is None for e in fits) and grid.worker.builds == 1
    wa, wb = _weights(cluster, 2), _weights(local, 2)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_gives_the_same_weights_and_metrics_as_an_uninterrupted_run(fl_clients, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    Server(FakeGrid(), _config(fl_clients, a, rounds=3)).run()
    Server(FakeGrid(), _config(fl_clients, b, rounds=1)).run()
    # a crash mid-round 2 leaves events after the last checkpoint: the resume must drop them
    runs.MetricsLog(b).append({"event": "round_start", "round": 2, "clients": [0, 1]})
    Server(FakeGrid(), _config(fl_clients, b, rounds=3, resume=True)).run()
    wa, wb = _weights(a, 3), _weights(b, 3)
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)  # bit-identical
    assert _round_events(a) == _round_events(b)  # each round exactly once, same content


def test_resume_refuses_a_different_configuration(fl_clients, tmp_path):
    run = tmp_path / "run"
    Server(FakeGrid(), _config(fl_clients, run, rounds=1)).run()
    with pytest.raises(InputError, match="cannot resume with a different configuration: batch_size, lr_head"):
        Server(FakeGrid(), _config(fl_clients, run, rounds=2, resume=True, batch_size=4, lr_head=1e-3)).run()
    with pytest.raises(InputError, match="already holds a run"):
        Server(FakeGrid(), _config(fl_clients, run, rounds=2)).run()
    with pytest.raises(InputError, match="nothing to resume"):
        Server(FakeGrid(), _config(fl_clients, tmp_path / "new", resume=True)).run()


@pytest.fixture()
def corrupt_client(fl_clients, tmp_path):
    """A copy of the clients manifest whose client 0's audio file is garbage."""
    from fedw2v import manifest as mf

    m = mf.read(fl_clients)
    root = tmp_path / "corpus"
    shutil.copytree(m.info.corpus_root, root, symlinks=True)
    rows = m.table.to_pylist()
    bad = next(r["audio_path"] for r in rows if r["client_id"] == 0)
    target = (root / bad).resolve()
    target.unlink()
    target.write_bytes(b"NIST_1A\n   1024\nthis is not audio")
    out = tmp_path / "clients.parquet"
    mf.write(mf.Manifest(m.table, m.info.with_command("test copy")), out)
    return out, str(root)


def test_the_server_evaluates_round_0_every_eval_every_rounds_and_the_last_from_a_moved_corpus(fl_clients, tmp_path):
    from dataclasses import replace

    from fedw2v import manifest as mf

    m = mf.read(fl_clients)
    moved = tmp_path / "moved-corpus"
    shutil.copytree(m.info.corpus_root, moved, symlinks=True)
    clients = tmp_path / "clients.parquet"  # its recorded root no longer exists: only --corpus-root finds the audio
    mf.write(mf.Manifest(m.table, replace(m.info, corpus_root=str(tmp_path / "gone"))), clients)
    run = tmp_path / "run"
    Server(FakeGrid(), _config(clients, run, rounds=3, clients_per_round=1, eval_every=2,
                               corpus_root=str(moved))).run()
    evals = [e for e in _round_events(run) if e["event"] == "evaluate"]
    test_utts = sum(1 for split in m.table.column("split").to_pylist() if split == "test")
    assert [e["round"] for e in evals] == [0, 2, 3]
    assert all(e["utterances"] == test_utts and e["split"] == "test" for e in evals)  # the whole split
    assert all(e["error"] is None for e in _round_events(run) if e["event"] == "fit")


def test_a_failing_client_is_logged_each_time_and_left_out(corrupt_client, tmp_path):
    clients, root = corrupt_client
    run = tmp_path / "run"
    Server(FakeGrid(), _config(clients, run, rounds=2, clients_per_round=4, min_fit_clients=1,
                               corpus_root=root)).run()
    fits = [e for e in _round_events(run) if e["event"] == "fit"]
    failed = [e for e in fits if e["error"]]
    assert [(e["round"], e["client"]) for e in failed] == [(1, 0), (2, 0)]  # every time it was sampled
    assert all("cannot read audio" in e["error"] or "outside the audio" in e["error"] for e in failed)
    aggregates = [e for e in _round_events(run) if e["event"] == "aggregate"]
    assert all("0" not in e["weights"] and e["clients"] == 3 for e in aggregates)
    w = _weights(run, 2)
    assert all(np.isfinite(v).all() for v in w.values())


class SilentGrid(FakeGrid):
    """A client that never answers: the first message of every push gets no reply (its TTL is recorded)."""

    def __init__(self):
        super().__init__()
        self.ttls = []

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        self.ttls += [m.metadata.ttl for m in messages]
        del self.replies[ids[0]]
        return ids


def test_a_client_that_never_answers_fails_the_round_after_round_timeout(fl_clients, tmp_path):
    run = tmp_path / "run"
    grid = SilentGrid()
    state = Server(grid, _config(fl_clients, run, rounds=2, clients_per_round=3, min_fit_clients=1,
                                 round_timeout=1.5)).run()
    assert state.round == 2 and grid.ttls == [1.5] * 6  # the SuperLink drops the messages after it too
    events = _round_events(run)
    for r in (1, 2):
        clients = next(e["clients"] for e in events if e["round"] == r and e["event"] == "round_start")
        fits = {e["client"]: e for e in events if e["round"] == r and e["event"] == "fit"}
        assert sorted(fits) == clients
        silent = fits[clients[0]]  # the first message of the round went to the lowest client id
        assert silent["error"] == "no reply within 1.5 s (--round-timeout)"
        assert all(fits[c]["error"] is None for c in clients[1:])
        aggregate = next(e for e in events if e["round"] == r and e["event"] == "aggregate")
        assert aggregate["clients"] == 2 and str(clients[0]) not in aggregate["weights"]
    assert all(np.isfinite(v).all() for v in _weights(run, 2).values())


class MuteGrid(FakeGrid):
    """Accepts every message and never answers (a backend that died under the round)."""

    def __init__(self):
        super().__init__()
        self.pushed = threading.Event()

    def push_messages(self, messages):
        out = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = mid = f"m{next(self.ids)}"
            out.append(mid)
        self.pushed.set()
        return out

    def pull_messages(self, ids):
        return []


def test_a_halt_stops_a_server_waiting_for_replies_that_cannot_come(fl_clients, tmp_path):
    """Without --round-timeout the server waits for replies forever; `fedw2v simulate` halts it when Ray dies, on
    Ctrl-C or when Flower's engine ends, and it stops within a moment, its last checkpoint intact."""
    grid, halt, seen = MuteGrid(), Halt(), {}

    def run():
        try:
            Server(grid, _config(fl_clients, tmp_path / "run", rounds=1), halt=halt).run()
        except RunFailed as exc:
            seen["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert grid.pushed.wait(600)  # round 1's messages are out
    time.sleep(0.5)
    assert thread.is_alive()  # waiting
    halt.set("interrupted")
    thread.join(2.0)
    assert not thread.is_alive() and seen["error"] == "round 1: stopped waiting (interrupted)"
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip() == "round-0000"


def test_a_round_failing_because_ray_died_says_so(fl_clients, tmp_path):
    """Ray's processes killed under a round: every client call fails with an actor error at once. The run stops
    naming the cause (the backend is down), not the clients."""

    class DeadRayGrid(FakeGrid):
        def push_messages(self, messages):
            ids = [f"m{next(self.ids)}" for _ in messages]
            for m, mid in zip(messages, ids):
                m.metadata.__dict__["_message_id"] = mid
                self.replies[mid] = FakeReply(mid, error=SimpleNamespace(
                    reason="<class 'ray.exceptions.ActorUnavailableError'>:<'The actor is unavailable'>"))
            return ids

    run = tmp_path / "run"
    down = "Ray stopped: its GCS at 10.0.0.5:6379 stopped answering"
    with pytest.raises(RunFailed) as failed:
        Server(DeadRayGrid(), _config(fl_clients, run, rounds=1), halt=Halt(probe=lambda: down)).run()
    assert str(failed.value) == (f"{down}; the run stopped at its checkpoint round-0000 (continue it with --resume "
                                 "once Ray runs again)")
    with pytest.raises(RunFailed, match="round 1: 0 of 2 clients succeeded"):  # Ray up: the clients' failure
        Server(DeadRayGrid(), _config(fl_clients, run, rounds=1, resume=True), halt=Halt(probe=lambda: "")).run()


def test_a_message_the_superlink_expired_counts_as_a_round_timeout(fl_clients, tmp_path):
    """Flower's engine answers an expired message (its TTL = --round-timeout) with an error reply of its own."""

    class ExpiringGrid(FakeGrid):
        def push_messages(self, messages):
            ids = super().push_messages(messages)
            reason = ("Message Unavailable - The requested message could not be found in the database. It may have "
                      "expired due to its TTL, been deleted because ...")
            self.replies[ids[0]] = FakeReply(ids[0], error=SimpleNamespace(reason=reason))
            return ids

    run = tmp_path / "run"
    Server(ExpiringGrid(), _config(fl_clients, run, rounds=1, clients_per_round=2, min_fit_clients=1,
                                   round_timeout=30)).run()
    fits = [e for e in _round_events(run) if e["event"] == "fit"]
    assert [e["error"] for e in fits] == ["no reply within 30 s (--round-timeout; the SuperLink expired the message)",
                                          None]


def test_too_few_successes_stop_the_run_with_its_last_checkpoint_intact(corrupt_client, tmp_path):
    clients, root = corrupt_client
    run = tmp_path / "run"
    with pytest.raises(RunFailed, match=r"round 1: 3 of 4 clients succeeded, 4 needed .*checkpoint round 0 "
                                        r"\(client 0: InputError"):
        Server(FakeGrid(), _config(clients, run, rounds=2, clients_per_round=4, min_fit_clients=4,
                                   corpus_root=root)).run()
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0000"
    assert runs.checkpoint_rounds(run) == [0]


def test_a_client_sending_nan_is_left_out(fl_clients, tmp_path):
    from fedw2v.fl.records import arrays_from_record, record_from_arrays

    def poisoned(content, worker):
        reply = run_train(content, worker)
        if int(content["config"]["client-id"]) == 1 and "arrays" in reply:
            arrays = {k: np.array(v) for k, v in arrays_from_record(reply["arrays"]).items()}
            arrays["lm_head.weight"][0, 0] = np.nan
            reply["arrays"] = record_from_arrays(arrays)
        return reply

    run = tmp_path / "run"
    Server(FakeGrid(poisoned), _config(fl_clients, run, rounds=1, clients_per_round=4, min_fit_clients=1)).run()
    fit = {e["client"]: e for e in _round_events(run) if e["event"] == "fit"}
    assert "non-finite weights received (lm_head.weight)" in fit[1]["error"]
    assert all(np.isfinite(v).all() for v in _weights(run, 1).values())


def test_old_checkpoints_are_pruned_but_the_base_best_and_latest_are_kept(fl_clients, tmp_path):
    run = tmp_path / "run"
    state = Server(FakeGrid(), _config(fl_clients, run, rounds=3, keep_checkpoints=1)).run()
    kept = runs.checkpoint_rounds(run)
    assert kept == sorted({0, 3, state.best_round})


@pytest.mark.parametrize("weighting", ["loss", "wer"])
def test_loss_and_wer_weighting_give_the_weights_of_their_formulas(fl_clients, tmp_path, weighting):
    """Known client results (each reply's samples, loss and dev WER set here): `loss` weights are exp(-loss) and
    `wer` weights exp(100 - WER%), normalised, and both differ from `num` (samples)."""
    import math

    known = {c: {"samples": 10 + 7 * c, "loss": 0.5 + 0.3 * c, "dev-wer": 0.2 + 0.03 * c} for c in range(4)}

    def reporting(content, worker):
        reply = run_train(content, worker)
        for key, value in known[int(content["config"]["client-id"])].items():
            reply["metrics"][key] = value
        return reply

    run = tmp_path / "run"
    Server(FakeGrid(reporting), _config(fl_clients, run, rounds=1, weighting=weighting, clients_per_round=4,
                                        min_fit_clients=4)).run()
    agg = next(e for e in _round_events(run) if e["event"] == "aggregate")
    assert agg["weighting"] == weighting and sorted(agg["weights"]) == ["0", "1", "2", "3"]
    got = [agg["weights"][str(c)] for c in range(4)]
    if weighting == "loss":
        raw = [math.exp(-known[c]["loss"]) for c in range(4)]
    else:
        raw = [math.exp(100 - 100 * known[c]["dev-wer"]) for c in range(4)]
    assert got == pytest.approx([r / sum(raw) for r in raw], rel=1e-9)
    samples = [known[c]["samples"] for c in range(4)]
    num = [n / sum(samples) for n in samples]
    assert max(abs(g - n) for g, n in zip(got, num)) > 0.1  # not FedAvg's weights


def test_keep_checkpoints_and_round_timeout_may_change_on_resume(fl_clients, tmp_path):
    run = tmp_path / "run"
    Server(FakeGrid(), _config(fl_clients, run, rounds=1, keep_checkpoints=3, round_timeout=0)).run()
    recorded = json.loads((run / "config.json").read_text())
    del recorded["allow_outside_audio"]  # as a run recorded before the option existed
    (run / "config.json").write_text(json.dumps(recorded))
    state = Server(FakeGrid(), _config(fl_clients, run, rounds=3, resume=True, keep_checkpoints=1,
                                       round_timeout=120)).run()
    assert state.round == 3
    recorded = json.loads((run / "config.json").read_text())
    assert (recorded["rounds"], recorded["keep_checkpoints"], recorded["round_timeout"]) == (3, 1, 120)
    assert runs.checkpoint_rounds(run) == sorted({0, 3, state.best_round})  # the new --keep-checkpoints 1 applied


class LateGrid(SilentGrid):
    """SilentGrid whose withheld replies do arrive, after their round gave up on them: every pull of a later round
    hands them back too, whatever ids it asked for."""

    def __init__(self):
        super().__init__()
        self.late = {}

    def push_messages(self, messages):
        ids = FakeGrid.push_messages(self, messages)
        self.ttls += [m.metadata.ttl for m in messages]
        self.late[ids[0]] = self.replies.pop(ids[0])
        return ids

    def pull_messages(self, ids):
        asked = set(ids)
        return [r for i, r in self.late.items() if i not in asked] + super().pull_messages(ids)


def test_a_late_reply_after_round_timeout_is_ignored(fl_clients, tmp_path):
    config = dict(rounds=2, clients_per_round=2, min_fit_clients=1, round_timeout=1.5, eval_every=2)
    silent, late = tmp_path / "silent", tmp_path / "late"
    Server(SilentGrid(), _config(fl_clients, silent, **config)).run()
    grid = LateGrid()
    Server(grid, _config(fl_clients, late, **config)).run()
    assert len(grid.late) == 2  # round 1's late reply was handed to round 2, and round 2's own withheld one
    assert _round_events(late) == _round_events(silent)  # the same failures, results and weights, as if it never came
    a, b = _weights(silent, 2), _weights(late, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_clients_training_depends_on_seed_round_and_client_not_on_the_worker(fl_clients, tmp_path):
    """The same job (seed, round, client) gives the same weights on a fresh worker and on one that has trained
    other clients first; another round or another client gets another seed."""
    from fedw2v.fl.client_app import client_seed
    from fedw2v.fl.records import arrays_from_record

    jobs = {}

    def keep(content, worker):
        jobs[int(content["config"]["client-id"])] = content
        return run_train(content, worker)

    Server(FakeGrid(keep), _config(fl_clients, tmp_path / "run", rounds=1, clients_per_round=2)).run()
    first, other = sorted(jobs)
    fresh = arrays_from_record(run_train(jobs[first], Worker())["arrays"])
    busy = Worker()
    run_train(jobs[other], busy)
    run_train(jobs[other], busy)
    after_others = arrays_from_record(run_train(jobs[first], busy)["arrays"])
    assert fresh.keys() == after_others.keys()
    assert all(np.array_equal(fresh[k], after_others[k]) for k in fresh)
    seeds = {client_seed(7, r, c) for r in (1, 2) for c in (first, other)}
    assert len(seeds) == 4 and client_seed(7, 1, first) != client_seed(8, 1, first)
    assert client_seed(7, 1, first) == client_seed(7, 1, first)


def test_footprint_rounds_store_only_footprints_and_keep_their_checkpoints(fl_clients, tmp_path):
    from fedw2v.privacy import store

    run = tmp_path / "run"
    Server(FakeGrid(), _config(fl_clients, run, rounds=3, clients_per_round=4, footprint_rounds=(2,),
                               keep_checkpoints=1, indicator_utterances=4)).run()
    vectors, meta = store.read_footprints(run, 2, "test")
    fits = [e for e in _round_events(run) if e["event"] == "fit" and e["round"] == 2 and not e["error"]]
    assert sorted(vectors) == [e["client"] for e in fits]
    layers = 1 + 3  # feature projection + the tiny model's 3 blocks
    assert all(v.shape == (layers, 2 * 192) and np.isfinite(v).all() for v in vectors.values())
    assert len(meta["indicator"]["utt_ids"]) == 4
    assert not (run / "updates").exists()  # only footprints unless --save-updates
    assert {1, 2} <= set(runs.checkpoint_rounds(run))  # global_r (round-0001) and round 2 kept despite keep=1
    event = next(e for e in _round_events(run) if e["event"] == "footprints")
    assert event["round"] == 2 and event["clients"] == sorted(vectors)


def test_save_updates_keeps_the_full_client_weights(fl_clients, tmp_path):
    from fedw2v.privacy import store

    run = tmp_path / "run"
    Server(FakeGrid(), _config(fl_clients, run, rounds=1, clients_per_round=2, footprint_rounds=(1,),
                               save_updates=True, indicator_utterances=2)).run()
    saved = store.saved_updates(run, 1)
    assert len(saved) == 2
    arrays = store.read_update(run, 1, saved[0])
    assert "lm_head.weight" in arrays and arrays["lm_head.weight"].dtype == np.float32


def test_the_summary_shows_wer_and_cer_of_every_evaluated_round():
    from rich.console import Console

    from fedw2v.ui.render import simulate_rows, simulate_table

    history = [{"round": r, "wer": 0.9 - 0.01 * r, "cer": 0.5 - 0.02 * r, "loss": 1.0} for r in range(7)]
    history[3]["wer"] = 0.95  # a round that got worse
    config = SimpleNamespace(clients_per_round=4, eval_split="test")
    console = Console(width=120, record=True)
    console.print(simulate_table(config, SimpleNamespace(round=6, history=history)))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.strip().startswith("│")]
    text = " ".join(text.split())  # the caption wraps at the table's width
    assert len(rows) == 7  # one per evaluated round, round 0 included
    assert "6 *" in text and "test split; * best WER (round 6)" in text
    assert "+7.00" in text and "-2.00" in text  # WER of round 3 rose by 7 points; every CER fell by 2
    assert "not shown" not in text
    # a long run: the first, the best and the newest evaluations, in round order
    long = [{"round": r, "wer": 1.0 if r != 7 else 0.1, "cer": 0.5, "loss": None} for r in range(101)]
    shown = [h["round"] for h in simulate_rows(long, limit=10)]
    assert shown == [0, 7, *range(93, 101)]


def test_the_summary_shows_at_most_25_evaluations_by_default_the_first_the_best_and_the_23_newest():
    from rich.console import Console

    from fedw2v.ui.render import simulate_rows, simulate_table

    def history(n, best):
        return [{"round": r, "wer": 0.1 if r == best else 0.9, "cer": 0.5, "loss": None} for r in range(n)]

    assert [h["round"] for h in simulate_rows(history(25, 3))] == list(range(25))  # 25: all of them
    shown = [h["round"] for h in simulate_rows(history(40, 5))]
    assert shown == [0, 5, *range(17, 40)] and len(shown) == 25
    console = Console(width=120, record=True)
    console.print(simulate_table(SimpleNamespace(clients_per_round=4, eval_split="test"),
                                 SimpleNamespace(round=39, history=history(40, 5))))
    rows = [line for line in console.export_text().splitlines() if line.strip().startswith("│")]
    assert len(rows) == 25
