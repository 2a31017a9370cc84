"""The `fedw2v` command: one thin command per stage (parse -> typed config -> call -> render).

Heavy libraries (torch, transformers, flwr, ray, pyarrow, numpy) are imported inside the commands, so
`fedw2v --help` stays instant. Domain errors become one-line messages and exit codes in `_Group.invoke`,
the only place that does so (the mapping itself is in fedw2v.errors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from fedw2v import __version__
from fedw2v.errors import FedW2VError, UsageError, exit_code_for, format_error


class _Group(TyperGroup):
    """Maps every exception escaping a command to one line on stderr and an exit code (--debug: traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 -- this is the one place errors are turned into messages
            if (ctx.obj or {}).get("debug") or os.environ.get("FEDW2V_DEBUG") == "1":
                raise
            from fedw2v.console import err_console

            err_console.print(format_error(exc), markup=False, soft_wrap=True)
            raise click.exceptions.Exit(exit_code_for(exc)) from None


app = typer.Typer(
    cls=_Group,
    name="fedw2v",
    help="Federated fine-tuning of wav2vec 2.0 speech recognisers, with speaker-privacy analysis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Typed parameters declared once and reused by the commands.
ManifestOut = Annotated[Path, typer.Option("--output", "-o", help="Manifest file to write (Parquet).", dir_okay=False)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedw2v {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


def _config(cls: type, **kwargs: Any) -> Any:
    """Build a typed config; its ValueError (a rule on the options) becomes a usage error."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@app.command()
def prepare(
    corpus_dir: Annotated[Path, typer.Argument(help="TED-LIUM release 3 directory (or a corpus in its layout).")],
    output: ManifestOut,
    distribution: Annotated[
        str, typer.Option(help="Which distribution of the corpus: legacy | speaker-adaptation.")
    ] = "legacy",
    splits: Annotated[str, typer.Option(help="Comma-separated corpus splits to read.")] = "train,dev,test",
    normalization: Annotated[
        str, typer.Option(help="Text normalisation: paper (clitics split, as the paper) | joined (it's).")
    ] = "paper",
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any skipped segment instead of reporting it.")] = False,
) -> None:
    """Read a TED-LIUM 3 corpus into an utterance manifest (no audio is decoded)."""
    from fedw2v import manifest
    from fedw2v.console import console, print_problems, progress_bar
    from fedw2v.corpus import tedlium
    from fedw2v.errors import CorpusError
    from fedw2v.render import prepare_table

    config = _config(
        tedlium.PrepareConfig,
        corpus_dir=corpus_dir,
        distribution=distribution,
        splits=_csv(splits),
        normalization=normalization,
    )
    with progress_bar("reading STM/SPH") as update:
        result = tedlium.prepare(config, progress=update)
    print_problems(result.problems)
    console.print(prepare_table(result))
    if result.problems and strict:
        first = result.problems[0]
        raise CorpusError(
            f"{len(result.problems)} problems with --strict (first: {first}); nothing written",
            hint="fix the corpus or drop --strict to skip bad segments",
        )
    if result.table.num_rows == 0:
        raise CorpusError(f"{corpus_dir}: no utterances found in {', '.join(config.splits)}; nothing written")
    command = (
        f"fedw2v prepare {corpus_dir} -o {output} --distribution {config.distribution} "
        f"--splits {','.join(config.splits)} --normalization {config.normalization}" + (" --strict" if strict else "")
    )
    info = manifest.ManifestInfo(
        corpus_root=str(Path(corpus_dir).resolve()),
        normalization=config.normalization,
        command=command,
        extra={"distribution": config.distribution},
    )
    manifest.write(manifest.Manifest(result.table, info), output)
    console.print(f"wrote {result.table.num_rows} utterances to {output}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
