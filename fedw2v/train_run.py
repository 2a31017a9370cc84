"""The `fedw2v train` stage and its run directory: a checkpoint after every epoch, ``--resume`` from the newest one.

    runs/NAME/config.json                     what was asked (compared on --resume)
    runs/NAME/metrics.jsonl                   one event per epoch, then train_end
    runs/NAME/checkpoints/epoch-NNNN/         model + state.json + train_state.{json,safetensors}
    runs/NAME/checkpoints/LATEST              the newest complete epoch checkpoint

An epoch's event is logged before its checkpoint becomes LATEST; a resumed run drops the events of epochs
after LATEST, so each epoch is logged once and a crash at any moment loses at most the epoch in progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedw2v import runs
from fedw2v.config.train import TrainRunConfig
from fedw2v.errors import InputError
from fedw2v.train_state import StateMissing, TrainState

# config.json keys (of its "train" part) that may change on --resume: how long to train, and how audio is read.
RESUMABLE_TRAIN_KEYS = ("epochs", "max_steps", "num_workers")
# top-level config.json keys recorded as facts, not compared
FACT_KEYS = ("started", "model")  # "model": the resolved source of --model (model_spec is compared)


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Configuration keys whose values differ between config.json and this invocation (``train.lr_head``…)."""
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        if key in FACT_KEYS:
            continue
        a, b = recorded.get(key), wanted.get(key)
        if key == "train" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"train.{k}" for k in sorted(set(a) | set(b))
                    if k not in RESUMABLE_TRAIN_KEYS and a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def check_new(out: Path) -> None:
    """A new training run must not write into a run that already has checkpoints."""
    if (out / "checkpoints" / runs.LATEST).is_file():
        raise InputError(f"--out {out}: already holds a training run (checkpoints/{runs.LATEST})",
                         hint="add --resume to continue it, or choose another --out")  # fmt: skip


def resume_point(out: Path, wanted: dict[str, Any]) -> tuple[Path, TrainState, dict[str, Any]]:
    """The newest epoch checkpoint of ``out``, its training state and the run's config.json, after checking that
    this invocation asks for the same training (`differences`); InputError naming what is missing or different."""
    recorded_path = out / runs.CONFIG
    if not (out / "checkpoints" / runs.LATEST).is_file() or not recorded_path.is_file():
        raise InputError(f"--out {out}: nothing to resume (no config.json or checkpoints/{runs.LATEST})",
                         hint="start it without --resume")  # fmt: skip
    recorded = runs.read_json(recorded_path)
    if recorded.get("command") != "train":
        raise InputError(f"--out {out}: not a `fedw2v train` run ({recorded_path})")
    diff = differences(recorded, wanted)
    if diff:
        raise InputError(f"--out {out}: cannot resume with a different configuration: {', '.join(diff)} differ "
                         f"from {recorded_path}", hint="repeat the options of the first run (--epochs may change)")
    ckpt = runs.latest_checkpoint(out)
    try:
        return ckpt, TrainState.load(ckpt), recorded
    except StateMissing as exc:
        raise InputError(str(exc), hint="this checkpoint was written without a training state; start a new run "
                                        "with --model pointing at it") from None


def save_epoch(model: Any, processor: Any, out: Path, state: TrainState, model_source: str, keep: int) -> Path:
    """Write ``checkpoints/epoch-NNNN`` (model, state.json, training state) atomically, make it LATEST, and
    delete all but the newest ``keep`` epoch checkpoints."""
    from fedw2v.model import save_model

    name = runs.checkpoint_name(state.epochs_done, runs.EPOCH_PREFIX)
    info = {"epoch": state.epochs_done, "metrics": state.metrics, "model_source": model_source}
    ckpt = save_model(model, processor, out / "checkpoints" / name, extra_json={runs.STATE: info},
                      extra_files=state.save)  # fmt: skip
    runs.publish_checkpoint(out, name)
    runs.prune_checkpoints(out, keep, {state.epochs_done}, prefix=runs.EPOCH_PREFIX)
    return ckpt


@dataclass
class TrainOutcome:
    """What `run` did: the final metrics, the newest checkpoint and the model's resolved source."""

    metrics: Any  # fedw2v.train.TrainMetrics
    checkpoint: Path
    model_name: str


def run(config: TrainRunConfig, *, on_model: Callable[[Any, str], None] | None = None,
        say: Callable[[str], None] | None = None, progress: Callable[[Any], None] | None = None) -> TrainOutcome:
    """`fedw2v train`: a new run in ``config.out`` (or ``--resume`` of the one there), a checkpoint after every
    epoch, ``train_end`` logged. ``on_model(loaded, note)`` is called once the model is loaded, ``say`` with
    one-line notes, ``progress`` after every batch (`fedw2v.train.TrainProgress`)."""
    from fedw2v import manifest
    from fedw2v.batching import utterances_from_manifest

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    source = manifest.read(config.manifest, allow_outside_audio=config.allow_outside_audio)
    train_utts = utterances_from_manifest(source, split="train")
    if not train_utts:
        raise InputError(f"{config.manifest}: no train utterances to train on")
    dev_utts = utterances_from_manifest(source, split="dev") if config.train.newbob else []
    wanted = {
        "command": "train", "manifest": str(Path(config.manifest).resolve()), "model_spec": config.model,
        "recipe": config.recipe, "train": config.train.to_dict(), "train_utterances": len(train_utts),
        "dev_utterances": len(dev_utts),
    }  # fmt: skip
    loaded, state, model_name, log = _open(config, wanted, [u.text for u in train_utts], say or (lambda m: None))
    if on_model:
        on_model(loaded, f"; recipe {config.recipe}")
    metrics = _train(config, loaded, model_name, log, train_utts, dev_utts, state, progress)
    if metrics.steps == 0:
        raise InputError(
            f"{config.manifest}: no training step was taken ({metrics.samples} utterances within "
            f"{config.train.min_seconds}-{config.train.max_seconds} s, {metrics.skipped_batches} skipped batches); "
            "nothing saved"
        )
    ckpt = runs.latest_checkpoint(out)
    runs.mark_latest_run(out)
    log.append(runs.json_safe({"event": "train_end", "checkpoint": ckpt.name, **metrics.to_dict()}))
    return TrainOutcome(metrics, ckpt, model_name)


def _open(config: TrainRunConfig, wanted: dict[str, Any], texts: list[str], say: Callable[[str], None]) -> tuple:
    """The model, the training state to resume (or None), the model's name and the metrics log of the run."""
    import json
    import time

    from fedw2v.model import load_model

    out = Path(config.out)
    if config.resume:
        ckpt, state, recorded = resume_point(out, wanted)
        loaded = load_model(str(ckpt), texts, allow_pickle=config.allow_pickle, seed=config.train.seed)
        log = runs.MetricsLog(out)
        dropped = log.truncate_after(state.epochs_done, key="epoch", drop=("train_end",))
        say(f"resuming {out} after epoch {state.epochs_done} ({ckpt.name}; {state.metrics['steps']} steps; "
            f"{dropped} later events dropped from metrics.jsonl)")
        return loaded, state, recorded.get("model", str(loaded.source)), log
    check_new(out)
    loaded = load_model(config.model, texts, allow_pickle=config.allow_pickle, seed=config.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = runs.MetricsLog(out)
    run_config = {**wanted, "model": str(loaded.source), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    runs.write_text_atomic(out / runs.CONFIG, json.dumps(run_config, indent=2) + "\n")
    if log.path.is_file():  # a run that crashed before its first checkpoint: its events describe nothing kept
        log.truncate_after(0, key="epoch", drop=("train_end",))
    return loaded, None, str(loaded.source), log


def _train(config: TrainRunConfig, loaded: Any, model_name: str, log: Any, train_utts: list, dev_utts: list,
           state: TrainState | None, progress: Callable[[Any], None] | None) -> Any:
    """Train, logging every epoch and checkpointing its state."""
    from fedw2v.train import local_train

    out = Path(config.out)

    def on_epoch(epoch: int, m: Any) -> None:
        log.append(runs.json_safe({
            "event": "epoch", "epoch": epoch + 1, "loss": m.epoch_loss[-1], "dev_loss": m.dev_loss[-1],
            "steps": m.steps, "skipped_batches": m.skipped_batches, "lr_encoder": m.lr_encoder, "lr_head": m.lr_head,
            "seconds": m.seconds}))  # fmt: skip

    def on_state(st: TrainState) -> None:
        if st.metrics["steps"]:  # an epoch without any step (all batches skipped) leaves nothing to save
            save_epoch(loaded.model, loaded.processor, out, st, model_name, config.keep_checkpoints)

    return local_train(loaded.model, loaded.processor, train_utts, config.train, dev=dev_utts or None,
                       progress=progress, on_epoch=on_epoch, on_state=on_state, resume=state)
