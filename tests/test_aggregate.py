"""Client weights and the weighted average: finite, order-independent, exact, and loud on bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fedw2v.errors import AggregationError
from fedw2v.fl.aggregate import ClientStats, client_weights, weighted_average


def test_num_weighting_is_fedavg():
    w = client_weights([ClientStats(0, 10), ClientStats(1, 30), ClientStats(2, 0)], "num")
    assert w == pytest.approx({0: 0.25, 1: 0.75, 2: 0.0})


def test_loss_weighting_is_normalised_exp_minus_loss_even_for_huge_losses():
    w = client_weights([ClientStats(0, 5, loss=1000.0), ClientStats(1, 5, loss=1001.0)], "loss")
    e = math.exp(-1.0)
    assert w[0] == pytest.approx(1 / (1 + e)) and w[1] == pytest.approx(e / (1 + e))
    # the baseline's int(exp(-loss)) gave 0 for every client; here every weight is finite and positive
    assert all(v > 0 and math.isfinite(v) for v in w.values())


def test_wer_weighting_never_overflows():
    # the baseline multiplied float32 tensors by exp(100 - WER) ~ 1e43 > float32 max (3.4e38): inf;
    # in log space any WER gives finite weights that sum to 1
    w = client_weights([ClientStats(0, 1, wer=0.0), ClientStats(1, 1, wer=1.0), ClientStats(2, 1, wer=800.0)], "wer")
    assert sum(w.values()) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(math.e)
    assert all(math.isfinite(v) for v in w.values()) and w[2] >= 0


@pytest.mark.parametrize(
    "stats, weighting, message",
    [
        ([ClientStats(3, 0), ClientStats(7, 0)], "num", "all weights are zero: no samples from clients 3, 7"),
        ([ClientStats(3, 1, loss=float("nan")), ClientStats(7, 1, loss=1.0)], "loss", "clients 3$"),
        ([ClientStats(3, 1, wer=None), ClientStats(7, 1, wer=float("inf"))], "wer", "clients 3, 7"),
        ([ClientStats(3, -1)], "num", "not non-negative integers for clients 3"),
        ([], "num", "no client results"),
        ([ClientStats(1, 1), ClientStats(1, 2)], "num", "not unique: 1"),
    ],
)
def test_degenerate_weights_are_errors_naming_the_clients(stats, weighting, message):
    with pytest.raises(AggregationError, match=message):
        client_weights(stats, weighting)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighting must be one of num, loss, wer"):
        client_weights([ClientStats(0, 1)], "median")


def _updates(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        cid: {
            "enc.w": rng.standard_normal((64, 33)).astype(np.float32),
            "enc.b": rng.standard_normal(33).astype(np.float32),
            "head.w": rng.standard_normal((7, 5)).astype(np.float32),
            "steps": np.array([3], dtype=np.int64),
        }
        for cid in range(n)
    }


def test_weighted_average_matches_a_float64_reference():
    ups = _updates()
    w = client_weights([ClientStats(c, c + 1) for c in ups], "num")
    avg = weighted_average(ups, w)
    for key in ("enc.w", "enc.b", "head.w"):
        ref = sum(w[c] * ups[c][key].astype(np.float64) for c in ups)
        assert avg[key].dtype == np.float32
        np.testing.assert_allclose(avg[key], ref, rtol=1e-6, atol=1e-6)
    assert avg["steps"].tolist() == [3]


def test_result_does_not_depend_on_arrival_order():
    ups = _updates(8, seed=1)
    w = client_weights([ClientStats(c, 10 + 3 * c) for c in ups], "num")
    forward = weighted_average(ups, w)
    backward = weighted_average(dict(reversed(list(ups.items()))), dict(reversed(list(w.items()))))
    for key in forward:
        assert np.array_equal(forward[key], backward[key])  # bit-identical


def test_inputs_are_not_modified_and_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    ups = _updates(3)
    copies = {c: {k: v.copy() for k, v in u.items()} for c, u in ups.items()}
    as_torch = {c: {k: torch.from_numpy(v) for k, v in u.items()} for c, u in ups.items()}
    w = {0: 0.2, 1: 0.3, 2: 0.5}
    a = weighted_average(ups, w)
    b = weighted_average(as_torch, w)
    for c in ups:
        for k in ups[c]:
            assert np.array_equal(ups[c][k], copies[c][k])
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_identical_updates_average_to_themselves():
    u = _updates(1)[0]
    avg = weighted_average({"a": u, "b": u, "c": u}, {"a": 0.5, "b": 0.25, "c": 0.25})
    for k in u:
        np.testing.assert_allclose(avg[k], u[k], rtol=1e-6)


@pytest.mark.parametrize("breakage, message", [
    ("missing-key", "client 2 sent tensors that client 0 did not"),
    ("shape", "tensor 'enc.b' of client 2 has shape"),
    ("int-differs", "non-float tensor 'steps' differs between clients 0 and 2"),
    ("no-weight", "no weight for clients 2"),
])
def test_mismatched_updates_are_errors(breakage, message):
    ups = _updates(3)
    w = {0: 0.3, 1: 0.3, 2: 0.4}
    if breakage == "missing-key":
        del ups[2]["head.w"]
    elif breakage == "shape":
        ups[2]["enc.b"] = np.zeros(34, np.float32)
    elif breakage == "int-differs":
        ups[2]["steps"] = np.array([4])
    else:
        del w[2]
    with pytest.raises(AggregationError, match=message):
        weighted_average(ups, w)


def test_module_imports_no_flower_ray_or_torch():
    code = "import sys, fedw2v.fl.aggregate; print([m for m in ('flwr', 'ray', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_tensors_larger_than_one_chunk_are_summed_exactly():
    from fedw2v.fl import aggregate

    rng = np.random.default_rng(3)
    n = aggregate.CHUNK * 2 + 5
    ups = {c: {"big": rng.standard_normal((n,)).astype(np.float32).reshape(-1, 1)} for c in range(3)}
    w = {0: 0.5, 1: 0.25, 2: 0.25}
    avg = weighted_average(ups, w)["big"]
    ref = sum(w[c] * ups[c]["big"].astype(np.float64) for c in ups)
    assert avg.shape == (n, 1)
    np.testing.assert_allclose(avg, ref, rtol=1e-6, atol=1e-6)
