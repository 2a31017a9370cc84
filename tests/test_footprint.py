"""The footprint analysis (fedw2v/privacy, `fedw2v footprint`): EER, bootstrap, footprints of the tiny
model, padding invariance, the indicator set, storage, `analyse` on a federated run and the command.

Runs to analyse are made in-process with test_server's `FakeGrid` + `Server` (no Ray). The FakeGrid handler
writes every footprint-round client update with `write_update` (what `simulate --save-updates` stores), so the
tests hold whether or not the server stores test footprints itself; `analyse` computes the test footprints
from the updates and stores them, and a second analysis uses the stored ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedw2v.privacy import attack, footprints, indicator, stats, store
from fedw2v.batching import Utterance
from fedw2v.errors import InputError


# ------------------------------------------------------------------------------------------------------ EER


def test_eer_perfect_separation_is_zero():
    assert stats.eer([0.9, 0.8, 0.7], [0.1, 0.2, 0.3, 0.69]) == 0.0


def test_eer_identical_distributions_is_fifty():
    assert stats.eer([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(50.0)
    rng = np.random.default_rng(0)
    assert stats.eer(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(50.0, abs=2.0)


def test_eer_fully_reversed_is_hundred():
    assert stats.eer([0.1, 0.2], [0.8, 0.9]) == pytest.approx(100.0)


def test_eer_hand_computed_cases():
    # ascending: .1N .2N .3N .4T .7N .8T .9T -> (miss, false alarm) goes (0, 1/4) -> (1/3, 1/4): EER = 1/4
    assert stats.eer([0.9, 0.8, 0.4], [0.7, 0.3, 0.2, 0.1]) == pytest.approx(25.0)
    # a tie between a target and a non-target moves both rates at once: (0, 1/2) -> (1/2, 0), crossing at 1/4
    assert stats.eer([1.0, 2.0], [1.0, 0.0]) == pytest.approx(25.0)
    # one non-target above one of two targets: (0, 1/2) -> (1/2, 1/2): EER = 1/2 ... and with 4 non-targets 1/4
    assert stats.eer([1.0, 3.0], [0.0, 2.0]) == pytest.approx(50.0)
    assert stats.eer([1.0, 3.0], [0.0, 0.5, 0.7, 2.0]) == pytest.approx(25.0)


def test_eer_ignores_order_and_monotone_transforms():
    rng = np.random.default_rng(1)
    t, n = rng.normal(1, 1, 50), rng.normal(0, 1, 200)
    base = stats.eer(t, n)
    assert stats.eer(t[::-1], rng.permutation(n)) == pytest.approx(base)
    assert stats.eer(np.exp(t), np.exp(n)) == pytest.approx(base)
    assert 10 < base < 45


def test_eer_needs_both_lists():
    with pytest.raises(ValueError, match="at least one target"):
        stats.eer([], [0.1])
    with pytest.raises(ValueError, match="finite"):
        stats.eer([np.nan], [0.1])


def test_bootstrap_ci_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    t, n = rng.normal(1.5, 1, 20), rng.normal(0, 1, 380)
    point = stats.eer(t, n)
    lo, hi = stats.eer_ci(t, n, resamples=500, seed=3)
    assert lo <= point <= hi and lo < hi
    assert stats.eer_ci(t, n, resamples=500, seed=3) == (lo, hi)
    assert stats.eer_ci([1.0, 2.0], [0.0, 0.5], resamples=100) == (0.0, 0.0)  # separable in every resample


def test_trials_pair_enrollment_and_test_models():
    e = {c: np.eye(3, 4)[[c]].repeat(2, 0) for c in range(3)}  # 2 layers, client c = unit vector c
    t = {**{c: v + 0.1 for c, v in e.items()}, 7: np.ones((2, 4))}
    trials = stats.make_trials(e, t)
    assert trials.clients == [0, 1, 2]
    assert trials.target.shape == (2, 3) and trials.nontarget.shape == (2, 6)
    assert len(trials.pairs) == 6 and all(a != b for a, b in trials.pairs)
    assert (trials.target.min() > trials.nontarget.max())
    assert stats.cosine_scores({0: np.zeros((1, 4))}, {0: np.ones((1, 4))})[0, 0, 0] == 0.0


def test_fewer_than_two_targets_is_not_measurable():
    one = stats.make_trials({0: np.ones((2, 4)), 1: -np.ones((2, 4))}, {0: np.ones((2, 4))})
    res = stats.layer_eer([one], resamples=10)
    assert not res.measurable and res.targets == 1 and "at least 2" in res.reason
    two = stats.make_trials({0: np.eye(2, 4), 1: np.eye(2, 4)[::-1]}, {0: np.eye(2, 4), 1: np.eye(2, 4)[::-1]})
    res = stats.layer_eer([two], resamples=10)
    assert res.measurable and res.targets == 2 and res.nontargets == 2 and len(res.eer) == 2


def test_pooling_puts_each_rounds_scores_on_one_scale():
    def trials(target, nontarget):
        return stats.Trials([0], np.array([target], float), np.array([nontarget], float))

    # each round separates its clients perfectly, but round 2's scores all lie above round 1's
    r1, r2 = trials([0.5, 0.6], [0.1, 0.2, 0.3]), trials([0.95, 0.96], [0.90, 0.91, 0.92])
    raw = stats.eer(np.r_[r1.target[0], r2.target[0]], np.r_[r1.nontarget[0], r2.nontarget[0]])
    assert raw > 0
    assert stats.layer_eer([r1, r2], resamples=20).eer == [0.0]
    # within one round the normalisation is monotone: the round's EER and CI do not change
    rng = np.random.default_rng(4)
    one = trials(rng.normal(1, 1, 6), rng.normal(0, 1, 30))
    res = stats.layer_eer([one], resamples=100)
    assert res.eer[0] == pytest.approx(stats.eer(one.target[0], one.nontarget[0]))
    assert res.ci[0] == pytest.approx(stats.eer_ci(one.target[0], one.nontarget[0], 100, seed=0))
    t, n = stats.normalised_scores(one)
    assert n.mean() == pytest.approx(0.0) and n.std() == pytest.approx(1.0)


# --------------------------------------------------------------------------------------- footprints of a model


def _noise_indicator(lengths=(1.3, 2.9, 0.7, 2.2, 1.8), seed=0):
    rng = np.random.default_rng(seed)
    utts = [Utterance(f"u{i}", "", 0.0, s, "", f"spk{i % 2}") for i, s in enumerate(lengths)]
    audio = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in lengths]
    return indicator.Indicator(utts, audio, "noise", "dev")


@pytest.fixture(scope="module")
def tiny():
    from fedw2v.model import load_model

    return load_model("tiny", seed=0), load_model("tiny", seed=1)


def test_footprint_shape_layers_and_zero_for_the_global_model(tiny):
    (g, m) = tiny
    ind = _noise_indicator()
    ref = footprints.ReferenceStates.compute(g.model, g.processor, ind)
    cfg = g.model.config
    assert ref.layers == ["input", "block 1", "block 2", "block 3"]  # encoder input + every block
    assert [s.shape[0] for s in ref.states] == [cfg.num_hidden_layers + 1] * len(ind.utterances)
    assert all(s.dtype == np.float32 and s.shape[2] == cfg.hidden_size for s in ref.states)
    assert ref.nbytes == ref.frames * cfg.hidden_size * len(ref.layers) * 4
    assert ref.frames == footprints.indicator_frames(g.model, ind)
    n = int(1.3 * 16000)
    for k, st in zip(cfg.conv_kernel, cfg.conv_stride):
        n = (n - k) // st + 1
    assert ref.states[0].shape[1] == n == 63  # the frames of its own length only
    same = footprints.footprint(g.model, g.processor, ref)
    assert same.shape == (4, 2 * cfg.hidden_size) and same.dtype == np.float32
    assert not same.any()  # the global model against its own reference: exactly zero
    other = footprints.footprint(m.model, m.processor, ref)
    h = cfg.hidden_size
    assert (other[:, h:] >= 0).all() and np.abs(other).max() > 1e-3  # [mean | std], std non-negative


def test_footprint_restores_the_training_mode(tiny):
    g, _ = tiny
    g.model.train()
    footprints.ReferenceStates.compute(g.model, g.processor, _noise_indicator((1.0,)))
    assert g.model.training
    g.model.eval()


def test_padding_does_not_change_an_utterances_contribution(tiny):
    g, m = tiny
    ind = _noise_indicator()
    batched = footprints.ReferenceStates.compute(g.model, g.processor, ind)
    alone = footprints.ReferenceStates.compute(g.model, g.processor, ind, max_batch_size=1)
    assert max(len(b) for b in batched.batches) > 1 and all(len(b) == 1 for b in alone.batches)
    for a, b in zip(batched.states, alone.states):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5)
    # the short utterance batched with the longest one gives the states it gives on its own
    pair = indicator.Indicator([ind.utterances[2], ind.utterances[1]], [ind.audio[2], ind.audio[1]], "noise", "dev")
    together = footprints.ReferenceStates.compute(g.model, g.processor, pair)
    assert together.batches == [[1, 0]]
    np.testing.assert_allclose(together.states[0], alone.states[2], atol=2e-5)
    np.testing.assert_allclose(footprints.footprint(m.model, m.processor, batched),
                               footprints.footprint(m.model, m.processor, alone), atol=2e-5)


# -------------------------------------------------------------------------------------------------- storage


def test_footprints_round_trip_merge_and_replace(tmp_path):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    meta = {"indicator": {"utt_ids": ["x", "y"]}, "layers": ["input", "block 1"]}
    path = store.write_footprints(tmp_path, 3, "test", {5: a}, meta)
    assert path == tmp_path / "footprints" / "round-0003" / "test.safetensors"
    store.write_footprints(tmp_path, 3, "test", {2: a + 1}, meta)  # one call per client adds to the file
    got, got_meta = store.read_footprints(tmp_path, 3, "test")
    assert list(got) == [2, 5] and got[5].dtype == np.float32
    np.testing.assert_array_equal(got[5], a)
    assert got_meta["clients"] == [2, 5] and got_meta["kind"] == "test" and got_meta["round"] == 3
    assert got_meta["indicator"]["utt_ids"] == ["x", "y"]
    assert json.loads(path.with_suffix(".json").read_text())["clients"] == [2, 5]
    store.write_footprints(tmp_path, 3, "test", {9: a}, {**meta, "indicator": {"utt_ids": ["z"]}})  # another set
    assert list(store.read_footprints(tmp_path, 3, "test")[0]) == [9]
    assert not list(path.parent.glob(".*"))  # no temporary files left
    with pytest.raises(InputError, match="no enroll footprints stored for round 3"):
        store.read_footprints(tmp_path, 3, "enroll")
    with pytest.raises(ValueError, match="kind"):
        store.write_footprints(tmp_path, 3, "other", {}, meta)


def test_stored_footprints_are_reused_only_when_made_with_the_same_settings(tmp_path):
    a = np.ones((2, 4), np.float32)
    meta = {"indicator": {"utt_ids": ["x"]}, "layers": ["input", "block 1"], "enroll": {"epochs": 2}}
    assert store.read_matching(tmp_path, 1, "enroll", meta) == {}  # nothing stored yet
    store.write_footprints(tmp_path, 1, "enroll", {4: a, 7: 2 * a}, meta)
    got = store.read_matching(tmp_path, 1, "enroll", dict(meta))  # the time written and the clients do not count
    assert sorted(got) == [4, 7] and np.array_equal(got[7], 2 * a)
    assert store.read_matching(tmp_path, 1, "enroll", {**meta, "enroll": {"epochs": 3}}) == {}
    assert store.read_matching(tmp_path, 1, "test", meta) == {}  # another kind
    store.write_footprints(tmp_path, 2, "enroll", {4: a}, meta)
    assert list(store.read_matching(tmp_path, 2, "enroll", meta)) == [4]


def test_updates_round_trip(tmp_path):
    arrays = {"lm_head.weight": np.ones((3, 2), np.float32), "b": np.zeros(4, np.float32)}
    path = store.write_update(tmp_path, 1, 12, arrays)
    assert path == tmp_path / "updates" / "round-0001" / "client-12.safetensors"
    store.write_update(tmp_path, 1, 3, arrays)
    assert store.saved_updates(tmp_path, 1) == [3, 12] and store.saved_updates(tmp_path, 2) == []
    back = store.read_update(tmp_path, 1, 12)
    assert set(back) == set(arrays) and np.array_equal(back["lm_head.weight"], arrays["lm_head.weight"])


def test_wav2vec2_large_footprints_stay_small(tmp_path):
    """The README's figures from the code that makes and stores footprints: wav2vec2-large's architecture (its
    config; the model is built on torch's meta device, no weights) gives footprints of 25 layers x 2 x 1024, and
    a stored file per client and kind is ~200 KiB, so a 20-client, 5-round analysis (test + enrollment) stays
    within ~41 MB."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, vocab_size=32)
    with torch.device("meta"):
        large = Wav2Vec2ForCTC(config)
    meta = footprints.model_meta(large, _noise_indicator())
    assert len(meta["layers"]) == 25 and meta["dim"] == 2048 and meta["hidden_size"] == 1024
    vector = np.zeros((len(meta["layers"]), meta["dim"]), np.float32)
    one = store.write_footprints(tmp_path / "one", 1, "test", {0: vector}, meta).stat().st_size
    assert 204_800 <= one < 210_000  # the float32 vector and a small header
    twenty = store.write_footprints(tmp_path / "twenty", 1, "test", dict.fromkeys(range(20), vector), meta)
    assert 20 * 5 * 2 * twenty.stat().st_size / 20 < 42e6  # 20 clients, 5 rounds, test + enroll


# ------------------------------------------------------------------------------------------- indicator set


def test_indicator_is_sorted_cut_and_excludes_speakers(fl_clients):
    from fedw2v import manifest as mf

    m = mf.read(fl_clients)
    dev = indicator.load_indicator(m, "dev", 64, name="clients.parquet")
    assert dev.utt_ids == sorted(dev.utt_ids) and dev.split == "dev" and len(dev.audio) == len(dev.utterances)
    assert all(a.dtype == np.float32 and len(a) > 16000 for a in dev.audio)
    assert indicator.load_indicator(m, "dev", 2).utt_ids == dev.utt_ids[:2]
    speakers = indicator.client_speakers(m)
    first = sorted(speakers[0])[0]
    train = indicator.load_indicator(m, "train", 100, exclude_speakers=[first])
    assert first not in train.speakers and train.excluded_speakers == (first,)
    assert train.excluded_utterances == sum(1 for s in m.table.column("speaker").to_pylist() if s == first)
    everyone = {s for v in speakers.values() for s in v}
    with pytest.raises(InputError, match="clients.parquet: all .* utterances of split 'train' belong to analysed"):
        indicator.load_indicator(m, "train", 5, exclude_speakers=everyone, name="clients.parquet")
    with pytest.raises(InputError, match="no utterances in split 'nope'"):
        indicator.load_indicator(m, "nope")


# ------------------------------------------------------------------------------------ the server's online hook


def test_the_online_hook_stores_the_footprints_of_a_footprint_rounds_updates(fl_clients, tiny, tmp_path):
    """`OnlineFootprints`, as the server calls it: the reference states before the clients train, the footprints
    of the successful updates after (in a second model, so the global model is untouched), nothing in other
    rounds; and the checkpoints the analysis needs are kept."""
    from fedw2v import manifest as mf
    from fedw2v.model import save_model
    from fedw2v.privacy.online import OnlineFootprints
    from tests.test_server import _config

    g, m = tiny
    save_model(g.model, g.processor, tmp_path / "base")
    config = _config(fl_clients, tmp_path / "run", rounds=3, footprint_rounds=(2,), save_updates=True,
                     indicator_utterances=2)
    clients = mf.read(fl_clients)
    hook = OnlineFootprints(config, clients, tmp_path / "base")
    assert hook.rounds_kept() == {1, 2}
    arrays = {c: {k: v.detach().cpu().numpy().copy() for k, v in lm.model.state_dict().items()}
              for c, lm in ((0, g), (3, m))}
    assert hook.before_round(1, g.model, g.processor) is False
    assert hook.after_fit(1, arrays) is None and not (tmp_path / "run").exists()

    assert hook.before_round(2, g.model, g.processor) is True
    event = hook.after_fit(2, arrays)
    assert event["clients"] == [0, 3] and event["updates_saved"] is True
    assert event["file"] == str(Path("footprints") / "round-0002" / "test.safetensors")
    stored, meta = store.read_footprints(tmp_path / "run", 2, "test")
    ind = indicator.run_indicator(config, clients)
    assert meta["indicator"]["utt_ids"] == ind.utt_ids and len(ind.utt_ids) == 2
    assert not stored[0].any()  # the global model's own weights: a zero footprint
    direct = footprints.footprint(m.model, m.processor, footprints.ReferenceStates.compute(g.model, g.processor, ind))
    np.testing.assert_allclose(stored[3], direct, atol=1e-6)
    assert store.saved_updates(tmp_path / "run", 2) == [0, 3]
    assert hook.after_fit(2, arrays) is None  # the round's reference states are released after its updates


# ----------------------------------------------------------------------------------- a federated run to analyse


def _make_run(clients, run_dir, **overrides):
    from fedw2v.fl.client_app import run_train
    from fedw2v.fl.records import arrays_from_record
    from fedw2v.fl.server_app import Server
    from tests.test_server import FakeGrid, _config

    config = _config(clients, run_dir, **{"rounds": 2, "clients_per_round": 4, "footprint_rounds": (1,),
                                          "save_updates": True, "eval_every": 2, **overrides})

    def saving(content, worker):  # what --save-updates keeps: every footprint round's client weights
        reply = run_train(content, worker)
        r = int(content["config"]["round"])
        if "arrays" in reply and r in config.footprint_rounds:
            store.write_update(run_dir, r, int(content["config"]["client-id"]), arrays_from_record(reply["arrays"]))
        return reply

    Server(FakeGrid(saving), config).run()
    return run_dir


@pytest.fixture(scope="module")
def fp_run(fl_clients, tmp_path_factory):
    """A 2-round run (4 clients per round, 2 local steps) whose round 1 is a footprint round with saved updates."""
    return _make_run(fl_clients, tmp_path_factory.mktemp("fp") / "run")


@pytest.fixture()
def run_copy(fp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fp_run, run)
    return run


def _holdout_clients(path):
    from fedw2v import manifest as mf

    t = mf.read(path).table.to_pylist()
    return sorted({r["client_id"] for r in t if r["local_split"] == "holdout"})


@pytest.mark.slow
def test_analyse_computes_from_updates_then_reuses_the_stored_footprints(run_copy, fl_clients):
    server = store.read_footprints(run_copy, 1, "test") if store.footprint_path(run_copy, 1, "test").is_file() else None
    shutil.rmtree(run_copy / "footprints", ignore_errors=True)  # whatever the server stored: use the updates
    config = attack.FootprintConfig(bootstrap=200)
    messages = []
    first = attack.analyse(run_copy, config, progress=messages.append)
    (r1,) = first.rounds
    holdout = _holdout_clients(fl_clients)
    assert r1.round == 1 and r1.sampled == [0, 1, 2, 3] and r1.test_source == "updates"
    assert r1.analysed == holdout == [0, 1]
    assert r1.excluded == {2: "no holdout", 3: "no holdout"}
    assert r1.result.measurable and (r1.result.targets, r1.result.nontargets) == (2, 2)
    assert first.layers == ["input", "block 1", "block 2", "block 3"]
    assert all(0 <= e <= 100 for e in r1.result.eer)
    assert all(lo <= e <= hi for e, (lo, hi) in zip(r1.result.eer, r1.result.ci))
    assert first.pooled.eer == r1.result.eer and first.average == r1.result.eer
    assert first.indicator["split"] == "dev" and first.indicator["utterances"] >= 1
    assert any("enrollment model of client 0" in m for m in messages)
    test, meta = store.read_footprints(run_copy, 1, "test")
    enroll, emeta = store.read_footprints(run_copy, 1, "enroll")
    assert sorted(test) == sorted(enroll) == [0, 1] and test[0].shape == (4, 384)
    assert meta["indicator"]["utt_ids"] == emeta["indicator"]["utt_ids"] and emeta["enroll"]["epochs"] == 1
    assert not np.allclose(test[0], enroll[0])
    if server is not None:  # the server's footprints (simulate --footprint-rounds) equal those from the updates
        assert server[1]["indicator"]["utt_ids"] == meta["indicator"]["utt_ids"]
        for c in test:
            np.testing.assert_allclose(server[0][c], test[c], atol=1e-4)

    shutil.rmtree(run_copy / "updates")  # the stored footprints are enough now
    second = attack.analyse(run_copy, config)
    (s1,) = second.rounds
    assert s1.test_source == "stored" and s1.enroll_reused == 2 and "earlier analysis" in s1.test_detail
    assert s1.result.eer == r1.result.eer and s1.result.ci == r1.result.ci


@pytest.mark.slow
def test_enrollment_trains_on_the_clients_holdout_utterances_only(run_copy, fl_clients, monkeypatch):
    """Every enrollment model is fine-tuned on exactly its client's holdout (never its local train split, which
    the test model trained on: that leak would make the EER ~0)."""
    from fedw2v import manifest as mf
    from fedw2v import train

    rows = mf.read(fl_clients).table.to_pylist()
    holdout = {c: {r["utt_id"] for r in rows if r["client_id"] == c and r["local_split"] == "holdout"} for c in (0, 1)}
    trained_on = {r["utt_id"] for r in rows if r["local_split"] == "train"}
    real, calls = train.local_train, []

    def spy(model, processor, utterances, config, dev=None, **kw):
        calls.append(({u.utt_id for u in utterances}, {u.utt_id for u in dev or []}))
        return real(model, processor, utterances, config, dev=dev, **kw)

    monkeypatch.setattr(train, "local_train", spy)
    report = attack.analyse(run_copy, attack.FootprintConfig(bootstrap=10))
    assert report.rounds[0].analysed == [0, 1]
    assert sorted(map(sorted, (ids for ids, _ in calls))) == sorted(map(sorted, holdout.values()))
    assert all(not (ids | dev) & trained_on for ids, dev in calls)


@pytest.mark.slow
def test_cli_footprint_takes_enroll_epochs_and_an_indicator_manifest(run_copy, fl_clients, tmp_path):
    """`--enroll-epochs 2` fine-tunes each enrollment model 2 epochs (the run's local epochs are 1), and
    `--indicator M` runs every model on M's dev utterances (here the last two of the run's dev split, which its
    default set of the first N would not be)."""
    import pyarrow as pa

    from fedw2v import manifest as mf

    shutil.rmtree(run_copy / "footprints", ignore_errors=True)  # test footprints from the saved updates
    m = mf.read(fl_clients)
    dev = sorted(r["utt_id"] for r in m.table.to_pylist() if r["split"] == "dev")
    chosen = dev[-2:]
    assert len(dev) > 2 and chosen != dev[:2]
    keep = [u in chosen for u in m.table.column("utt_id").to_pylist()]
    indicator_path = tmp_path / "indicator.parquet"
    mf.write(mf.Manifest(m.table.filter(pa.array(keep)), m.info.with_command("test: two dev utterances")),
             indicator_path)
    result = _cli("footprint", run_copy, "--enroll-epochs", "2", "--indicator", indicator_path, "--bootstrap", "20",
                  "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["enroll_epochs"] == 2
    assert report["indicator"]["utterances"] == 2 and report["indicator"]["manifest"] == str(indicator_path)
    _, meta = store.read_footprints(run_copy, 1, "enroll")
    assert meta["enroll"]["epochs"] == 2 and meta["indicator"]["utt_ids"] == chosen
    _, meta = store.read_footprints(run_copy, 1, "test")
    assert meta["indicator"]["utt_ids"] == chosen


@pytest.mark.slow
def test_indicator_overlapping_analysed_speakers_is_an_error(run_copy, fl_clients):
    from fedw2v import manifest as mf

    shutil.rmtree(run_copy / "footprints", ignore_errors=True)
    m = mf.read(fl_clients)
    own = [r["utt_id"] for r in m.table.to_pylist() if r["client_id"] == 0][:3]  # client 0's own speech
    fake = {0: np.ones((4, 384), np.float32), 1: np.ones((4, 384), np.float32)}
    store.write_footprints(run_copy, 1, "test", fake, {"indicator": {"utt_ids": own, "split": "train"},
                                                     "layers": ["input", "block 1", "block 2", "block 3"]})
    with pytest.raises(InputError, match="indicator set shares speakers with clients analysed in round 1"):
        attack.analyse(run_copy, attack.FootprintConfig(bootstrap=10))
    # asking for the clients' own split: their speakers are left out, and then nothing is left
    shutil.rmtree(run_copy / "footprints")
    with pytest.raises(InputError, match="utterances of split 'train' belong to analysed clients' speakers"):
        attack.analyse(run_copy, attack.FootprintConfig(indicator_split="train"))


# --------------------------------------------------------------------------------------------------- the CLI


def _cli(*args):
    from fedw2v.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_footprint_table_json_and_plot(run_copy):
    result = _cli("footprint", run_copy, "--bootstrap", "100", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: only JSON on stdout
    assert report["layers"] == ["input", "block 1", "block 2", "block 3"]
    (r1,) = report["rounds"]
    assert r1["round"] == 1 and r1["measurable"] and r1["targets"] == 2 and r1["excluded"] == {
        "2": "no holdout", "3": "no holdout"}
    assert Path(report["plot"]) == run_copy / "plots" / "footprint-eer.png"
    assert (run_copy / "plots" / "footprint-eer.png").stat().st_size > 1000
    plot = run_copy / "eer.png"
    result = _cli("footprint", run_copy, "--rounds", "1", "--bootstrap", "100", "--plot", plot)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("fedw2v footprint", "round 1", "input", "block 3", "pooled 95% CI", "2 / 2",
                 "client 2 (no holdout)", "enrollment: round-0000 fine-tuned 1 epochs", "(2 reused)"):
        assert text in out, text
    assert plot.stat().st_size > 1000


@pytest.mark.slow
def test_cli_footprint_errors_are_one_line(run_copy, tmp_path):
    result = _cli("footprint", run_copy, "--rounds", "2")
    assert result.exit_code == 2
    assert "round 2 has neither stored footprints" in result.output
    assert "rerun `fedw2v simulate` with --footprint-rounds 2" in result.output
    assert result.output.count("\n") == 1
    result = _cli("footprint", run_copy, "--rounds", "7")
    assert result.exit_code == 2 and "round 7 was not run to the end (the run completed rounds 1-2)" in result.output
    result = _cli("footprint", run_copy, "--rounds", "x")
    assert result.exit_code == 2 and "--rounds must be comma-separated round numbers" in result.output
    (tmp_path / "empty").mkdir()
    result = _cli("footprint", tmp_path / "empty")
    assert result.exit_code == 2 and "not a federated run (no config.json)" in result.output
    store.write_footprints(run_copy, 1, "test", {0: np.ones((4, 384), np.float32)},
                        {"indicator": {"utt_ids": ["elsewhere"]}}, merge=False)
    result = _cli("footprint", run_copy, "--indicator-split", "test")
    assert result.exit_code == 2 and "computed on another indicator set" in result.output


@pytest.mark.slow
def test_a_round_with_one_target_trial_is_not_measurable(run_copy, fl_clients, tmp_path):
    """Only client 0 keeps a holdout: one target trial, so round 1 is reported as not measurable."""
    from fedw2v import manifest as mf

    m = mf.read(fl_clients)
    rows = m.table.to_pylist()
    for r in rows:
        if r["client_id"] == 1 and r["local_split"] == "holdout":
            r["local_split"] = "train"
    clients = tmp_path / "one-holdout.parquet"
    table = mf.from_rows({k: [r[k] for r in rows] for k in rows[0]})
    mf.write(mf.Manifest(table, m.info.with_command("test: client 1 without holdout")), clients)
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "clients_manifest": str(clients)}))
    shutil.rmtree(run_copy / "footprints", ignore_errors=True)
    result = _cli("footprint", run_copy, "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    assert "n/m" in result.stdout and "not measurable: 1 target trial (at least 2 needed)" in result.stdout
    assert "client 1 (no holdout)" in result.stdout
    report = json.loads(_cli("footprint", run_copy, "--json").stdout)
    assert report["rounds"][0]["measurable"] is False and report["rounds"][0]["eer"] is None
    assert report["pooled"]["measurable"] is False and report["average"] is None


@pytest.fixture(scope="module")
def voices_clients(tmp_path_factory):
    """The demo's 10 synthetic voices (`fedw2v synth` defaults, seed 0) with 5 minutes of speech: 6 train-speaker
    clients, each with a 0.2-min holdout; 2 dev speakers (the indicator set) and 2 test speakers."""
    from tests.asr_fixtures import synth_clients

    if not (shutil.which("flite") and shutil.which("espeak-ng")):
        pytest.skip("needs flite and espeak-ng")
    return synth_clients(tmp_path_factory.mktemp("voices"), ["--minutes", "5"],
                         ["--holdout-minutes", "0.2", "--holdout-min-minutes", "0.3"])


@pytest.mark.slow
def test_the_attack_finds_speaker_identity_among_synthetic_voices(voices_clients, tmp_path):
    """The paper's claim at demo scale, as a statistic: three rounds of a random-init tiny model, each with its 6
    client updates and their enrollment models (18 target and 90 non-target trials pooled), identify the voices
    better than chance — the pooled 95% interval of the best layer ends below 50% — yet not perfectly: an
    enrollment model that saw the client's training speech (the bug this guards against) gives EERs near 0 on
    every layer, so the mean pooled EER over layers must stay above 5%.

    Every test and enrollment model takes the same number of optimizer steps (`local_steps` caps both), so the
    attack compares voices, not how far each model trained."""
    from fedw2v import manifest as mf

    run = _make_run(voices_clients, tmp_path / "run", rounds=3, clients_per_round=6, local_epochs=20, local_steps=8,
                    batch_size=2, eval_every=3, footprint_rounds=(1, 2, 3))
    report = attack.analyse(run, attack.FootprintConfig(bootstrap=500))
    assert [r.analysed for r in report.rounds] == [[0, 1, 2, 3, 4, 5]] * 3
    assert (report.pooled.targets, report.pooled.nontargets) == (18, 90)
    client_voices = {s for v in indicator.client_speakers(mf.read(voices_clients)).values() for s in v}
    assert report.indicator["utterances"] >= 10 and not set(report.indicator["speakers"]) & client_voices
    eer, ci = report.pooled.eer, report.pooled.ci
    print("pooled EER per layer:", [round(e, 1) for e in eer], "CI", [tuple(round(x, 1) for x in c) for c in ci],
          "rounds:", [[round(e, 1) for e in r.result.eer] for r in report.rounds])
    best = min(range(len(eer)), key=lambda k: ci[k][1])
    assert ci[best][1] < 50.0, (eer, ci)  # better than chance, with 95% confidence
    assert np.mean(eer) > 5.0, eer  # not the near-zero EER of enrollment on training speech
