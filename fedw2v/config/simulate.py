"""The federated run's configuration: one typed object, built once, written to ``config.json``.

The same object travels to the Flower ServerApp as its run config (flat ``kebab-case`` keys of TOML types,
which is also what ``flwr run --run-config`` and ``[tool.flwr.app.config]`` in pyproject.toml hold), and the
part each client needs travels in every training message. Defaults reproduce the paper
(../shared/REFERENCE.md §1): wav2vec2-large-lv60, 100 rounds, 20 clients per round, 20 local epochs, batch 4,
Adam 1e-4 / 1e-3, NewBob, FedAvg weighted by samples, the server scoring the whole official test set after
every round, fp32, the whole model trained.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedw2v.errors import InputError

from fedw2v.config.train import PRECISIONS, RECIPES

WEIGHTINGS = ("num", "loss", "wer")
EVAL_SPLITS = ("test", "dev")
# Keys that may differ when a run is resumed (everything else must match config.json).
RESUMABLE_CHANGES = ("rounds", "keep_checkpoints", "resume", "round_timeout")


@dataclass(frozen=True)
class SimulateConfig:
    clients_manifest: str  # the partitioned manifest (absolute path)
    run_dir: str  # where config, metrics, checkpoints and plots go (absolute path)
    model: str = "facebook/wav2vec2-large-lv60"  # hub id, HF directory, fedw2v run/checkpoint, or `tiny`
    rounds: int = 100  # federated rounds (paper: 100)
    clients_per_round: int = 20  # clients sampled uniformly without replacement per round (paper: 20)
    local_epochs: int = 20  # epochs of local training per round (paper: 20)
    batch_size: int = 4  # utterances per local batch at most (paper: 4)
    lr_encoder: float = 1e-4  # local learning rate of the wav2vec2 encoder (paper: 1e-4)
    lr_head: float = 1e-3  # local learning rate of the CTC head (paper: 1e-3)
    recipe: str = "paper"  # local-training recipe the options above override: paper | tiny (AdamW + warm-up)
    local_steps: int = 0  # stop local training after this many optimizer steps (0: all epochs)
    newbob: bool = True  # NewBob annealing on the local dev loss (paper: yes)
    freeze_feature_encoder: bool = False  # keep the CNN feature encoder fixed and never send it (paper: trained)
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast on CUDA (paper: fp32)
    gradient_checkpointing: bool = False  # recompute activations in backward (CUDA): less memory
    weighting: str = "num"  # aggregation weights: num (samples, FedAvg) | loss | wer
    eval_every: int = 1  # server evaluation every N rounds (and at round 0 and the last round)
    eval_split: str = "test"  # corpus split the server scores: test | dev (the whole split, no length filter)
    gpus_per_client: float = 1.0  # GPU share per client (0.5: two clients per GPU; 0 without a GPU)
    cpus_per_client: float = 2.0  # CPU cores per client (Ray resource)
    min_fit_clients: int = 0  # a round fails when fewer clients succeed (0: half the clients per round, at least 1)
    round_timeout: float = 0.0  # seconds to wait for a round's replies; later ones count as failed (0: no limit)
    seed: int = 0  # sampling, model initialisation, local batch order
    keep_checkpoints: int = 3  # newest checkpoints kept (the best-WER one is always kept too)
    resume: bool = False  # continue from checkpoints/LATEST of run_dir
    footprint_rounds: tuple[int, ...] = ()  # rounds whose client updates get footprints (fedw2v footprint)
    indicator_manifest: str = ""  # manifest of the indicator set (empty: the clients manifest)
    indicator_split: str = "dev"  # corpus split of the indicator utterances
    indicator_utterances: int = 64  # indicator utterances used (the first N by utt_id: a fixed set)
    save_updates: bool = False  # also store every footprint round's full client updates (safetensors)
    corpus_root: str = ""  # override the corpus root stored in the manifest (a moved corpus)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # facts recorded, not compared

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, "rounds must be at least 1"),
            (self.clients_per_round >= 1, "clients per round must be at least 1"),
            (self.local_epochs >= 1, "local epochs must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.lr_encoder >= 0 and self.lr_head >= 0, "learning rates must be non-negative"),
            (self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}"),
            (self.local_steps >= 0, "local steps must be non-negative"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {', '.join(WEIGHTINGS)}"),
            (self.eval_every >= 1, "eval-every must be at least 1"),
            (self.eval_split in EVAL_SPLITS, f"eval split must be one of {', '.join(EVAL_SPLITS)}"),
            (self.gpus_per_client >= 0, "gpus per client must be non-negative"),
            (self.cpus_per_client > 0, "cpus per client must be positive"),
            (self.min_fit_clients >= 0, "min fit clients must be non-negative"),
            (self.min_fit_clients <= self.clients_per_round, "min fit clients cannot exceed clients per round"),
            (self.round_timeout >= 0, "round timeout must be non-negative (0: no limit)"),
            (self.keep_checkpoints >= 1, "keep-checkpoints must be at least 1"),
            (all(1 <= r <= self.rounds for r in self.footprint_rounds), "footprint rounds must lie in 1..rounds"),
            (self.indicator_utterances >= 1, "indicator utterances must be at least 1"),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(rule)

    @property
    def required_successes(self) -> int:
        return self.min_fit_clients or max(1, self.clients_per_round // 2)

    def train_config(self) -> Any:
        """The local-training config every client uses (its seed is set per round and client)."""
        from fedw2v.config.train import recipe

        return recipe(
            self.recipe,
            epochs=self.local_epochs,
            max_batch_size=self.batch_size,
            lr_encoder=self.lr_encoder,
            lr_head=self.lr_head,
            newbob=self.newbob,
            freeze_feature_encoder=self.freeze_feature_encoder,
            precision=self.precision,
            gradient_checkpointing=self.gradient_checkpointing,
            max_steps=self.local_steps or None,
        )

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["footprint_rounds"] = list(self.footprint_rounds)
        return data

    def to_run_config(self) -> dict[str, Any]:
        """Flat kebab-case keys with TOML-compatible values (Flower's run config)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "footprint_rounds":
                value = ",".join(str(r) for r in value)
            out[f.name.replace("_", "-")] = value
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], base_dir: str | None = None) -> SimulateConfig:
        """Inverse of `to_run_config`; unknown keys are an error naming them. Relative paths are taken from
        ``base_dir`` (the app directory under `flwr run`)."""
        names = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in names:
                unknown.append(key)
                continue
            if name == "footprint_rounds":
                value = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v)
            else:
                value = _CONVERT[names[name].type](value)
            kwargs[name] = value
        if unknown:
            raise ValueError(f"unknown run-config keys: {', '.join(sorted(unknown))}")
        for key in ("clients_manifest", "run_dir", "indicator_manifest", "corpus_root"):
            if kwargs.get(key) and base_dir and not os.path.isabs(kwargs[key]):
                kwargs[key] = os.path.join(base_dir, kwargs[key])
        return cls(**kwargs)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Keys whose value differs from a recorded config.json (the keys a resume may change excluded)."""
        mine = self.to_dict()
        keys = (set(mine) | set(recorded)) - set(RESUMABLE_CHANGES) - {"extra"}
        return sorted(k for k in keys if _norm(mine.get(k)) != _norm(recorded.get(k)))


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


_CONVERT = {"int": int, "float": float, "bool": _bool, "str": str}


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value))


def load_run_config(run_dir: str | os.PathLike) -> SimulateConfig:
    """The run's `SimulateConfig` from its config.json (InputError when it is not a federated run)."""
    from fedw2v import runs

    path = Path(run_dir) / runs.CONFIG
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise InputError(f"{run_dir}: not a federated run (no {runs.CONFIG})", hint="make one with `fedw2v simulate`")
    data = runs.read_json(path)
    names = {f.name for f in fields(SimulateConfig)}
    if "clients_manifest" not in data or "footprint_rounds" not in data:
        raise InputError(f"{path}: not the config of a federated run (`fedw2v simulate`)")
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs["footprint_rounds"] = tuple(int(r) for r in kwargs.get("footprint_rounds") or ())
    try:
        return SimulateConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: invalid run configuration ({exc})") from None
