"""Model weights as named numpy arrays: what travels between server and clients (by state-dict key).

Only trainable parameters travel: with a frozen feature encoder its CNN weights are never sent either way
(every party has them from the run's round-0 checkpoint).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from fedw2v.errors import AggregationError


def trainable_arrays(model: Any) -> dict[str, Any]:
    """{parameter name: float32 numpy array on the CPU} for every parameter that requires grad.

    On the CPU these are views of the parameters, not copies (a model's worth of memory and time saved per
    client call): serialise them (`fl.records.record_from_arrays`) before the model changes again."""
    return {name: p.detach().cpu().numpy() for name, p in model.named_parameters() if p.requires_grad}


def load_arrays(model: Any, arrays: Mapping[str, Any]) -> None:
    """Copy named arrays into the model's parameters in place (no new tensors, no rebuild)."""
    import numpy as np
    import torch

    params = dict(model.named_parameters())
    unknown = [k for k in arrays if k not in params]
    if unknown:
        raise AggregationError(f"weights for parameters the model does not have: {', '.join(unknown[:3])}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only views of received bytes: only read here
        for name, value in arrays.items():
            target = params[name]
            src = torch.from_numpy(np.asarray(value))
            if tuple(src.shape) != tuple(target.shape):
                raise AggregationError(f"{name}: received shape {tuple(src.shape)}, model has {tuple(target.shape)}")
            target.copy_(src.to(target.device, target.dtype))


def non_finite(arrays: Mapping[str, Any]) -> list[str]:
    """Names of arrays holding NaN or infinity."""
    import numpy as np

    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
