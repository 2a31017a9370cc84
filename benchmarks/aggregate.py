"""Aggregation of K client updates of wav2vec2-base size: fedw2v against Flower's own FedAvg, same inputs.

Every method starts from the same K `ArrayRecord`s, as a Flower server receives them, and returns the averaged
arrays. Measured one after another in this process:
- time (best of --repeat runs, no tracing), and
- extra peak memory during the call (tracemalloc sees numpy's and Python's allocations), in units of one model.

Methods: fedw2v (`fl.records.arrays_from_record` views + `fl.aggregate.weighted_average`), Flower's
Message-API `aggregate_arrayrecords`, and Flower's legacy `aggregate()` (after `to_numpy_ndarrays()`, as its
legacy strategies convert parameters first).

    .venv/bin/python benchmarks/aggregate.py [--clients 10] [--params 95e6] [--repeat 2]

Goal (issue 5): extra peak <= 1.2 x one model, time <= 0.6 x the Message-API aggregation.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np


def base_shapes(params: float) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in the proportions of wav2vec2-base (CNN, projection, 12 blocks, head), scaled to `params`."""
    shapes: dict[str, tuple[int, ...]] = {"feature_extractor.conv_layers.0.conv.weight": (512, 1, 10)}
    for i in range(1, 7):
        shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] = (512, 512, 3 if i < 5 else 2)
    shapes["feature_projection.projection.weight"] = (768, 512)
    shapes["encoder.pos_conv_embed.conv.weight"] = (768, 48, 128)
    block = (("attention.q_proj.weight", (768, 768)), ("attention.k_proj.weight", (768, 768)),
             ("attention.v_proj.weight", (768, 768)), ("attention.out_proj.weight", (768, 768)),
             ("feed_forward.intermediate_dense.weight", (3072, 768)),
             ("feed_forward.output_dense.weight", (768, 3072)), ("layer_norm.weight", (768,)),
             ("attention.q_proj.bias", (768,)), ("feed_forward.intermediate_dense.bias", (3072,)))
    per_block = sum(int(np.prod(shape)) for _, shape in block)
    total = sum(int(np.prod(s)) for s in shapes.values())
    layers = 0
    # whole blocks while they fit (wav2vec2-base: 12 blocks, 94.4M parameters; the default 95e6 gives 12)
    while layers == 0 or total + per_block <= params:
        for name, shape in block:
            shapes[f"encoder.layers.{layers}.{name}"] = shape
        total += per_block
        layers += 1
    shapes["lm_head.weight"] = (32, 768)
    return shapes


def make_records(k: int, params: float, seed: int = 0):
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: F401

    from fedw2v.fl.records import record_from_arrays

    rng = np.random.default_rng(seed)
    shapes = base_shapes(params)
    records = []
    for c in range(k):
        arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
        rec = RecordDict({"arrays": record_from_arrays(arrays), "metrics": MetricRecord({"num-examples": 10 + c})})
        del arrays
        records.append(rec)
    model_bytes = sum(int(np.prod(s)) * 4 for s in shapes.values())
    return records, model_bytes


def fedw2v_aggregate(records):
    from fedw2v.fl.aggregate import ClientStats, client_weights, weighted_average
    from fedw2v.fl.records import arrays_from_record

    updates = {c: arrays_from_record(r["arrays"]) for c, r in enumerate(records)}
    weights = client_weights([ClientStats(c, int(r["metrics"]["num-examples"])) for c, r in enumerate(records)])
    return weighted_average(updates, weights)


def flower_message_api(records):
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    return aggregate_arrayrecords(records, "num-examples")


def flower_legacy(records):
    from flwr.server.strategy.aggregate import aggregate

    return aggregate([(r["arrays"].to_numpy_ndarrays(), int(r["metrics"]["num-examples"])) for r in records])


def measure(fn, records, repeat: int) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn(records)
        best = min(best, time.perf_counter() - t0)
        del out
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    out = fn(records)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    gc.collect()
    return best, peak - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=float, default=95e6)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    records, model_bytes = make_records(args.clients, args.params)
    print(f"{args.clients} updates of {model_bytes / 4 / 1e6:.1f}M float32 parameters ({model_bytes / 2**20:.0f} MiB each)")
    ref = fedw2v_aggregate(records)
    msg = flower_message_api(records)
    worst = max(float(np.max(np.abs(ref[k] - msg[k].numpy()))) for k in ref)
    print(f"max |fedw2v - Flower| = {worst:.2e} (same result up to float32 rounding)")
    del ref, msg
    results = {}
    for name, fn in (("fedw2v", fedw2v_aggregate), ("flower-message-api", flower_message_api),
                     ("flower-legacy", flower_legacy)):
        seconds, extra = measure(fn, records, args.repeat)
        results[name] = (seconds, extra / model_bytes)
        print(f"{name:20s} {seconds:7.2f} s   extra peak {extra / model_bytes:5.2f} models")
    f_s, f_m = results["fedw2v"]
    m_s, m_m = results["flower-message-api"]
    l_s, l_m = results["flower-legacy"]
    print(f"ratio fedw2v / Flower Message API: time {f_s / m_s:.2f} (goal <= 0.6), memory {f_m / m_m:.2f}; "
          f"fedw2v extra peak {f_m:.2f} models (goal <= 1.2)")
    print(f"ratio fedw2v / Flower legacy: time {f_s / l_s:.2f}, memory {f_m / l_m:.2f}")


if __name__ == "__main__":
    main()
