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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedw2v.config import options as opts
from fedw2v.config.options import option
from fedw2v.config.train import DEFAULT_MODEL, MODEL_HELP, PRECISIONS, RECIPES, recipe, train_option
from fedw2v.errors import InputError
from fedw2v.manifest import allow_outside_audio_option

WEIGHTINGS = ("num", "loss", "wer", "uniform")
EVAL_SPLITS = ("test", "dev")
DP_MODES = ("off", "central", "local")
DP_ACCOUNTING = ("none", "sampled")


@dataclass(frozen=True)
class SimulateConfig:
    clients_manifest: str = option(help="The partitioned manifest (`fedw2v partition`); empty under the Deployment "
                                        "Engine when every SuperNode reads its own client's manifest from its "
                                        "--node-config (the server then holds no client rows).", cli=False,
                                   path=True, absolute=True, example="demo/clients.parquet")
    run_dir: str = option(help="Run directory, e.g. runs/NAME (config, metrics, checkpoints, plots).",
                          flags="--run-dir", path=True, absolute=True, output="dir", example="runs/flwr-demo")
    model: str = option(DEFAULT_MODEL, MODEL_HELP + " A new CTC head is added over the corpus characters when "
                        "needed.", flags=("--model", "-m"))
    rounds: int = option(100, "Federated rounds (paper: 100).", resumable=True)
    clients_per_round: int = option(20, "Clients sampled per round, uniformly without replacement from a seeded "
                                        "generator (paper: 20).")
    local_epochs: int | None = train_option("epochs", help="Local epochs per round.")
    batch_size: int | None = train_option("max_batch_size", help="Local batch size: utterances per batch at most.")
    lr_encoder: float | None = train_option("lr_encoder")
    lr_head: float | None = train_option("lr_head")
    recipe: str = option("paper", "Local recipe the unset local-training options take their values from: paper "
                         "(Adam, NewBob on the local dev loss) | tiny (AdamW + warm-up).", choices=tuple(RECIPES))
    local_steps: int = option(0, "Cap on local optimizer steps per round (0: all local epochs).")
    newbob: bool | None = train_option("newbob")
    freeze_feature_encoder: bool | None = train_option("freeze_feature_encoder")
    precision: str | None = train_option("precision")
    gradient_checkpointing: bool | None = train_option("gradient_checkpointing")
    gemm_feature_encoder: bool | None = train_option("gemm_feature_encoder")
    fast_pos_conv: bool | None = train_option("fast_pos_conv")
    fused_optimizer: bool | None = train_option("fused_optimizer")
    keep_freed_memory: bool | None = train_option("keep_freed_memory")
    weighting: str = option("", "Aggregation weights: num (samples, FedAvg) | loss (exp(-loss)) | wer "
                                "(exp(100 - WER%)) | uniform (1/n; the only one --dp accepts).", choices=WEIGHTINGS,
                            shown_default="num (uniform with --dp)")
    eval_every: int = option(1, "Server evaluation of the global model every N rounds (also at round 0 and the "
                                "last round).")
    eval_split: str = option("test", "Corpus split the server scores, whole (no length filter).",
                             choices=EVAL_SPLITS)
    eval_manifest: str = option("", "Manifest whose --eval-split the server scores (default: the clients manifest; "
                                    "required when the data stays on the SuperNodes).", path=True, absolute=True)
    gpus_per_client: float = option(1.0, "GPU share per client (0.5: two clients per GPU); without a GPU every "
                                         "client uses the CPU.")
    cpus_per_client: float = option(2.0, "CPU cores per client (Ray resource).")
    min_fit_clients: int = option(0, "A round with fewer successful clients stops the run (0: half the clients "
                                     "per round, at least 1).", shown_default="half the clients per round")
    min_nodes: int = option(0, "Deployment Engine, data on the SuperNodes: connected SuperNodes a round waits for "
                               "before it samples (0: as many as --min-fit-clients needs).", cli=False)
    round_timeout: float = option(0.0, "Seconds the server waits for a round's replies; clients still silent "
                                       "then have failed (0: no limit).", resumable=True)
    seed: int = option(0, "Seed of sampling, model initialisation, local batch order and masking.")
    keep_checkpoints: int = option(3, "Newest checkpoints kept (round 0, the best-WER one and footprint rounds "
                                      "always are).", resumable=True)
    resume: bool = option(False, "Continue the run in --run-dir from its LATEST checkpoint.", flags="--resume",
                          resumable=True)
    footprint_rounds: tuple[int, ...] = option((), "Comma-separated rounds whose client updates get footprints "
                                                   "(fedw2v footprint).", rounds=True, metavar="ROUNDS")
    indicator_manifest: str = option("", "Manifest of the footprint indicator set (default: the clients "
                                         "manifest).", flags="--indicator", path=True, absolute=True)
    indicator_split: str = option("dev", "Corpus split of the indicator utterances.")
    indicator_utterances: int = option(64, "Indicator utterances used (the first N by utt_id: a fixed set).")
    save_updates: bool = option(False, "Also store every footprint round's full client updates (safetensors).",
                                flags="--save-updates")
    dp: str = option("off", "Differential privacy of the client updates: off | central (each client clips its update "
                     "to --dp-clip; the server adds Gaussian noise to their average: protects the released model, not "
                     "the exchanged updates) | local (each client clips and noises its own update before sending it).",
                     choices=DP_MODES)
    dp_noise_multiplier: float = option(1.0, "Noise multiplier z: noise std z·C/n on the average of n sampled clients "
                                             "(central), z·C on each client's update (local).")
    dp_clip: float = option(1.0, "Clipping norm C: each client's update (trained minus global weights) is scaled to L2 "
                                 "norm at most C (inf: no clipping, with z = 0 only).")
    dp_delta: float = option(1e-5, "δ at which ε is reported and budgeted.")
    dp_max_epsilon: float = option(0.0, "Privacy budget: the run stops before a round would raise ε above it (0: no "
                                        "limit).", resumable=True)
    dp_accounting: str = option("none", "Sampling amplification the accountant assumes (central DP): none (as "
                                        "Flower's DP strategies; ε does not depend on the population) | sampled "
                                        "(uniform sampling of --clients-per-round of all clients without "
                                        "replacement, replace-one neighbours).", choices=DP_ACCOUNTING)
    dp_noise_seed: int = option(0, "Seed of the DP noise, for reproducible experiments only: whoever knows it can "
                                   "subtract the noise (0: drawn from the operating system).")
    corpus_root: str = option("", "Where the corpus is now, if it moved since `prepare` (default: the manifest's "
                                  "corpus root).", path=True, absolute=True)
    ray_address: str = option("", "Run on this existing Ray cluster (HOST:PORT of its head; auto: the cluster "
                                  "RAY_ADDRESS names, else the last `ray start --head` here). Default: a local Ray "
                                  "of this run's own; a RAY_ADDRESS in the environment is then ignored.",
                              resumable=True, metavar="ADDRESS")
    allow_outside_audio: bool = allow_outside_audio_option()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # facts recorded, not compared

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        # the local-training options left unset take the recipe's values (resolved here, once)
        base = recipe(self.recipe)
        for f, opt, _ in opts.options(type(self)):
            if opt.recipe and getattr(self, f.name) is None:
                object.__setattr__(self, f.name, getattr(base, opt.recipe))
        object.__setattr__(self, "footprint_rounds", tuple(self.footprint_rounds))
        if not self.weighting:  # unset: FedAvg's sample counts, or the equal weights DP needs
            object.__setattr__(self, "weighting", "num" if self.dp == "off" else "uniform")
        checks = [
            (opts.finite(self.lr_encoder, self.lr_head, self.gpus_per_client, self.cpus_per_client, self.round_timeout),
             "learning rates, GPU and CPU shares and the round timeout must be finite"),
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
            (self.min_nodes >= 0, "min nodes must be non-negative"),
            (bool(self.clients_manifest or self.eval_manifest),
             "with the data on the SuperNodes (no clients manifest) the server needs an eval manifest"),
            (bool(self.clients_manifest or self.indicator_manifest or not self.footprint_rounds),
             "footprint rounds with the data on the SuperNodes need an indicator manifest (the server's own)"),
        ]
        for ok, rule in checks + self._dp_checks():
            if not ok:
                raise ValueError(rule)

    def _dp_checks(self) -> list[tuple[bool, str]]:
        """The --dp-* rules (each broken one is a one-line usage error)."""
        z, clip, dp = self.dp_noise_multiplier, self.dp_clip, self.dp
        given = [name for name, value, default in (
            ("--dp-noise-multiplier", z, 1.0), ("--dp-clip", clip, 1.0), ("--dp-delta", self.dp_delta, 1e-5),
            ("--dp-max-epsilon", self.dp_max_epsilon, 0.0), ("--dp-accounting", self.dp_accounting, "none"),
            ("--dp-noise-seed", self.dp_noise_seed, 0)) if value != default]
        return [
            (dp in DP_MODES, f"--dp must be one of {', '.join(DP_MODES)}"),
            (dp != "off" or not given,
             f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only with --dp central or --dp local"),
            (opts.finite(z) and z >= 0, "--dp-noise-multiplier must be a finite number >= 0"),
            (clip > 0, "--dp-clip must be positive (inf: no clipping)"),
            (opts.finite(clip) or z == 0, "--dp-clip inf needs --dp-noise-multiplier 0 (the noise std z·C would be "
                                          "infinite)"),
            (opts.finite(self.dp_delta) and 0 < self.dp_delta < 1, "--dp-delta must lie strictly between 0 and 1"),
            (opts.finite(self.dp_max_epsilon) and self.dp_max_epsilon >= 0,
             "--dp-max-epsilon must be a finite number >= 0 (0: no limit)"),
            (self.dp_max_epsilon == 0 or z > 0, "--dp-max-epsilon needs --dp-noise-multiplier above 0 (with z = 0, ε "
                                                "is infinite)"),
            (self.dp_noise_seed >= 0, "--dp-noise-seed must be >= 0 (0: drawn from the operating system)"),
            (self.dp_accounting in DP_ACCOUNTING, f"--dp-accounting must be one of {', '.join(DP_ACCOUNTING)}"),
            (self.dp_accounting == "none" or dp == "central",
             "--dp-accounting sampled applies to --dp central only (under local DP the server sees who sent: "
             "sampling hides nothing)"),
            (self.dp_accounting != "sampled" or bool(self.clients_manifest),
             "--dp-accounting sampled needs the population sampled from (the clients manifest); a deployment "
             "server samples the SuperNodes that are connected and does not know it: use --dp-accounting none"),
            (dp == "off" or self.weighting == "uniform",
             f"--dp {dp} needs --weighting uniform, not {self.weighting}: Flower's privacy accountant assumes equal "
             "client weights (a larger weight lets one client move the average by more than C/n)"),
        ]

    @property
    def nodes_hold_data(self) -> bool:
        """Deployment Engine with the data on the SuperNodes: no clients manifest on the server."""
        return not self.clients_manifest

    @property
    def required_successes(self) -> int:
        return self.min_fit_clients or max(1, self.clients_per_round // 2)

    def train_config(self) -> Any:
        """The local-training config every client uses (its seed is set per round and client)."""
        values = {opt.recipe: getattr(self, f.name) for f, opt, _ in opts.options(type(self)) if opt.recipe}
        return recipe(self.recipe, **values, max_steps=self.local_steps or None)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["footprint_rounds"] = list(self.footprint_rounds)
        return data

    def to_run_config(self) -> dict[str, Any]:
        """Flat kebab-case keys with TOML-compatible values (Flower's run config)."""
        return opts.to_run_config(self)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], base_dir: str | None = None) -> SimulateConfig:
        """Inverse of `to_run_config` (``""`` for a local-training option: the recipe's value); unknown keys are
        an error naming them. Relative paths are taken from ``base_dir`` (the app directory under `flwr run`)."""
        return opts.from_run_config(cls, run_config, base_dir)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Keys whose value differs from a recorded config.json (the keys a resume may change excluded)."""
        mine = self.to_dict()
        keys = (set(mine) | set(recorded)) - set(opts.resumable(type(self))) - {"extra"}
        return sorted(k for k in keys if _norm(mine.get(k)) != _norm(recorded.get(k)))


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
    if not isinstance(data, dict) or "clients_manifest" not in data or "footprint_rounds" not in data:
        raise InputError(f"{path}: not the config of a federated run (`fedw2v simulate`)")
    try:
        return opts.from_recorded(SimulateConfig, data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: invalid run configuration ({exc})") from None
