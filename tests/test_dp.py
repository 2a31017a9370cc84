"""Differential privacy (--dp central|local, fedw2v/privacy/dp.py and dp_client.py): clipping, noise, the
accountant, the budget, resume, refusals, and what the footprint attack sees.

The functions are tested on plain numpy arrays; the runs use test_server's in-process `FakeGrid`, whose handler
here runs the ClientApp's DP mod (`privacy_mod`, i.e. Flower's fixedclipping_mod / LocalDpMod) around the real
training handler, as Flower's ClientApp does. The Ray-backed SIGKILL test is in test_simulate.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedw2v.config import options as opts
from fedw2v.config.simulate import SimulateConfig
from fedw2v.fl.aggregate import ClientStats, client_weights, weighted_average
from fedw2v.privacy import dp
from fedw2v.privacy.dp_client import privacy_mod


def _config(**kw):
    base = dict(clients_manifest="c", run_dir="r", clients_per_round=4, dp="central", dp_noise_multiplier=1.0,
                dp_clip=1.0)
    base.update(kw)
    return SimulateConfig(**base)


def _uniform(ids):
    return client_weights([ClientStats(c, 1) for c in ids], "uniform")


# ----------------------------------------------------------------------------------------- the client mod


def _message(arrays, config, shipped=False, packed=False):
    """A training message as the server sends it (Flower's Message, one ArrayRecord and one ConfigRecord; with
    ``shipped``, also the model's files and frozen weights, as a SuperNode or a Ray-cluster worker gets it; with
    ``packed``, its weights packed as a SuperNode gets them)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedw2v.fl.records import record_from_arrays

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    record = record_from_arrays(arrays, packed=packed)
    extra = {"model": ConfigRecord({"config.json": "{}"}),
             "frozen": ArrayRecord({"f": Array(np.zeros(3, np.float32))})} if shipped else {}
    msg = Message(RecordDict({"arrays": record, "config": ConfigRecord(config), **extra}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m1"  # as a grid sets it
    return msg


def _reply_with(arrays, error="", packed=False):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedw2v.fl.records import record_from_arrays

    def call_next(msg, context):
        content = RecordDict({"metrics": MetricRecord({"samples": 1}), "status": ConfigRecord({"error": error})})
        if not error:
            content["arrays"] = record_from_arrays(arrays, packed=packed)
        return Message(content, reply_to=msg)

    return call_next


def _dp_keys(mode, z, clip, seed=0, round_=1, client=3):
    return {"dp-mode": mode, "clipping_norm": float(clip), "dp-noise-multiplier": float(z), "dp-delta": 1e-5,
            "dp-noise-seed": seed, "round": round_, "client-id": client}


def _run_mod(global_arrays, trained, keys, error="", shipped=False, packed=False):
    from flwr.app import Context, RecordDict

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = privacy_mod(_message(global_arrays, keys, shipped, packed), ctx, _reply_with(trained, error, packed))
    assert not out.has_error(), out.error
    return out.content


def _norm(a, b):
    return math.sqrt(sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in a))


_shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(shapes=_shapes, log_ratio=st.floats(-3, 3, allow_subnormal=False),
       clip=st.floats(1e-3, 1e2, allow_subnormal=False), seed=st.integers(0, 2**31))
@example(shapes=[5, 3], log_ratio=math.log10(1.5), clip=1.0, seed=0).via("just outside the bound")
@example(shapes=[7], log_ratio=math.log10(0.5), clip=2.0, seed=1).via("just inside it")
def test_clipping_bounds_every_updates_norm(shapes, log_ratio, clip, seed):
    """Property: whatever the update (its norm 10^log_ratio times C, from far inside to far outside the bound), what
    the server averages (its own clipping) and what a central-DP client sends (Flower's fixedclipping_mod) lie
    within C of the global weights; an update already within C is not touched."""
    rng = np.random.default_rng(seed)
    g = {f"w{i}": rng.normal(size=n).astype(np.float32) for i, n in enumerate(shapes)}
    step = {k: rng.normal(size=v.shape) for k, v in g.items()}
    scale = 10**log_ratio * clip / math.sqrt(sum(float((v ** 2).sum()) for v in step.values()))
    w = {k: (v + scale * step[k]).astype(np.float32) for k, v in g.items()}
    clipped, before = dp.clip_update(g, w, clip)
    assert before == pytest.approx(_norm(w, g), rel=1e-5)
    assert _norm(clipped, g) <= clip * (1 + 1e-4) + 1e-6  # float32 rounding of g + clip(w - g)
    if before <= clip:
        assert all(clipped[k] is w[k] for k in w)
    sent = _run_mod(g, w, _dp_keys("central", 1.0, clip))
    back = {k: sent["arrays"][k].numpy() for k in g}
    assert _norm(back, g) <= clip * (1 + 1e-4) + 1e-6


def test_the_central_noise_std_is_z_c_over_n():
    config = _config(dp_noise_multiplier=2.0, dp_clip=0.5, dp_noise_seed=11)
    server = dp.DpServer(config, population=10)
    g = {"a": np.zeros((400, 500), np.float32), "b": np.zeros(100_000, np.float32)}
    updates = {c: {k: v.copy() for k, v in g.items()} for c in range(4)}  # nobody moved: only the noise is left
    inputs, mix = server.prepare(1, g, updates, _uniform(updates), sampled=4)
    averaged = weighted_average(inputs, mix)
    event = server.release(1, averaged)
    noise = np.concatenate([averaged[k].ravel() for k in g])
    assert event["noise_std"] == pytest.approx(2.0 * 0.5 / 4)
    assert noise.std() == pytest.approx(0.25, rel=0.01)  # 300k draws: the estimate is within 0.2%
    assert abs(noise.mean()) < 0.005
    assert event["epsilon"] > 0 and event["clients"] == 4 and event["clipped"] == 0


def test_local_dp_noises_each_update_with_std_z_c_after_clipping():
    rng = np.random.default_rng(0)
    g = {"a": rng.normal(size=200_000).astype(np.float32)}
    w = {"a": g["a"] + np.float32(0.01) * rng.normal(size=200_000).astype(np.float32)}  # norm ~4.5, clipped to 1
    sent = _run_mod(g, w, _dp_keys("local", 0.3, 1.0, seed=5))["arrays"]["a"].numpy()
    direction = (w["a"].astype(np.float64) - g["a"]) / _norm(w, g)
    noise = sent - (g["a"] + direction)
    assert noise.std() == pytest.approx(0.3 * 1.0, rel=0.01)
    again = _run_mod(g, w, _dp_keys("local", 0.3, 1.0, seed=5))["arrays"]["a"].numpy()
    other = _run_mod(g, w, _dp_keys("local", 0.3, 1.0, seed=5, round_=2))["arrays"]["a"].numpy()
    assert np.array_equal(sent, again) and not np.array_equal(sent, other)  # a stream per (seed, round, client)
    fresh = [_run_mod(g, w, _dp_keys("local", 0.3, 1.0, seed=0))["arrays"]["a"].numpy() for _ in range(2)]
    assert not np.array_equal(*fresh)  # seed 0: the operating system's entropy


@pytest.mark.parametrize("mode", ["central", "local"])
def test_the_mod_clips_and_noises_packed_weights_as_it_does_named_ones(mode):
    """A SuperNode's message packs its weights (`fl.records`, one flat array per dtype): Flower's mods clip the
    update to the same norm and draw the same noise, element for element, as for the named arrays."""
    from flwr.app import ArrayRecord

    from fedw2v.fl.records import arrays_from_record, is_packed

    rng = np.random.default_rng(2)
    g = {"a": rng.normal(size=(30, 20)).astype(np.float32), "b": rng.normal(size=500).astype(np.float32)}
    w = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in g.items()}  # norm ~33: clipped to 1
    keys = _dp_keys(mode, 0.5, 1.0, seed=7)
    plain = {k: sent.numpy() for k, sent in _run_mod(g, w, keys)["arrays"].items()}
    sent = _run_mod(g, w, keys, packed=True)["arrays"]
    assert isinstance(sent, ArrayRecord) and is_packed(sent)
    packed = arrays_from_record(sent)
    assert packed.keys() == plain.keys()
    for k in plain:
        assert np.allclose(packed[k], plain[k], rtol=1e-5, atol=1e-6), k
    if mode == "central":
        assert _norm(packed, g) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_the_mod_clips_a_message_that_also_ships_the_model(mode):
    """A SuperNode's (or Ray-cluster worker's) training message also carries the model files and frozen weights;
    Flower's mods, which want exactly one ArrayRecord, see the weights and the job only, and clip the same."""
    rng = np.random.default_rng(1)
    g = {"a": rng.normal(size=1000).astype(np.float32)}
    w = {"a": g["a"] + rng.normal(size=1000).astype(np.float32)}  # norm ~32: clipped to 1
    plain = _run_mod(g, w, _dp_keys(mode, 0.5, 1.0, seed=7))["arrays"]["a"].numpy()
    shipped = _run_mod(g, w, _dp_keys(mode, 0.5, 1.0, seed=7), shipped=True)["arrays"]["a"].numpy()
    assert np.array_equal(plain, shipped)
    if mode == "central":
        assert _norm({"a": shipped}, g) == pytest.approx(1.0, rel=1e-4)


def test_the_mod_passes_failures_and_dp_off_through_untouched():
    g = {"a": np.zeros(4, np.float32)}
    out = _run_mod(g, {}, _dp_keys("local", 1.0, 1.0), error="InputError: no audio")
    assert out["status"]["error"] == "InputError: no audio" and "arrays" not in out
    w = {"a": np.full(4, 9.0, np.float32)}
    out = _run_mod(g, w, _dp_keys("off", 1.0, 1.0))
    assert np.array_equal(out["arrays"]["a"].numpy(), w["a"])
    # a zero update (lr 0): nothing to clip, and local DP still adds its noise
    assert np.array_equal(_run_mod(g, g, _dp_keys("central", 1.0, 1.0))["arrays"]["a"].numpy(), g["a"])
    assert _run_mod(g, g, _dp_keys("local", 1.0, 1.0))["arrays"]["a"].numpy().std() > 0.1


# ------------------------------------------------------------------------------------- aggregation and ε


def test_z_0_and_infinite_clip_is_uniform_fedavg_exactly():
    rng = np.random.default_rng(3)
    g = {"a": rng.normal(size=(30, 7)).astype(np.float32), "b": rng.normal(size=50).astype(np.float32)}
    updates = {c: {k: (v + rng.normal(size=v.shape) * 10).astype(np.float32) for k, v in g.items()}
               for c in (4, 1, 9)}
    weights = _uniform(updates)
    fedavg = weighted_average(updates, weights)
    server = dp.DpServer(_config(dp_noise_multiplier=0.0, dp_clip=math.inf), population=10)
    inputs, mix = server.prepare(1, g, updates, weights, sampled=3)
    averaged = weighted_average(inputs, mix)
    event = server.release(1, averaged)
    assert all(np.array_equal(averaged[k], fedavg[k]) for k in g)  # bit for bit
    assert event["noise_std"] == 0 and event["epsilon"] is None  # z = 0: ε is infinite (None in JSON)
    # a client that failed: the denominator stays the n sampled, the global model takes the missing share
    inputs, mix = server.prepare(2, g, {c: updates[c] for c in (1, 4)}, _uniform([1, 4]), sampled=3)
    averaged = weighted_average(inputs, mix)
    server.release(2, averaged)
    expected = {k: g[k] + ((updates[1][k] - g[k]) + (updates[4][k] - g[k])) / 3 for k in g}
    assert all(np.allclose(averaged[k], expected[k], atol=1e-5) for k in g)


def test_epsilon_falls_as_z_grows_and_rises_with_rounds():
    for accounting in ("none", "sampled"):
        eps = [dp.epsilon(z, 10, 4, 100, 1e-5, accounting) for z in (0.5, 1.0, 2.0, 4.0)]
        assert eps == sorted(eps, reverse=True) and len(set(eps)) == 4, eps
        eps = [dp.epsilon(1.0, r, 4, 100, 1e-5, accounting) for r in (1, 2, 5, 20)]
        assert eps == sorted(eps) and len(set(eps)) == 4, eps
    assert dp.epsilon(1.0, 10, 4, 10_000, 1e-5, "sampled") < dp.epsilon(1.0, 10, 4, 100, 1e-5, "sampled")
    assert dp.epsilon(1.0, 10, 4, 10_000, 1e-5, "none") == dp.epsilon(1.0, 10, 4, 100, 1e-5, "none")
    assert dp.epsilon(0.0, 1, 4, 100, 1e-5) == math.inf and dp.epsilon(1.0, 0, 4, 100, 1e-5) == 0.0
    # the server's running ε is the accountant's, round after round
    server = dp.DpServer(_config(dp_noise_multiplier=1.5), population=100)
    g = {"a": np.zeros(10, np.float32)}
    seen = []
    for r in (1, 2, 3):
        ups = {c: {"a": np.ones(10, np.float32)} for c in range(4)}
        inputs, mix = server.prepare(r, g, ups, _uniform(ups), 4)
        seen.append(server.release(r, weighted_average(inputs, mix))["epsilon"])
    assert seen == [pytest.approx(dp.epsilon(1.5, r, 4, 100, 1e-5)) for r in (1, 2, 3)]


def test_local_epsilon_is_that_of_the_client_that_sent_most():
    server = dp.DpServer(_config(dp="local", dp_noise_multiplier=2.0), population=6)
    g = {"a": np.zeros(3, np.float32)}
    for r, clients in ((1, [0, 1]), (2, [1, 2]), (3, [2, 3])):
        ups = {c: {"a": np.ones(3, np.float32)} for c in clients}
        inputs, mix = server.prepare(r, g, ups, _uniform(ups), 2)
        event = server.release(r, weighted_average(inputs, mix))
        assert all(np.array_equal(inputs[c]["a"], ups[c]["a"]) for c in clients)  # received: averaged as they are
    assert server.counts == {0: 1, 1: 2, 2: 2, 3: 1} and event["max_releases"] == 2
    assert event["epsilon"] == pytest.approx(dp.epsilon(2.0, 2, 1, 6, 1e-5, mode="local"))
    assert event["noise_std"] == 2.0 * 1.0


def test_the_budget_check_uses_the_accountants_projection():
    server = dp.DpServer(_config(dp_noise_multiplier=1.0, dp_max_epsilon=dp.epsilon(1.0, 2, 4, 10, 1e-5) * 1.01),
                         population=10)
    g = {"a": np.zeros(3, np.float32)}
    for r in (1, 2):
        server.check_budget(r, [0, 1, 2, 3], r - 1)
        ups = {c: {"a": np.ones(3, np.float32)} for c in range(4)}
        inputs, mix = server.prepare(r, g, ups, _uniform(ups), 4)
        server.release(r, weighted_average(inputs, mix))
    with pytest.raises(dp.PrivacyBudgetExhausted, match=r"round 3 would raise ε above --dp-max-epsilon .*stopped "
                                                        r"at checkpoint round 2"):
        server.check_budget(3, [0, 1, 2, 3], 2)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_a_deployment_server_without_a_population_accounts_without_amplification(mode):
    """A deployment run has no clients manifest: the server samples the SuperNodes that are connected and does
    not know the population. Without amplification ε does not depend on it, so the run accounts as usual (Flower's
    accountant refused a population of 0: every --dp deployment run failed at its first release)."""
    known = dp.DpServer(_config(dp=mode, dp_noise_multiplier=1.5), population=50)
    unknown = dp.DpServer(replace(_config(dp=mode, dp_noise_multiplier=1.5, dp_max_epsilon=1e6),
                                  clients_manifest="", eval_manifest="e"), population=0)
    g = {"a": np.zeros(10, np.float32)}
    for r in (1, 2):
        unknown.check_budget(r, [0, 1, 2, 3], r - 1)
        for server in (known, unknown):
            ups = {c: {"a": np.ones(10, np.float32)} for c in range(4)}
            inputs, mix = server.prepare(r, g, ups, _uniform(ups), 4)
            event = server.release(r, weighted_average(inputs, mix))
        assert event["epsilon"] == pytest.approx(known.epsilon()) and event["epsilon"] > 0
    assert unknown.summary()["population"] is None and known.summary()["population"] == 50
    with pytest.raises(ValueError, match="--dp-accounting sampled needs the population sampled from"):
        SimulateConfig(clients_manifest="", eval_manifest="e", run_dir="r", dp="central", dp_accounting="sampled",
                       weighting="uniform")


def test_the_state_round_trips_through_json():
    server = dp.DpServer(_config(dp_noise_multiplier=1.0), population=10)
    g = {"a": np.zeros(1000, np.float32)}
    ups = {c: {"a": np.ones(1000, np.float32)} for c in range(4)}
    inputs, mix = server.prepare(1, g, ups, _uniform(ups), 4)
    server.release(1, weighted_average(inputs, mix))
    saved = json.loads(json.dumps(server.state_dict()))
    again = dp.DpServer(_config(dp_noise_multiplier=1.0, dp_max_epsilon=50.0), population=10)  # budget may change
    again.load_state_dict(saved)
    assert again.epsilon() == server.epsilon()
    outs = []
    for s in (server, again):
        inputs, mix = s.prepare(2, g, ups, _uniform(ups), 4)
        outs.append(weighted_average(inputs, mix))
        s.release(2, outs[-1])
    assert np.array_equal(outs[0]["a"], outs[1]["a"]) and again.epsilon() == server.epsilon()
    with pytest.raises(Exception, match="made with --dp central"):
        dp.DpServer(_config(dp="local"), population=10).load_state_dict(saved)


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, message", [
    (["--dp-noise-multiplier", "-1"], "--dp-noise-multiplier must be a finite number >= 0"),
    (["--dp-noise-multiplier", "nan"], "--dp-noise-multiplier must be a finite number >= 0"),
    (["--dp-clip", "0"], "--dp-clip must be positive"),
    (["--dp-clip", "-2"], "--dp-clip must be positive"),
    (["--dp-clip", "inf"], "--dp-clip inf needs --dp-noise-multiplier 0"),
    (["--dp-delta", "0"], "--dp-delta must lie strictly between 0 and 1"),
    (["--dp-delta", "1"], "--dp-delta must lie strictly between 0 and 1"),
    (["--weighting", "num"], "--dp central needs --weighting uniform, not num: Flower's privacy accountant assumes "
                             "equal client weights"),
    (["--weighting", "loss"], "needs --weighting uniform, not loss"),
    (["--dp-max-epsilon", "-1"], "--dp-max-epsilon must be a finite number >= 0"),
    (["--dp-noise-multiplier", "0", "--dp-max-epsilon", "3"], "--dp-max-epsilon needs --dp-noise-multiplier above 0"),
    (["--dp", "maybe"], "--dp must be one of off, central, local"),
])
def test_bad_dp_values_are_refused_in_one_line_with_exit_2(tmp_path, args, message):
    from fedw2v.cli import app

    clients = tmp_path / "clients.parquet"
    clients.write_bytes(b"checked later")
    base = ["simulate", str(clients), "--run-dir", str(tmp_path / "run")]
    dp_args = [] if "--dp" in args else ["--dp", "central"]
    result = CliRunner().invoke(app, base + dp_args + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "run").exists()


def test_dp_options_without_dp_and_local_sampling_are_refused():
    with pytest.raises(ValueError, match="--dp-clip, --dp-delta apply only with --dp central or --dp local"):
        SimulateConfig(clients_manifest="c", run_dir="r", dp_clip=2.0, dp_delta=1e-6)
    with pytest.raises(ValueError, match="--dp-accounting sampled applies to --dp central only"):
        _config(dp="local", dp_accounting="sampled")
    assert _config().weighting == "uniform" and SimulateConfig(clients_manifest="c", run_dir="r").weighting == "num"
    assert replace(_config(), dp_max_epsilon=3.0).dp_max_epsilon == 3.0
    assert "dp_max_epsilon" in opts.resumable(SimulateConfig)


# ------------------------------------------------------------------------------ runs on the in-process grid


def _dp_grid(spy=None):
    """test_server's FakeGrid whose clients run the ClientApp's DP mod around the real training handler."""
    from flwr.app import Context, Message, MessageType, RecordDict

    from fedw2v.fl.client_app import run_train
    from tests.test_server import FakeGrid

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def handler(content, worker):
        msg = Message(content, dst_node_id=11, message_type=MessageType.TRAIN)
        msg.metadata.__dict__["_message_id"] = "in-process"
        out = privacy_mod(msg, ctx, lambda m, c: Message(run_train(m.content, worker), reply_to=m))
        if spy is not None:
            spy(content, out.content)
        return out.content

    return FakeGrid(handler)


def _run(clients, run_dir, **kw):
    from fedw2v.fl.server_app import Server
    from tests.test_server import _config as server_config

    kw = {"rounds": 2, "clients_per_round": 3, "dp": "central", "dp_noise_multiplier": 0.5, "dp_clip": 0.01,
          "dp_noise_seed": 7, "eval_every": 10, **kw}  # evaluations: round 0 and the last
    spy = kw.pop("spy", None)
    return Server(_dp_grid(spy), server_config(clients, run_dir, **kw)).run()


def _privacy_events(run_dir):
    from fedw2v import runs

    return [e for e in runs.read_metrics(run_dir) if e.get("event") == "privacy"]


@pytest.mark.slow
def test_a_central_dp_run_reports_epsilon_everywhere_and_the_server_receives_clipped_updates(fl_clients, tmp_path):
    from rich.console import Console

    from fedw2v import runs
    from fedw2v.privacy import store
    from fedw2v.ui.render import simulate_table
    from tests.test_server import _weights

    run = tmp_path / "run"
    state = _run(fl_clients, run, footprint_rounds=(2,), save_updates=True, indicator_utterances=2)
    events = _privacy_events(run)
    assert [e["round"] for e in events] == [1, 2] and all(e["mode"] == "central" for e in events)
    eps = [e["epsilon"] for e in events]
    assert eps == [pytest.approx(dp.epsilon(0.5, r, 3, 4, 1e-5)) for r in (1, 2)] and eps[0] < eps[1]
    assert all(e["noise_std"] == pytest.approx(0.5 * 0.01 / 3) for e in events)
    assert all(e["clipped"] == 3 for e in events)  # one local step moves the tiny model by ~0.025 > C
    agg = [e for e in runs.read_metrics(run) if e.get("event") == "aggregate"]
    assert all(a["weighting"] == "uniform" and len(set(a["weights"].values())) == 1 for a in agg)
    config = json.loads((run / "config.json").read_text())
    assert config["extra"]["privacy"]["epsilon"] == pytest.approx(eps[-1]) and config["dp"] == "central"
    saved = json.loads((run / "checkpoints" / "round-0002" / "state.json").read_text())["privacy"]
    assert saved["rng"]["bit_generator"] == "MT19937" and len(saved["accountant"]["compositions"]) == 2
    assert [h["round"] for h in state.privacy["history"]] == [1, 2]
    # what the server received, and the footprint attack analyses: each update clipped to C, not noised
    g = _weights(run, 1)
    for c in store.saved_updates(run, 2):
        update = store.read_update(run, 2, c)
        assert _norm(update, {k: g[k] for k in update}) <= 0.01 * (1 + 1e-3)
    console = Console(width=150, record=True)
    console.print(simulate_table(SimpleNamespace(**{**config, "footprint_rounds": ()}), state))
    text = " ".join(console.export_text().split())
    assert f"{eps[-1]:.3g}" in text and "ε at δ 1e-05 after the round (--dp central, z 0.5, C 0.01)" in text


@pytest.mark.slow
def test_under_local_dp_the_server_and_the_attack_see_only_the_noised_updates(fl_clients, tmp_path):
    from fedw2v.fl.records import arrays_from_record
    from fedw2v.privacy import store
    from tests.test_server import _weights

    sent = {}

    def spy(content, reply):  # what left each client
        if int(content["config"]["round"]) == 1 and "arrays" in reply:
            sent[int(content["config"]["client-id"])] = {k: np.array(v) for k, v in
                                                          arrays_from_record(reply["arrays"]).items()}

    run = tmp_path / "run"
    _run(fl_clients, run, rounds=1, dp="local", dp_noise_multiplier=1.0, footprint_rounds=(1,), save_updates=True,
         indicator_utterances=2, spy=spy)
    g = _weights(run, 0)
    d = sum(v.size for k, v in g.items() if k in next(iter(sent.values())))
    assert sorted(store.saved_updates(run, 1)) == sorted(sent)
    for c, arrays in sent.items():
        update = store.read_update(run, 1, c)
        assert all(np.array_equal(update[k], arrays[k]) for k in arrays)  # exactly what the client sent
        assert _norm(update, {k: g[k] for k in update}) == pytest.approx(1.0 * 0.01 * math.sqrt(d), rel=0.02)
    test, _ = store.read_footprints(run, 1, "test")  # the server's footprints are of those noised updates
    assert sorted(test) == sorted(sent)
    (event,) = _privacy_events(run)
    assert event["mode"] == "local" and event["max_releases"] == 1 and event["noise_std"] == pytest.approx(0.01)
    assert event["epsilon"] == pytest.approx(dp.epsilon(1.0, 1, 1, 4, 1e-5, mode="local"))


@pytest.mark.slow
def test_the_budget_stops_the_run_before_the_round_and_resume_continues(fl_clients, tmp_path):
    from fedw2v import runs

    run = tmp_path / "run"
    budget = dp.epsilon(2.0, 1, 2, 4, 1e-5) * 1.01  # room for one round
    with pytest.raises(dp.PrivacyBudgetExhausted, match=r"round 2 would raise ε above --dp-max-epsilon .* stopped at "
                                                        r"checkpoint round 1"):
        _run(fl_clients, run, clients_per_round=2, dp_noise_multiplier=2.0, dp_max_epsilon=budget)
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "round-0001"
    assert max(e["round"] for e in runs.read_metrics(run)) == 1  # round 2 never started
    state = _run(fl_clients, run, clients_per_round=2, dp_noise_multiplier=2.0, dp_max_epsilon=budget * 3,
                 resume=True)
    assert state.round == 2 and [e["round"] for e in _privacy_events(run)] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["central", "local"])
def test_a_resumed_dp_run_equals_an_uninterrupted_one(fl_clients, tmp_path, mode):
    """With --dp-noise-seed the noise of an uninterrupted run can be compared: a run stopped after round 1 and
    resumed ends with the same weights, ε and events. The server's noise generator comes from state.json."""
    import shutil

    from tests.test_server import _round_events, _weights

    a, b = tmp_path / "a", tmp_path / "b"
    _run(fl_clients, a, rounds=2, clients_per_round=2, dp=mode, eval_every=1)
    _run(fl_clients, b, rounds=1, clients_per_round=2, dp=mode, eval_every=1)
    _run(fl_clients, b, rounds=2, clients_per_round=2, dp=mode, eval_every=1, resume=True)
    wa, wb = _weights(a, 2), _weights(b, 2)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert _round_events(a) == _round_events(b)  # the privacy events (ε) included
    if mode == "local":
        return
    # without a noise seed nobody can repeat the noise, yet a resume continues the checkpointed generator
    c, saved = tmp_path / "c", tmp_path / "c-after-round-1"
    _run(fl_clients, c, rounds=1, clients_per_round=2, dp_noise_seed=0)
    shutil.copytree(c, saved)
    finals = []
    for _ in range(2):  # resume the same round-1 checkpoint twice
        _run(fl_clients, c, rounds=2, clients_per_round=2, dp_noise_seed=0, resume=True)
        finals.append(_weights(c, 2))
        shutil.rmtree(c)
        shutil.copytree(saved, c)
    assert all(np.array_equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert not all(np.array_equal(finals[0][k], wa[k]) for k in wa)  # other noise than the seeded run


def test_the_footprint_report_names_what_the_attack_analysed():
    """`fedw2v footprint` says which updates it scored: the noised ones under local DP, the clipped un-noised ones
    under central DP (whose noise protects only the released model); nothing without DP."""
    from rich.console import Console

    from fedw2v.privacy import attack
    from fedw2v.privacy.stats import LayerEER
    from fedw2v.ui.render import footprint_table

    assert "the noised updates the server received" in attack.defence(_config(dp="local", dp_noise_multiplier=0.3))
    central = attack.defence(_config(dp_noise_multiplier=2.0, dp_clip=5.0))
    assert central.startswith("--dp central (z 2, C 5)") and "clipped, un-noised updates" in central
    assert attack.defence(SimulateConfig(clients_manifest="c", run_dir="r")) == ""
    pooled = LayerEER(eer=[20.0], ci=[(10.0, 30.0)], targets=4, nontargets=12)
    report = attack.FootprintReport("run", ["input"], [], pooled, None, {"utterances": 2, "seconds": 3.0,
                                    "speakers": ["x"], "split": "dev", "manifest": "m"}, 1, 10, 0.95,
                                    defence=central)
    console = Console(width=200, record=True)
    console.print(footprint_table(report))
    assert "clipped, un-noised updates" in console.export_text()
