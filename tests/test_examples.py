"""examples/paper_tedlium3.sh, the paper-scale recipe, cannot run here (TED-LIUM 3 and GPUs), so check what can
be: it is valid bash, every fedw2v option it passes exists, and its simulate settings are the defaults."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "paper_tedlium3.sh"


def _fedw2v_commands() -> list[list[str]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("fedw2v ")]
    return [shlex.split(line, comments=True)[1:] for line in lines]


def test_the_paper_recipe_is_valid_bash_and_uses_only_options_that_exist():
    import typer.main

    from fedw2v.cli import app

    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    commands = _fedw2v_commands()
    assert [c[0] for c in commands] == ["prepare", "partition", "simulate", "evaluate", "evaluate", "footprint"]
    group = typer.main.get_command(app)
    for args in commands:
        accepted = {o for p in group.commands[args[0]].params for o in (*p.opts, *p.secondary_opts)}
        used = {a.split("=")[0] for a in args if a.startswith("--")}
        assert used <= accepted, (args[0], sorted(used - accepted))


def test_the_paper_recipe_simulates_with_the_default_settings():
    from fedw2v.config.simulate import SimulateConfig

    args = next(c for c in _fedw2v_commands() if c[0] == "simulate")
    given = {args[i][2:].replace("-", "_"): args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    defaults = SimulateConfig(clients_manifest="c", run_dir="r")
    for key in ("model", "rounds", "clients_per_round", "local_epochs", "batch_size", "lr_encoder", "lr_head",
                "weighting", "eval_every", "eval_split", "gpus_per_client", "precision", "seed", "keep_checkpoints"):
        default = getattr(defaults, key)
        assert type(default)(given[key]) == default, key
