"""The federated server's footprint hook: in a footprint round (``--footprint-rounds``), the test footprints of the
clients' updates as they arrive, so the run keeps only these vectors (and, with ``--save-updates``, the full
updates) for `fedw2v footprint`.

The server calls `OnlineFootprints.before_round` with the global model before the clients train (the reference
states: the global model's hidden states on the indicator set) and `after_fit` with the round's successful
updates; this module knows nothing of the server (it imports nothing from `fedw2v.fl`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.manifest import Manifest
    from fedw2v.privacy.footprints import ReferenceStates
    from fedw2v.privacy.indicator import Indicator


class OnlineFootprints:
    """Test footprints of a run's footprint rounds, computed on the server.

    ``clients`` is the run's clients manifest (its speakers are kept out of the indicator set); ``base_model`` a
    model directory of the run's architecture: the updates are loaded into a second model built from it once, so
    the global model is never touched. The indicator set is read once, on the first footprint round."""

    def __init__(self, config: SimulateConfig, clients: Manifest, base_model: str | os.PathLike,
                 device: str = "auto"):
        self.config = config
        self.clients = clients
        self.base_model = str(base_model)
        self.device = device
        self._indicator: Indicator | None = None
        self._probe: Any = None  # the second model, built on the first footprint round
        self._reference: ReferenceStates | None = None  # of the round in progress
        self._round: int | None = None

    def rounds_kept(self) -> set[int]:
        """Checkpoints the analysis needs: every footprint round r and its global model r-1."""
        rounds = set(self.config.footprint_rounds)
        return rounds | {r - 1 for r in rounds}

    def before_round(self, round_: int, model: Any, processor: Any) -> bool:
        """In a footprint round: the global model's hidden states on the indicator set, before the clients train
        (kept until `after_fit`). False (and nothing computed) in any other round."""
        from fedw2v.device import resolve_device
        from fedw2v.privacy.footprints import ReferenceStates
        from fedw2v.privacy.indicator import run_indicator

        self._reference, self._round = None, None
        if round_ not in self.config.footprint_rounds:
            return False
        if self._indicator is None:
            self._indicator = run_indicator(self.config, self.clients)
        self._reference = ReferenceStates.compute(model, processor, self._indicator, resolve_device(self.device))
        self._round = round_
        return True

    def after_fit(self, round_: int, updates: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Footprints of the round's successful updates ({client id: weights by state-dict key}), stored in
        ``footprints/round-NNNN/test.safetensors`` (with `save_updates` the full updates too). Returns what the
        server logs ("clients", "file" relative to the run directory, "updates_saved", "seconds"), or None
        when ``round_`` is no footprint round (`before_round` computed nothing for it)."""
        from fedw2v.device import resolve_device
        from fedw2v.model import load_model
        from fedw2v.privacy.footprints import footprint
        from fedw2v.privacy.store import write_footprints, write_update
        from fedw2v.weights import load_arrays

        if self._reference is None or self._round != round_:
            return None
        reference, self._reference, self._round = self._reference, None, None
        t0 = time.perf_counter()
        if self._probe is None:
            self._probe = load_model(self.base_model)
        run_dir = Path(self.config.run_dir)
        vectors = {}
        for cid in sorted(updates):
            load_arrays(self._probe.model, updates[cid])
            vectors[cid] = footprint(self._probe.model, self._probe.processor, reference, resolve_device(self.device))
            if self.config.save_updates:
                write_update(run_dir, round_, cid, updates[cid])
        path = write_footprints(run_dir, round_, "test", vectors, reference.meta(), merge=False)
        return {"clients": sorted(vectors), "file": str(path.relative_to(run_dir)),
                "updates_saved": self.config.save_updates, "seconds": time.perf_counter() - t0}


__all__ = ["OnlineFootprints"]
