"""Differential privacy of a federated run (``--dp central|local``), built from Flower 1.42's own pieces.

fedw2v's server is its own loop on the Message API (it samples logical clients, streams the average in client-id
order and checkpoints every round), so it cannot host Flower's DP strategy wrappers
(`flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping` wraps a `Strategy` whose
`configure_train` samples nodes and whose `aggregate_train` averages Messages). It calls what those wrappers
call instead:

- clipping: the clients run Flower's ``fixedclipping_mod`` (central) or ``LocalDpMod`` (local) on their reply
  (`privacy.dp_client`); under central DP the server clips each received update again with
  ``compute_clip_model_update`` when its norm (``get_norm``) exceeds C, so one client cannot break the bound;
- noise: ``add_gaussian_noise_inplace`` with std ``compute_stdv(z, C, n)`` on the average of the n sampled
  clients (central), drawn from a generator whose state is checkpointed (`global_rng`);
- accounting: ``flwr.serverapp.RdpAccountant`` (dp-accounting's RDP accountant) with ``PrivacyConfig``,
  ``GaussianPrivacyEvent`` and its ``would_exceed`` check, as the wrappers use them. Nothing is hand-written.

Central DP (user-level DP of the released model): the average is g + (1/n) Σ clip(w_c − g) over the m clients
that succeeded out of n sampled — a fixed denominator, so one client moves it by at most C/n whether or not
others failed (m = n gives exactly the uniform FedAvg average) — plus N(0, (z·C/n)²) per coordinate. Accounting:
``--dp-accounting none`` (Flower's wrappers' only mode: no amplification by sampling, add-or-remove-one
neighbours, noise multiplier z) or ``sampled`` (fedw2v's sampler exactly: n of N clients uniformly without
replacement; dp-accounting's model for it uses replace-one neighbours, under which two clipped updates differ by
up to 2C, so the noise multiplier counts as z/2).

Local DP: each client clips its update to C and adds N(0, (z·C)²) per coordinate before sending; the server only
averages. Each release is a Gaussian mechanism on an input whose sensitivity is 2C (any two updates of norm ≤ C),
i.e. noise multiplier z/2, and the reported ε is that of the client that sent most often, with no amplification
(the server sees who sent).

The server calls `DpServer` through five hooks (see `fl.server_app`): `job_config`, `check_budget`, `prepare`
(before the average), `release` (after it) and `state_dict`/`load_state_dict` (state.json).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fedw2v.errors import AggregationError, RunFailed

if TYPE_CHECKING:  # pragma: no cover
    from fedw2v.config.simulate import SimulateConfig

# the keys a training message carries for the client mod (`privacy.dp_client`); "clipping_norm" is Flower's
# KEY_CLIPPING_NORM, read by its fixedclipping_mod
CLIPPING_NORM = "clipping_norm"
MODE, NOISE, DELTA, NOISE_SEED = "dp-mode", "dp-noise-multiplier", "dp-delta", "dp-noise-seed"
NOISE_SEED_TAG = 0x6E6F6973  # keeps noise seeds apart from the training seeds derived from the same numbers
SERVER_NOISE = -1  # the server's stream in `fresh_rng_state` (clients use their ids)
GLOBAL = "global model"  # the extra term of the fixed-denominator average when clients failed


class PrivacyBudgetExhausted(RunFailed):
    """The next round would raise ε above --dp-max-epsilon; the run stopped with its checkpoints intact."""


# ------------------------------------------------------------------------------------ noise generators


def fresh_rng_state(seed: int, *key: int) -> dict[str, Any]:
    """A JSON-able numpy MT19937 state for DP noise: from SeedSequence([seed, *key]) when ``seed`` is set (a
    reproducible experiment), else from the operating system's entropy (nothing written down can predict it)."""
    import numpy as np

    from fedw2v.train_state import json_numpy_state

    seq = np.random.SeedSequence([seed, *[k % 2**32 for k in key], NOISE_SEED_TAG]) if seed else np.random.SeedSequence()
    return json_numpy_state(np.random.RandomState(np.random.MT19937(seq)).get_state(legacy=False))


@contextlib.contextmanager
def global_rng(state: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Run Flower's noise helpers, which draw from numpy's global generator, on ``state``; afterwards the yielded
    dict holds the advanced state (``["state"]``) and the global generator is what it was before. The server
    and a client worker call Flower's noise functions in one thread at a time."""
    import numpy as np

    from fedw2v.train_state import numpy_state, set_numpy_state

    saved = np.random.get_state()
    out: dict[str, Any] = {}
    set_numpy_state(dict(state))
    try:
        yield out
        out["state"] = numpy_state()
    finally:
        np.random.set_state(saved)


# ------------------------------------------------------------------------------------------ accounting


def privacy_config(delta: float, population: int, accounting: str) -> Any:
    """Flower's PrivacyConfig for fedw2v's sampling: no amplification (add-or-remove-one) or sampling without
    replacement (replace-one). No max_epsilon in it: the budget is checked with `would_exceed`, so a resumed
    run may change it."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod

    if accounting == "sampled":
        return PrivacyConfig(delta, population, NeighboringRelation.REPLACE_ONE, SamplingMethod.WITHOUT_REPLACEMENT)
    return PrivacyConfig(delta, population, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)


def accountant_noise(z: float, accounting: str, mode: str = "central") -> float:
    """The noise multiplier the accountant sees: z over the sensitivity C of the fixed-denominator sum under
    add-or-remove-one; z/2 under replace-one (sampled) and for a local release (two updates differ by up to 2C)."""
    return z / 2 if accounting == "sampled" or mode == "local" else z


def epsilon(z: float, releases: int, clients_per_round: int, population: int, delta: float,
            accounting: str = "none", mode: str = "central") -> float:
    """ε at δ after ``releases`` rounds (central) or releases by one client (local), from Flower's RdpAccountant;
    inf when z = 0, 0 before any release."""
    from flwr.serverapp import GaussianPrivacyEvent, RdpAccountant

    if releases == 0:
        return 0.0
    if z == 0:
        return math.inf
    acc = RdpAccountant(privacy_config(delta, population, "none" if mode == "local" else accounting))
    size = 1 if mode == "local" else clients_per_round
    acc.compose(GaussianPrivacyEvent(accountant_noise(z, accounting, mode), size, population), releases)
    return acc.get_epsilon(delta)


def local_round_epsilon(z: float, delta: float) -> float:
    """The per-release ε to give Flower's ``LocalDpMod(C, sensitivity=2C, ε, δ)`` so that its noise std,
    sensitivity·sqrt(2 ln(1.25/δ))/ε, is z·C (inf for z = 0: no noise)."""
    return math.inf if z == 0 else 2 * math.sqrt(2 * math.log(1.25 / delta)) / z


# ---------------------------------------------------------------------------------------- the server


class DpServer:
    """The server's side of --dp: what training messages carry, the budget check, clipping and noise around the
    average, the accountant, and their state for state.json. With --dp off every hook changes nothing."""

    def __init__(self, config: SimulateConfig, population: int):
        self.config = config
        self.mode = config.dp
        self.enabled = config.dp != "off"
        self.population = population  # 0: unknown (a deployment server samples the SuperNodes connected)
        # Flower's accountant wants a population >= each sample even where ε does not depend on it (no
        # amplification, which is all a run without a known population may use: SimulateConfig refuses 'sampled')
        self._acc_population = population or max(1, config.clients_per_round)
        self.rng = fresh_rng_state(config.dp_noise_seed, SERVER_NOISE) if self.mode == "central" else {}
        self.counts: dict[int, int] = {}  # local: releases per client
        self.history: list[dict[str, Any]] = []  # {"round", "epsilon"} per aggregated round
        self._accountant: Any = None  # central with z > 0
        self._pending: dict[str, Any] = {}  # what `prepare` learnt for `release`

    # ------------------------------------------------------------------ messages and budget

    def job_config(self, record: Any) -> Any:
        """The training message's ConfigRecord with what the client mod needs (unchanged with --dp off)."""
        if self.enabled:
            c = self.config
            record[CLIPPING_NORM] = float(c.dp_clip)
            record.update({MODE: c.dp, NOISE: float(c.dp_noise_multiplier), DELTA: float(c.dp_delta),
                           NOISE_SEED: int(c.dp_noise_seed)})
        return record

    def check_budget(self, round_: int, clients: list[int], checkpoint_round: int) -> None:
        """Stop before round ``round_`` (sampling ``clients``) would raise ε above --dp-max-epsilon."""
        c = self.config
        if not self.enabled or not c.dp_max_epsilon:
            return
        from flwr.serverapp import GaussianPrivacyEvent

        if self.mode == "central":
            acc, size = self.accountant(), len(clients)
        else:
            acc, size = self._local_accountant(max((self.counts.get(k, 0) for k in clients), default=0)), 1
        event = GaussianPrivacyEvent(accountant_noise(c.dp_noise_multiplier, c.dp_accounting, self.mode), size,
                                     self._acc_population)
        if acc.would_exceed(event, max_epsilon=c.dp_max_epsilon):
            raise PrivacyBudgetExhausted(
                f"round {round_} would raise ε above --dp-max-epsilon {c.dp_max_epsilon:g} (δ {c.dp_delta:g}; ε is "
                f"{_show(self.epsilon())} now); the run stopped at checkpoint round {checkpoint_round}",
                hint="its checkpoints are intact; --resume with a larger --dp-max-epsilon spends more",
            )

    # ------------------------------------------------------------------ around the average

    def prepare(self, round_: int, global_arrays: Mapping[str, Any], updates: Mapping[Hashable, Mapping[str, Any]],
                weights: Mapping[Hashable, float], sampled: int) -> tuple[dict, dict]:
        """(updates, weights) for `fl.aggregate.weighted_average`. Central: every update clipped to C (a no-op for
        one its client clipped), and the fixed denominator n = ``sampled`` (the global model fills the place of
        clients that failed). Local: the received, already noised updates as they are."""
        if not self.enabled:
            return dict(updates), dict(weights)
        if len(set(weights.values())) > 1:
            raise AggregationError("differential privacy needs equal client weights (--weighting uniform)")
        if self.mode == "local":
            for cid in updates:
                self.counts[int(cid)] = self.counts.get(int(cid), 0) + 1
            self._pending = {"round": round_, "clients": len(updates), "sampled": sampled}
            return dict(updates), dict(weights)
        clip = self.config.dp_clip
        clipped, norms = {}, {}
        for cid in sorted(updates):
            clipped[cid], norms[cid] = clip_update(global_arrays, updates[cid], clip)
        mix: dict[Hashable, float] = dict(weights)
        if len(updates) < sampled:  # g + (1/n) Σ_c clip(w_c - g): weights 1/n, and the global model the rest
            mix = {cid: 1.0 / sampled for cid in clipped}
            mix[GLOBAL] = (sampled - len(clipped)) / sampled
            clipped[GLOBAL] = global_arrays
        at_bound = sum(1 for n in norms.values() if n >= clip * (1 - 1e-3))
        self._pending = {"round": round_, "clients": len(updates), "sampled": sampled, "clipped": at_bound,
                         "update_norm_median": statistics.median(norms.values())}
        return clipped, mix

    def release(self, round_: int, averaged: dict[str, Any]) -> dict[str, Any] | None:
        """Central: add the noise to ``averaged`` in place and account for the release. Returns the round's
        "privacy" event for metrics.jsonl (None with --dp off)."""
        if not self.enabled:
            return None
        c, pending, self._pending = self.config, self._pending, {}
        if pending.get("round") != round_:
            raise RuntimeError(f"release of round {round_} without prepare")
        event = {"mode": self.mode, "noise_multiplier": c.dp_noise_multiplier, "clip": c.dp_clip,
                 "delta": c.dp_delta, **{k: v for k, v in pending.items() if k != "round"}}
        if self.mode == "central":
            event["noise_std"] = self._add_noise(averaged, pending["sampled"])
            if c.dp_noise_multiplier > 0:
                from flwr.serverapp import GaussianPrivacyEvent

                noise = accountant_noise(c.dp_noise_multiplier, c.dp_accounting)
                self.accountant().compose(GaussianPrivacyEvent(noise, pending["sampled"], self._acc_population))
            event["accounting"] = c.dp_accounting
        else:
            event["noise_std"] = c.dp_noise_multiplier * c.dp_clip  # added by each client
            event["max_releases"] = max(self.counts.values(), default=0)
            event["accounting"] = "per client, no amplification"
        self.history.append({"round": round_, "epsilon": None})
        eps = self.epsilon()
        self.history[-1]["epsilon"] = None if math.isinf(eps) else eps
        event["epsilon"] = None if math.isinf(eps) else eps  # None: infinite (z = 0)
        from fedw2v.runs import json_safe

        return json_safe(event)  # type: ignore[return-value]

    def _add_noise(self, averaged: dict[str, Any], sampled: int) -> float:
        import numpy as np
        from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

        z = self.config.dp_noise_multiplier
        std = 0.0 if z == 0 else compute_stdv(z, self.config.dp_clip, sampled)  # 0·inf would be NaN
        if std > 0:
            floats = [a for a in averaged.values() if np.issubdtype(a.dtype, np.floating)]
            with global_rng(self.rng) as drawn:
                add_gaussian_noise_inplace(floats, std)
            self.rng = drawn["state"]
        return std

    # ------------------------------------------------------------------ ε and state

    def accountant(self) -> Any:
        """The central run's RdpAccountant (built on first use)."""
        if self._accountant is None:
            from flwr.serverapp import RdpAccountant

            c = self.config
            self._accountant = RdpAccountant(privacy_config(c.dp_delta, self._acc_population, c.dp_accounting))
        return self._accountant

    def _local_accountant(self, releases: int) -> Any:
        from flwr.serverapp import GaussianPrivacyEvent, RdpAccountant

        acc = RdpAccountant(privacy_config(self.config.dp_delta, self._acc_population, "none"))
        if releases:
            noise = accountant_noise(self.config.dp_noise_multiplier, "none", "local")
            acc.compose(GaussianPrivacyEvent(noise, 1, self._acc_population), releases)
        return acc

    def epsilon(self) -> float:
        """ε at --dp-delta spent so far (inf with z = 0 once anything was released; 0 before)."""
        c = self.config
        if not self.enabled:
            return math.inf
        if self.mode == "local":
            return epsilon(c.dp_noise_multiplier, max(self.counts.values(), default=0), 1, self._acc_population,
                           c.dp_delta, mode="local")
        if c.dp_noise_multiplier == 0:
            return math.inf if self.history else 0.0
        return self.accountant().get_epsilon(c.dp_delta)

    def summary(self) -> dict[str, Any] | None:
        """What config.json records under extra.privacy (None with --dp off)."""
        if not self.enabled:
            return None
        c, eps = self.config, self.epsilon()
        return {"mode": c.dp, "noise_multiplier": c.dp_noise_multiplier, "clip": c.dp_clip, "delta": c.dp_delta,
                "accounting": c.dp_accounting if c.dp == "central" else "per client, no amplification",
                "population": self.population or None, "clients_per_round": c.clients_per_round,
                "rounds_released": len(self.history), "epsilon": None if math.isinf(eps) else eps,
                "epsilon_infinite": math.isinf(eps)}

    def record(self, run_dir: Any) -> None:
        """Write `summary` (ε so far) into the run's config.json, under extra.privacy."""
        summary = self.summary()
        if summary is None:
            return
        from pathlib import Path

        from fedw2v import runs

        path = Path(run_dir) / runs.CONFIG
        data = runs.read_json(path)
        data["extra"] = {**(data.get("extra") or {}), "privacy": runs.json_safe(summary)}
        runs.write_json_atomic(path, data)

    def state_dict(self) -> dict[str, Any]:
        """What state.json keeps: the noise generator, the accountant's ledger, each client's releases, ε."""
        if not self.enabled:
            return {}
        acc = self._accountant.state_dict() if self._accountant is not None else None
        return {"mode": self.mode, "rng": self.rng, "accountant": acc,
                "counts": {str(k): v for k, v in sorted(self.counts.items())}, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if state.get("mode") != self.mode:
            raise RunFailed(f"the checkpoint holds no --dp {self.mode} state (it was made with --dp "
                            f"{state.get('mode') or 'off'})")
        self.rng = dict(state.get("rng") or {})
        self.counts = {int(k): int(v) for k, v in (state.get("counts") or {}).items()}
        self.history = list(state.get("history") or [])
        self._accountant = None
        if state.get("accountant") is not None:
            self.accountant().load_state_dict(state["accountant"])


def clip_update(global_arrays: Mapping[str, Any], update: Mapping[str, Any], clip: float) -> tuple[dict, float]:
    """(update with (update − global) clipped to L2 norm ``clip``, its norm before): Flower's ``get_norm`` and
    ``compute_clip_model_update``, called only when the norm exceeds ``clip`` (so an update within the bound
    stays bit-identical, and a zero update never reaches Flower's division by its norm)."""
    import numpy as np
    from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

    names = list(update)
    mine = [np.asarray(update[k]) for k in names]
    base = [np.asarray(global_arrays[k]) for k in names]
    norm = get_norm([np.subtract(a, b) for a, b in zip(mine, base)])
    if not norm > clip:
        return dict(update), norm
    compute_clip_model_update(mine, base, clip)
    return dict(zip(names, mine)), norm


def _show(eps: float) -> str:
    return "infinite" if math.isinf(eps) else f"{eps:.3g}"


__all__ = ["DpServer", "PrivacyBudgetExhausted", "clip_update", "epsilon", "fresh_rng_state", "global_rng",
           "local_round_epsilon"]
