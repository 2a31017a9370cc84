"""The client's side of --dp: a ClientApp mod that hands the training reply to Flower's own DP mods.

`privacy_mod` reads the training message's config (`privacy.dp` puts the keys there): with ``dp-mode`` central it
runs Flower's ``fixedclipping_mod`` (the update, reply − received weights, scaled to L2 norm at most
``clipping_norm``); with local, Flower's ``LocalDpMod(C, sensitivity=2C, ε, δ)`` (clipped, then Gaussian noise of
std z·C added to every weight: `privacy.dp.local_round_epsilon` picks the ε that gives that std); otherwise it
passes the message through. Training runs first, outside the noise generator; only Flower's mod runs on it, so
the noise comes from `privacy.dp.fresh_rng_state` — the operating system's entropy, or (``dp-noise-seed``, for
reproducible experiments only) a stream derived from (seed, round, client). A reply that reports a training
failure is returned as it is (Flower's mods would replace its error by theirs). Flower's mods want a message of
exactly one ArrayRecord and one ConfigRecord; a message to a SuperNode or a Ray-cluster worker also carries the
model's files and frozen weights (`fl.nodes`, `--ray-address`), so the mods see the message without them
(`_weights_and_config`).
"""

from __future__ import annotations

from typing import Any

from fedw2v.privacy.dp import CLIPPING_NORM, DELTA, MODE, NOISE, NOISE_SEED, fresh_rng_state, global_rng, local_round_epsilon


def privacy_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """Flower mod (``@app.train(mods=[privacy_mod])``): clip, or clip and noise, the reply's weights."""
    config = msg.content.config_records.get("config")
    mode = config.get(MODE, "off") if config is not None else "off"
    if mode not in ("central", "local"):
        return call_next(msg, context)
    reply = call_next(msg, context)
    if reply.has_error() or _failed(reply):
        return reply
    clip, z, delta = float(config[CLIPPING_NORM]), float(config[NOISE]), float(config[DELTA])
    state = fresh_rng_state(int(config[NOISE_SEED]), int(config["round"]), int(config["client-id"]))
    if mode == "central":
        from flwr.clientapp.mod import fixedclipping_mod

        mod: Any = fixedclipping_mod
    else:
        from flwr.clientapp.mod import LocalDpMod

        mod = LocalDpMod(clip, 2 * clip, local_round_epsilon(z, delta), delta)
    try:
        with global_rng(state):
            return mod(_weights_and_config(msg), context, lambda m, c: reply)
    except ZeroDivisionError:  # Flower's clipping divides by the update's norm: the update is zero (lr 0)
        return reply if mode == "central" else _noise_only(reply, z * clip, state)


def _weights_and_config(msg: Any) -> Any:
    """The training message as Flower's DP mods read it: the global weights ("arrays") and the job ("config")
    only, not the model files and frozen weights shipped beside them."""
    from flwr.app import Message, RecordDict

    content = msg.content
    if len(content.array_records) == 1 and len(content.config_records) == 1:
        return msg
    return Message(content=RecordDict({"arrays": content["arrays"], "config": content["config"]}),
                   metadata=msg.metadata)


def _failed(reply: Any) -> bool:
    status = reply.content.config_records.get("status")
    return bool(status is not None and status.get("error"))


def _noise_only(reply: Any, std: float, state: dict) -> Any:
    """LocalDpMod's noise step (Flower's add_gaussian_noise_inplace) on an update with nothing to clip."""
    import numpy as np
    from flwr.app import Array, ArrayRecord
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace

    key, record = next(iter(reply.content.array_records.items()))
    arrays = record.to_numpy_ndarrays()
    with global_rng(state):
        add_gaussian_noise_inplace(arrays, std)
    reply.content[key] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(record.keys(), arrays)})
    return reply


__all__ = ["privacy_mod"]
