"""Everything `local_train` needs to continue after a finished epoch exactly as if it had never stopped.

`fedw2v train` stores one with every epoch checkpoint (``train_state.json`` + ``train_state.safetensors``
beside the model), so ``fedw2v train --resume`` after a crash gives the same weights, bit for bit, as an
uninterrupted run: the optimizer's moments and step counts, the gradient scaler, NewBob's annealing state, the
metrics so far, and the torch and numpy generators (dropout, wav2vec2's time masking) as they were at the end
of the epoch. Tensors go to safetensors, everything else to JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON_NAME = "train_state.json"
TENSORS_NAME = "train_state.safetensors"
FORMAT = 1


@dataclass
class TrainState:
    epochs_done: int  # complete epochs (the one that hit --max-steps included)
    metrics: dict[str, Any]  # TrainMetrics.to_dict() at the end of that epoch
    newbob: dict[str, dict[str, Any]]  # per parameter group: scale, wait, previous
    optimizer: dict[str, Any]  # torch optimizer state_dict (tensors included)
    scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler state_dict (empty when disabled)
    torch_rng: Any = None  # torch.get_rng_state() (a uint8 tensor)
    cuda_rng: Any = None  # torch.cuda.get_rng_state() of the training device, when it is CUDA
    numpy_rng: dict[str, Any] = field(default_factory=dict)  # np.random.get_state(legacy=False), lists for arrays

    # ---------------------------------------------------------------- files

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``train_state.json`` and ``train_state.safetensors`` into ``directory`` (a checkpoint being
        assembled: `fedw2v.model.save_model` makes it appear atomically)."""
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        states: dict[str, dict[str, Any]] = {}
        for index, state in self.optimizer["state"].items():
            entry: dict[str, Any] = {}
            for key, value in state.items():
                if _is_tensor(value):
                    name = f"optimizer.{index}.{key}"
                    tensors[name] = value.detach().cpu().contiguous()
                    entry[key] = {"tensor": name}
                else:
                    entry[key] = value
            states[str(index)] = entry
        for name, value in (("rng.torch", self.torch_rng), ("rng.cuda", self.cuda_rng)):
            if value is not None:
                tensors[name] = value.detach().cpu().contiguous()
        doc = {
            "format": FORMAT,
            "epochs_done": self.epochs_done,
            "metrics": self.metrics,
            "newbob": self.newbob,
            "scaler": self.scaler,
            "numpy_rng": self.numpy_rng,
            "optimizer": {"state": states, "param_groups": self.optimizer["param_groups"]},
        }
        path = Path(directory)
        save_file(tensors, str(path / TENSORS_NAME))
        (path / JSON_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=True) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TrainState:
        """Read what `save` wrote; `StateMissing` when the checkpoint has none (a model-only directory)."""
        from safetensors.torch import load_file

        path = Path(directory)
        if not (path / JSON_NAME).is_file() or not (path / TENSORS_NAME).is_file():
            raise StateMissing(f"{path}: no {JSON_NAME} / {TENSORS_NAME} (not a resumable training checkpoint)")
        doc = json.loads((path / JSON_NAME).read_text())
        if doc.get("format") != FORMAT:
            raise StateMissing(f"{path / JSON_NAME}: unknown format {doc.get('format')!r} (expected {FORMAT})")
        tensors = load_file(str(path / TENSORS_NAME))
        state = {
            int(index): {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                         for k, v in entry.items()}
            for index, entry in doc["optimizer"]["state"].items()
        }
        return cls(
            epochs_done=int(doc["epochs_done"]), metrics=doc["metrics"], newbob=doc["newbob"],
            optimizer={"state": state, "param_groups": doc["optimizer"]["param_groups"]}, scaler=doc["scaler"],
            torch_rng=tensors.get("rng.torch"), cuda_rng=tensors.get("rng.cuda"), numpy_rng=doc["numpy_rng"],
        )  # fmt: skip


class StateMissing(Exception):
    """A checkpoint without a training state (or with one this version cannot read)."""


def numpy_state() -> dict[str, Any]:
    """numpy's global generator state as JSON-able data."""
    import numpy as np

    return json_numpy_state(np.random.get_state(legacy=False))


def json_numpy_state(state: dict[str, Any]) -> dict[str, Any]:
    """A numpy generator state (``get_state(legacy=False)``) as JSON-able data."""
    return {**state, "state": {k: v.tolist() if hasattr(v, "tolist") else v for k, v in state["state"].items()}}


def set_numpy_state(state: dict[str, Any]) -> None:
    import numpy as np

    inner = {k: np.asarray(v, dtype=np.uint32) if k == "key" else v for k, v in state["state"].items()}
    np.random.set_state({**state, "state": inner})


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
