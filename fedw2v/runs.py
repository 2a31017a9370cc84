"""The run-directory layout (../shared/DESIGN.md): where checkpoints live and which one is the newest.

    runs/NAME/checkpoints/<name>/     a complete Hugging Face model directory
    runs/NAME/checkpoints/LATEST      the name of the newest complete checkpoint, replaced atomically
    runs/latest                       symlink (or a file naming the run) to the newest run

The runs root is ``./runs`` unless ``FEDW2V_RUNS`` names another directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedw2v.errors import InputError

RUNS_ENV = "FEDW2V_RUNS"
LATEST = "LATEST"
LATEST_RUN = "latest"


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ENV) or "runs")


def is_run_dir(path: Path) -> bool:
    return (path / "checkpoints").is_dir()


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoints/<content of checkpoints/LATEST>``; InputError when the run has no checkpoint yet."""
    ckpts = Path(run_dir) / "checkpoints"
    pointer = ckpts / LATEST
    if not pointer.is_file():
        raise InputError(f"{run_dir}: run has no complete checkpoint yet (no checkpoints/{LATEST})")
    try:
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise InputError(f"{pointer}: cannot read ({exc.strerror or exc})") from None
    target = ckpts / name
    if name in ("", ".", "..") or "/" in name or "\0" in name or not (target / "config.json").is_file():
        raise InputError(f"{pointer}: names checkpoint {name!r}, which is not a model directory")
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file in the same directory, fsync, rename: readers see the old or the new content."""
    from fedw2v.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text)


def publish_checkpoint(run_dir: str | os.PathLike, name: str) -> Path:
    """Make ``checkpoints/name`` (already complete on disk) the run's LATEST."""
    ckpts = Path(run_dir) / "checkpoints"
    if not (ckpts / name / "config.json").is_file():
        raise InputError(f"{ckpts / name}: not a complete model directory")
    write_text_atomic(ckpts / LATEST, name + "\n")
    return ckpts / name


def mark_latest_run(run_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Point ``root/latest`` at ``run_dir`` when the run lies directly in the runs root; True if it did."""
    root = Path(root) if root is not None else runs_root()
    run = Path(run_dir)
    try:
        if run.resolve().parent != root.resolve():
            return False
    except OSError:
        return False
    link = root / LATEST_RUN
    tmp = root / f".{LATEST_RUN}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # no symlinks here (or `latest` is a directory): a file naming the run
        tmp.unlink(missing_ok=True)
        if link.is_dir() and not link.is_symlink():
            return False
        write_text_atomic(link, run.name + "\n")
    return True


def newest_run(root: str | os.PathLike | None = None) -> Path | None:
    """The run ``root/latest`` points at, else the run whose LATEST checkpoint was written last; None if none."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return None
    link = root / LATEST_RUN
    if link.is_symlink() or link.is_dir():
        if is_run_dir(link) and (link / "checkpoints" / LATEST).is_file():
            return link.resolve()
    elif link.is_file():
        try:
            name = link.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = ""
        target = root / name
        usable = name and "/" not in name and "\0" not in name
        if usable and is_run_dir(target) and (target / "checkpoints" / LATEST).is_file():
            return target
    candidates = []
    for d in root.iterdir():
        if d.name == LATEST_RUN or d.name.startswith(".") or not d.is_dir():
            continue
        pointer = d / "checkpoints" / LATEST
        if pointer.is_file():
            candidates.append((pointer.stat().st_mtime, d.name, d))
    return max(candidates)[2] if candidates else None


# ---------------------------------------------------------------- the federated run directory
#
#   runs/NAME/config.json            the resolved configuration (every default written out)
#   runs/NAME/metrics.jsonl          one JSON object per event, each round's events exactly once
#   runs/NAME/checkpoints/round-NNNN/  HF model directory + state.json (round, sampler state, history)
#   runs/NAME/plots/wer.png          WER per round

CONFIG = "config.json"
METRICS = "metrics.jsonl"
STATE = "state.json"
CHECKPOINT_PREFIX = "round-"  # simulate: checkpoints/round-NNNN
EPOCH_PREFIX = "epoch-"  # train: checkpoints/epoch-NNNN


def checkpoint_name(round_: int, prefix: str = CHECKPOINT_PREFIX) -> str:
    return f"{prefix}{round_:04d}"


def write_json_atomic(path: Path, obj: object) -> None:
    import json

    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: is JSON but not an object ({type(data).__name__})")
    return data


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every event of ``metrics.jsonl`` (a torn last line, from a crash mid-write, is ignored)."""
    import json

    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):  # (anything else is not an event of fedw2v's)
            events.append(event)
    return events


class MetricsLog:
    """Appends events to ``metrics.jsonl``, one line each, flushed and synced (a crash loses at most the line
    being written). `truncate_after(r)` drops the events of rounds after r, so a resumed round is logged once."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: dict) -> None:
        import json

        line = json.dumps(event, sort_keys=True, allow_nan=False, default=_json_default)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_after(self, round_: int, key: str = "round", drop: tuple[str, ...] = ()) -> int:
        """Keep the events of rounds (or another ``key``: epochs) <= round_ and events without one, except the
        ``drop`` event kinds; returns how many were dropped."""
        import json

        events = read_metrics(self.path.parent)
        kept = [e for e in events if e.get(key, -1) <= round_ and e.get("event") not in drop]
        write_text_atomic(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in kept))
        return len(events) - len(kept)


def json_safe(value: object) -> object:
    """``value`` with every non-finite float replaced by None (metrics.jsonl is strict JSON)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json_default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def checkpoint_rounds(run_dir: str | os.PathLike, prefix: str = CHECKPOINT_PREFIX) -> list[int]:
    """Rounds (epochs, with ``prefix=EPOCH_PREFIX``) that have a complete checkpoint directory, ascending."""
    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        return []
    rounds = []
    for d in ckpts.iterdir():
        if d.name.startswith(prefix) and (d / "config.json").is_file() and (d / STATE).is_file():
            try:
                rounds.append(int(d.name[len(prefix):]))
            except ValueError:
                continue
    return sorted(rounds)


def prune_checkpoints(
    run_dir: str | os.PathLike, keep: int, protect: set[int], prefix: str = CHECKPOINT_PREFIX
) -> list[int]:
    """Delete all but the newest `keep` checkpoints and the `protect`ed rounds (the best, the LATEST, the
    footprint rounds); leftovers of interrupted writes (``.round-*.tmp``) go too. Returns the deleted rounds."""
    import shutil

    ckpts = Path(run_dir) / "checkpoints"
    rounds = checkpoint_rounds(run_dir, prefix)
    keep_set = set(rounds[-keep:]) | set(protect)
    deleted = []
    for r in rounds:
        if r not in keep_set:
            shutil.rmtree(ckpts / checkpoint_name(r, prefix), ignore_errors=True)
            deleted.append(r)
    for leftover in ckpts.glob(f".{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return deleted
