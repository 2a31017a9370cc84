"""The run directory of `fedw2v train`: a checkpoint after every epoch, and ``--resume`` from the newest one.

    runs/NAME/config.json                     what was asked (compared on --resume)
    runs/NAME/metrics.jsonl                   one event per epoch, then train_end
    runs/NAME/checkpoints/epoch-NNNN/         model + state.json + train_state.{json,safetensors}
    runs/NAME/checkpoints/LATEST              the newest complete epoch checkpoint

An epoch's event is logged before its checkpoint becomes LATEST; a resumed run drops the events of epochs
after LATEST, so each epoch is logged once and a crash at any moment loses at most the epoch in progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedw2v import runs
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
