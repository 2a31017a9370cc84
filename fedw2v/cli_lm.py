"""`fedw2v lm …`: the language-model commands (a Typer sub-app the main CLI mounts as ``lm``), as thin as the
others: parse -> typed config -> the stage (`fedw2v.lm.build`) -> render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedw2v.cli_options import OutputPath, build, declared
from fedw2v.lm.build import LmBuildConfig

lm_app = typer.Typer(help="N-gram language models for `--decoder beam`.", no_args_is_help=True)


@lm_app.command("build")
@declared(LmBuildConfig)
def lm_build(
    sources: Annotated[list[Path], typer.Argument(
        metavar="SOURCE...", readable=False,
        help="A manifest (its train split's text only) or text files with one sentence per line (.gz too).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="LM directory to write (lm.arpa, lexicon.txt, …).",
                                         click_type=OutputPath("dir"))],
    **options: Any,
) -> None:
    """Build a Kneser-Ney n-gram LM (ARPA) and a lexicon from text, for `transcribe`/`evaluate --decoder beam`."""
    from fedw2v.lm import build as lm_stage
    from fedw2v.ui.console import console
    from fedw2v.ui.render import lm_build_lines

    result = lm_stage.build(sources, out, build(LmBuildConfig, options))
    for line in lm_build_lines(result):
        console.print(line, markup=False, soft_wrap=True)
