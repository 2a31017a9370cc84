"""The privacy-utility sweep's summary (`examples/privacy_sweep.sh`): for each run, its defence (--dp mode, z, C),
final ε, final test WER/CER and the lowest pooled footprint EER with its interval; as a table and as a plot of EER
against CER labelled with ε.

    python -m fedw2v.privacy.sweep RUN_DIR... [--plot sweep.png] [--markdown]

Each RUN_DIR is a `fedw2v simulate` run with the report of `fedw2v footprint RUN_DIR --json` saved as
``RUN_DIR/footprint.json``. Reads only; prints the table (Markdown with --markdown) and writes the plot.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedw2v.errors import InputError

FOOTPRINT_REPORT = "footprint.json"


@dataclass(frozen=True)
class SweepRow:
    run: str
    mode: str  # off | central | local
    z: float | None
    clip: float | None
    epsilon: float | None  # None: no DP, or infinite (z = 0)
    delta: float | None
    rounds: int
    wer: float  # final test WER, %
    cer: float
    eer: float  # lowest pooled EER over layers, %
    eer_ci: tuple[float, float]
    eer_layer: str

    @property
    def epsilon_text(self) -> str:
        if self.mode == "off":
            return "-"
        return "∞" if self.epsilon is None else f"{self.epsilon:.3g}"

    def cells(self) -> list[str]:
        z = "-" if self.z is None else f"{self.z:g}"
        clip = "-" if self.clip is None else f"{self.clip:g}"
        lo, hi = self.eer_ci
        return [self.mode, z, clip, self.epsilon_text, f"{self.wer:.2f}", f"{self.cer:.2f}",
                f"{self.eer:.1f} ({self.eer_layer})", f"{lo:.1f}-{hi:.1f}"]


HEADER = ["--dp", "z", "C", "final ε", "test WER %", "test CER %", "lowest pooled EER % (layer)", "95% CI"]


def summarise(run_dir: str | Path) -> SweepRow:
    """One run's row (InputError naming what is missing)."""
    from fedw2v import runs

    run = Path(run_dir)
    config = runs.read_json(run / runs.CONFIG)
    evals = [e for e in runs.read_metrics(run) if e.get("event") == "evaluate"]
    report_path = run / FOOTPRINT_REPORT
    if not evals:
        raise InputError(f"{run}: no evaluation in {runs.METRICS}")
    if not report_path.is_file():
        raise InputError(f"{run}: no {FOOTPRINT_REPORT}", hint=f"fedw2v footprint {run} --json > {report_path}")
    report = json.loads(report_path.read_text())
    best = report.get("best_layer")
    if not best:
        raise InputError(f"{report_path}: the pooled EER is not measurable")
    index = report["layers"].index(best["layer"])
    lo, hi = report["pooled"]["ci"][index]
    mode = config.get("dp", "off")
    privacy = (config.get("extra") or {}).get("privacy") or {}
    dp = mode != "off"
    return SweepRow(str(run), mode, config.get("dp_noise_multiplier") if dp else None,
                    config.get("dp_clip") if dp else None, privacy.get("epsilon") if dp else None,
                    config.get("dp_delta") if dp else None, int(evals[-1]["round"]), 100 * evals[-1]["wer"],
                    100 * evals[-1]["cer"], float(best["eer"]), (float(lo), float(hi)), best["layer"])


def markdown(rows: list[SweepRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[SweepRow], path: str | Path) -> Path:
    from fedw2v.plots import privacy_utility

    points = [{"mode": r.mode, "cer": r.cer, "eer": r.eer, "eer_ci": r.eer_ci,
               "label": "no DP" if r.mode == "off" else f"{r.mode} z {r.z:g}, ε {r.epsilon_text}"} for r in rows]
    delta = next((r.delta for r in rows if r.delta), None)
    title = "footprint EER against CER" + (f" (ε at δ {delta:g})" if delta else "")
    return privacy_utility(points, path, title=title)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedw2v.privacy.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, each with footprint.json")
    parser.add_argument("--plot", default="privacy-sweep.png", help="PNG to write")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    try:
        rows = [summarise(r) for r in args.runs]
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(rows))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="privacy-utility sweep", title_justify="left")
        for name in HEADER:
            table.add_column(name, justify="left" if name == "--dp" else "right")
        for r in rows:
            table.add_row(*r.cells())
        Console().print(table)
    print(f"plot: {plot(rows, args.plot)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
