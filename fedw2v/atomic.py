"""Writing files so that a reader never sees a half-written one: a temporary file in the same directory,
flushed to disk, then renamed over the target. On any error (or interruption) the temporary file is removed
and the target is left as it was. A writer killed outright (SIGKILL, power loss) cannot remove its temporary
``.NAME.PID@HOST-XXXXXXXX.tmp``; the next write to the same target does (`remove_stale_temporaries`)."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block has written it, fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_HOST = socket.gethostname().replace("/", "_")
LEGACY_STALE_SECONDS = 3600.0  # a temporary without its writer's pid (older fedw2v) is stale after this long


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that killed writers of `path` left beside it: ``.NAME.PID@HOST-*.tmp`` whose process
    no longer runs on this host (another host's are left alone: a shared run directory), and pid-less
    ``.NAME.*.tmp`` of older versions not modified for an hour. A running writer's temporary is never touched.
    Returns what was deleted."""
    path = Path(path)
    prefix, removed = f".{path.name}.", []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")) or not entry.is_file(follow_symlinks=False):
            continue
        token = entry.name[len(prefix):-len(".tmp")]
        pid, at, host = token.rpartition("-")[0].partition("@")
        if at and pid.isdigit():
            stale = host == _HOST and not _running(int(pid))
        elif any(c in token for c in ".@-"):  # another target's temporary (NAME.x), or not ours at all
            continue
        else:
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_STALE_SECONDS
            except OSError:
                continue
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def replace_directory(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the complete directory ``new`` (on the same file system) in place of ``out``: a reader sees the old
    directory or the new one, never a mix; the old one is deleted afterwards."""
    import shutil

    new, out = Path(new), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
