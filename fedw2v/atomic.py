"""Writing files so that a reader never sees a half-written one: a temporary file in the same directory,
flushed to disk, then renamed over the target. On any error (or interruption) the temporary file is removed
and the target is left as it was. A writer killed outright (SIGKILL, power loss) cannot remove its temporary
``.NAME.PID@HOST-XXXXXXXX.tmp``; the next write to the same target does (`remove_stale_temporaries`).

What may be replaced is checked first (`check_target`): a regular file (or a directory, for directory outputs)
or nothing at all. A device, FIFO or socket, a path under a regular file, and an empty path are refused in one
line: the rename would otherwise replace whatever sits at the target (as root, even ``/dev/full``). Every
command that writes checks its output options up front with the same function, naming the option.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedw2v.errors import InputError

KINDS = ("file", "dir")


def check_target(path: str | os.PathLike, kind: str = "file", what: str = "") -> Path:
    """``path`` as a Path when fedw2v may write a ``kind`` ("file" or "dir") there; InputError otherwise.

    Allowed: nothing there yet (every existing ancestor a directory), an existing regular file (``kind``
    "file"), or an existing directory (``kind`` "dir"). Refused, in one line starting with ``what`` (e.g. "-o")
    and the path: an empty path; a device, FIFO or socket; a directory where a file goes and a file where a
    directory goes; a path whose parent is a file. Symbolic links are followed (a link is replaced, never
    written through, but a link to a device is refused all the same)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    label = f"{what} " if what else ""
    noun = "regular file" if kind == "file" else "directory"
    text = os.fspath(path)
    if not text or not text.strip():
        raise InputError(f"{label}{text!r}: an empty path", hint=f"give a {noun} name")
    if "\0" in text:
        raise InputError(f"{label}{text!r}: a path cannot contain a NUL character")
    target = Path(text)
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet, or a file in the way
        _check_parents(target, label)
        return target
    except OSError as exc:
        raise InputError(f"{label}{target}: cannot be checked ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        if kind == "dir":
            return target
        raise InputError(f"{label}{target}: is a directory", hint="give a file path")
    if stat.S_ISREG(mode):
        if kind == "file":
            return target
        raise InputError(f"{label}{target}: exists and is a file, not a directory", hint="give a directory path")
    raise InputError(
        f"{label}{target}: exists and is a {_special(mode)}, not a {noun}; refusing to replace it",
        hint=f"give the path of a {noun} or of nothing yet",
    )


def _check_parents(target: Path, label: str) -> None:
    """Every existing ancestor of ``target`` must be a directory (a file in the way is refused, naming it)."""
    for parent in target.absolute().parents:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue  # a file further up: the loop reaches it
        except OSError as exc:
            raise InputError(f"{label}{target}: cannot check {parent} ({exc.strerror or exc})") from None
        if not stat.S_ISDIR(mode):
            raise InputError(f"{label}{target}: {parent} is a {_special(mode)}, not a directory")
        return


def _special(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISREG, "file"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"  # pragma: no cover


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block has written it, fsync it and rename it to `path`.

    `check_target` runs first and again just before the rename: only a regular file is ever replaced."""
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        check_target(path)
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
    directory or the new one, never a mix; the old one is deleted afterwards. ``out`` must be a directory or
    nothing (`check_target`)."""
    import shutil

    new, out = Path(new), check_target(out, "dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)
