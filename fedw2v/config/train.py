"""Local training's configuration: `TrainConfig`, the named recipes it starts from, and `TrainRunConfig` (the
options of `fedw2v train`). Every option is declared once, here (`fedw2v.config.options`); `fedw2v simulate`
reuses the local-training ones (`train_option`).

Recipes are resolved in one place, `recipe()`: an option left unset (None) takes the recipe's value, for
`train` and `simulate` alike. Light on purpose (no torch): the CLI, the federated server and every client build
these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from fedw2v.config.options import META, declaration, finite, option
from fedw2v.device import DEVICE_HELP, DEVICES
from fedw2v.manifest import allow_outside_audio_option

OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MODEL = "facebook/wav2vec2-large-lv60"
MODEL_HELP = ("tiny | tiny-pretrained | a Hugging Face hub id | a local HF model directory | a fedw2v run or "
              "checkpoint directory.")
ALLOW_PICKLE_HELP = "Allow pickled weights (pytorch_model.bin); they can run code when loaded."


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(20, "Passes over the training data.", recipe=True)
    max_batch_size: int = option(4, "Utterances per batch at most.", flags="--batch-size", recipe=True)
    max_batch_seconds: float = option(40.0, "Padded audio seconds per batch at most (longest item x batch size).",
                                      recipe=True)
    grad_accum_steps: int = option(1, "Batches whose gradients are summed before one optimizer step.",
                                   flags="--grad-accum", recipe=True)
    optimizer: str = option("adam", "Optimizer: adam | adamw.", choices=OPTIMIZERS, recipe=True)
    lr_encoder: float = option(1e-4, "Learning rate of the wav2vec2 encoder.", recipe=True)
    lr_head: float = option(1e-3, "Learning rate of the CTC head.", recipe=True)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam
    warmup_steps: int = option(0, "Linear learning-rate warm-up over this many optimizer steps (0: none).",
                               recipe=True)
    newbob: bool = option(True, "NewBob annealing of the learning rates when the dev loss stops improving "
                                "(train: the corpus dev split; simulate: each client's local dev split).",
                          negative="--no-newbob", recipe=True)
    newbob_factor_encoder: float = 0.9  # encoder learning rate multiplier on no improvement (paper: 0.9)
    newbob_factor_head: float = 0.8  # head learning rate multiplier on no improvement (paper: 0.8)
    newbob_threshold: float = 0.0025  # relative dev-loss improvement below which NewBob anneals (paper: 0.0025)
    clip_norm: float = 5.0  # gradient-norm clip (paper: 5)
    freeze_feature_encoder: bool = option(False, "Keep the CNN feature encoder fixed; in a federated run it is "
                                                 "never sent.", negative="--train-feature-encoder", recipe=True)
    min_seconds: float | None = option(0.1, "Drop training utterances shorter than this many seconds.", recipe=True)
    max_seconds: float | None = option(10.0, "Drop training utterances longer than this many seconds.", recipe=True)
    precision: str = option("fp32", "Autocast precision: bf16 on CUDA or on CPUs with bf16 instructions (refused on "
                                    "others), fp16 on CUDA only (the CPU trains it in fp32).",
                            choices=PRECISIONS, recipe=True)
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass: less memory (CUDA "
                                                 "only).", negative="--no-gradient-checkpointing", recipe=True)
    gemm_feature_encoder: bool = option(True, "On the CPU, run a layer-norm CNN feature encoder (large-lv60, tiny) "
                                              "as matrix products over (batch, time, channels): the same numbers to "
                                              "float rounding, faster. Off: transformers' convolutions (CUDA and "
                                              "group-norm encoders always use them).",
                                        negative="--no-gemm-feature-encoder", recipe=True)
    fast_pos_conv: bool = option(True, "On the CPU, compute the gradient of the positional convolution's input as a "
                                       "forward convolution with the kernel flipped: the same numbers to float "
                                       "rounding, faster. Off: transformers' backward kernel (CUDA always uses it).",
                                 negative="--no-fast-pos-conv", recipe=True)
    fused_optimizer: bool = option(True, "Adam(W) as torch's fused kernel (transformers.Trainer's default): the same "
                                         "update to float rounding, faster. Off: torch's per-parameter loop.",
                                   negative="--no-fused-optimizer", recipe=True)
    keep_freed_memory: bool = option(True, "On the CPU (glibc), keep memory freed during training in the process "
                                           "so the next step reuses it instead of faulting in fresh pages: faster "
                                           "(3-19% at base size), a little more peak memory; given back when "
                                           "training ends.", negative="--no-keep-freed-memory", recipe=True)
    device: str = option("auto", DEVICE_HELP, choices=DEVICES)
    seed: int = option(0, "Random seed: batch order, dropout and masking (same seed, same result).")
    max_steps: int | None = option(None, "Stop after this many optimizer steps (none: run all epochs).",
                                   recipe=True)
    num_workers: int = option(0, "Audio-reading worker processes (0: read in the training process).",
                              flags="--workers")
    cache_audio_seconds: float = 7200.0  # keep decoded audio in memory when the data is at most this long

    def __post_init__(self) -> None:
        checks = [
            (finite(self.lr_encoder, self.lr_head, self.max_batch_seconds, self.weight_decay, self.clip_norm),
             "learning rates, max_batch_seconds, weight_decay and clip_norm must be finite numbers"),
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


# The recipes: what an option left unset stands for. `paper` is TrainConfig's defaults (REFERENCE §1); `tiny`
# learns the random-init `tiny` preset from scratch on CPU (REFERENCE §5): AdamW 2e-3 with 100 warm-up steps.
TINY_RECIPE = dict(
    optimizer="adamw", lr_encoder=2e-3, lr_head=2e-3, warmup_steps=100, max_batch_size=16, max_batch_seconds=120.0,
    newbob=False,
)
RECIPES: dict[str, dict[str, Any]] = {"paper": {}, "tiny": TINY_RECIPE}
RECIPE_HELP = "Local-training recipe the unset options take their values from: paper | tiny."


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """A named recipe (paper | tiny) with explicit overrides; an override of None is unset (the recipe's value)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return TrainConfig(**{**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}})


def recipe_value(name: str, field: str) -> Any:
    """The value recipe ``name`` gives TrainConfig's ``field``."""
    return getattr(recipe(name), field)


def default_recipe(model: str) -> str:
    """`fedw2v train`'s recipe when none is given: tiny for the random-init `tiny` preset, else paper."""
    return "tiny" if model == "tiny" else "paper"


def train_option(name: str, **changes: Any) -> Any:
    """A field of another config declared by TrainConfig's option ``name``: unset (None) means the recipe's
    value; ``changes`` replace parts of the declaration (e.g. the help of a renamed option)."""
    opt = dataclasses.replace(declaration(TrainConfig, name), recipe=name, **changes)
    return dataclasses.field(default=None, metadata={META: opt})


@dataclass(frozen=True)
class TrainRunConfig:
    """`fedw2v train`: the run (where, which model, which recipe) and its resolved local-training config."""

    manifest: str  # the manifest whose train (and dev) split is used
    out: str = option(help="Run directory to write (checkpoints/, metrics.jsonl).", flags=("--out", "-o"), path=True,
                      output="dir")
    model: str = option(DEFAULT_MODEL, MODEL_HELP, flags=("--model", "-m"))
    recipe: str | None = option(None, RECIPE_HELP, choices=tuple(RECIPES),
                                shown_default="tiny for --model tiny, else paper")
    keep_checkpoints: int = option(1, "Newest epoch checkpoints kept.", resumable=True)
    resume: bool = option(False, "Continue the run in --out from its newest epoch checkpoint.", flags="--resume",
                          resumable=True)
    allow_pickle: bool = option(False, ALLOW_PICKLE_HELP, flags="--allow-pickle")
    allow_outside_audio: bool = allow_outside_audio_option()
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # resolved (see `build`)

    def __post_init__(self) -> None:
        if self.keep_checkpoints < 1:
            raise ValueError("--keep-checkpoints must be at least 1")

    @classmethod
    def build(cls, manifest: str, train: dict[str, Any], **run: Any) -> TrainRunConfig:
        """The run's config from its options (None: unset); the recipe is resolved here, once."""
        run = {k: v for k, v in run.items() if v is not None}
        name = run.pop("recipe", None) or default_recipe(run.get("model", DEFAULT_MODEL))
        if name not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, not {name!r}")
        return cls(manifest=manifest, recipe=name, train=recipe(name, **train), **run)
