"""Local training's configuration: `TrainConfig` and the named recipes (paper, tiny) it starts from.

Light on purpose (no torch): the CLI, the federated server and every client build it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedw2v.device import DEVICES

OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # passes over the data (paper: 20 local epochs)
    max_batch_size: int = 4  # utterances per batch at most (paper: 4)
    max_batch_seconds: float = 40.0  # padded audio per batch at most (longest item x batch size), seconds
    grad_accum_steps: int = 1  # batches whose gradients are summed before one optimizer step
    optimizer: str = "adam"  # adam (paper) | adamw
    lr_encoder: float = 1e-4  # learning rate of the wav2vec2 encoder (paper: 1e-4)
    lr_head: float = 1e-3  # learning rate of the CTC head (paper: 1e-3)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps (0: none)
    newbob: bool = True  # anneal the learning rates when the dev loss stops improving (needs dev data)
    newbob_factor_encoder: float = 0.9  # encoder learning rate multiplier on no improvement (paper: 0.9)
    newbob_factor_head: float = 0.8  # head learning rate multiplier on no improvement (paper: 0.8)
    newbob_threshold: float = 0.0025  # relative dev-loss improvement below which NewBob anneals (paper: 0.0025)
    clip_norm: float = 5.0  # gradient-norm clip (paper: 5)
    freeze_feature_encoder: bool = False  # keep the CNN feature encoder fixed (paper: trained)
    min_seconds: float | None = 0.1  # drop training utterances shorter than this (paper: 0.1; None: no bound)
    max_seconds: float | None = 10.0  # drop training utterances longer than this (paper: 10; None: no bound)
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast; CUDA only (the CPU always trains in fp32)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass; CUDA only
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    seed: int = 0  # batch order, dropout and masking
    max_steps: int | None = None  # stop after this many optimizer steps (None: run all epochs)
    num_workers: int = 0  # audio-reading worker processes (0: read in the training process)
    cache_audio_seconds: float = 7200.0  # keep decoded audio in memory when the data is at most this long

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_batch_seconds > 0, "max_batch_seconds must be positive"),
            (self.grad_accum_steps >= 1, "grad_accum_steps must be at least 1"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_encoder >= 0 and self.lr_head >= 0, "learning rates must be non-negative"),
            (self.weight_decay >= 0, "weight_decay must be non-negative"),
            (self.warmup_steps >= 0, "warmup_steps must be non-negative"),
            (
                0 < self.newbob_factor_encoder <= 1 and 0 < self.newbob_factor_head <= 1,
                "NewBob factors must be in (0, 1]",
            ),
            (self.clip_norm > 0, "clip_norm must be positive"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.num_workers >= 0, "num_workers must be non-negative"),
            (
                self.min_seconds is None or self.max_seconds is None or self.min_seconds <= self.max_seconds,
                "min_seconds must not exceed max_seconds",
            ),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(rule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Learns the random-init `tiny` preset from scratch on CPU (REFERENCE §5): AdamW 2e-3 with 100 warm-up steps.
TINY_RECIPE = dict(
    optimizer="adamw", lr_encoder=2e-3, lr_head=2e-3, warmup_steps=100, max_batch_size=16, max_batch_seconds=120.0,
    newbob=False,
)
RECIPES: dict[str, dict[str, Any]] = {"paper": {}, "tiny": TINY_RECIPE}


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named recipe (paper | tiny) with explicit overrides (None values ignored)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return TrainConfig(**{**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}})
