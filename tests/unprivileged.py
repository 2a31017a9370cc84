"""Run the `fedw2v` command as a user without CAP_DAC_OVERRIDE, so that permission bits apply (root reads a
mode-000 file anyway): as root through `setpriv --reuid=nobody`, otherwise as the current user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """A fresh directory that the unprivileged user can use (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fedw2v-unpriv-"))
    path.chmod(0o777)
    return path


def open_up(path: Path) -> None:
    """Make ``path`` (a file or a tree) readable, and directories enterable, by everyone."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod(p.stat().st_mode | 0o755 if p.is_dir() else p.stat().st_mode | 0o644)


def run_fedw2v(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's permissions")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HOME": str(cwd),
           "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "fedw2v.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
