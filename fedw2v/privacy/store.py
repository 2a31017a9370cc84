"""Storage of footprints and saved client updates under the run directory (safetensors, written atomically:
temporary file, fsync, rename)::

    footprints/round-NNNN/{test,enroll}.safetensors   {"client-<id>": (layers, 2*hidden) float32}, meta in the header
    footprints/round-NNNN/{test,enroll}.json          the same meta, readable
    updates/round-NNNN/client-<id>.safetensors        a client's full uploaded weights (``simulate --save-updates``)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

FORMAT = 1  # version of the stored footprint files
FOOTPRINTS = "footprints"
UPDATES = "updates"
KINDS = ("test", "enroll")
META_KEY = "fedw2v"
CLIENT_PREFIX = "client-"


def footprint_path(run_dir: str | os.PathLike, round_: int, kind: str) -> Path:
    from fedw2v.runs import checkpoint_name

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return Path(run_dir) / FOOTPRINTS / checkpoint_name(round_) / f"{kind}.safetensors"


def update_path(run_dir: str | os.PathLike, round_: int, client_id: int) -> Path:
    from fedw2v.runs import checkpoint_name

    return Path(run_dir) / UPDATES / checkpoint_name(round_) / f"{CLIENT_PREFIX}{int(client_id)}.safetensors"


def _save_safetensors_atomic(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    from fedw2v.atomic import atomic_file

    with atomic_file(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def _comparable(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("clients", "written")}


def _stamped(meta: Mapping[str, Any], round_: int, kind: str) -> dict[str, Any]:
    return {**dict(meta), "kind": kind, "round": int(round_)}


def read_matching(
    run_dir: str | os.PathLike, round_: int, kind: str, meta: Mapping[str, Any]
) -> dict[int, np.ndarray]:
    """The footprints stored for one round if they were made with ``meta`` (the stored meta equals it, apart from
    the clients and the time written); {} when there are none or they were made otherwise."""
    if not footprint_path(run_dir, round_, kind).is_file():
        return {}
    old, old_meta = read_footprints(run_dir, round_, kind)
    return old if _comparable(old_meta) == _comparable(json.loads(json.dumps(_stamped(meta, round_, kind)))) else {}


def write_footprints(
    run_dir: str | os.PathLike, round_: int, kind: str, footprints: Mapping[int, np.ndarray], meta: Mapping[str, Any],
    *, merge: bool = True,
) -> Path:
    """Store footprints of one round: ``footprints/round-NNNN/{kind}.safetensors`` (keys ``client-<id>``,
    float32) with ``meta`` (e.g. `ReferenceStates.meta`) in its header and, readable, in ``{kind}.json``.

    With ``merge`` (default), footprints already stored for other clients are kept when the stored meta equals
    ``meta`` (so one call per client, or a resumed round, adds to the file); otherwise the file is replaced.
    Both files are written atomically (temporary file, fsync, rename); the safetensors header is authoritative."""
    import numpy as np

    from fedw2v import runs

    path = footprint_path(run_dir, round_, kind)
    tensors = {f"{CLIENT_PREFIX}{int(c)}": np.asarray(v, dtype=np.float32) for c, v in footprints.items()}
    if merge:
        old = read_matching(run_dir, round_, kind, meta)
        tensors = {**{f"{CLIENT_PREFIX}{c}": v for c, v in old.items()}, **tensors}
    meta = _stamped(meta, round_, kind)
    meta["clients"] = sorted(int(k[len(CLIENT_PREFIX):]) for k in tensors)
    meta["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _save_safetensors_atomic(path, tensors, {META_KEY: json.dumps(meta, sort_keys=True)})
    runs.write_json_atomic(path.with_suffix(".json"), meta)
    return path


def read_footprints(run_dir: str | os.PathLike, round_: int, kind: str) -> tuple[dict[int, np.ndarray], dict]:
    """({client id: (layers, 2*hidden) float32}, meta) of one round; InputError when there is no such file."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = footprint_path(run_dir, round_, kind)
    if not path.is_file():
        raise InputError(f"{path}: no {kind} footprints stored for round {round_}")
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
        arrays = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- a damaged file: name it
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InputError(f"{path}: cannot read footprints ({reason})") from None
    out = {}
    for key, value in arrays.items():
        if key.startswith(CLIENT_PREFIX):
            out[int(key[len(CLIENT_PREFIX):])] = value
    return dict(sorted(out.items())), meta


def write_update(run_dir: str | os.PathLike, round_: int, client_id: int, arrays: Mapping[str, Any]) -> Path:
    """A client's uploaded weights of one round: ``updates/round-NNNN/client-<id>.safetensors`` (atomic)."""
    import numpy as np

    tensors = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in arrays.items()}
    meta = {META_KEY: json.dumps({"format": FORMAT, "round": int(round_), "client": int(client_id)})}
    return _save_safetensors_atomic(update_path(run_dir, round_, client_id), tensors, meta)


def read_update(run_dir: str | os.PathLike, round_: int, client_id: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = update_path(run_dir, round_, client_id)
    if not path.is_file():
        raise InputError(f"{path}: no saved update")
    return load_file(str(path))


def saved_updates(run_dir: str | os.PathLike, round_: int) -> list[int]:
    """Client ids with a saved update in round ``round_``."""
    folder = update_path(run_dir, round_, 0).parent
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob(f"{CLIENT_PREFIX}*.safetensors"):
        try:
            out.append(int(p.name[len(CLIENT_PREFIX): -len(".safetensors")]))
        except ValueError:
            continue
    return sorted(out)


__all__ = [
    "footprint_path", "read_footprints", "read_matching", "read_update", "saved_updates", "update_path",
    "write_footprints", "write_update",
]
