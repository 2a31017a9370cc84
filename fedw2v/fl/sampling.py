"""Which clients train in a round: uniform sampling without replacement from a seeded generator whose state
is saved with every checkpoint, so a resumed run samples exactly the clients an uninterrupted run would."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


class SeededDraw:
    """Uniform draws without replacement from a PCG64 generator seeded with `seed`, whose state (`state`,
    JSON-serialisable, big integers included) is saved with every checkpoint and put back on resume."""

    def __init__(self, seed: int):
        import numpy as np

        self._rng = np.random.Generator(np.random.PCG64(seed))

    def draw(self, ids: Sequence[int], k: int) -> list[int]:
        """min(k, len(ids)) distinct ids, in ascending order."""
        picked = self._rng.choice(len(ids), size=min(k, len(ids)), replace=False)
        return sorted(ids[int(i)] for i in picked)

    @property
    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self._rng.bit_generator.state)

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._rng.bit_generator.state = copy.deepcopy(value)


class ClientSampler(SeededDraw):
    """Draws `per_round` distinct client ids per round, uniformly, from a PCG64 generator seeded with `seed`."""

    def __init__(self, client_ids: Sequence[int], per_round: int, seed: int):
        if not client_ids:
            raise ValueError("no clients to sample from")
        if per_round < 1:
            raise ValueError(f"clients per round must be at least 1, not {per_round}")
        super().__init__(seed)
        self.client_ids = sorted(int(c) for c in client_ids)
        self.per_round = min(per_round, len(self.client_ids))

    def sample(self) -> list[int]:
        """The next round's clients, in ascending id order."""
        return self.draw(self.client_ids, self.per_round)
