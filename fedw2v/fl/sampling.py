"""Which clients train in a round: uniform sampling without replacement from a seeded generator whose state
is saved with every checkpoint, so a resumed run samples exactly the clients an uninterrupted run would."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


class ClientSampler:
    """Draws `per_round` distinct client ids per round, uniformly, from a PCG64 generator seeded with `seed`."""

    def __init__(self, client_ids: Sequence[int], per_round: int, seed: int):
        import numpy as np

        if not client_ids:
            raise ValueError("no clients to sample from")
        if per_round < 1:
            raise ValueError(f"clients per round must be at least 1, not {per_round}")
        self.client_ids = sorted(int(c) for c in client_ids)
        self.per_round = min(per_round, len(self.client_ids))
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self) -> list[int]:
        """The next round's clients, in ascending id order."""
        picked = self._rng.choice(len(self.client_ids), size=self.per_round, replace=False)
        return sorted(self.client_ids[int(i)] for i in picked)

    @property
    def state(self) -> dict[str, Any]:
        """JSON-serialisable generator state (big integers included)."""
        return copy.deepcopy(self._rng.bit_generator.state)

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._rng.bit_generator.state = copy.deepcopy(value)
