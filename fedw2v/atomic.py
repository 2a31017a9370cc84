"""Writing files so that a reader never sees a half-written one: a temporary file in the same directory,
flushed to disk, then renamed over the target. On any error (or interruption) the temporary file is removed
and the target is left as it was."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block has written it, fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
