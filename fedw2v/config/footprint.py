"""`fedw2v footprint`'s options: which rounds and indicator set the attack uses, and how it enrolls (unset: the
run's own settings, from its config.json)."""

from __future__ import annotations

from dataclasses import dataclass

from fedw2v.config.options import option
from fedw2v.device import DEVICE_HELP, DEVICES


@dataclass(frozen=True)
class FootprintConfig:
    rounds: tuple[int, ...] = option((), "Comma-separated rounds to analyse (default: the run's footprint rounds).",
                                     rounds=True, metavar="ROUNDS")
    indicator_manifest: str = option("", "Manifest of the indicator set (default: the run's).", flags="--indicator",
                                     path=True, absolute=True)
    indicator_split: str = option("", "Corpus split of the indicator utterances (default: the run's, dev).")
    indicator_utterances: int | None = option(None, "Indicator utterances used (default: the run's, 64).")
    enroll_epochs: int | None = option(None, "Epochs of fine-tuning on each holdout (default: the run's local "
                                             "epochs).")
    bootstrap: int = option(1000, "Bootstrap resamples for the confidence intervals.")
    confidence: float = 0.95  # level of the confidence intervals
    seed: int = 0  # bootstrap seed
    device: str = option("auto", DEVICE_HELP, choices=DEVICES)
    reuse: bool = True  # reuse stored enrollment footprints made with the same settings

    def __post_init__(self) -> None:
        object.__setattr__(self, "rounds", tuple(self.rounds))
        checks = [
            (all(r >= 1 for r in self.rounds), "rounds must be at least 1"),
            (len(set(self.rounds)) == len(self.rounds), "rounds must not repeat"),
            (self.indicator_utterances is None or self.indicator_utterances >= 1,
             "--indicator-utterances must be at least 1"),
            (self.enroll_epochs is None or self.enroll_epochs >= 1, "--enroll-epochs must be at least 1"),
            (self.bootstrap >= 1, "bootstrap resamples must be at least 1"),
            (0 < self.confidence < 1, "confidence must lie in (0, 1)"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(rule)
