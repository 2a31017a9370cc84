"""Client weights and the weighted average of client updates. Pure functions: numpy only, no Flower/Ray.

- Weights (`client_weights`) are computed in log space and normalised with log-sum-exp, so they are always
  finite, positive and sum to 1: `num` (samples, FedAvg), `loss` (exp(-train loss)), `wer` (exp(100 - WER%),
  the public baseline's formula, which overflowed there), `uniform` (1/n: what differential privacy needs). A degenerate case (NaN, infinite, missing metric,
  no samples at all) is an `AggregationError` naming the clients.
- `weighted_average` sums the updates into one accumulator per tensor in a fixed order (by client id), so the
  result does not depend on the order in which updates arrived. Extra memory: one model (the accumulator) plus
  a 256 KiB scratch buffer; no per-client copies.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedw2v.errors import AggregationError

WEIGHTINGS = ("num", "loss", "wer", "uniform")
CHUNK = 1 << 16  # elements summed at a time (256 KiB of float32: stays in cache)


@dataclass(frozen=True)
class ClientStats:
    client_id: Hashable
    num_samples: int  # training utterances seen in the round (FedAvg weight)
    loss: float | None = None  # mean training loss of the round
    wer: float | None = None  # local dev WER in percent (None: the client has no local dev split)


def client_weights(stats: Sequence[ClientStats], weighting: str = "num") -> dict[Hashable, float]:
    """Normalised aggregation weights per client id (finite, > 0, summing to 1)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    if not stats:
        raise AggregationError("no client results to aggregate")
    ids = [s.client_id for s in stats]
    if len(set(ids)) != len(ids):
        raise AggregationError(f"client ids are not unique: {_names(i for i in ids if ids.count(i) > 1)}")
    if weighting == "num":
        bad = [s.client_id for s in stats if not (isinstance(s.num_samples, int) and s.num_samples >= 0)]
        if bad:
            raise AggregationError(f"sample counts are not non-negative integers for clients {_names(bad)}")
        if sum(s.num_samples for s in stats) == 0:
            raise AggregationError(f"all weights are zero: no samples from clients {_names(ids)}")
        logs = {s.client_id: math.log(s.num_samples) if s.num_samples else -math.inf for s in stats}
    elif weighting == "uniform":
        logs = {cid: 0.0 for cid in ids}
    else:
        metric = {s.client_id: (s.loss if weighting == "loss" else s.wer) for s in stats}
        bad = [cid for cid, v in metric.items() if v is None or not math.isfinite(v)]
        if bad:
            raise AggregationError(
                f"{weighting} weighting needs a finite {weighting} from every client; missing or non-finite for "
                f"clients {_names(bad)}"
            )
        # exp(-loss) and exp(100 - WER): the constant 100 cancels in the normalisation.
        logs = {cid: -float(v) for cid, v in metric.items()}
    top = max(logs.values())
    exps = {cid: math.exp(v - top) for cid, v in logs.items()}
    total = sum(exps.values())
    weights = {cid: e / total for cid, e in exps.items()}
    bad = [cid for cid, w in weights.items() if not math.isfinite(w)]
    if bad:  # pragma: no cover -- cannot happen after the checks above; kept as the contract's guard
        raise AggregationError(f"non-finite weights for clients {_names(bad)}")
    return weights


def weighted_average(
    updates: Mapping[Hashable, Mapping[str, Any]], weights: Mapping[Hashable, float]
) -> dict[str, Any]:
    """Σ_c w_c · update_c, tensor by tensor, clients in sorted id order. Values: numpy arrays (or objects with
    `.numpy()`, e.g. CPU torch tensors). Non-float tensors must be equal across clients and are copied."""
    import numpy as np

    if not updates:
        raise AggregationError("no client updates to aggregate")
    missing = [cid for cid in updates if cid not in weights]
    if missing:
        raise AggregationError(f"no weight for clients {_names(missing)}")
    order = sorted(updates, key=_sort_key)
    first = order[0]
    keys = list(updates[first])
    for cid in order[1:]:
        if set(updates[cid]) != set(keys):
            diff = sorted(set(updates[cid]) ^ set(keys))
            raise AggregationError(f"client {cid} sent tensors that client {first} did not (or vice versa): {diff[:3]}")
    total = sum(weights[cid] for cid in order)
    if not (math.isfinite(total) and total > 0):
        raise AggregationError(f"weights of clients {_names(order)} sum to {total}")
    result: dict[str, Any] = {}
    scratch: dict[Any, Any] = {}  # one small buffer per dtype
    for key in keys:
        ref = _array(updates[first][key])
        if not np.issubdtype(ref.dtype, np.floating):
            for cid in order[1:]:
                if not np.array_equal(_array(updates[cid][key]), ref):
                    raise AggregationError(f"non-float tensor {key!r} differs between clients {first} and {cid}")
            result[key] = ref.copy()
            continue
        arrays = []
        for cid in order:
            arr = _array(updates[cid][key])
            if arr.shape != ref.shape:
                raise AggregationError(f"tensor {key!r} of client {cid} has shape {arr.shape}, expected {ref.shape}")
            arrays.append((arr.reshape(-1), weights[cid] / total))
        acc = np.empty(ref.size, dtype=ref.dtype)
        tmp = scratch.setdefault(ref.dtype, np.empty(CHUNK, dtype=ref.dtype))
        # Chunk by chunk: the accumulator's chunk stays in cache while every client's slice is added to it,
        # always in client-id order (the same sum, bit for bit, whatever the arrival order).
        for lo in range(0, ref.size, CHUNK):
            hi = min(lo + CHUNK, ref.size)
            out, buf = acc[lo:hi], tmp[: hi - lo]
            np.multiply(arrays[0][0][lo:hi], arrays[0][1], out=out, casting="unsafe")
            for arr, w in arrays[1:]:
                np.multiply(arr[lo:hi], w, out=buf, casting="unsafe")
                out += buf
        result[key] = acc.reshape(ref.shape)
    return result


def _array(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else value.numpy()
    return np.asarray(value)


def _sort_key(cid: Hashable) -> tuple[int, Any]:
    return (0, cid) if isinstance(cid, int) else (1, str(cid))


def _names(ids: Any) -> str:
    ids = sorted(set(ids), key=_sort_key)
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
