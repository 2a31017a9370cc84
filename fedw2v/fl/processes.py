"""The processes a run started and the Ctrl-C that ends it: none left behind, no interrupt lost (Linux /proc).

`Spawned` notes every descendant of this process twice a second (Ray's workers outlive ``ray.shutdown()`` by a
moment, and Flower may shut Ray down itself, orphaning them). On the way out it waits `grace` seconds for them
to exit and SIGKILLs the rest; `kill_now()` kills them at once (Ctrl-C, or a Ray that died). Processes handed to
`freeze()` are stopped (SIGSTOP) instead and left to end with this process: Ray starts its GCS and raylet so that
the kernel kills them when their parent exits, and killing the raylet earlier makes Ray's core worker end this
process itself ("The connection to the plasma store is failed. Terminate the process.", exit status 1) before
the command has said why it stops. A pid is only touched while its start time matches the one recorded, so a new
process that reused the number is never hit.

`Interrupts` makes sure a Ctrl-C is not lost: Python swallows an exception raised in an at-fork callback (it
prints "Exception ignored in: <function _releaseLock …> KeyboardInterrupt"), and that is where a Ctrl-C lands
while Ray forks its processes, so the command went on as if nothing happened. A noted Ctrl-C is delivered
again every half second until the main thread has taken it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any


class Spawned:
    """Context manager: the descendants of this process, reaped on exit."""

    def __init__(self, grace: float = 15.0):
        self.grace = grace  # seconds stragglers get to exit on their own before SIGKILL
        self.seen: dict[int, str] = {}
        self.frozen: set[int] = set()  # stopped, left to end with this process (see the module docstring)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="fedw2v-process-watch", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.seen.update(descendants(os.getpid()))

    def __enter__(self) -> Spawned:
        self._watcher.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._watcher.join()
        self.seen.update(descendants(os.getpid()))
        reap(self._unfrozen(), self.grace)

    def _unfrozen(self) -> dict[int, str]:
        return {pid: started for pid, started in self.seen.items() if pid not in self.frozen}

    def freeze(self, pids: list[int]) -> None:
        """SIGSTOP those of `pids` that are descendants of this process; they are never reaped, and end with it
        (only for processes started to die with their parent, as Ray's own are on Linux)."""
        self.seen.update(descendants(os.getpid()))
        for pid in pids:
            if pid in self.seen and _running(pid, self.seen[pid]):
                try:
                    os.kill(pid, signal.SIGSTOP)
                except OSError:
                    continue
                self.frozen.add(pid)

    def kill_now(self) -> None:
        """SIGKILL every descendant now, but the frozen ones."""
        self.seen.update(descendants(os.getpid()))
        reap(self._unfrozen(), 0.0)


class Interrupts:
    """Context manager (main thread only; elsewhere it does nothing): Ctrl-C raises KeyboardInterrupt as usual and
    is noted; a noted one that got lost is raised again until `taken()` is called. Inside `taken()` and after it,
    a Ctrl-C only is noted (cleanup is not cut short); on exit the previous handler is back."""

    def __init__(self) -> None:
        self.noted = threading.Event()
        self._taken = threading.Event()
        self._lock = threading.Lock()
        self._previous: Any = None
        self._active = threading.current_thread() is threading.main_thread()

    def _raise(self, signum: int, frame: Any) -> None:
        self.noted.set()
        if not _in_fork_hook(frame):  # there it would be swallowed, with a traceback: redelivered instead
            raise KeyboardInterrupt

    def _note(self, signum: int, frame: Any) -> None:
        self.noted.set()

    def _redeliver(self) -> None:
        while not self._taken.is_set():
            if self.noted.wait(0.5) and not self._taken.wait(0.5):
                with self._lock:
                    if not self._taken.is_set():  # a real signal, so a blocking call in the main thread wakes
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def __enter__(self) -> Interrupts:
        if self._active:
            self._previous = signal.signal(signal.SIGINT, self._raise)
            threading.Thread(target=self._redeliver, name="fedw2v-interrupts", daemon=True).start()
        return self

    def taken(self) -> None:
        """The main thread is ending the run: from now on a Ctrl-C (also one already on its way) is only noted."""
        if self._active:
            signal.signal(signal.SIGINT, self._note)
        with self._lock:
            self._taken.set()

    def __exit__(self, *exc: Any) -> None:
        self.taken()
        if self._active:
            signal.signal(signal.SIGINT, self._previous)


def _in_fork_hook(frame: Any) -> bool:
    """Whether `frame` is one of logging's at-fork callbacks (run around every fork, e.g. Ray's subprocesses)."""
    return frame is not None and frame.f_globals.get("__name__") == "logging" and frame.f_code.co_name in (
        "_acquireLock", "_releaseLock", "_after_at_fork_child_reinit_locks")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _running(pid: int, started: str) -> bool:
    """Whether `pid` is the process that started at `started` and has not exited (a zombie has)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z" and len(fields) > 19 and fields[19] == started


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process below `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[tuple[int, str]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and len(fields) > 19:
                children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def reap(processes: dict[int, str], grace: float = 15.0) -> None:
    """Wait for the given processes to exit; SIGKILL those still running after `grace` seconds. A pid is only
    touched while its start time matches (never a new process that reused the number)."""

    def alive(pid: int) -> bool:
        return _running(pid, processes[pid])

    deadline = time.monotonic() + grace
    pending = {p for p in processes if alive(p)}
    while pending and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = {p for p in pending if alive(p)}
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pending) and time.monotonic() < deadline:
        time.sleep(0.05)
