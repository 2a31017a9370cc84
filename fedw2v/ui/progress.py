"""The live display of a federated run: round k/N, clients finished in this round, last WER, ε (with --dp),
elapsed, ETA.

`RunDisplay` receives the server's events (the same dicts that go to metrics.jsonl, plus progress events).
On a terminal it redraws one status line (rich Live); elsewhere it prints one line per round.
"""

from __future__ import annotations

import threading
import time
from typing import Any


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def epsilon_text(epsilon: float | None) -> str:
    """ε as shown: None (how metrics.jsonl writes an infinite ε, z = 0) is ∞."""
    return "∞" if epsilon is None else f"{epsilon:.3g}"


class RunDisplay:
    def __init__(self, rounds: int, console: Any, live: bool | None = None):
        self.rounds = rounds
        self.console = console
        self.live_enabled = console.is_terminal if live is None else live
        self.t0 = time.monotonic()
        self.round = 0
        self.done = 0
        self.of = 0
        self.failed = 0
        self.phase = "starting"
        self.last_wer: tuple[int, float] | None = None
        self.privacy: str = ""  # "ε 3.21 (δ 1e-05)" once a DP round was released
        self.round_seconds: list[float] = []
        self._lock = threading.Lock()
        self._live: Any = None

    def __enter__(self) -> RunDisplay:
        if self.live_enabled:
            from rich.live import Live

            self._live = Live(self.status(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.status())
            self._live.__exit__(*exc)

    def eta(self) -> float | None:
        if not self.round_seconds:
            return None
        per_round = sum(self.round_seconds[-5:]) / len(self.round_seconds[-5:])
        in_progress = self.round > 0 and self.phase not in ("done", "checkpointed")  # this round still counts
        remaining = self.rounds - self.round + (1 if in_progress else 0)
        return max(0.0, per_round * max(0, remaining))

    def status(self) -> str:
        wer = f"{100 * self.last_wer[1]:.2f}% (round {self.last_wer[0]})" if self.last_wer else "-"
        failed = f", {self.failed} failed" if self.failed else ""
        eps = f"{self.privacy} · " if self.privacy else ""
        return (f"round {self.round}/{self.rounds} · {self.phase} · clients {self.done}/{self.of} finished{failed} · "
                f"last WER {wer} · {eps}elapsed {_clock(time.monotonic() - self.t0)} · ETA {_clock(self.eta())}")

    def __call__(self, event: dict) -> None:
        with self._lock:
            kind = event.get("event")
            if kind == "warning":
                from fedw2v.ui.console import err_console

                err_console.print(f"warning: {event['message']}", markup=False, soft_wrap=True)
            elif kind == "resume":
                self.round = event["from_round"]
                self.console.print(f"resuming after round {self.round}")
            elif kind == "round_start":
                self.round, self.done, self.failed = event["round"], 0, 0
                self.of = len(event.get("clients", []))
                self.phase = "training" if self.round else "evaluating the initial model"
            elif kind == "client_done":
                self.done = event["done"]
                self.failed += 1 if event.get("error") else 0
                if self.done == self.of:
                    self.phase = "aggregating"
            elif kind == "evaluating":
                self.phase = f"evaluating {event['done']}/{event['of']}"
            elif kind == "privacy":
                self.privacy = f"ε {epsilon_text(event.get('epsilon'))} (δ {event['delta']:g})"
            elif kind == "evaluate":
                self.last_wer = (event["round"], event["wer"])
            elif kind == "round_end":
                if event["round"] > 0:
                    self.round_seconds.append(event["seconds"])
                self.phase = "done" if event["round"] == self.rounds else "checkpointed"
                if self._live is None:
                    self.console.print(self.status())
            if self._live is not None:
                self._live.update(self.status())
